"""genretr.data.shapes (+ schema): determinism, split independence, counts, relevance, captions,
the eight task types and the universal pool."""
import re
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from genretr.data.schema import IMAGE, INSTRUCTIONS, PAIR, TASK_TARGET, TEXT, UNIVERSAL
from genretr.data.shapes import (BACKGROUNDS, COLOURS, DEFAULT_TASKS, POSITIONS, SHAPES, SIZES, TASKS, build_shapes,
                                 edit_scene, generate_split, retextured)
from genretr.errors import GenretrError

SPLITS = {"train": 24, "val": 8, "test": 16}
CAPS = 5


@pytest.fixture(scope="module")
def ds():
    return build_shapes(seed=3, splits=SPLITS, captions_per_image=CAPS)


def scenes_of(split, n, seed=3, max_objects=3, edit_fraction=0.35):
    cfg = SimpleNamespace(max_objects=max_objects, edit_fraction=edit_fraction)
    return generate_split(n, seed, split, cfg)


SYNONYM_TO_COLOUR = {w: c for c, (_, words) in COLOURS.items() for w in words}


def colour_words(text: str) -> Counter:
    """Canonical colours a caption mentions ("deep blue" is a background name, not an object colour)."""
    words = re.findall(r"[a-z\-]+", text.replace("deep blue", " "))
    return Counter(SYNONYM_TO_COLOUR[w] for w in words if w in SYNONYM_TO_COLOUR)


# ------------------------------------------------------------------ determinism


def test_same_arguments_give_identical_dataset(ds):
    again = build_shapes(seed=3, splits=SPLITS, captions_per_image=CAPS)
    assert np.array_equal(ds.images, again.images)
    assert ds.items == again.items
    assert list(ds.items) == list(again.items)
    for split in SPLITS:
        assert ds.splits[split].queries == again.splits[split].queries
        assert ds.splits[split].pools == again.splits[split].pools
    assert ds.captions == again.captions


def test_different_seed_gives_different_dataset(ds):
    other = build_shapes(seed=4, splits=SPLITS, captions_per_image=CAPS)
    assert ds.images.shape == other.images.shape
    assert not np.array_equal(ds.images, other.images)
    texts = [it.text for it in ds.items.values() if it.modality == TEXT]
    other_texts = [it.text for it in other.items.values() if it.modality == TEXT]
    assert texts != other_texts
    # per image: most images differ
    differ = sum(not np.array_equal(a, b) for a, b in zip(ds.images, other.images))
    assert differ > 0.9 * len(ds.images)


def _split_view(d, split):
    """Everything about one split, with image indices replaced by image content."""
    items = {}
    for iid, it in d.items.items():
        if iid.startswith(split + "/"):
            img = None if it.image is None else d.images[it.image].tobytes()
            items[iid] = (it.modality, img, it.text)
    queries = [(q.id, q.task, q.relevant, q.instruction, q.text,
                None if q.image is None else d.images[q.image].tobytes()) for q in d.splits[split].queries]
    return items, queries, d.splits[split].pools


def test_growing_train_does_not_change_test():
    small = build_shapes(seed=1, splits={"train": 10, "test": 12})
    big = build_shapes(seed=1, splits={"train": 30, "test": 12})
    alone = build_shapes(seed=1, splits={"test": 12})
    reordered = build_shapes(seed=1, splits={"test": 12, "train": 30})
    ref = _split_view(small, "test")
    for other in (big, alone, reordered):
        assert _split_view(other, "test") == ref
    # and the first train scenes stay the same when train grows
    s_items, _, _ = _split_view(small, "train")
    b_items, _, _ = _split_view(big, "train")
    assert all(b_items[k] == v for k, v in s_items.items())


# ------------------------------------------------------------------ shapes, counts, relevance


def test_images_are_uint8_nhwc(ds):
    n = sum(SPLITS.values())
    assert ds.images.dtype == np.uint8
    assert ds.images.shape == (n, 64, 64, 3)
    small = build_shapes(seed=0, splits={"test": 3}, image_size=32)
    assert small.images.shape == (3, 32, 32, 3) and small.images.dtype == np.uint8


@pytest.mark.parametrize("split", list(SPLITS))
def test_counts_per_split(ds, split):
    n = SPLITS[split]
    _, edits = scenes_of(split, n)
    s = ds.splits[split]
    assert ds.tasks(split) == sorted(DEFAULT_TASKS)
    assert len(ds.pool(split, "t2i")) == n
    assert len(ds.pool(split, "it2i")) == n
    assert len(ds.pool(split, "t2it")) == n
    assert len(ds.pool(split, "i2t")) == n * CAPS
    assert len(ds.queries(split, "t2i")) == n * CAPS
    assert len(ds.queries(split, "i2t")) == n
    assert len(ds.queries(split, "t2it")) == n * (CAPS - 1)
    assert len(ds.queries(split, "it2i")) == len(edits) > 0
    assert len(s.queries) == n * CAPS + n + n * (CAPS - 1) + len(edits)
    assert len({q.id for q in s.queries}) == len(s.queries)
    # per-split item counts: image + captions + pair per image
    assert sum(1 for k in ds.items if k.startswith(split + "/")) == n * (CAPS + 2)
    assert str(n) in ds.summary()


def test_item_ids_and_image_indices_are_consistent(ds):
    for iid, it in ds.items.items():
        assert it.id == iid
        if it.modality in (IMAGE, PAIR):
            assert 0 <= it.image < len(ds.images)
        if it.modality in (TEXT, PAIR):
            assert isinstance(it.text, str) and it.text
    # the image indices of image items are a permutation of all images
    idx = sorted(it.image for it in ds.items.values() if it.modality == IMAGE)
    assert idx == list(range(len(ds.images)))


@pytest.mark.parametrize("split", list(SPLITS))
def test_pools_hold_the_target_modality_and_relevant_items(ds, split):
    for task in ds.tasks(split):
        pool = ds.splits[split].pools[task]
        assert len(set(pool)) == len(pool)
        assert all(ds.items[i].modality == TASK_TARGET[task] for i in pool)
        assert all(i.startswith(split + "/") for i in pool)
        for q in ds.queries(split, task):
            assert q.relevant and set(q.relevant) <= set(pool)
            assert q.instruction == INSTRUCTIONS[task]


def test_t2i_queries(ds):
    for split in SPLITS:
        for q in ds.queries(split, "t2i"):
            (target,) = q.relevant
            img = ds.items[target]
            assert img.modality == IMAGE and q.image is None
            caps = [ds.items[c].text for c in ds.captions[img.image]]
            assert q.text in caps


def test_i2t_queries_have_five_relevant_captions(ds):
    for split in SPLITS:
        for q in ds.queries(split, "i2t"):
            assert q.text is None and q.image is not None
            assert len(q.relevant) == CAPS == len(set(q.relevant))
            assert list(q.relevant) == ds.captions[q.image]
            assert all(ds.items[r].modality == TEXT for r in q.relevant)


def test_t2it_queries_point_to_the_pair_of_their_image(ds):
    for split in SPLITS:
        for q in ds.queries(split, "t2it"):
            (pid,) = q.relevant
            pair = ds.items[pid]
            assert pair.modality == PAIR
            caps = [ds.items[c].text for c in ds.captions[pair.image]]
            assert pair.text == caps[0]
            assert q.text in caps[1:]  # the query is another caption than the pair's own


def _one_attribute_apart(a, b) -> bool:
    if a.background != b.background:
        return a.objects == b.objects
    if len(a.objects) != len(b.objects):
        return False
    diffs = [(x, y) for x, y in zip(a.objects, b.objects) if x != y]
    if len(diffs) != 1:
        return False
    x, y = diffs[0]
    return sum(getattr(x, f) != getattr(y, f) for f in ("shape", "colour", "size", "pos")) == 1


ATTRIBUTE_WORDS = set(COLOURS) | set(SHAPES) | set(BACKGROUNDS) | {"bigger", "smaller"}


@pytest.mark.parametrize("split", list(SPLITS))
def test_it2i_composed_queries(ds, split):
    scenes, edits = scenes_of(split, SPLITS[split])
    queries = ds.queries(split, "it2i")
    assert len(queries) == len(edits)
    offset = ds.items[f"{split}/img0"].image
    for q, (ref, tgt, text) in zip(queries, edits):
        (target,) = q.relevant
        assert target == f"{split}/img{tgt}"
        assert q.image == offset + ref
        assert ds.items[target].image != q.image  # reference and target differ
        assert not np.array_equal(ds.images[q.image], ds.images[ds.items[target].image])
        assert q.text == text
        words = set(re.findall(r"[a-z]+", text))
        positions = {p for ps in POSITIONS.values() for p in ps}
        assert words & ATTRIBUTE_WORDS or any(p in text for p in positions), text
        assert _one_attribute_apart(scenes[ref], scenes[tgt]), (scenes[ref], scenes[tgt])


def test_edit_scene_changes_exactly_one_attribute():
    import random
    rng = random.Random(0)
    scenes, _ = scenes_of("train", 30, seed=0)
    for scene in scenes:
        for _ in range(5):
            new, text = edit_scene(rng, scene)
            assert new != scene and _one_attribute_apart(scene, new), text
            if new.background == scene.background:
                (old,) = [x for x, y in zip(scene.objects, new.objects) if x != y]
                assert f"the {old.colour} {old.shape}" in text
            else:
                assert new.background in text


# ------------------------------------------------------------------ scenes and captions


@pytest.mark.parametrize("split", list(SPLITS))
def test_distinct_scenes_render_differently(ds, split):
    scenes, _ = scenes_of(split, SPLITS[split])
    keys = [replace(s, texture=0) for s in scenes]
    assert len(set(keys)) == len(keys)  # no duplicate scenes in a split
    idx = [ds.items[f"{split}/img{k}"].image for k in range(SPLITS[split])]
    renders = {ds.images[i].tobytes() for i in idx}
    assert len(renders) == len(idx)


def test_images_are_not_blank(ds):
    # every image has more than its background: at least two distinct colours
    for img in ds.images:
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1


@pytest.mark.parametrize("split", list(SPLITS))
def test_captions_vary_in_wording_but_agree_on_colours(ds, split):
    scenes, _ = scenes_of(split, SPLITS[split])
    for k, scene in enumerate(scenes):
        img = ds.items[f"{split}/img{k}"].image
        caps = [ds.items[c].text for c in ds.captions[img]]
        assert len(caps) == CAPS
        assert len(set(caps)) > 1, caps  # wording differs
        expected = Counter(o.colour for o in scene.objects)
        for c in caps:
            assert colour_words(c) == expected, (c, scene)
            bg_words = BACKGROUNDS[scene.background][1]
            assert any(w in c for w in bg_words), (c, scene.background)


def test_captions_mention_every_object_once_up_to_synonyms(ds):
    scenes, _ = scenes_of("test", SPLITS["test"])
    shape_syn = {s: words for s, words in SHAPES.items()}
    size_syn = {s: words for s, (_, words) in SIZES.items()}
    for k, scene in enumerate(scenes):
        img = ds.items[f"test/img{k}"].image
        for cid in ds.captions[img]:
            text = ds.items[cid].text
            for o in scene.objects:
                assert any(w in text for w in shape_syn[o.shape]), (text, o)
                assert any(re.search(rf"\b{w}\b", text) for w in size_syn[o.size]), (text, o)
                assert any(p in text for p in POSITIONS[o.pos]), (text, o)


# ------------------------------------------------------------------ training pairs, errors


def test_training_pairs(ds):
    idx, texts = ds.training_pairs()
    n = SPLITS["train"]
    assert idx.dtype == np.int64 and len(idx) == len(texts) == n * CAPS
    train_images = {ds.items[f"train/img{k}"].image for k in range(n)}
    assert set(idx.tolist()) == train_images
    for i, t in zip(idx.tolist(), texts):
        assert t in [ds.items[c].text for c in ds.captions[i]]
    assert Counter(idx.tolist()) == Counter({i: CAPS for i in train_images})


@pytest.mark.parametrize("max_objects", [0, -1, 10])
def test_bad_max_objects_raises(max_objects):
    with pytest.raises(GenretrError, match="max_objects"):
        build_shapes(seed=0, splits={"test": 4}, max_objects=max_objects)


def test_max_objects_upper_bound_either_works_or_is_rejected():
    try:
        build_shapes(seed=1, splits={"train": 200}, max_objects=9, edit_fraction=0.9, image_size=16)
    except GenretrError:
        pass  # rejecting the config up front is fine; an IndexError is not


# ------------------------------------------------------------------ the eight task types, universal pool

ALL = list(TASKS)


@pytest.fixture(scope="module")
def ds8():
    return build_shapes(seed=3, splits=SPLITS, captions_per_image=CAPS, tasks=ALL, universal=True)


def test_default_tasks_are_the_first_four(ds):
    assert DEFAULT_TASKS == ("t2i", "i2t", "t2it", "it2i")
    assert set(TASKS) <= set(TASK_TARGET) and set(TASKS) <= set(INSTRUCTIONS)
    for split in SPLITS:
        assert set(ds.splits[split].pools) == set(DEFAULT_TASKS)  # no universal pool unless asked
        assert {q.task for q in ds.splits[split].queries} == set(DEFAULT_TASKS)


def test_config_file_instantiates_with_the_default_tasks():
    from pathlib import Path
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "dataset" / "shapes.yaml")
    assert list(cfg.tasks) == list(DEFAULT_TASKS) and cfg.universal is False
    small = instantiate(cfg, splits={"test": 4}, image_size=16, _convert_="all")
    assert small.tasks("test") == sorted(DEFAULT_TASKS) and UNIVERSAL not in small.splits["test"].pools


def test_all_eight_tasks_are_deterministic(ds8):
    again = build_shapes(seed=3, splits=SPLITS, captions_per_image=CAPS, tasks=ALL, universal=True)
    assert np.array_equal(ds8.images, again.images) and ds8.items == again.items
    for split in SPLITS:
        assert ds8.splits[split].queries == again.splits[split].queries
        assert ds8.splits[split].pools == again.splits[split].pools


def _task_view(d, split, tasks):
    """The queries of `tasks` in one split with image indices replaced by image content."""
    return [(q.id, q.task, q.relevant, q.instruction, q.text,
             None if q.image is None else d.images[q.image].tobytes())
            for q in d.splits[split].queries if q.task in tasks]


@pytest.mark.parametrize("split", list(SPLITS))
def test_adding_tasks_changes_no_other_task(ds, ds8, split):
    assert _split_view(ds8, split)[0] == _split_view(ds, split)[0]  # same items, same images
    assert _task_view(ds8, split, DEFAULT_TASKS) == _task_view(ds, split, DEFAULT_TASKS)
    for task in DEFAULT_TASKS:
        assert ds8.splits[split].pools[task] == ds.splits[split].pools[task]
    alone = build_shapes(seed=3, splits=SPLITS, captions_per_image=CAPS, tasks=["i2i", "t2t"])
    assert alone.tasks(split) == ["i2i", "t2t"]
    assert _task_view(alone, split, {"i2i", "t2t"}) == _task_view(ds8, split, {"i2i", "t2t"})


@pytest.mark.parametrize("split", list(SPLITS))
def test_eight_task_counts_pools_and_relevance(ds8, split):
    n, (_, edits) = SPLITS[split], scenes_of(split, SPLITS[split])
    assert ds8.tasks(split) == sorted(ALL)
    counts = {"t2i": n * CAPS, "i2t": n, "t2it": n * (CAPS - 1), "t2t": n, "i2i": n}
    counts.update({t: len(edits) for t in ("it2i", "it2t", "it2it")})
    s = ds8.splits[split]
    assert len({q.id for q in s.queries}) == len(s.queries) == sum(counts.values())
    for task in ALL:
        assert len(ds8.queries(split, task)) == counts[task]
        pool = s.pools[task]
        assert len(set(pool)) == len(pool) == (n * CAPS if TASK_TARGET[task] == TEXT else n)
        assert all(ds8.items[i].modality == TASK_TARGET[task] for i in pool)
        for q in ds8.queries(split, task):
            assert q.relevant and set(q.relevant) <= set(pool)
            assert q.instruction == INSTRUCTIONS[task]


@pytest.mark.parametrize("split", list(SPLITS))
def test_t2t_queries_are_fresh_captions_of_the_scene(ds8, split):
    scenes, _ = scenes_of(split, SPLITS[split])
    queries = ds8.queries(split, "t2t")
    fresh = 0
    for k, (q, scene) in enumerate(zip(queries, scenes)):
        img = ds8.items[f"{split}/img{k}"].image
        assert q.image is None and list(q.relevant) == ds8.captions[img]
        assert colour_words(q.text) == Counter(o.colour for o in scene.objects), (q.text, scene)
        assert any(w in q.text for w in BACKGROUNDS[scene.background][1])
        fresh += q.text not in {ds8.items[c].text for c in q.relevant}
    assert fresh >= 0.9 * len(queries)  # a paraphrase, not a copy of a pooled caption


def test_retextured_changes_only_the_texture():
    import random
    rng = random.Random(0)
    for scene in scenes_of("test", 20, seed=0)[0]:
        other = retextured(rng, scene)
        assert other.texture != scene.texture and 0 <= other.texture < 4
        assert replace(other, texture=scene.texture) == scene


@pytest.mark.parametrize("split", list(SPLITS))
def test_i2i_queries_show_their_scene_re_rendered(ds8, split):
    n = SPLITS[split]
    item_images = {it.image for it in ds8.items.values() if it.image is not None}
    for k, q in enumerate(ds8.queries(split, "i2i")):
        (target,) = q.relevant
        assert target == f"{split}/img{k}" and q.text is None
        assert q.image not in item_images  # a query-only image, after the split's scene images
        assert q.image == ds8.items[f"{split}/img0"].image + n + k
        a, b = ds8.images[q.image].astype(int), ds8.images[ds8.items[target].image].astype(int)
        assert not np.array_equal(a, b)
        # same objects: the re-render is closer to its own scene than to most other scenes of the split
        others = [np.abs(ds8.images[ds8.items[f"{split}/img{j}"].image].astype(int) - a).mean() for j in range(n)]
        assert sorted(others).index(others[k]) < max(2, n // 4)


@pytest.mark.parametrize("split", list(SPLITS))
def test_composed_text_and_pair_queries_follow_the_edits(ds8, split):
    it2i = ds8.queries(split, "it2i")
    for task in ("it2t", "it2it"):
        queries = ds8.queries(split, task)
        assert len(queries) == len(it2i)
        for q, ref in zip(queries, it2i):
            assert (q.image, q.text) == (ref.image, ref.text)
            (target,) = ref.relevant
            if task == "it2t":
                assert list(q.relevant) == ds8.captions[ds8.items[target].image]
            else:
                assert q.relevant == (f"{target}/pair",)


@pytest.mark.parametrize("split", list(SPLITS))
def test_universal_pool_is_the_union_of_the_task_pools(ds8, split):
    s = ds8.splits[split]
    union = s.pools[UNIVERSAL]
    assert len(set(union)) == len(union)
    assert set(union) == {i for t in ALL for i in s.pools[t]}
    assert {ds8.items[i].modality for i in union} == {IMAGE, TEXT, PAIR}
    assert UNIVERSAL not in ds8.tasks(split) and ds8.queries(split, UNIVERSAL) == []
    assert all(set(q.relevant) <= set(union) for q in s.queries)
    assert f"{UNIVERSAL}:{len(union)}" in ds8.summary()


@pytest.mark.parametrize("tasks", [["t2i", "x2y"], ["t2i", "t2i"], [], ["t2a"]])
def test_bad_tasks_raise(tasks):
    with pytest.raises(GenretrError, match="dataset.tasks"):
        build_shapes(seed=0, splits={"test": 3}, tasks=tasks)
