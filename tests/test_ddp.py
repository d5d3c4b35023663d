"""A stage trained under `ddp_spawn` on 2 CPU processes matches one process within tolerance.

Evaluated on the training split, where the decoder can be expected to have learnt the
queries, so that the comparison is between two trained models, not two random ones.
"""
from __future__ import annotations

from genretr.run import execute

EASY = ("dataset.splits={train: 40, val: 4, test: 8}", "eval.split=train", "backbone.fit.max_epochs=30",
        "encoder.fit.max_epochs=20", "encoder.fit.batch_size=16",
        "decoding.num_beams=5", "backbone.model.dropout=0.0", "backbone.model.warmup_steps=1",
        "backbone.model.lr=3e-3",
        # fp32: what is compared is data parallelism; bf16 rounding, which the two runs accumulate in different
        # orders, moved R@1 of these 40-item models by 0.2 (0.87 vs 0.67)
        "precision=fp32")


def test_ddp_spawn_matches_single_process(make_cfg, tmp_path):
    single = execute(make_cfg(*EASY, "backbone.fit.batch_size=64", run="one"), tmp_path / "one")
    # Same global batch: 2 processes x 32.
    ddp = execute(make_cfg(*EASY, "backbone.fit.batch_size=32", "+trainer.strategy=ddp_spawn", "trainer.devices=2",
                           run="two"), tmp_path / "two")
    assert ddp["t2i"]["queries"] == single["t2i"]["queries"] == 200
    assert single["t2i"]["R@1"] > 0.3  # learnt (random: 1/40), so the comparison means something
    for k in ("R@1", "R@5", "MRR@10"):
        assert abs(ddp["t2i"][k] - single["t2i"][k]) <= 0.15, (k, single, ddp)
