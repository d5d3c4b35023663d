"""What every stage reads besides its inputs: the run's config, the artifact store, the upstream stage keys,
and the run-level facts derived from them (the tasks and pools, the numeric setting that keys trained
artifacts, SSID's rationale mode, what the decoder reads for a query).  Stages take a `RunContext`; only
`genretr.pipeline` sequences them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from genretr.artifacts import ArtifactStore, plain_dict
from genretr.data.embeddings import Embeddings
from genretr.data.schema import INSTRUCTIONS, RetrievalDataset, item_side, query_side
from genretr.errors import GenretrError
from genretr.identifiers.base import IdTable


def devices(trainer) -> object:
    """The trainer's `devices`, with "all of them" (-1, auto) resolved to how many there are."""
    value = trainer.get("devices", 1)
    if str(value) in ("-1", "auto"):
        return torch.cuda.device_count() if torch.cuda.is_available() else 1
    return value


def processes_per_node(trainer) -> int:
    """How many processes the trainer trains with on each machine (one per device; a device list counts its
    entries)."""
    n = devices(trainer)
    if isinstance(n, str):  # "2" or "0,1"
        n = [d for d in n.split(",") if d.strip()] if "," in n else int(n)
    return max(1, len(n) if not isinstance(n, int) else n)


def processes(trainer) -> int:
    """How many processes the trainer trains with (devices x nodes)."""
    return processes_per_node(trainer) * max(1, int(trainer.get("num_nodes", 1) or 1))


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    logger: object = None
    extra_callbacks: list = field(default_factory=list)
    store: ArtifactStore | None = None
    keys: dict[str, str] = field(default_factory=dict)  # stage -> the key of its artifact in this run
    _numerics: dict | None = field(default=None, repr=False)
    _decoder: object = field(default=None, repr=False)
    _add_ons: object = field(default=None, repr=False)
    _query_vocabs: dict = field(default_factory=dict, repr=False)
    _device: object = field(default=None, repr=False)
    _pinned_vocab: object = field(default=None, repr=False)
    _space: object = field(default=None, repr=False)  # (identify key, the scheme's decoder space or None)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        if self.store is None:
            self.store = ArtifactStore(self.cfg.paths.cache_dir, distributed=processes(self.cfg.trainer) > 1)

    @property
    def device(self) -> torch.device:
        """The device every stage puts its models and tensors on (`genretr.hardware.run_device` of the trainer)."""
        if self._device is None:
            from genretr.hardware import run_device

            self._device = run_device(self.cfg.trainer.get("accelerator", "cpu"), devices(self.cfg.trainer))
        return self._device

    # -- what keys a trained artifact -----------------------------------------------------------------
    def numerics(self) -> dict:
        """`genretr.stages.keys.numerics` with torch's thread count (CPU kernels sum in another order at another
        count): in the keys of the stages that train (encode, identify, train, captions)."""
        if self._numerics is None:  # once per run (the installed versions are read from package metadata)
            from genretr.stages.keys import numerics

            trainer = plain_dict(self.cfg.trainer)
            self._numerics = numerics(trainer, devices(trainer))
        return {"threads": torch.get_num_threads(), **self._numerics}

    # -- tasks, splits and pools ----------------------------------------------------------------------
    def tasks(self) -> list[str]:
        return list(self.cfg.eval.tasks)

    def splits(self) -> list[str]:
        """The splits this run touches: train (encoder and decoder training) and the evaluation split."""
        return list(dict.fromkeys(["train", self.cfg.eval.split]))

    def pool_name(self, task: str) -> str:
        """The pool `task` searches: its own (task-specific) or the split's union pool (GENIUS Table 2)."""
        return "universal" if str(self.cfg.eval.get("pool", "task")) == "universal" else task

    def pool(self, ds: RetrievalDataset, task: str) -> list[str]:
        split, name = self.cfg.eval.split, self.pool_name(task)
        if name not in ds.splits[split].pools:
            raise GenretrError(f"eval.pool={self.cfg.eval.get('pool')}: split '{split}' of {ds.name} has no "
                               f"'{name}' pool (shapes: dataset.universal=true)")
        return ds.splits[split].pools[name]

    # -- the method and the decoder -------------------------------------------------------------------
    def decoder(self):
        """The method's decoder adapter (`method.decoder`: the backbone's `backbone.adapter`,
        `genretr.stages.decoders`); None for the embedding baseline, which has none."""
        if self._decoder is None and self.cfg.method.get("decoder") is not None:
            from hydra.utils import instantiate

            self._decoder = instantiate(self.cfg.method.decoder)
        return self._decoder

    def reads_query_vectors(self) -> bool:
        """Whether anything of this run reads a query's vector (the two-tower search, a prefix decoder)."""
        decoder = self.decoder()
        return decoder is None or decoder.reads_query_vectors

    def classifier_head(self) -> bool:
        return str(self.cfg.identifier.get("head", "vocab")) == "classifier"

    def instructions(self) -> bool:
        """encoder.instructions: queries embedded with their task's instruction (genretr.stages.encode)."""
        return bool(self.cfg.encoder.instructions)

    # -- the papers' add-ons (genretr.stages.addons) ------------------------------------------------------
    def add_ons(self):
        """The run's add-ons (pseudo-queries, describe, rationale, sample limit, translated queries)."""
        if self._add_ons is None:
            from genretr.stages.addons import add_ons

            self._add_ons = add_ons(self.cfg)
        return self._add_ons

    def reason(self, table: IdTable) -> str:
        """train.reason resolved against the IdTable's rationales (SSID Sec. III-D): auto -> both with
        rationales, none without."""
        from genretr.rationale import resolve

        return resolve(str(self.cfg.train.get("reason", "auto")), table.reasons)

    def reason_vocab(self, ds: RetrievalDataset, table: IdTable):
        """With a rationale in training, its tokens after the identifiers' and the earlier add-ons' words."""
        return self.add_ons().reason_vocab(self, ds, table)

    # -- what the decoder reads -----------------------------------------------------------------------
    def pin_query_vocab(self, vocab) -> None:
        """Answer `query_vocab` with `vocab` from now on (the trained decoder's words, whatever texts a search
        adds to the dataset: genretr.search / genretr.add)."""
        self._pinned_vocab = vocab

    def query_vocab(self, ds: RetrievalDataset, table: IdTable | None = None):
        """The word vocabulary of token-input backbones, from the training queries (and item texts), then
        the add-ons' words (describe: one word per identifier token, since its prompt names an ID)."""
        from genretr.data.vocab import WordVocab

        if self._pinned_vocab is not None:
            return self._pinned_vocab
        key = (id(ds), id(table))  # built once per dataset and table (the train and evaluate stages ask again)
        if key not in self._query_vocabs:
            texts = [q.text for q in ds.splits["train"].queries if q.text]
            texts += [x.text for x in ds.items.values() if x.text]
            vocab = WordVocab.build(texts)
            extra = self.add_ons().query_words(self, ds, table) if table is not None else []
            self._query_vocabs[key] = (ds, table, WordVocab(vocab.tokens + extra) if extra else vocab)
        return self._query_vocabs[key][2]

    def queries_of(self, ds: RetrievalDataset, emb: Embeddings, queries, table=None,
                   vecs: torch.Tensor | None = None) -> torch.Tensor | dict | list:
        """What the search reads for `queries`: their vectors (`vecs`, else the encode stage's) for the
        embedding baseline, else what the decoder reads (its adapter's `query_inputs`)."""
        decoder = self.decoder()
        if decoder is None:
            return emb.queries([q.id for q in queries]) if vecs is None else vecs
        return decoder.query_inputs(self, ds, emb, queries, table, vecs)

    def identifier_scheme(self):
        """The configured identifier scheme (`identifier._target_`), its arguments resolved against the root
        (${captioner}, ${generator})."""
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        return instantiate(OmegaConf.create(OmegaConf.to_container(self.cfg.identifier, resolve=True)))

    def decoder_space(self, ds: RetrievalDataset, emb: Embeddings) -> DecoderSpace | None:
        """The space the decoder reads when the identifier scheme learned one (`scheme.decoder_space(identify
        artifact)`: GENIUS Eq. 9, the quantizer's fused z); None when it reads the encoder's vectors."""
        scheme, key = self.cfg.get("identifier"), self.keys.get("identify")
        if self._space is None or self._space[0] != key:  # loaded once per identify artifact
            from hydra.utils import get_class

            space = None
            if scheme is not None and hasattr(get_class(scheme._target_), "decoder_space"):
                space = self.identifier_scheme().decoder_space(self.store.artifact("identify", key))
            self._space = (key, space)
        return DecoderSpace(self._space[1], self, ds, emb) if self._space[1] is not None else None

    def trained_encoder(self, ds: RetrievalDataset):
        """This run's trained dual encoder (the encode stage's artifact), on the run's device, in eval mode."""
        from hydra.utils import instantiate

        path = self.store.artifact("encode", self.keys["encode"])
        if not (path / "encoder.pt").exists():
            raise GenretrError(f"dataset {ds.name} ships its vectors: there is no encoder to embed new queries "
                               "(train.pseudo_queries and genretr.search need one)")
        encoder = instantiate(self.cfg.encoder.model)
        if (path / "tokenizer.json").exists():
            from genretr.data.tokenizer import load

            encoder.text_tower.tokenizer = load(path / "tokenizer.json")
        encoder.load_state_dict(torch.load(path / "encoder.pt", map_location="cpu"))
        return encoder.to(self.device).eval()

    def embed_texts(self, ds: RetrievalDataset, texts: list[str]) -> torch.Tensor:
        """Vectors of new texts (captioner-written queries) from the trained encoder of this run, as
        caption → image queries (with encoder.instructions, after the t2i instruction)."""
        from genretr.data.schema import Query

        return self.embed_queries(ds, [Query(f"new/{k}", "t2i", (), INSTRUCTIONS["t2i"], text=t)
                                       for k, t in enumerate(texts)])

    def embed_queries(self, ds: RetrievalDataset, queries) -> torch.Tensor:
        """Vectors of new queries (their text, with encoder.instructions after their instruction; their image,
        an index into ``ds.images``; both fused) from the trained encoder of this run, as the encode stage
        embeds its queries."""
        return self.embed_sides(ds, [query_side(q, self.instructions()) for q in queries],
                                [f"query {q.id!r}" for q in queries])

    def embed_items(self, ds: RetrievalDataset, items) -> torch.Tensor:
        """Vectors of new items (image index into ``ds.images`` and/or text), as the encode stage embeds items."""
        return self.embed_sides(ds, [(x.image, x.text or None) for x in items], [f"item {x.id!r}" for x in items])

    def pair_parts(self, ds: RetrievalDataset, emb: Embeddings, sides: list[tuple]) -> np.ndarray:
        """(n, 2, d): the image tower's and the text tower's vectors of each (image index, text) side, unfused, for a
        fusion of one's own (GENIUS's h): those the encode stage kept (`Embeddings.parts`, every side it fused),
        the others (new images and texts: `genretr.search`, `genretr.add`) embedded now."""
        found = emb.parts.lookup(sides) if emb.parts is not None else [None] * len(sides)
        missing = [k for k, f in enumerate(found) if f is None]
        if missing:
            made = self.embed_sides(ds, [sides[k] for k in missing], [f"row {k}" for k in missing], parts=True)
            for k, v in zip(missing, made.numpy()):
                found[k] = v
        return np.stack(found) if found else np.zeros((0, 2, emb.item_vecs.shape[1]), dtype=np.float32)

    @torch.no_grad()
    def embed_sides(self, ds: RetrievalDataset, sides: list[tuple], names: list[str], parts: bool = False
                    ) -> torch.Tensor:
        """One vector per (image index or None, text or None): the image's, the text's, or both fused; the rows
        of each kind a batch at a time, the encoder loaded once.  `parts`: (n, 2, d) instead, the image's and
        the text's vectors unfused (zeros for a missing one), for a fusion of one's own (GENIUS's h)."""
        kinds = [(image is not None, text is not None) for image, text in sides]
        if (False, False) in kinds:
            raise GenretrError(f"{names[kinds.index((False, False))]} has neither an image nor a text to embed")
        encoder, bs, out = self.trained_encoder(ds), int(self.cfg.encoder.fit.batch_size), [None] * len(sides)
        for kind in dict.fromkeys(kinds):
            rows = [r for r, k in enumerate(kinds) if k == kind]
            for s in range(0, len(rows), bs):
                chunk = rows[s:s + bs]
                texts = [sides[r][1] for r in chunk]
                txt = encoder.embed_texts(encoder.prepare_texts(texts).to(self.device)) if kind[1] else None
                img = (encoder.embed_images(torch.from_numpy(np.asarray(ds.images[[sides[r][0] for r in chunk]]))
                                            .to(self.device)) if kind[0] else None)
                if parts:
                    some = img if img is not None else txt
                    vecs = torch.stack([some.new_zeros(some.shape) if v is None else v for v in (img, txt)], 1)
                else:
                    vecs = encoder.fuse(img, txt) if kind == (True, True) else (img if kind[0] else txt)
                vecs = vecs.float().cpu()
                for r, v in zip(chunk, vecs):
                    out[r] = v
        return torch.stack(out)


class DecoderSpace:
    """The encoder's vectors as the decoder reads them in a scheme's own space (`RunContext.decoder_space`), each
    row mapped with its (image, text) sides; rows with both read their two parts (`RunContext.pair_parts`)."""

    def __init__(self, space, ctx: RunContext, ds: RetrievalDataset, emb: Embeddings):
        self.space, self.ctx, self.ds, self.emb = space, ctx, ds, emb

    def _parts(self, sides: list[tuple]) -> np.ndarray:
        return self.ctx.pair_parts(self.ds, self.emb, sides)

    def items(self, item_ids: list[str], vecs: torch.Tensor) -> torch.Tensor:
        return self.space(vecs, [item_side(self.ds.items[i]) for i in item_ids], self._parts)

    def queries(self, queries, vecs: torch.Tensor) -> torch.Tensor:
        instructions = self.ctx.instructions()
        return self.space(vecs, [query_side(q, instructions) for q in queries], self._parts)

    def texts(self, vecs: torch.Tensor) -> torch.Tensor:
        """Rows embedded from a text alone (captioner-written pseudo-queries)."""
        return self.space(vecs, [(None, True)] * len(vecs), self._parts)
