"""SSID: structured semantic identifiers written by a generator (SSID Sec. III-C to III-F).

For every pool item the generator (`genretr.generators`: an MLLM, or the offline keywords composer) answers
the Sec. III-E prompt with three lines ``caption:`` / ``identifier:`` / ``reason:``.  The prompt shows the
item's own caption where one is known (its text, else a train-split caption: test captions stay unseen);
otherwise an MLLM sees the image alone and writes the caption itself, and a text-only generator gets
`ctx.describe(item_ids)` captions (a captioner trained on the train split) or fails naming the item.
`describe: all` treats every image item as caption-less (train captions unused): one describer writes
every image's identifier, as the paper's MLLM does; `missing` (the default) describes only the rest.

Answers are parsed strictly; near misses are repaired (label case and spacing, ``Identifier -``, a
missing ``reason:`` label, quotes, markdown bullets and bold, stray lines); answers that still deviate (an
identifier longer than `max_identifier_words` -- a sentence --, a missing line, an empty one) are asked
again with a stricter prompt up to `retries` times, then fall back to the caption's distinctive words
(`KeywordsGenerator.compose`).  Each item's outcome (strict, repaired, retried, fallback) is counted in
the log and in ``ssid_summary.json``.

Answers are cached one JSON line per item (item_id, caption, identifier, reason, raw, outcome) under
`ctx.cache_dir` (stable across runs; `ctx.workdir` without one), appended and flushed per batch: a killed
run resumes without asking again for finished items, and a torn last line is dropped.

The identifier is tokenized into words ("-" between concepts is a word), the table's vocabulary is those
words; items sharing an identifier get "#j" counters (`collisions: disambiguate`) or keep sharing it
(`share`).  The rationales travel in the IdTable (`IdTable.reasons`, {item_id: reason}) for the trainer
(Sec. III-D, III-F).

Items added without retraining (issue 19, `assign`): the same generator answers for each new item; a text-only
one reads, for an image without text, a caption of the captioner that described the caption-less items here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from filelock import FileLock

from genretr.artifacts import plain_dict
from genretr.errors import DataError, GenretrError
from genretr.generators import Request
from genretr.generators.keywords import KeywordsGenerator
from genretr.identifiers.base import DESCRIBER_DIR, SPECIAL_TOKENS, IdTable
from genretr.identifiers.common import append_counters, check_embeddings, continued_groups, in_vocabulary
from genretr.identifiers.saved_captioner import saved_captioner

log = logging.getLogger(__name__)
FIELD_NAMES = re.compile(r"(?im)^\s*(caption|identifier|reason)\s*:")
OUTCOMES = ("strict", "repaired", "retried", "fallback")
COLLISIONS = ("disambiguate", "share")

PROMPT = """You are given an image.
Your task has four steps:
1. If no caption is provided, write an appropriate English caption that accurately describes the image.
2. Identify the key entities and their states that are visible in the image and described in the caption.
3. Explain in one sentence why the caption matches the image.
4. Generate a short and unique identifier that captures the most distinguishing visual elements in the image \
and caption.
IMPORTANT: Your final output must contain EXACTLY three lines in this order:
caption:<your caption here>
identifier:<your identifier here>
reason:<your explanation here>
DO NOT include anything else. Do not add extra lines, symbols, empty fields, or repeated sections.
CORRECT FORMAT EXAMPLE:
caption:Two young, White males are outside near many bushes.
identifier:two white males - bushes
reason:The image and caption both show two white males near bushes, indicating that they refer to the same \
subjects and scene.
{stricter}Now generate the result for the image below:
caption:{caption}
identifier:
reason:"""
STRICTER = ("Your previous answer did not follow this format. Write exactly the three lines, each label followed "
            "by its content; the identifier is at most {n} words: a few key concepts joined by \" - \", never a "
            "sentence.\n")

_STRICT = re.compile(r"(caption|identifier|reason):(.*)")
_LABEL = re.compile(r"(?:[-*+\u2022]\s+|\d+[.)]\s+)?[*_`#\s]*(caption|identifier|id|reason|rationale|explanation)"
                    r"[*_`\s]*[:\uff1a=\-\u2013\u2014][*_`\s]*(.*)", re.IGNORECASE)
_ALIASES = {"id": "identifier", "rationale": "reason", "explanation": "reason"}
_QUOTES = "\"'`\u201c\u201d\u2018\u2019*_ "


def identifier_words(text: str) -> list[str]:
    """Lower-cased word tokens of an identifier; dashes between concepts become one "-" token."""
    toks = re.findall(r"[^\W_]+(?:'[^\W_]+)?|-", re.sub("[\u2013\u2014]", "-", text.lower()))
    out: list[str] = []
    for t in toks:
        if t != "-" or (out and out[-1] != "-"):
            out.append(t)
    return out[:-1] if out and out[-1] == "-" else out


@dataclass
class Parsed:
    caption: str = ""
    identifier: str = ""
    reason: str = ""
    kind: str = ""  # strict | repaired | "" (deviating)
    problem: str = ""


def parse(raw: str, max_words: int) -> Parsed:
    """The three fields of an answer: strict, repaired, or deviating (with the problem)."""
    lines = [ln.strip() for ln in (raw or "").strip().splitlines()]
    strict = [_STRICT.fullmatch(ln) for ln in lines]
    if len(lines) == 3 and all(strict) and [m.group(1) for m in strict] == ["caption", "identifier", "reason"]:
        p = Parsed(*(m.group(2).strip() for m in strict), kind="strict")
    else:
        p = Parsed(kind="repaired")
        fields: dict[str, str] = {}
        last = None
        for ln in (x for x in lines if x):
            m = _LABEL.fullmatch(ln)
            if m:
                last = _ALIASES.get(m.group(1).lower(), m.group(1).lower())
                fields.setdefault(last, m.group(2))
            elif last == "identifier" and "reason" not in fields:  # the reason line lost its label
                fields["reason"], last = ln, "reason"
        p.caption, p.identifier, p.reason = (fields.get(k, "").strip(_QUOTES) for k in ("caption", "identifier",
                                                                                          "reason"))
        p.identifier = p.identifier.rstrip(".").strip(_QUOTES)
    words = [w for w in identifier_words(p.identifier) if w != "-"]
    missing = [k for k in ("caption", "identifier", "reason") if not getattr(p, k)]
    if not (raw or "").strip():
        p.kind, p.problem = "", "empty answer"
    elif missing:
        p.kind, p.problem = "", f"missing or empty {', '.join(missing)} line"
    elif not words:
        p.kind, p.problem = "", "identifier has no word"
    elif len(words) > max_words:
        p.kind, p.problem = "", f"identifier has {len(words)} words (> {max_words}): a sentence"
    return p


class AnswerCache:
    """One JSON line per finished item; resumable after a kill (a torn last line is dropped)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        nonempty = [k for k, line in enumerate(lines) if line.strip()]
        keep = pos = 0  # keep: bytes up to the end of the last good record (its newline included)
        for k, line in enumerate(lines):
            if line.strip():
                try:
                    rec = json.loads(line)
                    self.records[rec["item_id"]] = rec
                    keep = pos + len(line) + 1
                except (ValueError, KeyError, TypeError):
                    if k != nonempty[-1]:
                        raise DataError(self.path, f"line {k + 1}", "not a JSON record (delete the file to regenerate)")
                    log.warning("ssid cache %s: dropping a torn last line", self.path)
            pos += len(line) + 1
        with open(self.path, "r+b") as f:  # cut a torn tail; end with a newline before appending
            f.truncate(min(keep, len(data)))
            if keep > len(data):
                f.seek(0, 2)
                f.write(b"\n")

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        self.records.update((r["item_id"], r) for r in records)


class SsidIdentifier:
    code_tree = True  # items sharing a code prefix are alike (MLLM-written words): results.html draws the tree

    def __init__(self, generator, retries: int = 2, cache: bool = True, batch_size: int = 16,
                 max_identifier_words: int = 10, collisions: str = "disambiguate", captioner: Mapping | None = None,
                 describe: str = "missing", captions: str = "first"):
        """`captioner`: the config of the captioner behind `ctx.describe` (conf/captioner/*.yaml), which writes
        the captions a text-only generator reads for items without one; here so that the stage key and the
        answer cache change with it.  `captions`: what the generator reads of a training item's captions --
        ``first`` (one, as a described test item has one and as GRACE's semantic IDs read one) or ``all``."""
        self.check_options(collisions=collisions, describe=describe, captions=captions)
        self.captions = captions
        if retries < 0 or batch_size < 1 or max_identifier_words < 1:
            raise GenretrError("identifier: retries >= 0, batch_size >= 1, max_identifier_words >= 1")
        if isinstance(generator, Mapping):  # a config that Hydra did not instantiate
            from hydra.utils import instantiate

            generator = instantiate(generator)
        self.generator, self.retries, self.cache, self.batch_size = generator, int(retries), bool(cache), batch_size
        self.max_words, self.collisions = int(max_identifier_words), collisions
        self.captioner = plain_dict(captioner) if captioner is not None else None
        self.describe = describe
        self.fallback = KeywordsGenerator(max_words=min(6, self.max_words))

    @staticmethod
    def check_options(collisions: str = "disambiguate", describe: str = "missing", captions: str = "first") -> None:
        """Values `genretr.validate` checks before any stage runs."""
        for name, value, allowed in (("collisions", collisions, COLLISIONS), ("describe", describe, ("missing", "all")),
                                     ("captions", captions, ("first", "all"))):
            if value not in allowed:
                raise GenretrError(f"identifier.{name}={value} is not one of {', '.join(allowed)}")

    # -- requests -----------------------------------------------------------------------------------------
    def prompt(self, caption: str | None, stricter: bool = False) -> str:
        return PROMPT.format(caption=caption or "", stricter=STRICTER.format(n=self.max_words) if stricter else "")

    def requests(self, items, ctx) -> list[Request]:
        known = {} if self.describe == "all" else ctx.item_captions or {}
        upto = 1 if self.captions == "first" else None
        captions = [[it.text] if getattr(it, "text", None) else list(known.get(it.id, []))[:upto] for it in items]
        describe = ctx.describe
        missing = [i for i, c in enumerate(captions) if not c]
        if missing and self.generator.needs_text:
            if describe is None:
                raise GenretrError(f"ssid: the {type(self.generator).__name__} needs a caption for item "
                                   f"'{items[missing[0]].id}' (no text, no train caption, no ctx.describe captioner)")
            for i, text in zip(missing, describe([items[i].id for i in missing])):
                captions[i] = [text]
        images = ctx.images
        out = []
        for it, caps in zip(items, captions):
            image = images[it.image] if images is not None and getattr(it, "image", None) is not None else None
            if not caps and image is None:
                raise GenretrError(f"ssid: item '{it.id}' has neither a caption nor an image (ctx.images)")
            out.append(Request(it.id, self.prompt(caps[0] if caps else None), caps[0] if caps else None,
                               tuple(caps), image))
        return out

    # -- generation ---------------------------------------------------------------------------------------
    def answer(self, batch: list[Request]) -> list[dict]:
        """Ask, parse, retry the deviating ones with the stricter prompt, fall back; one record per request."""
        records: dict[str, dict] = {}
        pending = list(batch)
        for attempt in range(self.retries + 1):
            if not pending:
                break
            asked = pending if attempt == 0 else [replace(r, prompt=self.prompt(r.caption, True)) for r in pending]
            pending_next = []
            for req, raw in zip(pending, self.generator.generate(asked)):
                p = parse(raw, self.max_words)
                if p.kind:
                    outcome = p.kind if attempt == 0 else "retried"
                    records[req.item_id] = self._record(req, p.caption, p.identifier, p.reason, raw, outcome, attempt)
                else:
                    pending_next.append(req)
                    records[req.item_id] = {"raw": raw, "problem": p.problem, "caption": p.caption}
            pending = pending_next
        for req in pending:
            last = records[req.item_id]
            # the raw answer without the format's field names: an empty "caption:/identifier:/reason:" names nothing
            raw = FIELD_NAMES.sub(" ", last["raw"] or "")
            texts = [t for t in (*req.captions, last["caption"]) if t] or [raw]
            identifier, reason = self.fallback.compose(texts)
            if not identifier:
                identifier, reason = f"item {req.item_id}", "The answer named nothing; the item's id stands in."
            records[req.item_id] = self._record(req, req.caption or last["caption"], identifier, reason, last["raw"],
                                                "fallback", self.retries, last["problem"])
        return [records[r.item_id] for r in batch]

    @staticmethod
    def _record(req, caption, identifier, reason, raw, outcome, attempt, problem="") -> dict:
        return {"item_id": req.item_id, "caption": caption or req.caption or "", "identifier": identifier,
                "reason": reason, "raw": raw, "outcome": outcome, "retries": attempt, "problem": problem}

    def cache_path(self, ctx) -> Path:
        key = {"generator": self.generator.signature(), "retries": self.retries, "max_words": self.max_words,
               "prompt": PROMPT, "stricter": STRICTER, "captions": self.captions}
        if self.describe != "missing":
            key["describe"] = self.describe
        if self.generator.needs_text and self.captioner is not None:
            key["captioner"] = self.captioner
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        root = Path(ctx.cache_dir or ctx.workdir)
        root.mkdir(parents=True, exist_ok=True)
        return root / f"ssid-{digest}.jsonl"

    def generate(self, requests: list[Request], ctx) -> dict[str, dict]:
        """Every request's record, from the cache where it has one (batched, appended and flushed per batch).
        The cache file is held (a file lock) while answering: runs sharing it answer each request once."""
        if not self.cache:
            return self._generate(requests, ctx, None)
        path = self.cache_path(ctx)
        with FileLock(str(path) + ".lock"):
            return self._generate(requests, ctx, AnswerCache(path))

    def _generate(self, requests: list[Request], ctx, cache: "AnswerCache | None") -> dict[str, dict]:
        done = {r.item_id: cache.records[r.item_id] for r in requests if cache and r.item_id in cache.records}
        todo = [r for r in requests if r.item_id not in done]
        if done:
            log.info("ssid: %d of %d answers from the cache %s", len(done), len(requests), cache.path)
        with _progress(bool(ctx.progress)) as bar:
            task = bar.add_task("ssid identifiers", total=len(requests), completed=len(done))
            for s in range(0, len(todo), self.batch_size):
                recs = self.answer(todo[s:s + self.batch_size])
                if cache:
                    cache.append(recs)
                done.update((r["item_id"], r) for r in recs)
                bar.advance(task, len(recs))
        return done

    # -- the table ----------------------------------------------------------------------------------------
    def fit(self, ctx) -> None:
        """The generator and the fallback composer fitted on the train captions, the generator on the run's
        device (a model-backed one)."""
        train_texts = list(ctx.train_texts or [])
        groups = [list(c) for c in (ctx.item_captions or {}).values()]
        if hasattr(self.generator, "place"):
            self.generator.place(ctx.device)
        self.generator.fit(train_texts, groups)
        self.fallback.fit(train_texts, groups)

    def release(self) -> None:
        """Free the generator's model (not needed after identifying; the train stage loads its own)."""
        if hasattr(self.generator, "release"):
            self.generator.release()

    def build(self, items, embeddings, ctx) -> IdTable:
        self.fit(ctx)
        try:
            records = self.generate(self.requests(items, ctx), ctx)
        finally:
            self.release()
        recs = [records[it.id] for it in items]
        seqs = [identifier_words(r["identifier"]) for r in recs]
        groups = Counter(tuple(s) for s in seqs)
        collided = sum(n for n in groups.values() if n > 1)
        if self.collisions == "disambiguate" and collided:
            seqs = append_counters(seqs)
        vocab = list(SPECIAL_TOKENS) + sorted({w for s in seqs for w in s})
        index = {w: i for i, w in enumerate(vocab)}
        table = IdTable.from_lists([it.id for it in items], [[index[w] for w in s] for s in seqs], vocab,
                                   reasons={it.id: r["reason"] for it, r in zip(items, recs)})
        workdir = Path(ctx.workdir)
        outcomes = Counter(r["outcome"] for r in recs)
        summary = {"items": len(items), "outcomes": {k: outcomes.get(k, 0) for k in OUTCOMES},
                   "collided_items": collided, "collision_groups": sum(1 for n in groups.values() if n > 1),
                   "collisions": self.collisions, "vocab": len(vocab),
                   "cache": str(self.cache_path(ctx)) if self.cache else None,
                   "generator": self.generator.signature()}
        (workdir / "ssid_summary.json").write_text(json.dumps(summary, indent=1, default=str))
        log.info("ssid: %d items: %s; %d items in %d collision groups (%s); vocab %d", len(items),
                 ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items()), collided,
                 summary["collision_groups"], self.collisions, len(vocab))
        return table

    def assign(self, items, embeddings: np.ndarray, ctx, table: IdTable) -> IdTable:
        """Identifiers of new items in `table`'s vocabulary (issue 19): the run's generator, fitted again on the
        train captions (`ctx.train_texts`, `ctx.item_captions`; refused when that fit differs from the one `build`
        recorded in ``ssid_summary.json``), answers the Sec. III-E prompt for each, with the item's own text as its
        caption; a text-only generator reads, for an image without text, the caption of the captioner that
        described the caption-less items in `build` (``describer/`` in `ctx.workdir`).  Answers are not cached
        (the identify artifact is read only).  Under `collisions: disambiguate` an identifier already held takes
        the next "#n" of its group; a word the decoder never saw is one line naming the item."""
        x = check_embeddings(items, embeddings, "ssid")
        todo = [i for i, it in enumerate(items) if not getattr(it, "text", None)]
        describe_new = self._describer(items, x, todo, ctx) if todo and self.generator.needs_text else None
        asked = replace(ctx, item_captions={}, describe=describe_new, progress=False)
        self.fit(ctx)
        try:
            self._check_fit(Path(ctx.workdir) / "ssid_summary.json")
            records = self._generate(self.requests(items, asked), asked, None)
        finally:
            self.release()
        seqs = [identifier_words(records[it.id]["identifier"]) for it in items]
        if self.collisions == "disambiguate":
            seqs = continued_groups(table, seqs)
        return in_vocabulary(table, [it.id for it in items], seqs, "ssid")

    @staticmethod
    def _describer(items, x: np.ndarray, todo: list[int], ctx):
        """item ids -> captions of the new items `todo` (rows of `items`), written by the run's saved describer
        from their embeddings, or their images (a pixel captioner)."""
        captioner, inputs = saved_captioner(ctx, DESCRIBER_DIR, items, todo, x, "ssid")
        written = dict(zip((items[i].id for i in todo), captioner.describe(inputs)))
        return lambda item_ids: [written[i] for i in item_ids]

    def _check_fit(self, summary: Path) -> None:
        """The generator fitted as `build`'s was (its signature: document counts, synonym classes), so that new
        items are written in the words of the run's identifiers."""
        if not summary.is_file():
            raise GenretrError(f"ssid: {summary} is missing: the identify artifact is incomplete; rerun the run")
        recorded = json.loads(summary.read_text()).get("generator")
        fitted = json.loads(json.dumps(self.generator.signature(), default=str))
        if recorded != fitted:
            raise GenretrError(f"ssid: the generator fitted on the run's train captions differs from the one that "
                               f"wrote the run's identifiers ({summary}): the run was identified from other captions "
                               "(an experiment's own context); retrain to add items")


def _progress(enabled: bool):
    from rich.progress import Progress

    return Progress(transient=True, disable=not enabled)
