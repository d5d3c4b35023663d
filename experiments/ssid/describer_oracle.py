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
`make reproduce-ssid-describer` runs the six over SEEDS seeds, semantic IDs with SSID's "#j" counters (like for
like, as reproduce-table1's pair).
"""
import os
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from genretr.data.schema import PAIR
from genretr.hardware import auto_threads
from genretr.pipeline import Pipeline
from genretr.stats import summary

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("GENRETR_CACHE", str(ROOT / ".cache/genretr"))


class PairCaptionPipeline(Pipeline):
    """The identify stage sees each caption-less image's pair caption as if it were a training caption."""

    def scheme_context(self, ds, emb, items, workdir):
        ctx = super().scheme_context(ds, emb, items, workdir)
        pair_caption = {it.image: it.text for it in ds.items.values() if it.modality == PAIR and it.text}
        extra = {i: [pair_caption[ds.items[i].image]] for i in items
                 if i not in ctx.item_captions and ds.items[i].image in pair_caption}
        ctx.item_captions = {**ctx.item_captions, **extra}
        return ctx


def evaluate(overrides: list[str], oracle: bool, seed: int, jobs: int = 1) -> dict[str, list[float]]:
    """R@1/5/10 (%) of one seed's run on all five t2i queries and on the four that are not the pair caption."""
    extra = ["+captioner.describer=pair-caption"] if oracle else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[*overrides, *extra, f"seed={seed}", f"paths.cache_dir={CACHE}",
                                           "progress=false"])
    torch.set_num_threads(auto_threads(cfg.get("threads", "auto"), jobs))
    p = (PairCaptionPipeline if oracle else Pipeline)(cfg, Path("outputs/describer_oracle"))
    ds, queries, rankings = p.task_rankings("t2i")
    pair_caption = {it.image: it.text for it in ds.items.values() if it.modality == PAIR}
    rows = [(next(iter(q.relevant)), list(r), q.text == pair_caption.get(ds.items[next(iter(q.relevant))].image))
            for q, r in zip(queries, rankings)]
    found = {}
    for label, sel in ((ALL, rows), (UNSEEN, [r for r in rows if not r[2]])):
        found[label] = [100 * sum(g in r[:k] for g, r, _ in sel) / len(sel) for k in (1, 5, 10)]
        found[label + " n"] = len(sel)
    return found


ALL, UNSEEN = "all five queries", "the four non-pair-caption queries"


def option(args: list[str], flag: str, default: str) -> tuple[str, list[str]]:
    """(the value after `flag`, or `default`; `args` without the two)."""
    if flag not in args:
        return default, args
    i = args.index(flag)
    if i + 1 == len(args):
        raise SystemExit(f"describer_oracle.py: {flag} needs a value")
    return args[i + 1], args[:i] + args[i + 2:]


def main(args):
    oracle = "--captioner" not in args
    seeds, args = option(args, "--seeds", "0")  # --seeds 0,1,2: one run per seed, then mean ± std over them
    jobs, args = option(args, "--jobs", "1")
    seeds = [int(s) for s in seeds.split(",") if s]
    overrides = [a for a in args if a != "--captioner"]
    name = f"{' '.join(overrides)} ({'pair-caption describer' if oracle else 'captioner describer'})"
    per_seed = [evaluate(overrides, oracle, s, int(jobs)) for s in seeds]
    for seed, found in zip(seeds, per_seed):
        for label in (ALL, UNSEEN):
            rec = found[label]
            print(f"{name} seed {seed}: {label} ({found[label + ' n']}): R@1 {rec[0]:.1f}  R@5 {rec[1]:.1f}  "
                  f"R@10 {rec[2]:.1f}", flush=True)
    if len(seeds) > 1:
        for label in (ALL, UNSEEN):
            cols = [summary([f[label][k] for f in per_seed]) for k in range(3)]
            print(f"{name}: {label}, mean ± std over seeds {','.join(map(str, seeds))}: " + "  ".join(
                f"R@{k} {c.mean:.1f} ± {c.std:.1f}" for k, c in zip((1, 5, 10), cols)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
