"""`dataset=shapes`: the embedded, procedurally rendered dataset (the default).

Each image shows one to three objects (shape × colour × size × 3×3 grid position) on a
named, textured background.  Each image has five captions drawn from a grammar with
synonyms and varied word and object order, so an image's captions differ in wording,
not meaning.  A fraction of scenes are one-attribute edits of an earlier scene of the same
split: those near-duplicates keep R@1 honest and give the composed (it2i) queries.

Items are images, captions and image–caption pairs (the pair holds caption 0).  The
config key `tasks` picks which of M-BEIR's eight task types (GENIUS Sec. 3) get queries
and pools; the default is the first four:

- t2i   a caption → its image;                 i2t   an image → its five captions
- t2it  caption 1..4 → the image's pair;       it2i  (reference image, edit text) → edited image
- t2t   a fresh caption of the scene (drawn from the grammar, not one of the pooled five when
        the grammar allows) → the scene's five captions (paraphrase retrieval)
- i2i   the scene re-rendered with another background texture (texture is never captioned)
        and fresh jitter → the image (same-scene retrieval, like NIGHTS); the query images are
        appended after the split's scene images and belong to no item
- it2t  (reference image, edit text) → the five captions of the edited scene
- it2it (reference image, edit text) → the pair of the edited scene

`universal: true` adds `pools["universal"]`: the union of the split's task pools (GENIUS
Table 2), in which universal retrieval searches every task's queries.

Splits are generated independently from (seed, split name), so growing one split does
not change another; each added task draws from its own random stream, so adding a task
changes no other task's queries.  Everything is deterministic from the config.
"""
from __future__ import annotations

import random
import zlib
from types import SimpleNamespace
from dataclasses import dataclass, replace

import numpy as np

from genretr.errors import GenretrError
from genretr.data.schema import (INSTRUCTIONS, IMAGE, PAIR, TASK_TARGET, TEXT, UNIVERSAL, Item, Query,
                                 RetrievalDataset, Split)

SHAPES = {
    "circle": ["circle", "disc", "round dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "three-sided shape", "wedge"],
    "diamond": ["diamond", "rhombus", "lozenge"],
    "cross": ["cross", "plus sign", "plus"],
    "ring": ["ring", "hoop", "donut"],
}
COLOURS = {
    "red": ((220, 30, 30), ["red", "crimson", "scarlet"]),
    "green": ((40, 190, 40), ["green", "emerald", "grass-green"]),
    "blue": ((40, 70, 230), ["blue", "cobalt", "azure"]),
    "yellow": ((235, 220, 40), ["yellow", "golden", "lemon"]),
    "purple": ((150, 50, 200), ["purple", "violet", "lilac"]),
    "orange": ((245, 140, 20), ["orange", "amber", "tangerine"]),
    "cyan": ((40, 220, 220), ["cyan", "turquoise", "teal"]),
    "white": ((245, 245, 245), ["white", "ivory", "snow-white"]),
}
SIZES = {"small": (6.0, ["small", "little", "tiny"]), "large": (10.5, ["large", "big", "huge"])}
POSITIONS = {  # (row, col) on a 3×3 grid → phrases
    (0, 0): ["in the top left", "at the upper left", "in the top-left corner"],
    (0, 1): ["at the top", "in the top middle", "along the upper edge"],
    (0, 2): ["in the top right", "at the upper right", "in the top-right corner"],
    (1, 0): ["on the left", "at the left side", "in the middle left"],
    (1, 1): ["in the center", "in the middle", "at the centre"],
    (1, 2): ["on the right", "at the right side", "in the middle right"],
    (2, 0): ["in the bottom left", "at the lower left", "in the bottom-left corner"],
    (2, 1): ["at the bottom", "in the bottom middle", "along the lower edge"],
    (2, 2): ["in the bottom right", "at the lower right", "in the bottom-right corner"],
}
DEFAULT_TASKS = ("t2i", "i2t", "t2it", "it2i")
TASKS = DEFAULT_TASKS + ("t2t", "i2i", "it2t", "it2it")

BACKGROUNDS = {
    "black": ((15, 15, 20), ["black", "dark"]),
    "gray": ((120, 120, 120), ["gray", "grey"]),
    "beige": ((215, 200, 165), ["beige", "sandy"]),
    "navy": ((20, 30, 90), ["navy", "deep blue"]),
}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    pos: tuple[int, int]


@dataclass(frozen=True)
class Scene:
    background: str
    texture: int  # 0 flat, 1 noise, 2 horizontal gradient, 3 vertical gradient (not captioned)
    objects: tuple[Obj, ...]


def random_scene(rng: random.Random, max_objects: int) -> Scene:
    n = rng.randint(1, max_objects)
    cells = rng.sample(sorted(POSITIONS), n)
    objs = tuple(
        Obj(rng.choice(list(SHAPES)), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), c) for c in cells
    )
    return Scene(rng.choice(list(BACKGROUNDS)), rng.randrange(4), objs)


def edit_scene(rng: random.Random, scene: Scene) -> tuple[Scene, str]:
    """Change exactly one attribute of one object (or the background); return the edit text."""
    i = rng.randrange(len(scene.objects))
    o = scene.objects[i]
    free = [p for p in POSITIONS if p not in {x.pos for x in scene.objects}]
    what = rng.choice(["colour", "shape", "size", "background"] + (["pos"] if free else []))
    name = f"the {o.colour} {o.shape}"
    if any(x is not o and (x.colour, x.shape) == (o.colour, o.shape) for x in scene.objects):
        name += f" {POSITIONS[o.pos][0]}"  # two alike objects: say which one
    if what == "colour":
        new = replace(o, colour=rng.choice([c for c in COLOURS if c != o.colour]))
        text = f"make {name} {new.colour}"
    elif what == "shape":
        new = replace(o, shape=rng.choice([s for s in SHAPES if s != o.shape]))
        text = f"turn {name} into a {new.shape}"
    elif what == "size":
        new = replace(o, size="large" if o.size == "small" else "small")
        text = f"make {name} {'bigger' if new.size == 'large' else 'smaller'}"
    elif what == "pos":
        new = replace(o, pos=rng.choice(free))
        text = f"move {name} {POSITIONS[new.pos][0]}"
    else:
        bg = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return replace(scene, background=bg), f"put everything on a {bg} background"
    objs = list(scene.objects)
    objs[i] = new
    return replace(scene, objects=tuple(objs)), text


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(rng: random.Random, scene: Scene) -> str:
    """One caption: every object and the background, in random wording and order."""
    phrases = []
    for o in rng.sample(list(scene.objects), len(scene.objects)):
        size, colour, shape = (rng.choice(SIZES[o.size][1]), rng.choice(COLOURS[o.colour][1]),
                               rng.choice(SHAPES[o.shape]))
        pos = rng.choice(POSITIONS[o.pos])
        form = rng.randrange(3)
        if form == 0:
            phrases.append(f"{_a(size)} {size} {colour} {shape} {pos}")
        elif form == 1:
            phrases.append(f"{pos} {_a(colour)} {colour} {shape} that is {size}")
        else:
            phrases.append(f"{_a(shape)} {shape}, {size} and {colour}, {pos}")
    objs = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + rng.choice([" and ", ", plus "]) + phrases[-1]
    bg = rng.choice(BACKGROUNDS[scene.background][1])
    template = rng.randrange(4)
    if template == 0:
        return f"{objs} on a {bg} background"
    if template == 1:
        return f"on a {bg} background there is {objs}"
    if template == 2:
        return f"a picture of {objs}, against a {bg} backdrop"
    return f"{len(scene.objects)} shape{'s' if len(scene.objects) > 1 else ''} on {bg}: {objs}"


def render(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.array(BACKGROUNDS[scene.background][0], np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if scene.texture == 1:
        img += rng.normal(0, 12, (size, size, 1)).astype(np.float32)
    elif scene.texture == 2:
        img += ((xx / size - 0.5) * 50)[..., None]
    elif scene.texture == 3:
        img += ((yy / size - 0.5) * 50)[..., None]
    scale = size / 64.0
    for o in scene.objects:
        cy = (o.pos[0] * 2 + 1) * size / 6 + rng.uniform(-2, 2) * scale
        cx = (o.pos[1] * 2 + 1) * size / 6 + rng.uniform(-2, 2) * scale
        r = SIZES[o.size][0] * scale
        dy, dx = yy - cy, xx - cx
        if o.shape == "circle":
            m = dx**2 + dy**2 <= r**2
        elif o.shape == "ring":
            d2 = dx**2 + dy**2
            m = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
        elif o.shape == "square":
            m = np.maximum(abs(dx), abs(dy)) <= 0.85 * r
        elif o.shape == "diamond":
            m = abs(dx) + abs(dy) <= r
        elif o.shape == "triangle":
            m = (dy >= -r) & (dy <= 0.8 * r) & (abs(dx) <= (dy + r) * 0.6)
        else:  # cross
            t = 0.32 * r
            m = ((abs(dx) <= t) & (abs(dy) <= r)) | ((abs(dy) <= t) & (abs(dx) <= r))
        colour = np.array(COLOURS[o.colour][0], np.float32) + rng.uniform(-18, 18, 3).astype(np.float32)
        img[m] = colour
    return np.clip(img, 0, 255).astype(np.uint8)


def generate_split(n: int, seed: int, split: str, cfg, seen: set | None = None):
    """Scenes of one split and its (reference, target, edit text) triples.

    `seen` holds the (texture-free) scenes of splits generated earlier; none is repeated.
    """
    rng = random.Random(f"{seed}/{split}")
    scenes: list[Scene] = []
    edits: list[tuple[int, int, str]] = []
    seen = set() if seen is None else seen
    while len(scenes) < n:
        if scenes and rng.random() < cfg.edit_fraction:
            ref = rng.randrange(len(scenes))
            scene, text = edit_scene(rng, scenes[ref])
        else:
            ref, scene, text = None, random_scene(rng, cfg.max_objects), None
        key = replace(scene, texture=0)
        if key in seen:  # identical scenes would make relevance ambiguous
            continue
        seen.add(key)
        if ref is not None:
            edits.append((ref, len(scenes), text))
        scenes.append(scene)
    return scenes, edits


def paraphrase(rng: random.Random, scene: Scene, taken: set[str], tries: int = 20) -> str:
    """A fresh caption of `scene` (a t2t query), unlike every caption in `taken` when the grammar allows."""
    text = caption(rng, scene)
    for _ in range(tries):
        if text not in taken:
            break
        text = caption(rng, scene)
    return text


def retextured(rng: random.Random, scene: Scene) -> Scene:
    """The same scene on another background texture (uncaptioned): what an i2i query shows."""
    return replace(scene, texture=(scene.texture + rng.randrange(1, 4)) % 4)


def check_tasks(tasks) -> list[str]:
    tasks = list(DEFAULT_TASKS if tasks is None else tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise GenretrError(f"dataset.tasks must list distinct tasks among {', '.join(TASKS)}; got {tasks}")
    return tasks


def build_shapes(seed: int = 0, splits: dict | None = None, image_size: int = 64, captions_per_image: int = 5,
                 max_objects: int = 3, edit_fraction: float = 0.35, tasks: list[str] | None = None,
                 universal: bool = False) -> RetrievalDataset:
    """Render every split; items are images, captions and image–caption pairs; queries for `tasks`."""
    splits = dict(splits or {"train": 2000, "val": 200, "test": 500})
    cfg = SimpleNamespace(seed=seed, splits=splits, image_size=image_size, captions_per_image=captions_per_image,
                          max_objects=max_objects, edit_fraction=edit_fraction)
    if not 1 <= max_objects <= len(POSITIONS):
        raise GenretrError(f"dataset.max_objects must be in 1..{len(POSITIONS)}, got {max_objects}")
    tasks = check_tasks(tasks)
    want = set(tasks)
    # Held-out splits first, so that they never change when train grows and share no scene with it.
    order = sorted(cfg.splits, key=lambda s: (["test", "val"].index(s) if s in ("test", "val") else 2, s))
    seen: set = set()
    generated = {s: generate_split(int(cfg.splits[s]), int(cfg.seed), s, cfg, seen) for s in order}
    per_scene = 2 if "i2i" in want else 1  # the scene, and its retextured i2i query image
    size = int(cfg.image_size)  # images filled in order: one copy of the pixels, never a list of them and a stack
    images = np.empty((sum(len(generated[s][0]) for s in cfg.splits) * per_scene, size, size, 3), np.uint8)
    n_images, items, splits, captions = 0, {}, {}, {}
    for split in cfg.splits:
        scenes, edits = generated[split]
        rng = random.Random(f"{cfg.seed}/{split}/captions")
        t2t_rng = random.Random(f"{cfg.seed}/{split}/t2t")
        nprng = np.random.default_rng([int(cfg.seed), zlib.crc32(split.encode())])
        s = Split(pools={t: [] for t in tasks})
        offset = n_images
        for k, scene in enumerate(scenes):
            img_index = offset + k
            images[img_index] = render(scene, int(cfg.image_size), nprng)
            n_images += 1
            iid = f"{split}/img{k}"
            items[iid] = Item(iid, IMAGE, image=img_index)
            caps = [caption(rng, scene) for _ in range(int(cfg.captions_per_image))]
            cap_ids = []
            for j, text in enumerate(caps):
                tid = f"{split}/img{k}/cap{j}"
                items[tid] = Item(tid, TEXT, text=text)
                cap_ids.append(tid)
                if "t2i" in want:
                    s.queries.append(Query(f"t2i/{tid}", "t2i", (iid,), INSTRUCTIONS["t2i"], text=text))
            captions[img_index] = cap_ids
            pid = f"{split}/img{k}/pair"
            items[pid] = Item(pid, PAIR, image=img_index, text=caps[0])
            if "t2it" in want:
                for j, text in enumerate(caps[1:], start=1):
                    s.queries.append(Query(f"t2it/{iid}/cap{j}", "t2it", (pid,), INSTRUCTIONS["t2it"], text=text))
            if "i2t" in want:
                s.queries.append(Query(f"i2t/{iid}", "i2t", tuple(cap_ids), INSTRUCTIONS["i2t"], image=img_index))
            if "t2t" in want:
                s.queries.append(Query(f"t2t/{iid}/paraphrase", "t2t", tuple(cap_ids), INSTRUCTIONS["t2t"],
                                       text=paraphrase(t2t_rng, scene, set(caps))))
            for task in tasks:  # each task's pool holds its target modality: images, captions or pairs
                s.pools[task].extend({IMAGE: [iid], TEXT: cap_ids, PAIR: [pid]}[TASK_TARGET[task]])
        if "i2i" in want:  # query images after the scene images, from their own streams
            i2i_rng = random.Random(f"{cfg.seed}/{split}/i2i")
            i2i_nprng = np.random.default_rng([int(cfg.seed), zlib.crc32(split.encode()), 1])
            for k, scene in enumerate(scenes):
                images[n_images] = render(retextured(i2i_rng, scene), int(cfg.image_size), i2i_nprng)
                s.queries.append(Query(f"i2i/{split}/img{k}/retextured", "i2i", (f"{split}/img{k}",),
                                       INSTRUCTIONS["i2i"], image=n_images))
                n_images += 1
        for ref, tgt, text in edits:
            tag, target = f"{split}/img{ref}->img{tgt}", f"{split}/img{tgt}"
            for task, relevant in (("it2i", (target,)), ("it2t", tuple(captions[offset + tgt])),
                                   ("it2it", (f"{target}/pair",))):
                if task in want:
                    s.queries.append(Query(f"{task}/{tag}", task, relevant, INSTRUCTIONS[task], image=offset + ref,
                                           text=text))
        if universal:
            s.pools[UNIVERSAL] = list(dict.fromkeys(i for t in tasks for i in s.pools[t]))
        splits[split] = s
    assert n_images == len(images)
    return RetrievalDataset("shapes", images, items, splits, captions)
