"""`results.html`: one run's retrievals, to look at (issue 19).

Per task a sample of queries (text and/or image), each with its top-k items -- their images or texts,
identifiers, scores and relevance (`genretr.evaluation.hits.Hit`) -- beside the task's metrics; for
schemes whose identifiers share meaningful prefixes (semantic and quantized ones) the code tree: the largest
groups of items that share a first code, split by their second, with thumbnails, as GENIUS Fig. 3 /
Appendix E.  Images are embedded as PNG data URIs, so the page opens offline from the run folder.
"""
from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from genretr.data.schema import RetrievalDataset
from genretr.evaluation.hits import Hit
from genretr.identifiers.base import IdTable

TREE_GROUPS, TREE_SUBGROUPS, TREE_ITEMS = 6, 4, 6  # first codes shown, second codes per first, items per group
STYLE = """body{font:14px sans-serif;margin:1.5em;color:#222}h2{margin-top:1.6em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.q{margin:1em 0;padding:.5em;border:1px solid #ddd}
.hits{display:flex;gap:8px;flex-wrap:wrap}.hit{width:120px;font-size:12px;padding:4px;border:2px solid #eee}
.hit.relevant{border-color:#2a2}.hit img,.q img,.tree img{width:64px;height:64px;image-rendering:pixelated}
code{background:#f4f4f4}.tree .group{margin:.6em 0}.tree .sub{display:inline-block;margin:0 1em .5em 0;
vertical-align:top}.tree .items{display:flex;gap:4px;flex-wrap:wrap;max-width:420px}"""


class Thumbnails:
    """PNG data URIs of the dataset's images, each encoded once."""

    def __init__(self, images: np.ndarray):
        self.images, self.cache = images, {}

    def uri(self, index: int) -> str:
        if index not in self.cache:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(np.asarray(self.images[index], dtype=np.uint8)).save(buf, format="PNG")
            self.cache[index] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return self.cache[index]


def _e(x) -> str:
    return html.escape(str(x))


def _content(thumbs: Thumbnails, image: int | None, text: str | None) -> str:
    """An image and/or a text, as a query or an item shows them."""
    parts = []
    if image is not None:
        parts.append(f'<img src="{thumbs.uri(image)}" alt="image {image}">')
    if text:
        parts.append(f"<div class=\"text\">{_e(text)}</div>")
    return "".join(parts)


def _metrics_table(metrics: dict) -> str:
    rows = {t: m for t, m in metrics.items() if isinstance(m, dict) and any(k.startswith("R@") for k in m)}
    cols = [c for c in ("R@1", "R@5", "R@10", "MRR@10", "queries") if any(c in m for m in rows.values())]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(f"<tr><th>{_e(t)}</th>" + "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols) + "</tr>"
                   for t, m in rows.items())
    return f'<table class="metrics"><tr><th>task</th>{head}</tr>{body}</table>'


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else _e(v))


def query_block(ds: RetrievalDataset, thumbs: Thumbnails, query, hits: list[Hit], score_name: str) -> str:
    items = []
    for h in hits:
        if h.item_id is None:  # a free generation's miss
            items.append(f'<div class="hit miss" data-item=""><div>#{h.rank} miss</div>'
                         "<div>generated no identifier of the pool</div></div>")
            continue
        item = ds.items[h.item_id]
        ident = f"<div>id <code>{_e(h.identifier)}</code></div>" if h.identifier is not None else ""
        items.append(f'<div class="hit{" relevant" if h.relevant else ""}" data-item="{_e(h.item_id)}">'
                     f"<div>#{h.rank} {_e(h.item_id)}{' ✓' if h.relevant else ''}</div>"
                     f"{_content(thumbs, item.image, item.text)}{ident}"
                     f"<div>{_e(score_name)} {h.score:.3f}</div></div>")
    found = "" if any(h.relevant for h in hits) else f"<div>no relevant item in the top {len(hits)}</div>"
    return (f'<div class="q" data-query="{_e(query.id)}"><div><b>{_e(query.id)}</b> '
            f"{_e(query.instruction or '')}</div>{_content(thumbs, query.image, query.text)}"
            f"<div>relevant: {_e(', '.join(query.relevant))}</div>{found}"
            f'<div class="hits">{"".join(items)}</div></div>')


def code_tree(ds: RetrievalDataset, thumbs: Thumbnails, table: IdTable) -> str:
    """The largest groups of items sharing a first code, each split by its second code (GENIUS Fig. 3)."""
    first, second = defaultdict(list), defaultdict(lambda: defaultdict(list))
    for iid in table.item_ids:
        toks = table.tokens(iid)[:-1]  # EOS left out
        if toks:
            first[toks[0]].append(iid)
            second[toks[0]][toks[1] if len(toks) > 1 else None].append(iid)
    out = []
    for code, members in Counter({c: len(m) for c, m in first.items()}).most_common(TREE_GROUPS):
        subs = sorted(second[code].items(), key=lambda kv: -len(kv[1]))[:TREE_SUBGROUPS]
        blocks = "".join(
            f'<div class="sub"><div><code>{_e(table.vocab[code])} {_e(table.vocab[s]) if s is not None else ""}'
            f"</code> ({len(ids)})</div><div class=\"items\">"
            + "".join(f'<div title="{_e(i)}">{_content(thumbs, ds.items[i].image, ds.items[i].text)}</div>'
                      for i in ids[:TREE_ITEMS]) + "</div></div>" for s, ids in subs)
        out.append(f'<div class="group" data-code="{_e(table.vocab[code])}"><h3>first code '
                   f"<code>{_e(table.vocab[code])}</code>: {members} items</h3>{blocks}</div>")
    return f'<section class="tree" id="code-tree"><h2>Code tree</h2>{"".join(out)}</section>'


def render(ds: RetrievalDataset, title: str, metrics: dict, samples: dict[str, list], score_name: str,
           table: IdTable | None = None, tree: bool = False) -> str:
    """The page: `samples` is task -> [(query, [Hit])]."""
    thumbs = Thumbnails(ds.images)
    sections = []
    for task, shown in samples.items():
        blocks = "".join(query_block(ds, thumbs, q, hits, score_name) for q, hits in shown)
        sections.append(f'<section class="task" id="task-{_e(task)}"><h2>{_e(task)}</h2>'
                        f"{_metrics_table({task: metrics.get(task, {})})}{blocks}</section>")
    if tree and table is not None:
        sections.append(code_tree(ds, thumbs, table))
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{_e(title)}</title><style>{STYLE}"
            f"</style></head><body><h1>{_e(title)}</h1><section id=\"metrics\"><h2>Metrics</h2>"
            f"{_metrics_table(metrics)}</section>{''.join(sections)}</body></html>\n")


def write(path: Path, page: str) -> None:
    from genretr.artifacts import atomic_write_text

    atomic_write_text(Path(path), page)
