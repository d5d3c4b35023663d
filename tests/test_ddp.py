"""A stage trained under `ddp_spawn` on 2 CPU processes matches one process within tolerance."""
from __future__ import annotations

from genretr.run import execute

EASY = ("dataset.splits={train: 40, val: 4, test: 12}", "backbone.fit.max_epochs=25", "decoding.num_beams=6",
        "backbone.model.dropout=0.0", "backbone.model.warmup_steps=1")


def test_ddp_spawn_matches_single_process(make_cfg, tmp_path):
    single = execute(make_cfg(*EASY, "backbone.fit.batch_size=64", run="one"), tmp_path / "one")
    # Same global batch: 2 processes x 32.
    ddp = execute(make_cfg(*EASY, "backbone.fit.batch_size=32", "+trainer.strategy=ddp_spawn", "trainer.devices=2",
                           run="two"), tmp_path / "two")
    assert ddp["t2i"]["queries"] == single["t2i"]["queries"] == 60
    for k in ("R@1", "R@5", "R@10"):
        assert abs(ddp["t2i"][k] - single["t2i"][k]) <= 0.15, (k, single, ddp)
    assert single["t2i"]["R@10"] > 0.5  # the task is learnt, so the comparison means something
