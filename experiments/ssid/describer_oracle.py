"""Describer or identifier? SSID's and the semantic identifier beside each other with a perfect describer.

On shapes a test image's identifier is written from the caption of a captioner trained on the train split
(test captions stay unseen; SSID's MLLM sees the image instead, Sec. III-E).  Here both schemes read, for
every caption-less pool image, the caption of its image-text pair instead: a real caption of the image, what
a describer that never errs would write.  That caption is also one of the image's five t2i queries, so recall
is reported on the other four (unseen paraphrases of the scene) as well as on all five.  The models are new
stage artifacts (`captioner.describer=pair-caption` enters the stage keys) and are cached like any other.

    .venv/bin/python experiments/ssid/describer_oracle.py experiment=ssid_table1 identifier=ssid
    .venv/bin/python experiments/ssid/describer_oracle.py experiment=ssid_table1 identifier=semantic \
        identifier.collisions=disambiguate
    .venv/bin/python experiments/ssid/describer_oracle.py --captioner experiment=ssid_table1 identifier=semantic \
        identifier.collisions=disambiguate

`--captioner` evaluates the usual run (the captioner describes) the same way, for the comparison; with
`identifier.describe=all` (SSID) or `identifier.train_caption=generated` (semantic) the captioner describes
every image, train images too.  `--seeds 0,1,2` runs each seed and prints mean ± std over them; `--jobs N` says
that N such processes run side by side (threads=auto then gives each the cores // N torch threads);
`--out DIR` writes each seed's record (first-hit ranks, `shared`, `wording`) to DIR/seed<S>.json.  Each seed also
prints R@1 on the queries whose target image has identifier words of its own among the target images and on
those whose target only a "#j" counter tells apart (`shared`), and how consistently the target images'
identifiers word shapes' concepts (`wording`: the share of their shape, colour, size and background words in
that concept's most used wording; shapes' captions word each concept 2-3 ways).  Then

    .venv/bin/python experiments/ssid/describer_oracle.py --compare DIR_A DIR_B [--compare DIR_C DIR_D ...]

tests A against B with genretr.report's paired sign-flip test over (seed, query) pairs, on all five queries, on
the four, and on the queries whose target has identifier words of its own in both runs (what is left of A - B
without the counter-only identifiers), R@1/5/10 and MRR@10, Holm-adjusted over every comparison of the call;
"A > B" holds (or is reversed) at adjusted p < 0.05 with every common seed's difference of that sign
(genretr.report_stats.verdict).  `make reproduce-ssid-describer` runs the six over SEEDS seeds, semantic IDs
with SSID's "#j" counters (like for like, as reproduce-table1's pair), then SSID against semantic IDs under
each describer.
"""
import collections
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from genretr.artifacts import atomic_write_text
from genretr.data.schema import PAIR
from genretr.data.shapes import BACKGROUNDS, COLOURS, SHAPES, SIZES
from genretr.evaluation.metrics import first_hit_ranks, per_query_scores
from genretr.generators.keywords import DETERMINERS
from genretr.hardware import auto_threads
from genretr.identifiers.common import own_words
from genretr.pipeline import Pipeline
from genretr.report_stats import fmt_p, pair_by_seed, paired_ranks_test, verdict
from genretr.stats import holm, summary

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("GENRETR_CACHE", str(ROOT / ".cache/genretr"))
ALL, UNSEEN = "all five queries", "the four non-pair-caption queries"
OWN = "the queries whose target's identifier words are its own under both"  # --compare only: needs both records
METRICS = ("R@1", "R@5", "R@10", "MRR@10")
# shapes' concepts and each one's wordings in its captions (positions left out: SSID's keywords shorten them)
CONCEPTS = {**{("shape", k): v for k, v in SHAPES.items()}, **{("colour", k): v[1] for k, v in COLOURS.items()},
            **{("size", k): v[1] for k, v in SIZES.items()}, **{("background", k): v[1] for k, v in BACKGROUNDS.items()}}
CONJUNCTION = rf"(?!\s+(?:{'|'.join(sorted(DETERMINERS))})\b)"  # "plus" before one joins phrases (keywords.py)
# (concept, wording, its pattern), longest wording first
WORDING_PATTERNS = [(c, w, re.compile(r"(?<![\w-])" + re.escape(w).replace(r"\-", r"\s*-?\s*") + r"(?![\w-])"
                                      + (CONJUNCTION if w == "plus" else "")))
                    for _, c, w in sorted(((len(w), c, w) for c, ws in CONCEPTS.items() for w in ws), reverse=True)]


class PairCaptionPipeline(Pipeline):
    """The identify stage sees each caption-less image's pair caption as if it were a training caption."""

    def scheme_context(self, ds, emb, items, workdir):
        ctx = super().scheme_context(ds, emb, items, workdir)
        pair_caption = {it.image: it.text for it in ds.items.values() if it.modality == PAIR and it.text}
        extra = {i: [pair_caption[ds.items[i].image]] for i in items
                 if i not in ctx.item_captions and ds.items[i].image in pair_caption}
        ctx.item_captions = {**ctx.item_captions, **extra}
        return ctx


def evaluate(overrides: list[str], oracle: bool, seed: int, jobs: int = 1) -> dict:
    """One seed's t2i run: {"seed", "query_ids", "rank" (1-based first hit, 0 for none), "pair_caption" (the
    query is its target image's pair caption), "shared" (how many target images have the words of the query's
    target's identifier), "wording" (of the target images' identifiers)}."""
    extra = ["+captioner.describer=pair-caption"] if oracle else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[*overrides, *extra, f"seed={seed}", f"paths.cache_dir={CACHE}",
                                           "progress=false"])
    torch.set_num_threads(auto_threads(cfg.get("threads", "auto"), jobs))
    p = (PairCaptionPipeline if oracle else Pipeline)(cfg, Path("outputs/describer_oracle"))
    ds, queries, rankings = p.task_rankings("t2i")
    table = p.identify(ds, p.encode(ds))  # cache hits: the identifiers as the scheme wrote them
    pair_caption = {it.image: it.text for it in ds.items.values() if it.modality == PAIR}
    ranks = first_hit_ranks(rankings, [q.relevant for q in queries])
    identifiers = {i: table.text(i) for i in sorted({i for q in queries for i in q.relevant})}  # shapes' test pool
    shared = shared_words(identifiers)
    return {"seed": seed, "query_ids": [q.id for q in queries], "rank": [int(r) for r in ranks],
            "pair_caption": [q.text == pair_caption.get(ds.items[next(iter(q.relevant))].image) for q in queries],
            "shared": [shared[next(iter(q.relevant))] for q in queries],
            "wording": wording(list(identifiers.values()))}


def shared_words(identifiers: dict[str, str]) -> dict[str, int]:
    """item -> how many of the items have its identifier's words, a final "#j" counter left out (1: its own
    words; more: only the counter tells it apart, `collisions: disambiguate`)."""
    words = {item: " ".join(own_words(text.split())) for item, text in identifiers.items()}
    held = collections.Counter(words.values())
    return {item: held[w] for item, w in words.items()}


def wording(identifiers: list[str]) -> dict:
    """How consistently identifiers word shapes' concepts: {"mentions": the shape, colour, size and background
    words they hold, "most_used": the share of those in their concept's most used wording} (1.0: one wording
    a concept; ~0.4: the captions' 2-3 wordings at random).  Longer wordings match first ("plus sign" before
    "plus", "deep blue" before "blue"); a hyphenated wording also matches spelt with spaces ("snow - white",
    "snow white": SSID's identifier words); "plus" before a determiner is the captions' conjunction, no shape."""
    found = {c: {w: 0 for w in ws} for c, ws in CONCEPTS.items()}
    for text in identifiers:
        for concept, w, pattern in WORDING_PATTERNS:
            text, n = pattern.subn("|", text)
            found[concept][w] += n
    mentions = sum(sum(c.values()) for c in found.values())
    return {"mentions": mentions, "most_used": sum(max(c.values()) for c in found.values()) / max(mentions, 1)}


def subsets(record: dict) -> dict[str, np.ndarray]:
    """label -> the query positions of that subset of a record."""
    unseen = ~np.asarray(record["pair_caption"], dtype=bool)
    return {ALL: np.arange(len(unseen)), UNSEEN: np.flatnonzero(unseen)}


def scores(record: dict) -> dict[str, list[float]]:
    """label -> R@1/5/10 and MRR@10 (%) of the record on that subset, and label + " n" -> its size."""
    ranks, out = np.asarray(record["rank"]), {}
    for label, sel in subsets(record).items():
        out[label] = [100 * float(per_query_scores(ranks[sel], m).mean()) for m in METRICS]
        out[label + " n"] = len(sel)
    return out


def load(directory: str) -> dict[int, dict]:
    """seed -> record of a `--out` directory."""
    files = sorted(Path(directory).glob("seed*.json"))
    if not files:
        raise SystemExit(f"describer_oracle.py: {directory}: no seed*.json records (run with --out {directory})")
    return {r["seed"]: r for r in (json.loads(f.read_text()) for f in files)}


def subset(record: dict, label: str, other: dict | None = None) -> dict:
    """A seed's record restricted to the queries of one subset: {"query_ids", "rank"}.  OWN: the queries whose
    target's identifier words are its own in this record and in `other` (the same seed's of the other run)."""
    if label == OWN:
        other_shared = dict(zip(other["query_ids"], other["shared"]))
        keep = [i for i, (q, n) in enumerate(zip(record["query_ids"], record["shared"]))
                if n == 1 and other_shared.get(q) == 1]
    else:
        keep = subsets(record)[label]
    return {"query_ids": [record["query_ids"][i] for i in keep], "rank": [record["rank"][i] for i in keep]}


def compare(pairs: list[tuple[str, str]]) -> list[str]:
    """Lines: each (A, B) pair's paired test of A - B (genretr.report_stats) per subset of the queries (A's all
    five and four; OWN, from both records) and per metric, Holm over all of them."""
    rows = []
    for a_dir, b_dir in pairs:
        a, b = load(a_dir), load(b_dir)
        for s in set(a) & set(b):  # the subsets come from A's records: B's must agree on them
            b_flag = dict(zip(b[s]["query_ids"], b[s]["pair_caption"]))
            if any(b_flag.get(q, f) != f for q, f in zip(a[s]["query_ids"], a[s]["pair_caption"])):
                raise SystemExit(f"describer_oracle.py: {a_dir} and {b_dir} disagree on which queries are "
                                 f"pair captions (seed {s}): not runs of one dataset")
        for directory, records in ((a_dir, a), (b_dir, b)):
            if missing := sorted(s for s in set(a) & set(b) if "shared" not in records[s]):
                raise SystemExit(f"describer_oracle.py: {directory}: {', '.join(f'seed{s}.json' for s in missing)} "
                                 f"{'has' if len(missing) == 1 else 'have'} no \"shared\" (written before it was "
                                 "recorded): run those seeds again with --out")
        for label in (ALL, UNSEEN, OWN):
            paired = pair_by_seed({s: subset(r, label, b.get(s)) for s, r in a.items() if s in b}, b)
            if isinstance(paired, str):
                raise SystemExit(f"describer_oracle.py: {a_dir} and {b_dir}: {paired}")
            for m in METRICS:
                result = paired_ranks_test(*paired, m)
                if isinstance(result, str):
                    raise SystemExit(f"describer_oracle.py: {a_dir} and {b_dir}, {label}, {m}: {result}")
                rows.append((a_dir, b_dir, label, m, *result))
    adjusted = holm([r[4].p_value for r in rows])
    return [f"{a_dir} - {b_dir}, {label}, {m}: {100 * t.mean_diff:+.1f} (seeds "
            f"{' / '.join(f'{100 * d:+.1f}' for d in per_seed)}; {t.n_pairs} pairs), {fmt_p(t.p_value)}, "
            f"Holm over {len(rows)}: {fmt_p(p)}: A > B {verdict(t, per_seed, p)}"
            for (a_dir, b_dir, label, m, t, per_seed), p in zip(rows, adjusted)]


def option(args: list[str], flag: str, default: str | None) -> tuple[str | None, list[str]]:
    """(the value after `flag`, or `default`; `args` without the two)."""
    if flag not in args:
        return default, args
    i = args.index(flag)
    if i + 1 == len(args) or args[i + 1].startswith("--"):
        raise SystemExit(f"describer_oracle.py: {flag} needs a value")
    if flag in args[i + 1:]:
        raise SystemExit(f"describer_oracle.py: {flag} is given twice")
    return args[i + 1], args[:i] + args[i + 2:]


def compare_pairs(args: list[str]) -> list[tuple[str, str]]:
    """The (A, B) directories of `--compare A B [--compare C D ...]`, which takes nothing else."""
    if len(args) % 3 or any(args[i] != "--compare" or args[i + 1].startswith("--") or args[i + 2].startswith("--")
                            for i in range(0, len(args), 3)):
        raise SystemExit("describer_oracle.py: --compare takes two --out directories per --compare, and no "
                         f"other arguments: {' '.join(args)}")
    return [(args[i + 1], args[i + 2]) for i in range(0, len(args), 3)]


def main(args):
    if "--compare" in args:
        print("\n".join(compare(compare_pairs(args))), flush=True)
        return
    oracle = "--captioner" not in args
    seeds, args = option(args, "--seeds", "0")  # --seeds 0,1,2: one run per seed, then mean ± std over them
    jobs, args = option(args, "--jobs", "1")
    out, args = option(args, "--out", None)
    seeds = [int(s) for s in seeds.split(",") if s]
    overrides = [a for a in args if a != "--captioner"]
    name = f"{' '.join(overrides)} ({'pair-caption describer' if oracle else 'captioner describer'})"
    per_seed, most_used = [], []
    for seed in seeds:
        record = evaluate(overrides, oracle, seed, int(jobs))
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(out) / f"seed{seed}.json", json.dumps({"name": name, **record}) + "\n")
        found = scores(record)
        per_seed.append(found)
        for label in (ALL, UNSEEN):
            print(f"{name} seed {seed}: {label} ({found[label + ' n']}): " + "  ".join(
                f"{m} {v:.1f}" for m, v in zip(METRICS, found[label])), flush=True)
        own = np.asarray(record["shared"]) == 1
        first = np.asarray(record["rank"]) == 1
        r1 = [f"{100 * first[sel].mean():.1f}" if sel.any() else "-" for sel in (own, ~own)]
        print(f"{name} seed {seed}: {own.mean():.3f} of the queries' targets have identifier words of their own: "
              f"R@1 {r1[0]} on those, {r1[1]} on the others (only a counter tells their target apart)", flush=True)
        w = record["wording"]
        most_used.append(w["most_used"])
        print(f"{name} seed {seed}: the target images' identifiers: {w['most_used']:.2f} of their {w['mentions']} "
              "shape, colour, size and background words in the concept's most used wording", flush=True)
    if len(seeds) > 1:
        for label in (ALL, UNSEEN):
            cols = [summary([f[label][k] for f in per_seed]) for k in range(len(METRICS))]
            print(f"{name}: {label}, mean ± std over seeds {','.join(map(str, seeds))}: " + "  ".join(
                f"{m} {c.mean:.1f} ± {c.std:.1f}" for m, c in zip(METRICS, cols)), flush=True)
        share = summary(most_used)
        print(f"{name}: the target images' identifiers, mean ± std over seeds: {share.mean:.2f} ± {share.std:.2f} "
              "of their concept words in the concept's most used wording", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
