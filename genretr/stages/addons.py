"""The papers' add-ons to a run, as components: pseudo-queries (GRACE App. A, CART Sec. 3.3), image
descriptions (GRACE Sec. 4.5), rationales (SSID Sec. III-D), the sample limit (SSID Fig. 3) and translated
queries (SSID Table IV).  `add_ons(cfg)` builds a run's list in one place; the train and evaluate stages and the
decoder adapters call the list's hooks, never an option, so a new add-on is one class here plus its line in
`add_ons`.

The hooks, every one a no-op in `AddOn`; for a run's `ctx` (`RunContext`), dataset `ds`, embeddings `emb` and
`IdTable` `table`:

- ``query_words(ctx, ds, table)``: words a token-input decoder reads besides the training texts;
- ``tied_query_words(ctx, ds, table)``: {query word: output token id} of those words that stand for an output
  token and are read through the decoder's embedding of it (`genretr.backbones.tied_source`);
- ``output_words(ctx, ds, table)``: how many words the decoder writes after the identifier vocabulary, in the
  list's order (an add-on's first word is at ``offset``: the identifier vocabulary plus the earlier add-ons');
- ``sample_options(ctx, ds, emb, table, offset)``: keyword arguments of `genretr.samples.decoder_samples`;
- ``extend(ctx, ds, emb, table, samples, vocab, offset)``: the decoder's training samples with this add-on's
  (a tensor dict, `genretr.samples`, or an MLLM's sample list);
- ``queries(ctx, ds, emb, queries, vecs)``: the evaluated queries of a task and their vectors (None: the encode
  stage's);
- ``metrics(ctx, ds, emb, model, table)``: results of the evaluate stage beside the tasks';
- ``train_key(ctx)``: what its samples read besides ``cfg.train`` (None: nothing), part of the train key.

An add-on names the config option that turns it on (``option``, for messages); a decoder adapter lists the
add-ons it can take (``add_ons``), and `AddOns.check` refuses the others in one line before any stage runs
(`genretr.validate`), except `train.reason=auto`, which engages only when the IdTable carries rationales and
is checked again at the train stage.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from genretr.errors import GenretrError

if TYPE_CHECKING:  # stages read the run's context; only genretr.pipeline makes one
    from genretr.stages.context import RunContext

log = logging.getLogger(__name__)


class AddOn:
    name = "add-on"
    option = ""  # the config option that turns it on
    needs = ""  # what a decoder that cannot take it should be instead

    def engaged(self, ctx: RunContext | None, table) -> bool:
        """Whether it acts on this run (`table`: the run's IdTable, None before the identify stage)."""
        return True

    def query_words(self, ctx: RunContext, ds, table) -> list[str]:
        return []

    def tied_query_words(self, ctx: RunContext, ds, table) -> dict[str, int]:
        return {}

    def output_words(self, ctx: RunContext, ds, table) -> int:
        return 0

    def sample_options(self, ctx: RunContext, ds, emb, table, offset: int) -> dict:
        return {}

    def extend(self, ctx: RunContext, ds, emb, table, samples, vocab, offset: int):
        return samples

    def queries(self, ctx: RunContext, ds, emb, queries, vecs):
        return queries, vecs

    def metrics(self, ctx: RunContext, ds, emb, model, table) -> dict:
        return {}

    def train_key(self, ctx: RunContext):
        return None


class PseudoQueries(AddOn):
    """Captioner-written queries for items without a training query (or every item), as retrieve samples."""
    name, option = "pseudo_queries", "train.pseudo_queries=true"
    needs = "a decoder trained from sample tensors (backbone=t5|cart)"

    def __init__(self, every_item: bool = False):
        self.every_item = every_item

    def sample_options(self, ctx, ds, emb, table, offset):
        from genretr.stages.captions import pseudo_queries

        return {"pseudo": pseudo_queries(ctx, ds, emb, table, every_item=self.every_item)}

    def train_key(self, ctx):
        """The captioner that writes the pseudo-queries and its code: another captioner trains another model."""
        from omegaconf import OmegaConf

        from genretr.fingerprint import stage_fingerprint

        captioner = ctx.cfg.captioner
        return OmegaConf.to_container(captioner, resolve=True), stage_fingerprint("captions", captioner)


class Describe(AddOn):
    """GRACE Sec. 4.5: "describe image <ID>" -> caption samples, and whether the descriptions of the test pool's
    identifiers retrieve their images."""
    name, option, needs = "describe", "train.describe=true", "a token-input backbone: backbone.input=tokens"

    def query_words(self, ctx, ds, table):
        from genretr.describe import id_word

        return [id_word(t) for t in table.vocab[2:]]

    def tied_query_words(self, ctx, ds, table):
        """The prompt's ID words read the decoder's embedding of their identifier token, which the samples that
        output the token train (else describing a test image could not show what memorising taught)."""
        from genretr.describe import id_word

        return {id_word(t): k for k, t in enumerate(table.vocab) if k >= 2}

    def output_words(self, ctx, ds, table):
        from genretr.describe import caption_words

        return len(caption_words(ds))

    def extend(self, ctx, ds, emb, table, samples, vocab, offset):
        from genretr import describe
        from genretr.samples import concat_samples

        return concat_samples(samples, describe.samples(ds, table, vocab, describe.caption_words(ds),
                                                        max_src_len(ctx), emb.item_vecs.shape[1]))

    def metrics(self, ctx, ds, emb, model, table):
        from genretr import describe
        from genretr.artifacts import atomic_write_text
        from genretr.evaluation.distributed import rank_zero
        from genretr.evaluation.embedding import embedding_search
        from genretr.evaluation.metrics import retrieval_metrics

        pool = ds.splits[ctx.cfg.eval.split].pools["t2i"]
        texts = describe.describe(model, table, ctx.query_vocab(ds, table), describe.caption_words(ds), pool,
                                  max_src_len(ctx), emb.item_vecs.shape[1])
        rankings, _ = embedding_search(ctx.embed_texts(ds, texts).numpy(), emb.items(pool).numpy(), pool,
                                       int(ctx.cfg.eval.top_k))
        metrics = {**retrieval_metrics(rankings, [(i,) for i in pool]), "queries": len(pool)}
        log.info("describe: e.g. %s -> %r; R@1=%.4f", pool[0], texts[0], metrics["R@1"])
        if rank_zero():  # the run's files are rank 0's (genretr.run)
            atomic_write_text(ctx.run_dir / "descriptions.tsv", "".join(f"{i}\t{t}\n" for i, t in zip(pool, texts)))
        return {"describe": metrics}


class Rationale(AddOn):
    """SSID Sec. III-D: the identifier, then <reason> and the scheme's rationale as the target, when the IdTable
    carries rationales and train.reason asks for them (`RunContext.reason`)."""
    name, option = "rationale", "train.reason"

    def __init__(self, mode: str = "auto"):
        self.mode = mode

    def engaged(self, ctx, table):
        """auto engages only when the IdTable carries rationales: before the identify stage, only an explicit
        train.reason=both|train_only does."""
        return self.mode in ("both", "train_only") if table is None else ctx.reason(table) != "none"

    def output_words(self, ctx, ds, table):
        vocab = self.vocab(ctx, table, 0)
        return len(vocab) if vocab else 0

    def vocab(self, ctx, table, offset: int):
        from genretr.rationale import ReasonVocab

        return None if ctx.reason(table) == "none" else ReasonVocab(table.reasons, offset)

    def sample_options(self, ctx, ds, emb, table, offset):
        vocab = self.vocab(ctx, table, offset)
        return {"answers": vocab.answers(table)} if vocab else {}


class SampleLimit(AddOn):
    """SSID Fig. 3: fine-tune on `n` samples drawn (seeded) from all; 0 leaves the decoder untrained."""
    name, option = "limit", "train.limit"

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def extend(self, ctx, ds, emb, table, samples, vocab, offset):
        from genretr.samples import draw_rows, draw_samples

        if isinstance(samples, dict):
            return draw_samples(samples, self.n, self.seed)
        return [samples[i] for i in draw_rows(len(samples), self.n, self.seed)]


class TranslatedQueries(AddOn):
    """SSID Table IV: the listed queries with their text in another language, embedded by this run's encoder."""
    name, option = "query_texts", "eval.query_texts"

    def __init__(self, path: str):
        self.path = path

    def queries(self, ctx, ds, emb, queries, vecs):
        from genretr.evaluation.multilingual import load_query_texts, translated

        listed = translated(queries, load_query_texts(self.path))
        if not listed:
            task = queries[0].task if queries else "the"
            raise GenretrError(f"eval.query_texts={self.path} lists none of the {len(queries)} {task} queries")
        queries = listed
        if any(q.image is not None for q in queries):
            raise GenretrError(f"eval.query_texts={self.path}: translates text-only queries")
        vecs = (ctx.embed_texts(ds, [q.text for q in queries]) if ctx.reads_query_vectors()
                else torch.zeros(len(queries), emb.query_vecs.shape[1]))  # token input / MLLM: z is unread
        return queries, vecs


def max_src_len(ctx: RunContext) -> int:
    return int(ctx.cfg.backbone.get("max_src_len", 32))


class AddOns(list):
    """A run's add-ons in order; each method calls one hook of every member."""

    def check(self, decoder, ctx: RunContext | None = None, table=None) -> None:
        """Refuse, in one line, an add-on engaged in this run that the decoder adapter cannot take (its
        ``add_ons``)."""
        for a in self:
            if decoder is not None and a.engaged(ctx, table) and a.name not in decoder.add_ons:
                raise GenretrError(f"{a.option} ({a.name}) is not taken by {type(decoder).__name__} "
                                   f"(backbone.adapter){': it needs ' + a.needs if a.needs else ''}")

    def query_words(self, ctx, ds, table) -> list[str]:
        return [w for a in self for w in a.query_words(ctx, ds, table)]

    def tied_query_words(self, ctx, ds, table) -> dict[str, int]:
        return {w: t for a in self for w, t in a.tied_query_words(ctx, ds, table).items()}

    def offsets(self, ctx, ds, table) -> list[int]:
        """Where each member's output words start (after the identifiers and the earlier members' words)."""
        out, at = [], table.vocab_size
        for a in self:
            out.append(at)
            at += a.output_words(ctx, ds, table)
        return out

    def output_words(self, ctx, ds, table) -> int:
        return sum(a.output_words(ctx, ds, table) for a in self)

    def sample_options(self, ctx, ds, emb, table) -> dict:
        options = {}
        for a, offset in zip(self, self.offsets(ctx, ds, table)):
            options.update(a.sample_options(ctx, ds, emb, table, offset))
        return options

    def extend(self, ctx, ds, emb, table, samples, vocab=None):
        for a, offset in zip(self, self.offsets(ctx, ds, table)):
            samples = a.extend(ctx, ds, emb, table, samples, vocab, offset)
        return samples

    def queries(self, ctx, ds, emb, queries):
        vecs = None
        for a in self:
            queries, vecs = a.queries(ctx, ds, emb, queries, vecs)
        return queries, vecs

    def metrics(self, ctx, ds, emb, model, table) -> dict:
        out = {}
        for a in self:
            out.update(a.metrics(ctx, ds, emb, model, table))
        return out

    def train_key(self, ctx) -> dict:
        return {a.name: part for a in self if (part := a.train_key(ctx)) is not None}

    def reason_vocab(self, ctx, ds, table):
        """The rationale's vocabulary at its place in the output (None without a rationale)."""
        for a, offset in zip(self, self.offsets(ctx, ds, table)):
            if isinstance(a, Rationale):
                return a.vocab(ctx, table, offset)
        return None


def add_ons(cfg) -> AddOns:
    """The run's add-ons, in the order their output words follow the identifiers (describe, then rationale)
    and their samples are made (pseudo-queries inside the base samples, descriptions appended, then the limit)."""
    tr, ev, out = cfg.get("train") or {}, cfg.get("eval") or {}, AddOns()
    if tr.get("pseudo_queries", False):
        out.append(PseudoQueries(every_item=str(tr.get("pseudo_queries_for", "missing")) == "all"))
    if tr.get("describe", False):
        out.append(Describe())
    out.append(Rationale(str(tr.get("reason", "auto"))))  # it acts when the IdTable carries rationales
    if tr.get("limit") is not None:
        out.append(SampleLimit(int(tr["limit"]), int(cfg.get("seed", 0))))
    if ev.get("query_texts"):
        out.append(TranslatedQueries(str(ev["query_texts"])))
    return out
