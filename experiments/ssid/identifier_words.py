"""What the test images' identifiers say about them: SSID's against semantic IDs, per run of a multirun.

For each run (results.json + artifacts.json), the identifiers of the evaluated t2i pool are read from the run's
identify artifact and scored in the keywords generator's canonical words (synonym classes learned from the train
captions, as `describer_quality.py` does) against the union of each image's true captions: recall (the share of
the true words the identifier names), precision, word F1, words an identifier, and the share of pool images whose
identifier another pool image has too (told apart only by a "#j" counter under `collisions: disambiguate`).
Counters, separators and punctuation are not words.  For SSID runs the captions its describer wrote for those
images (what its keywords generator read) are a row too.  Rows are the runs' overrides without the seed; mean ±
std over seeds.

    .venv/bin/python experiments/ssid/identifier_words.py multirun/ssid_table1

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
from hydra.utils import instantiate

from genretr.identifiers.base import IdTable
from genretr.pipeline import Pipeline
from genretr.stages.captions import captions_for

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("GENRETR_CACHE", str(ROOT / ".cache/genretr"))


def scores(ids: dict[str, str], truth: dict[str, set[str]], words) -> tuple[float, ...]:
    """Mean recall, precision, word F1 and word count of `ids` (item → identifier text without counters)
    against `truth`, and the share of items whose text another item of `ids` has too."""
    recall, precision, f1, length = [], [], [], []
    same = collections.Counter(ids.values())
    for item, text in ids.items():
        w = set(words(text))
        hit = len(w & truth[item])
        recall.append(hit / len(truth[item]))
        precision.append(hit / len(w) if w else 0.0)
        f1.append(2 * hit / (len(w) + len(truth[item])))
        length.append(len(words(text)))
    shared = sum(n for n in same.values() if n > 1) / len(ids)
    return float(np.mean(recall)), float(np.mean(precision)), float(np.mean(f1)), float(np.mean(length)), shared


def main(sweep: Path) -> None:
    rows: dict[str, list[tuple[float, ...]]] = collections.defaultdict(list)
    fitted: dict = {}
    for results in sorted(sweep.rglob("results.json")):
        run = results.parent
        overrides = json.loads(results.read_text())["overrides"]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = compose("config", overrides=[*overrides, f"paths.cache_dir={CACHE}", "progress=false"])
        pipeline = Pipeline(cfg, Path("outputs/identifier_words"))
        ds = pipeline.dataset()
        if "gen" not in fitted:  # one canonical vocabulary for every row
            train = collections.defaultdict(list)
            for q in ds.splits["train"].queries:
                if q.task == "t2i":
                    train[next(iter(q.relevant))].append(q.text)
            gen = instantiate(cfg.generator)
            gen.fit([t for g in train.values() for t in g], list(train.values()))
            fitted["gen"] = gen
        gen = fitted["gen"]
        true = collections.defaultdict(list)
        for q in ds.queries(cfg.eval.split, "t2i"):
            true[next(iter(q.relevant))].append(q.text)
        truth = {i: {w for t in true[i] for w in gen.words(t)} for i in true}
        table = IdTable.load(Path(json.loads((run / "artifacts.json").read_text())["identify"]))
        ids = {i: " ".join(w for w in table.text(i).split() if not w.startswith("#")) for i in true}
        row = " ".join(o for o in overrides if not o.startswith(("seed=", "experiment=")))
        rows[row].append(scores(ids, truth, gen.words))
        if cfg.identifier.get("generator") is not None and gen.needs_text:  # SSID: what its describer wrote
            written = captions_for(pipeline.ctx, ds, pipeline.encode(ds), sorted(true), every_item=True)
            rows[f"{row}: the describer's captions"].append(scores(written, truth, gen.words))
    for row, runs in sorted(rows.items()):
        a = np.array(runs)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(a.mean(0), a.std(0, ddof=1) if len(a) > 1 else [0] * 5)]
        print(f"{row} (n={len(a)}): recall {cells[0]}, precision {cells[1]}, word F1 {cells[2]}, words {cells[3]}, "
              f"shared by pool items {cells[4]}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
