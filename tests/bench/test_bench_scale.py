"""`python -m genretr.bench scale`: its growth arithmetic by hand, and (slow) the whole quick run."""
from __future__ import annotations

import json

import pytest

from genretr.bench.scale import STAGES, growth


def result(images: int, seconds: float) -> dict:
    return {"images": images, "stages": {s: {"seconds": seconds, "peak_mb": 1.0} for s in STAGES}}


def test_growth_is_time_ratio_over_size_ratio():
    rows = growth([result(100, 2.0), result(400, 6.0), result(800, 24.0)])
    assert len(rows) == 2 * len(STAGES)
    first, second = rows[0], rows[len(STAGES)]
    assert (first["size_x"], first["time_x"], first["vs_linear"]) == (4.0, 3.0, 0.75)  # sub-linear
    assert (second["size_x"], second["time_x"], second["vs_linear"]) == (2.0, 4.0, 2.0)  # quadratic
    assert growth([result(100, 1.0)]) == []


@pytest.mark.slow
def test_quick_scale_run_prints_every_stage(tmp_path, capsys):
    from genretr.bench.__main__ import main

    assert main(["scale", "--quick", "--text-pool", "1000", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "scale.json").read_text())
    assert [r["images"] for r in report["results"]] == [200, 800]
    for r in report["results"]:
        assert set(r["stages"]) == set(STAGES) and all(s["seconds"] > 0 for s in r["stages"].values())
        assert r["test_pools"]["i2t"] == 5 * r["test_pools"]["t2i"]  # five captions an image
    pool = report["text_pool"]
    assert pool["test_pools"] == {"i2t": 1000} and set(pool["stages"]) == set(STAGES)  # 200 test images' captions
    out = capsys.readouterr().out
    assert "peak RSS at 800 images" in out and "i2t pool of 1000 captions" in out
