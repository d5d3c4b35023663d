"""Why SSID trails the semantic identifier on shapes: t2i R@1 / R@10 bucketed by how right the captioner's
caption of the gold test image is (word F1, in the keywords generator's canonical words, against the image's
true captions).  SSID composes a test image's identifier from that caption, as the semantic identifier is that
caption (SSID Sec. III-B: the MLLM sees the image; here a captioner trained on the train split stands in).

    .venv/bin/python experiments/ssid/captioner_buckets.py experiment=ssid_table3 train.reason=both
    .venv/bin/python experiments/ssid/captioner_buckets.py experiment=grace_table1 identifier=semantic

Uses the trained models in the artifact cache (runs what is missing).  The captions come from the SSID
identify stage's answer cache (`identifier=ssid` with the same encoder: run `make reproduce-table1` first).
"""
import collections
import json
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from genretr.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("GENRETR_CACHE", str(ROOT / ".cache/genretr"))


def pipeline(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[*overrides, f"paths.cache_dir={CACHE}", "progress=false"])
    return Pipeline(cfg, Path("outputs/captioner_buckets")), cfg


def main(overrides):
    p, _ = pipeline(overrides)
    ds, queries, rankings = p.task_rankings("t2i")
    ssid, _ = pipeline([o for o in overrides if not o.startswith("identifier=")] + ["identifier=ssid"])
    sds = ssid.dataset()
    ssid.identify(sds, ssid.encode(sds))
    summary = json.loads((ssid.store.artifact("identify", ssid.keys["identify"]) / "ssid_summary.json").read_text())
    written = {r["item_id"]: r["caption"] for r in map(json.loads, open(summary["cache"]))}
    gen = instantiate(ssid.cfg.generator)
    groups = collections.defaultdict(list)
    for q in ds.splits["train"].queries:
        if q.task == "t2i":
            groups[next(iter(q.relevant))].append(q.text)
    gen.fit([t for g in groups.values() for t in g], list(groups.values()))
    true = collections.defaultdict(set)
    for q in queries:
        true[next(iter(q.relevant))].update(gen.words(q.text))

    def f1(item):
        w, t = set(gen.words(written[item])), true[item]
        hit = len(w & t)
        return 2 * hit / (len(w) + len(t)) if w else 0.0

    score = {it: f1(it) for it in true}
    print(f"{' '.join(overrides)}: captioner word F1 of the gold images, mean {sum(score.values()) / len(score):.2f}")
    for lo, hi in ((0.0, 0.6), (0.6, 0.8), (0.8, 1.01)):
        sel = [(next(iter(q.relevant)), list(r)) for q, r in zip(queries, rankings) if lo <= score[next(iter(q.relevant))] < hi]
        if sel:
            print(f"  F1 in [{lo:.1f}, {min(hi, 1):.1f}]: {len(sel):5d} queries  R@1 {sum(r[:1] == [g] for g, r in sel) / len(sel):.3f}"
                  f"  R@10 {sum(g in r[:10] for g, r in sel) / len(sel):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
