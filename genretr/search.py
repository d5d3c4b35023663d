"""Ask a finished run yourself (issue 19):

    python -m genretr.search RUN_DIR "a small red circle top left" [more queries ...] [--image PATH]
                             [--instruction TEXT] [--task t2i] [--k 10] [--json]

Loads the run's dataset, encoder, identifiers, decoder and tries from the artifact cache, read-only (nothing
is trained or written), then embeds each query with the run's trained encoder and searches it as the evaluate
stage does (the same searcher: the same ranking for the same query), printing the ranked items with their
identifiers and scores (`genretr.evaluation.hits`).  A run folder that is incomplete, or whose artifacts this
genretr would key differently (other code or config), is one line and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf, open_dict

from genretr.additions import Additions, with_images
from genretr.artifacts import MissingArtifact
from genretr.data.schema import INSTRUCTIONS, Query
from genretr.errors import GenretrError
from genretr.heap import malloc_at_ceiling


def hydra_node(recorded):
    """A Hydra config whose runtime and job values are the run's (`recorded`: its .hydra/hydra.yaml's `hydra`
    node), so that the run's ``${hydra:...}`` interpolations resolve as they did in the run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    with open_dict(cfg):
        for key in ("runtime.cwd", "runtime.output_dir", "job.name", "job.override_dirname", "job.num", "job.id"):
            value = OmegaConf.select(recorded, key, default=None)
            if value is not None:
                OmegaConf.update(cfg.hydra, key, value)
    return cfg


class LoadedRun:
    """A finished run's stages, reused from the cache: `search(queries)` ranks new queries."""

    def __init__(self, run_dir: str | Path):
        import torch
        from hydra.core.hydra_config import HydraConfig

        from genretr.pipeline import Pipeline
        from genretr.resolvers import register

        self.run_dir = Path(run_dir)
        files = {name: self.run_dir / name for name in (".hydra/config.yaml", ".hydra/hydra.yaml", "results.json",
                                                         "artifacts.json")}
        for name, path in files.items():
            if not path.is_file():
                raise GenretrError(f"{self.run_dir}: not a finished genretr run (no {name}): run "
                                   "`python -m genretr.run ...` to the evaluate stage first")
        register()
        cfg = OmegaConf.load(files[".hydra/config.yaml"])
        hydra = HydraConfig.instance()
        before = hydra.cfg
        hydra.set_config(hydra_node(OmegaConf.load(files[".hydra/hydra.yaml"]).hydra))
        try:  # ${hydra:...} as the run saw it, resolved now: the process's HydraConfig is left as it was
            OmegaConf.resolve(cfg)
        finally:
            hydra.cfg = before
        with open_dict(cfg):
            cfg.logger, cfg.progress = None, False
        results = json.loads(files["results.json"].read_text())
        self.recorded = json.loads(files["artifacts.json"].read_text())
        # trained artifacts are keyed by torch's thread count (genretr.stages.keys.numerics): the run's own while
        # the stages are loaded, this process's own after
        threads = torch.get_num_threads()
        torch.set_num_threads(int(results.get("provenance", {}).get("torch_threads") or threads))
        self.pipe = Pipeline(cfg, self.run_dir)
        self.pipe.store.read_only = True
        self.cfg, self.ctx = cfg, self.pipe.ctx
        try:
            self.ds = self.pipe.dataset()
            self.emb = self.pipe.encode(self.ds)
            self.model = self.table = self.tries = self.identified = None
            if self.ctx.decoder() is not None:
                self.identified = self.pipe.identify(self.ds, self.emb)
                self.model = self.pipe.train(self.ds, self.emb, self.identified)
                self.table = self.pipe.decoding_table(self.model, self.identified)
                self.tries = self.pipe.index(self.ds, self.table)
        except MissingArtifact as e:
            raise GenretrError(self._why_missing(e)) from None
        finally:
            torch.set_num_threads(threads)
        self.searchers = {}
        if self.model is not None:  # the words the decoder learned, whatever texts are added later
            self.ctx.pin_query_vocab(self.ctx.query_vocab(self.ds, self.table))
        self.added = Additions.load(self.run_dir)
        if len(self.added):
            self.lay_over(self.added)

    def identify_artifact(self) -> Path:
        """The identify stage's artifact dir (the scheme's trained quantizer, centroids, ...)."""
        return self.pipe.store.artifact("identify", self.ctx.keys["identify"])

    def pool_names(self) -> list[str]:
        return sorted({self.ctx.pool_name(t) for t in self.tasks()})

    def pools_holding(self, modality: str) -> list[str]:
        """The run's evaluation pools that hold items of `modality`."""
        split = self.cfg.eval.split
        return [n for n in self.pool_names()
                if any(self.ds.items[i].modality == modality for i in self.ds.splits[split].pools[n])]

    def same_as_added(self, item_id: str, text: str | None, image: np.ndarray | None) -> bool:
        """Whether `item_id` was added before (`genretr.add`) with this text and image."""
        for x in self.added.items:
            if x.id == item_id:
                same_image = (x.image is None and image is None) or (
                    x.image is not None and image is not None and np.array_equal(self.added.images[x.image], image))
                return x.text == text and same_image
        return False

    def _with_new_images(self, images: np.ndarray | None):
        """(the dataset with `images` appended, the row of the first of them): where new items' images are read."""
        base = len(self.ds.images) if self.ds.images is not None else 0
        return dataclasses.replace(self.ds, images=with_images(self.ds.images, images)), base

    def embed_new_items(self, items, images: np.ndarray | None) -> np.ndarray:
        """Vectors of new items (their `image`: a row of `images`) from the run's trained encoder."""
        ds, base = self._with_new_images(images)
        placed = [dataclasses.replace(x, image=None if x.image is None else base + x.image) for x in items]
        return self.ctx.embed_items(ds, placed).numpy()

    def new_item_parts(self, images: np.ndarray | None):
        """`IdentifierContext.pair_parts` for new items: (image: a row of `images`, text) sides -> (n, 2, d), the
        run's encoder's image and text vectors unfused."""
        ds, base = self._with_new_images(images)

        def parts(sides):
            placed = [(None if image is None else base + image, text) for image, text in sides]
            return self.ctx.embed_sides(ds, placed, [f"new item {k}" for k in range(len(sides))], parts=True).numpy()
        return parts

    def lay_over(self, added: Additions) -> None:
        """The run as if `added` had been in its corpus: items, images, pools, vectors, identifiers and tries
        (genretr.additions)."""
        import torch

        from genretr.data.embeddings import Embeddings
        from genretr.identifiers.base import IdTable

        base = len(self.ds.images) if self.ds.images is not None else 0
        items = dict(self.ds.items)
        for x in added.items:
            items[x.id] = dataclasses.replace(x, image=None if x.image is None else base + x.image)
        images = with_images(self.ds.images, added.images)
        split = self.cfg.eval.split
        pools = {name: list(ids) + list(added.pools.get(name, []))
                 for name, ids in self.ds.splits[split].pools.items()}
        splits = {**self.ds.splits, split: dataclasses.replace(self.ds.splits[split], pools=pools)}
        self.ds = dataclasses.replace(self.ds, images=images, items=items, splits=splits)
        self.emb = Embeddings(self.emb.item_ids + [x.id for x in added.items],
                              torch.cat([self.emb.item_vecs, torch.from_numpy(added.vectors)]), self.emb.query_ids,
                              self.emb.query_vecs, self.emb.parts)
        if self.model is not None:
            self.table = self.pipe.decoding_table(self.model, IdTable.joined([self.identified, added.table]))
            self.tries = self.pipe.tries(self.ds, self.table)
        self.searchers.clear()

    def _why_missing(self, e: MissingArtifact) -> str:
        recorded = self.recorded.get(e.stage)
        if recorded is not None and Path(recorded) != e.path:
            return (f"{self.run_dir} was made by other genretr code or config: its {e.stage} artifact is {recorded}, "
                    f"this genretr keys it {e.path}; rerun the run's command to search it")
        return f"{self.run_dir} is incomplete: {e} (cleaned?); rerun the run's command"

    def tasks(self) -> list[str]:
        return list(self.cfg.eval.tasks)

    def searcher(self, task: str):
        if task not in self.searchers:
            self.searchers[task] = self.pipe.searcher(self.ds, self.emb, task, self.model, self.table, self.tries)
        return self.searchers[task]

    def query_inputs(self, queries: list[Query], vecs=None):
        """What the searcher reads for `queries`: the encode stage's vectors for the run's own queries (`vecs`
        None), else the given vectors."""
        return self.ctx.queries_of(self.ds, self.emb, queries, self.table, vecs)

    def search(self, queries: list[Query], k: int | None = None, vecs=None) -> list:
        """Each query's top-k as `Hit`s (genretr.evaluation.hits), searched as the evaluate stage searches.
        New queries (not in the dataset) need `vecs` (`embed`)."""
        from genretr.decoding import queries as Q

        tasks = {q.task for q in queries}
        if len(tasks) != 1:
            raise GenretrError(f"one task per search, not {sorted(tasks)}")
        inputs = self.query_inputs(queries, vecs)
        rankings, _ = self.searcher(tasks.pop())(inputs)
        k = len(rankings[0]) if k is None else k
        return self.pipe.hits(self.ds, self.emb, queries, Q.take(inputs, 0, len(queries)),
                              [r[:k] for r in rankings], self.model, self.table)

    def image_size(self) -> int:
        """The side of the dataset's images, or a one-line error for a dataset without pixels."""
        if self.ds.images is None or len(self.ds.images) == 0:
            raise GenretrError(f"dataset {self.ds.name} of {self.run_dir} has no images: image queries and items "
                               "cannot be embedded")
        return int(self.ds.images.shape[1])

    def with_image(self, image: np.ndarray) -> int:
        """Add a query image (H, W, 3 uint8 at the dataset's size) to this session's images; its index."""
        self.ds = dataclasses.replace(self.ds, images=with_images(self.ds.images, image[None]))
        self.searchers.clear()
        return len(self.ds.images) - 1

    def embed(self, queries: list[Query]):
        return self.ctx.embed_queries(self.ds, queries)


def task_for(run: LoadedRun, text: bool, image: bool, asked: str | None) -> str:
    """`--task`, else the run's task whose queries have these sides (t2i for text, i2t for an image, ...)."""
    tasks = run.tasks()
    if asked is not None:
        if asked not in tasks:
            raise GenretrError(f"--task {asked}: the run evaluated {', '.join(tasks)} only")
        return asked
    want = {(True, False): ("t2i", "t2t", "t2it"), (False, True): ("i2t", "i2i", "i2it"),
            (True, True): ("it2i", "it2t", "it2it")}[(text, image)]
    for t in tasks:
        if t in want:
            return t
    raise GenretrError(f"the run evaluated {', '.join(tasks)}: none takes a query with "
                       f"{' and '.join(s for s, on in (('a text', text), ('an image', image)) if on)}; pass --task")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genretr.search", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="query texts (each one query)")
    p.add_argument("--image", help="a query image file (with texts: one image+text query per text)")
    p.add_argument("--instruction", help="the query's instruction (default: the task's)")
    p.add_argument("--task", help="the run's task to search (default: from the query's sides)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="one JSON object per query on stdout")
    args = p.parse_args(argv)
    malloc_at_ceiling()  # as genretr.run has it
    try:
        if not args.texts and not args.image:
            raise GenretrError("give a query text, --image PATH, or both")
        if args.k < 1:
            raise GenretrError(f"--k {args.k} is not an integer >= 1")
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # progress bars never mix into the results (--json)
            run = LoadedRun(args.run_dir)
        loaded = time.perf_counter() - start
        image = None
        if args.image:
            from genretr.data.images import DECODE_ERRORS, load_image

            try:
                image = run.with_image(load_image(args.image, run.image_size()))
            except DECODE_ERRORS as e:
                raise GenretrError(f"{args.image}: not a readable image ({' '.join(str(e).split())})") from None
        task = task_for(run, bool(args.texts), image is not None, args.task)
        instruction = args.instruction if args.instruction is not None else INSTRUCTIONS.get(task)
        queries = [Query(f"search/{i}", task, (), instruction, image=image, text=t)
                   for i, t in enumerate(args.texts or [None])]
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            found = run.search(queries, args.k, run.embed(queries) if run.ctx.reads_query_vectors() else None)
        per_query = (time.perf_counter() - start) / len(queries)
    except GenretrError as e:
        print(f"genretr: error: {e}", file=sys.stderr)
        return 2
    for q, hits in zip(queries, found):
        if args.json:
            print(json.dumps({"query": {"text": q.text, "image": args.image, "task": task},
                              "hits": [h.as_dict() for h in hits]}))
            continue
        print(f"{task} query: {q.text or ''}{' [image ' + args.image + ']' if args.image else ''}")
        for h in hits:
            if h.item_id is None:  # decoding.constrained=false: a sequence that is no pool identifier
                print(f"  {h.rank:>3}. {'':9}  (miss: no identifier of the pool)")
                continue
            item = run.ds.items[h.item_id]
            what = item.text or f"[image {item.image}]"
            ident = f"  id {h.identifier}" if h.identifier is not None else ""
            print(f"  {h.rank:>3}. {h.score:9.4f}  {h.item_id}{ident}  {what}")
    print(f"loaded in {loaded:.1f} s; {per_query * 1000:.0f} ms per query", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
