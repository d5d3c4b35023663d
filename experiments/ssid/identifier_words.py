"""What the test images' identifiers say about them: SSID's against semantic IDs, per run of a multirun.

For each run (results.json + artifacts.json), the identifiers of the test images (those the eval split's t2i
queries ask for) are read from the run's identify artifact and scored in the keywords generator's canonical words
(synonym classes learned from the train captions, as `describer_quality.py` does) against the union of each
image's true captions: recall (the share of the true words the identifier names), precision, word F1, distinct
words an identifier, and the share of those images whose identifier another of them has too (told apart only by
a "#j" counter under `collisions: disambiguate`).  Counters, separators and punctuation are not words.  For SSID
runs the captions its describer wrote for those images, as its answer cache holds them (what its keywords
generator read), are a row too.  Rows are the runs' overrides without seed and experiment; mean ± std over seeds.

    .venv/bin/python experiments/ssid/identifier_words.py multirun/ssid_pair   # the sweeps under one directory

Run it on the machine and cache that made the multirun (the artifacts are read where artifacts.json says).
"""
from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from canonical_words import fitted_generator, true_captions  # experiments/ssid/
from genretr.identifiers.base import IdTable
from genretr.identifiers.common import own_words
from genretr.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("GENRETR_CACHE", str(ROOT / ".cache/genretr"))


def scores(ids: dict[str, str], truth: dict[str, set[str]], words) -> tuple[float, ...]:
    """Mean recall, precision, word F1 and distinct words of `ids` (item → identifier text without counters)
    against `truth` (an item whose true captions hold no content word is left out), and the share of items
    whose text another item of `ids` has too."""
    recall, precision, f1, length = [], [], [], []
    same = collections.Counter(ids.values())
    for item, text in ids.items():
        if not truth[item]:
            continue
        w = set(words(text))
        hit = len(w & truth[item])
        recall.append(hit / len(truth[item]))
        precision.append(hit / len(w) if w else 0.0)
        f1.append(2 * hit / (len(w) + len(truth[item])))
        length.append(len(w))
    shared = sum(n for n in same.values() if n > 1) / len(ids)
    return float(np.mean(recall)), float(np.mean(precision)), float(np.mean(f1)), float(np.mean(length)), shared


def described(identify: Path, items: list[str]) -> dict[str, str]:
    """{item: the caption SSID's generator read} from the run's answer cache (named in ssid_summary.json)."""
    cache = Path(json.loads((identify / "ssid_summary.json").read_text())["cache"])
    captions = {}
    for line in cache.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        captions[record["item_id"]] = record.get("caption")
    missing = [i for i in items if not captions.get(i)]
    if missing:
        raise SystemExit(f"{cache}: no caption for {len(missing)} test images, e.g. {missing[0]}")
    return {i: captions[i] for i in items}


def main(sweep: Path) -> None:
    rows: dict[str, list[tuple[float, ...]]] = collections.defaultdict(list)
    fitted: dict = {}
    for results in sorted(sweep.rglob("results.json")):
        run = results.parent
        overrides = json.loads(results.read_text())["overrides"]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = compose("config", overrides=[*overrides, f"paths.cache_dir={CACHE}", "progress=false"])
        ds = Pipeline(cfg, Path("outputs/identifier_words")).dataset()
        if "gen" not in fitted:  # one canonical vocabulary for every row
            fitted["gen"] = fitted_generator(cfg, ds)
        gen = fitted["gen"]
        true = true_captions(ds, cfg.eval.split)
        truth = {i: {w for t in true[i] for w in gen.words(t)} for i in true}
        identify = Path(json.loads((run / "artifacts.json").read_text())["identify"])
        table = IdTable.load(identify)
        ids = {i: " ".join(own_words(table.text(i).split())) for i in true}
        row = " ".join(o for o in overrides if not o.startswith(("seed=", "experiment=")))
        rows[row].append(scores(ids, truth, gen.words))
        if (identify / "ssid_summary.json").exists():  # SSID: what its describer wrote, as its generator read it
            rows[f"{row}: the describer's captions"].append(scores(described(identify, sorted(true)), truth, gen.words))
    for row, runs in sorted(rows.items()):
        a = np.array(runs)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(a.mean(0), a.std(0, ddof=1) if len(a) > 1 else [0] * 5)]
        print(f"{row} (n={len(a)}): recall {cells[0]}, precision {cells[1]}, word F1 {cells[2]}, "
              f"distinct words {cells[3]}, shared by test images {cells[4]}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
