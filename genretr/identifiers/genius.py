"""GENIUS's modality-decoupled semantic identifiers (Sec. 4.2; Tables 4, 5, 11).

The `ModalityDecoupledQuantizer` is trained on the train split's (query vector, target item)
pairs of the run's tasks — `ctx.train_query_vecs` with `ctx.train_query_items` mapped to rows of
`embeddings`, `ctx.train_query_ids` grouping a query's pairs — then every item is coded: t_1 its
modality code, t_2..t_M semantic codes, coarse to fine.

Tokens: `m0`/`m1`/`m2` for the modality level (Fig. 3: image, text, image-text pair; under the
paper's ``modality_code=learned`` they are the learned level's 3 clusters, numbered as learned) and
`q1_17`, `q2_5`, ... for the semantic levels; ``modality_code=none`` has no `m` token.  The
vocabulary holds every token of the configured codebook sizes.  Items may share a code sequence
(GENIUS keeps collisions; the IdTable maps a sequence to all its items) — their count is logged; `unique_suffix=True` appends CART's
prefix-database counter token `u{n}` to make every identifier unique.

Side artifacts in `ctx.workdir`: `genius_quantizer.pt` (hyper-parameters + state dict) and
`genius_stats.json` (collisions, codebook usage, modality accuracy and agreement, quantization error).

The decoder reads the quantizer's fused space (Eq. 9: z_q = h(image, text) / ||h||, the authors'
`quantizer.inference(...)['encode']`), so query augmentation (Eq. 11) mixes a query with its target there
too: `decoder_space` gives that map (`FusedSpace`), read by `genretr.stages.context.RunContext.decoder_space`.
``decoder_input=encoder`` (genretr's option, the behaviour before) leaves the decoder on the encoder's vectors.
Re-ranking (GENIUS_R, Sec. 4.4) stays in the encoder's space, as the authors re-rank with CLIP-SF's vectors.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from genretr.data.schema import PAIR, item_side
from genretr.errors import GenretrError
from genretr.identifiers.base import SPECIAL_TOKENS, IdTable
from genretr.identifiers.common import colliding_items, continued_counters, in_vocabulary, unique_counters
from genretr.quantizers.modality_decoupled import MODALITY_CODES, ModalityDecoupledQuantizer, fit_modality_decoupled

log = logging.getLogger(__name__)
DECODER_INPUTS = ("fused", "encoder")


def fusion_inputs(vectors: np.ndarray, sides: list[tuple], pair_parts) -> np.ndarray:
    """(n, 2, d) inputs of h(x, y) (Sec. 4.2.1): a row with one side is its vector there and zeros on the other
    (the authors' masked Combiner); a row with both an image and a text gets the encoder's two vectors from
    `pair_parts(its sides)`, as the encoder's own vector is already fused.  Every row at once: `FusionRows`."""
    return FusionRows(vectors, sides, pair_parts)[:].numpy()


class FusionRows:
    """`fusion_inputs(vectors[rows], sides, pair_parts)` made a few rows at a time: `inputs[s:e]` or
    `inputs[index list]` is the (k, 2, d) tensor of those rows, so that neither training on a million query pairs
    nor coding a million items holds their (n, 2, d) inputs at once.  `rows[j]` (default j) is the row of
    `vectors` that entry j reads, `sides[j]` its (image, text); the parts of the entries with both sides are asked
    of `pair_parts` once, here."""

    def __init__(self, vectors: np.ndarray, sides: list[tuple], pair_parts, rows: np.ndarray | None = None):
        self.vectors = vectors
        self.rows = np.arange(len(vectors)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) != len(sides):
            raise GenretrError(f"GENIUS: {len(sides)} sides for {len(self.rows)} rows")
        self.has = np.array([[image is not None, text is not None] for image, text in sides],
                            dtype=bool).reshape(-1, 2)  # (n, 2): has an image, has a text
        self.pair_rows = np.flatnonzero(self.has.all(1))
        self.pair_inputs = (np.asarray(pair_parts([sides[r] for r in self.pair_rows]), dtype=np.float32)
                            if len(self.pair_rows) else None)  # (pairs, 2, d)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, entries) -> torch.Tensor:
        if isinstance(entries, slice):
            entries = np.arange(*entries.indices(len(self)))
        entries = np.asarray(entries, dtype=np.int64)
        if len(entries) and (entries.min() < 0 or entries.max() >= len(self)):
            raise IndexError(f"FusionRows: entries from {entries.min()} to {entries.max()} of {len(self)}")
        x = np.asarray(self.vectors[self.rows[entries]], dtype=np.float32)  # (k, d)
        out = np.zeros((len(x), 2, x.shape[1]), dtype=np.float32)
        has = self.has[entries]
        out[has[:, 0] & ~has[:, 1], 0] = x[has[:, 0] & ~has[:, 1]]
        out[has[:, 1] & ~has[:, 0], 1] = x[has[:, 1] & ~has[:, 0]]
        both = has.all(1)
        if both.any():
            out[both] = self.pair_inputs[np.searchsorted(self.pair_rows, entries[both])]
        return torch.from_numpy(out)


class GeniusIdentifier:
    code_tree = True  # items sharing a code prefix are alike (residual codes): results.html draws the tree

    def __init__(self, num_levels: int = 4, codebook_size: int = 64, first_level_size: int = 3,
                 shared: bool = False, modality_code: str = "learned", fusion_hidden: int = 256,
                 tau: float = 0.01, beta: float = 100.0, gamma: float = 100.0, use_cl: bool = True,
                 use_rq: bool = True, use_mse: bool = True, decay: float = 0.99, kmeans_init: bool = True,
                 dead_after: int = 20, lr: float = 1e-3, weight_decay: float = 0.0, epochs: int = 10,
                 batch_size: int = 256, unique_suffix: bool = False, decoder_input: str = "fused",
                 seed: int | None = None):
        self.quantizer_kwargs = dict(
            num_levels=num_levels, codebook_size=codebook_size, first_level_size=first_level_size, shared=shared,
            modality_code=modality_code, fusion_hidden=fusion_hidden, tau=tau, beta=beta, gamma=gamma,
            use_cl=use_cl, use_rq=use_rq, use_mse=use_mse, decay=decay, kmeans_init=kmeans_init,
            dead_after=dead_after, lr=lr, weight_decay=weight_decay)
        self.check_options(modality_code=modality_code, first_level_size=first_level_size,
                           decoder_input=decoder_input)
        self.decoder_input = decoder_input
        self.epochs, self.batch_size, self.unique_suffix, self.seed = epochs, batch_size, unique_suffix, seed
        self.sizes = ([] if modality_code == "none" else [first_level_size]) + [codebook_size] * (num_levels - 1)
        self.modality_code = modality_code
        self.stats: dict = {}
        self.model = None

    @staticmethod
    def check_options(modality_code: str = "learned", first_level_size: int = 3, decoder_input: str = "fused") -> None:
        """Values `genretr.validate` checks before any stage runs."""
        if decoder_input not in DECODER_INPUTS:
            raise GenretrError(f"identifier.decoder_input={decoder_input} is not one of {', '.join(DECODER_INPUTS)}")
        if modality_code not in MODALITY_CODES:
            raise GenretrError(f"identifier.modality_code={modality_code} is not one of {', '.join(MODALITY_CODES)}")
        if modality_code != "none" and int(first_level_size) != 3:
            raise GenretrError(f"identifier.first_level_size={first_level_size}: the modality code has 3 values "
                               "(image, text, image-text pair)")

    def build(self, items, embeddings: np.ndarray, ctx) -> IdTable:
        x = np.asarray(embeddings, dtype=np.float32)
        if not items or x.ndim != 2 or len(x) != len(items) or not np.isfinite(x).all():
            raise GenretrError(f"GENIUS: need finite embeddings (n_items={len(items)} > 0, d), got shape {x.shape}")
        if ctx.train_query_vecs is None:
            raise GenretrError("GENIUS identifiers are learned from query-target pairs; the context has no "
                               "train_query_vecs")
        qv = np.asarray(ctx.train_query_vecs, dtype=np.float32)
        if qv.ndim != 2 or len(qv) != len(ctx.train_query_items) or (len(qv) and qv.shape[1] != x.shape[1]):
            raise GenretrError(f"GENIUS: train_query_vecs {qv.shape} must be one {x.shape[1]}-d row per entry of "
                               f"train_query_items ({len(ctx.train_query_items)})")
        row_of = {it.id: i for i, it in enumerate(items)}
        pairs = [(j, row_of[iid]) for j, iid in enumerate(ctx.train_query_items) if iid in row_of]
        if not pairs:
            raise GenretrError("GENIUS: no training query has a target among the identified items")
        q_rows, t_rows = map(np.asarray, zip(*pairs))
        query_ids = ctx.train_query_ids or list(range(len(qv)))  # pairs of one query: its other targets
        if len(query_ids) != len(qv):
            raise GenretrError(f"GENIUS: {len(query_ids)} train_query_ids for {len(qv)} train_query_vecs rows")
        group_of = {}
        groups = np.asarray([group_of.setdefault(query_ids[j], len(group_of)) for j in q_rows])
        modalities = [it.modality for it in items]
        seed = int(self.seed if self.seed is not None else ctx.seed)
        if ctx.pair_parts is None:  # the encoder's fused vectors
            every_pair = len(q_rows) == len(qv)  # then q_rows is 0..n-1 in order: no copy of the query vectors
            fit_queries, vectors = qv if every_pair else qv[q_rows], torch.from_numpy(x)
        else:  # h(image, text) of Sec. 4.2.1 on the encoder's unfused vectors, (n, 2, d) inputs gathered a batch
            # at a time (`FusionRows`): the queries' and targets' while the quantizer trains, every item's to code
            fit_queries = FusionRows(qv, [ctx.train_query_sides[j] for j in q_rows], ctx.pair_parts, rows=q_rows)
            vectors = FusionRows(x, [item_side(it) for it in items], ctx.pair_parts)
        model = fit_modality_decoupled(fit_queries, t_rows, vectors, modalities,
                                       query_groups=groups, seed=seed, max_epochs=self.epochs,
                                       batch_size=self.batch_size, progress=bool(ctx.progress),
                                       device=ctx.device, **self.quantizer_kwargs)
        self.model = model
        codes = model.to(ctx.device).encode_items(vectors, modalities)  # on the run's device
        m = model.metrics(vectors, modalities, codes)
        model.cpu()
        codes = codes.numpy()
        prefixes = [tuple(row) for row in codes.tolist()]
        counters = unique_counters(prefixes)
        table = self._table(items, codes, counters if self.unique_suffix else None)
        self.stats = {"items": len(items), "train_pairs": len(pairs),
                      "skipped_pairs": len(ctx.train_query_items) - len(pairs), "distinct_codes": len(set(prefixes)),
                      "items_in_collisions": colliding_items(prefixes), "usage": m["usage"],
                      "modality_accuracy": m["modality_accuracy"], "modality_agreement": m["modality_agreement"],
                      "rel_error": m["rel_error"]}
        log.info("GENIUS identifiers: %s", json.dumps(self.stats))
        workdir = ctx.workdir
        if workdir is not None:
            torch.save({"hparams": dict(model.hparams), "state_dict": model.state_dict(),
                        "fused_parts": ctx.pair_parts is not None}, workdir / "genius_quantizer.pt")
            (workdir / "genius_stats.json").write_text(json.dumps(self.stats, indent=1) + "\n")
        return table

    def assign(self, items, embeddings: np.ndarray, ctx, table: IdTable) -> IdTable:
        """Identifiers of new items from the trained quantizer in the identify artifact, `ctx.workdir` (its
        `genius_quantizer.pt`), in `table`'s vocabulary: items added without retraining (issue 19)."""
        model, fused_parts = load_quantizer(ctx.workdir)
        x = np.asarray(embeddings, dtype=np.float32)
        if fused_parts:  # trained on h(image, text): the new items' parts alike
            if ctx.pair_parts is None and any(it.modality == PAIR for it in items):
                raise GenretrError("GENIUS: image-text pair items need the run's encoder to be added (their image "
                                   "and text vectors); this context has none")
            x = fusion_inputs(x, [item_side(it) for it in items], ctx.pair_parts)
        codes = model.encode_items(torch.from_numpy(x), [it.modality for it in items]).numpy()
        words = [[own.vocab[t] for t in own.tokens(it.id)[:-1]] for own in [self._table(items, codes, None)]
                 for it in items]
        if self.unique_suffix:
            counters = continued_counters(table, [tuple(w) for w in words])
            words = [w + [f"u{c}"] for w, c in zip(words, counters)]
        return in_vocabulary(table, [it.id for it in items], words, "GENIUS")

    def decoder_space(self, workdir: Path) -> "FusedSpace | None":
        """What the decoder reads for the encoder's vectors: the trained quantizer's fused z (Eq. 9), or None
        (the encoder's vectors themselves) under ``decoder_input=encoder``."""
        return FusedSpace(*load_quantizer(workdir)) if self.decoder_input == "fused" else None

    def _table(self, items, codes: np.ndarray, counters: list[int] | None) -> IdTable:
        semantic = self.sizes if self.modality_code == "none" else self.sizes[1:]
        level_tokens = [] if self.modality_code == "none" else [[f"m{c}" for c in range(self.sizes[0])]]
        level_tokens += [[f"q{m}_{c}" for c in range(k)] for m, k in enumerate(semantic, start=1)]
        vocab = list(SPECIAL_TOKENS) + [t for tokens in level_tokens for t in tokens]
        if counters is not None:
            vocab += [f"u{i}" for i in range(max(counters) + 1)]
        index = {t: i for i, t in enumerate(vocab)}
        seqs = []
        for row, c in enumerate(codes.tolist()):
            seq = [index[level_tokens[m][v]] for m, v in enumerate(c)]
            seqs.append(seq + ([index[f"u{counters[row]}"]] if counters is not None else []))
        return IdTable.from_lists([it.id for it in items], seqs, vocab,
                                  new_tokens=vocab[len(SPECIAL_TOKENS):])  # one token each in an MLLM


def load_quantizer(workdir) -> tuple[ModalityDecoupledQuantizer, bool]:
    """(the trained quantizer of an identify artifact, whether it was trained on h(image, text)'s parts)."""
    saved = torch.load(Path(workdir) / "genius_quantizer.pt", map_location="cpu")
    if "modality_code" not in saved["hparams"]:
        raise GenretrError(f"{workdir}: the GENIUS quantizer was saved by an older genretr (before "
                           "identifier.modality_code); rerun the run's identify stage")
    model = ModalityDecoupledQuantizer(**saved["hparams"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), bool(saved.get("fused_parts"))


class FusedSpace:
    """Eq. 9's z_q: encoder vectors mapped to the quantizer's fused, normalised space, z = h(x, y) / ||h||
    (`ModalityDecoupledQuantizer.embed`), the space the identifiers were learned in."""

    def __init__(self, model: ModalityDecoupledQuantizer, fused_parts: bool, batch_size: int = 4096):
        self.model, self.fused_parts, self.batch_size = model, fused_parts, batch_size

    @torch.no_grad()
    def __call__(self, vectors: torch.Tensor, sides: list[tuple], pair_parts) -> torch.Tensor:
        """(n, d) fused vectors of the encoder's `vectors` (n, d) whose (image, text) `sides` say which parts they
        have; rows with both get their two vectors from `pair_parts(sides)` (`fusion_inputs`)."""
        x, out = vectors.detach().float().cpu().numpy(), []
        for s in range(0, len(x), self.batch_size):  # (batch, 2, d) inputs a batch at a time
            rows = x[s:s + self.batch_size]
            if self.fused_parts:
                rows = fusion_inputs(rows, sides[s:s + self.batch_size], pair_parts)
            out.append(self.model.embed(torch.from_numpy(rows)))
        return torch.cat(out) if out else torch.zeros(x.shape, dtype=torch.float32)
