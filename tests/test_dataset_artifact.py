"""The dataset artifact (genretr.stages.dataset): metadata pickled without pixels, images in one .npy that a
run memory-maps, so the pickle does not grow with the pixels (issue 16)."""
from __future__ import annotations

import numpy as np

from genretr.pipeline import Pipeline


def artifact_dir(tmp_path, ds):
    for path in (tmp_path / "cache" / "dataset").glob("*/artifact"):
        if np.load(path / "images.npy", mmap_mode="r").shape == ds.images.shape:
            return path
    raise AssertionError("no artifact holds these images")


def test_pixels_live_in_a_memory_mapped_file(make_cfg, tmp_path):
    cfg = make_cfg("stage=dataset", "dataset.image_size=32")
    ds = Pipeline(cfg, cfg.hydra.runtime.output_dir).dataset()
    again = Pipeline(cfg, cfg.hydra.runtime.output_dir).dataset()  # read back from the cache
    assert isinstance(again.images, np.memmap) and again.images.dtype == np.uint8
    assert np.array_equal(np.asarray(again.images), ds.images) and again.summary() == ds.summary()
    again.images[0, 0, 0] = 7  # copy-on-write: the run may write, the artifact never changes
    path = artifact_dir(tmp_path, again)
    assert np.array_equal(np.load(path / "images.npy"), ds.images)


def test_the_pickle_does_not_grow_with_the_pixels(make_cfg, tmp_path):
    """Four times the pixels (32 -> 64 px) leave dataset.pkl as it is; images.npy grows by exactly that."""
    sizes = {}
    for px in (32, 64):
        cfg = make_cfg("stage=dataset", f"dataset.image_size={px}", run=f"run{px}")
        ds = Pipeline(cfg, cfg.hydra.runtime.output_dir).dataset()
        path = artifact_dir(tmp_path, ds)
        sizes[px] = ((path / "dataset.pkl").stat().st_size, (path / "images.npy").stat().st_size, len(ds.images))
    (pkl32, npy32, n), (pkl64, npy64, _) = sizes[32], sizes[64]
    assert abs(pkl64 - pkl32) < 64  # the image shape in the empty placeholder's header, nothing more
    assert npy64 - npy32 == n * (64 * 64 - 32 * 32) * 3


def test_the_pickle_grows_with_the_items_not_with_their_pixels(make_cfg, tmp_path):
    """Issue 16: the artifact a run loads grows by each image's metadata (its captions, ids), the same at 32 and
    64 px, and its images come back memory-mapped at any count: memory independent of the pixels' size."""
    growth = {}
    for px in (32, 64):
        sizes = []
        for n in (40, 160):
            cfg = make_cfg("stage=dataset", f"dataset.image_size={px}", f"dataset.splits={{train:{n},val:5,test:10}}",
                           run=f"run{px}_{n}")
            Pipeline(cfg, cfg.hydra.runtime.output_dir).dataset()
            ds = Pipeline(cfg, cfg.hydra.runtime.output_dir).dataset()  # read back from the cache
            assert isinstance(ds.images, np.memmap)
            sizes.append(((artifact_dir(tmp_path, ds) / "dataset.pkl").stat().st_size, len(ds.images)))
        (small, n_small), (large, n_large) = sizes
        growth[px] = (large - small) / (n_large - n_small)  # pickle bytes per added image
    assert 0 < growth[32] < 32 * 32 * 3  # less than one image's pixels at 32 px
    assert abs(growth[64] - growth[32]) < 1  # four times the pixels: the same metadata per image
