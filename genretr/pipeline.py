"""The five stages (DESIGN.md): dataset → encode → identify → train → index → evaluate.

Each stage's artifact is keyed by the config and the code that produced it plus its upstream
keys (`genretr.artifacts`, `genretr.fingerprint`), so reruns skip finished stages, a sweep over
backbones shares one encode + identify, and a killed run resumes.  `stage=NAME` stops after that stage.
"""
from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genretr.artifacts import ArtifactStore, config_key, plain_dict
from genretr import encode_stage as E
from genretr.data.schema import INSTRUCTIONS, RetrievalDataset
from genretr.errors import GenretrError
from genretr.fingerprint import source_fingerprint, stage_fingerprint
from genretr.identifiers.base import IdTable
from genretr.training import fit

log = logging.getLogger(__name__)
STAGES = ["dataset", "encode", "identify", "train", "index", "evaluate"]
# trainer options that change what is shown or logged, not what is learned (left out of the stage keys)
TRAINER_DISPLAY = ("log_every_n_steps", "enable_model_summary", "enable_progress_bar", "num_sanity_val_steps")


def devices(trainer) -> object:
    """The trainer's `devices`, with "all of them" (-1, auto) resolved to how many there are."""
    value = trainer.get("devices", 1)
    if str(value) in ("-1", "auto"):
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 1
    return value


def processes(trainer) -> int:
    """How many processes the trainer trains with (devices x nodes; a device list counts its entries)."""
    n = devices(trainer)
    if isinstance(n, str):  # "2" or "0,1"
        n = [d for d in n.split(",") if d.strip()] if "," in n else int(n)
    n = len(n) if not isinstance(n, int) else n
    return max(1, n) * max(1, int(trainer.get("num_nodes", 1) or 1))


@dataclass
class Embeddings:
    item_ids: list[str]
    item_vecs: torch.Tensor
    query_ids: list[str]
    query_vecs: torch.Tensor

    def __post_init__(self):
        self._item_index = {k: i for i, k in enumerate(self.item_ids)}
        self._query_index = {k: i for i, k in enumerate(self.query_ids)}

    def items(self, ids) -> torch.Tensor:
        return self.item_vecs[[self._item_index[i] for i in ids]]

    def queries(self, ids) -> torch.Tensor:
        return self.query_vecs[[self._query_index[i] for i in ids]]

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("item_ids", "item_vecs", "query_ids", "query_vecs")}


class Pipeline:
    def __init__(self, cfg: DictConfig, run_dir: Path, logger=None, extra_callbacks=()):
        self.cfg, self.run_dir, self.logger = cfg, Path(run_dir), logger
        self.store = ArtifactStore(cfg.paths.cache_dir, distributed=processes(cfg.trainer) > 1)
        self.keys: dict[str, str] = {}
        self.extra_callbacks = list(extra_callbacks)
        self.stage_seconds: dict[str, float] = {}  # wall time per stage (results.json's provenance)
        self._numerics: dict | None = None

    def numerics(self) -> dict:
        """What sets a trained artifact's numbers besides its config and seed: torch's thread count (CPU
        kernels sum in another order at another count), the trainer (device, precision, strategy, clipping…;
        not its logging and display options), the CPU kernels torch dispatches to and the versions of the
        numeric libraries.  In the keys of the
        stages that train (encode, identify, train, captions), so no artifact is reused across them."""
        from genretr.provenance import versions

        if self._numerics is None:  # once per run (the installed versions are read from package metadata)
            from genretr.hardware import bf16_kind

            trainer = {k: v for k, v in plain_dict(self.cfg.trainer).items() if k not in TRAINER_DISPLAY}
            trainer["devices"] = devices(trainer)
            found = versions()
            # the kernels torch dispatches to (AVX2 / AVX512, AMX or AVX512-BF16 for bf16) sum in their own order
            kernels = {"cpu": torch.backends.cpu.get_cpu_capability(), "bf16": bf16_kind(trainer.get("accelerator"))}
            self._numerics = {"trainer": trainer, "kernels": kernels, "versions": {
                k: found[k] for k in ("torch", "transformers", "lightning", "numpy", "faiss-cpu")}}
        return {"threads": torch.get_num_threads(), **self._numerics}

    def tasks(self) -> list[str]:
        return list(self.cfg.eval.tasks)

    def pool_name(self, task: str) -> str:
        """The pool `task` searches: its own (task-specific) or the split's union pool (GENIUS Table 2)."""
        return "universal" if str(self.cfg.eval.get("pool", "task")) == "universal" else task

    def pool(self, ds: RetrievalDataset, task: str) -> list[str]:
        split, name = self.cfg.eval.split, self.pool_name(task)
        if name not in ds.splits[split].pools:
            raise GenretrError(f"eval.pool={self.cfg.eval.get('pool')}: split '{split}' of {ds.name} has no "
                               f"'{name}' pool (shapes: dataset.universal=true)")
        return ds.splits[split].pools[name]

    def splits(self) -> list[str]:
        """The splits this run touches: train (encoder and decoder training) and the evaluation split."""
        return list(dict.fromkeys(["train", self.cfg.eval.split]))

    # -- dataset --------------------------------------------------------------------------
    def dataset(self) -> RetrievalDataset:
        # the source files by content (an edited Karpathy JSON is a new dataset) and the code that reads them
        key = self.keys["dataset"] = config_key("dataset", self.cfg.dataset, source_fingerprint(self.cfg.dataset),
                                                stage_fingerprint("dataset", self.cfg.dataset))

        def write(tmp: Path):
            ds = instantiate(self.cfg.dataset, _convert_="all")
            with open(tmp / "dataset.pkl", "wb") as f:
                pickle.dump(ds, f, protocol=pickle.HIGHEST_PROTOCOL)
            (tmp / "summary.txt").write_text(ds.summary() + "\n")

        path = self.store.produce("dataset", key, write)
        with open(path / "dataset.pkl", "rb") as f:
            ds = pickle.load(f)
        log.info("%s", ds.summary())
        return ds

    # -- encode ---------------------------------------------------------------------------
    def encode(self, ds: RetrievalDataset) -> Embeddings:
        cfg = self.cfg.encoder
        splits = self.splits()
        given = getattr(ds, "item_vectors", None) is not None
        # given item vectors without query vectors: the zero query vectors exist for token-input backbones only
        mode = (self._input(), self.cfg.method.name) if given and ds.query_vectors is None else None
        key = self.keys["encode"] = config_key("encode", self.keys["dataset"], cfg, self.cfg.seed, splits, mode,
                                               self.numerics(), stage_fingerprint("encode", cfg))

        def write(tmp: Path):
            if given:  # features given (dataset=precomputed): nothing to encode
                torch.save(self._given_vectors(ds, splits).state(), tmp / "embeddings.pt")
                return
            encoder, items, queries, item_vecs, query_vecs = E.fit_and_embed(
                cfg, ds, splits, int(self.cfg.seed), self._instructions(), self._encoder_tasks() == "all",
                lambda enc, dm: fit(enc, dm, self.cfg, self.store.work("encode", key), int(cfg.fit.max_epochs),
                                    self.logger, self.extra_callbacks), self.store)
            emb = Embeddings([x.id for x in items], item_vecs, [q.id for q in queries], query_vecs)
            torch.save(emb.state(), tmp / "embeddings.pt")
            torch.save(encoder.state_dict(), tmp / "encoder.pt")
            if getattr(encoder.text_tower, "tokenizer", None) is not None:
                encoder.text_tower.tokenizer.save(str(tmp / "tokenizer.json"))

        path = self.store.produce("encode", key, write)
        return Embeddings(**{k: v for k, v in torch.load(path / "embeddings.pt").items() if not k.startswith("_")})

    def _instructions(self) -> bool:
        """encoder.instructions: queries embedded with their task's instruction (genretr.encode_stage)."""
        return bool(self.cfg.encoder.instructions)

    def _encoder_tasks(self) -> str:
        tasks = str(self.cfg.encoder.fit.tasks)
        if tasks not in ("captions", "all"):
            raise GenretrError(f"encoder.fit.tasks={tasks} is not one of captions, all")
        return tasks

    def _given_vectors(self, ds: RetrievalDataset, splits) -> Embeddings:
        """Embeddings of a dataset that ships its vectors (CART's ImageBind features): items from
        `item_vectors`; queries from `query_vectors` (the same model's text side), or -- for backbones
        that read query tokens and never the query vector -- zeros."""
        items, queries = E.split_members(ds, splits)
        vecs = torch.from_numpy(np.stack([ds.item_vectors[x.id] for x in items])).float()
        if ds.query_vectors is not None:
            qvecs = torch.from_numpy(np.stack([ds.query_vectors[q.id] for q in queries])).float()
        elif self._input() == "tokens" and self.cfg.method.name != "embedding":
            qvecs = torch.zeros(len(queries), vecs.shape[1])
        else:
            raise GenretrError(f"dataset {ds.name} gives item vectors but no query vectors: set "
                               "dataset.caption_features (the same model's caption embeddings), or use a "
                               "token-input backbone (backbone=cart or backbone.input=tokens)")
        return Embeddings([x.id for x in items], vecs, [q.id for q in queries], qvecs)

    @torch.no_grad()
    def embed_texts(self, ds: RetrievalDataset, texts: list[str]) -> torch.Tensor:
        """Vectors of new texts (captioner-written queries) from the trained encoder of this run, as
        caption → image queries (with encoder.instructions, after the t2i instruction)."""
        path = self.store.artifact("encode", self.keys["encode"])
        if not (path / "encoder.pt").exists():
            raise GenretrError(f"dataset {ds.name} ships its vectors: there is no encoder to embed new texts "
                               "(train.pseudo_queries needs one)")
        encoder = instantiate(self.cfg.encoder.model)
        if (path / "tokenizer.json").exists():
            from genretr.data.tokenizer import load

            encoder.text_tower.tokenizer = load(path / "tokenizer.json")
        encoder.load_state_dict(torch.load(path / "encoder.pt"))
        encoder.eval()
        if self._instructions():
            texts = [f"{INSTRUCTIONS['t2i']} {t}" for t in texts]
        inputs = encoder.prepare_texts(texts)
        bs = int(self.cfg.encoder.fit.batch_size)
        return torch.cat([encoder.embed_texts(inputs[s:s + bs]) for s in range(0, len(texts), bs)])

    # -- identify -------------------------------------------------------------------------
    def identify(self, ds: RetrievalDataset, emb: Embeddings) -> IdTable:
        key = self.keys["identify"] = config_key("identify", self.keys["encode"], self.cfg.identifier, self.tasks(),
                                                 self.numerics(), stage_fingerprint("identify", self.cfg.identifier))
        items = _identified_items(ds, self.splits(), [*self.tasks(), "universal"])

        def write(tmp: Path):
            scheme = instantiate(_scheme_cfg(self.cfg.identifier))
            table = scheme.build([ds.items[i] for i in items], emb.items(items).numpy(), self._context(ds, emb, items, tmp))
            table.save(tmp)
            (tmp / "examples.txt").write_text("".join(f"{i}\t{table.text(i)}\n" for i in items[:50]))

        table = IdTable.load(self.store.produce("identify", key, write))
        log.info("identifiers: %d items, vocab %d, %d items in collisions", len(table), table.vocab_size,
                 table.collisions())
        return table

    def _context(self, ds: RetrievalDataset, emb: Embeddings, items: list[str], workdir: Path) -> "_Ctx":
        """What an identifier scheme may learn from besides the items (genretr.identifiers.base)."""
        captions: dict[str, list[str]] = {}
        pairs = [(q, r) for q in ds.splits["train"].queries for r in q.relevant]
        for q, r in pairs:
            if q.task in E.CAPTION_TASKS and q.text:
                captions.setdefault(r, []).append(q.text)
        return _Ctx(train_texts=[q.text for q in ds.splits["train"].queries if q.task in E.CAPTION_TASKS], workdir=workdir,
                    seed=int(self.cfg.seed), progress=bool(self.cfg.progress), item_captions=captions,
                    train_query_vecs=emb.queries([q.id for q, _ in pairs]).numpy() if pairs else np.zeros((0, 1)),
                    train_query_items=[r for _, r in pairs], train_query_tasks=[q.task for q, _ in pairs],
                    item_modalities=[ds.items[i].modality for i in items],
                    describe=lambda ids: _describe(self, ds, emb, ids), images=ds.images,
                    cache_dir=self.store.work("identify-cache", config_key(
                        "identify-cache", self.keys["encode"], self.cfg.identifier,
                        stage_fingerprint("identify-cache", self.cfg.identifier))))

    # -- train ----------------------------------------------------------------------------
    def _input(self) -> str:
        return str(self.cfg.backbone.get("input", "prefix"))

    def _classifier_head(self) -> bool:
        return str(self.cfg.identifier.get("head", "vocab")) == "classifier"

    def _mllm(self) -> bool:
        return str(self.cfg.backbone.get("kind", "decoder")) == "mllm"

    def _reasons(self) -> dict:
        """SSID's rationales {item id: reason} from the identify stage (empty for other schemes); read once."""
        from genretr.mllm_stage import reasons_of

        key = self.keys["identify"]
        if getattr(self, "_reasons_of", (None,))[0] != key:
            self._reasons_of = (key, reasons_of(self.store.artifact("identify", key)))
        return self._reasons_of[1]

    def _reason(self) -> str:
        """train.reason resolved: auto -> both with rationales, none without (genretr.rationale)."""
        from genretr.rationale import resolve

        return resolve(str(self.cfg.train.get("reason", "auto")), self._reasons())

    def _train_key(self) -> dict:
        """cfg.train as it enters the train stage's key: `reason` as whether a rationale is trained (`both`
        and `train_only` train alike and share a model)."""
        tr = OmegaConf.to_container(self.cfg.train, resolve=True)
        tr.pop("reason", None)
        return {**tr, "rationale": self._reason() != "none"}

    def _reason_vocab(self, ds: RetrievalDataset, table: IdTable):
        """With a rationale in training, its tokens after the identifier (and describe) vocabulary."""
        from genretr.rationale import ReasonVocab

        if self._reason() == "none":
            return None
        describing = bool(self.cfg.train.get("describe", False))
        return ReasonVocab(self._reasons(), table.vocab_size + (len(_describe_words(ds)) if describing else 0))

    def train(self, ds: RetrievalDataset, emb: Embeddings, table: IdTable):
        from genretr.train_stage import train

        return train(self, ds, emb, table)

    def _query_vocab(self, ds: RetrievalDataset, table: IdTable | None = None):
        """The word vocabulary of token-input backbones, from the training queries (and item texts);
        with train.describe, one word per identifier token too (the describe prompt names an ID)."""
        from genretr.data.vocab import WordVocab

        texts = [q.text for q in ds.splits["train"].queries if q.text]
        texts += [x.text for x in ds.items.values() if x.text]
        vocab = WordVocab.build(texts)
        if self.cfg.train.get("describe", False) and table is not None:
            from genretr.describe import id_word

            vocab = WordVocab(vocab.tokens + [id_word(t) for t in table.vocab[2:]])
        return vocab

    def queries_of(self, ds: RetrievalDataset, emb: Embeddings, queries, table=None,
                   vecs: torch.Tensor | None = None) -> torch.Tensor | dict | list:
        """What the decoder reads for `queries`: their vectors (`vecs`, else the encode stage's), their
        tokens for token-input backbones, sample dicts for MLLMs."""
        if self._mllm() and self.cfg.method.name != "embedding":
            from genretr.mllm_stage import query_sample

            return [query_sample(ds, q) for q in queries]
        vecs = emb.queries([q.id for q in queries]) if vecs is None else vecs
        if self.cfg.method.name == "embedding" or self._input() != "tokens":
            return vecs
        vocab = self._query_vocab(ds, table)
        return {"z": vecs, "src": vocab.encode([q.text for q in queries], int(self.cfg.backbone.get("max_src_len", 32)))}

    def pseudo_queries(self, ds: RetrievalDataset, emb: Embeddings, table: IdTable):
        from genretr.augment import pseudo_queries

        return pseudo_queries(self, ds, emb, table, every_item=str(self.cfg.train.pseudo_queries_for) == "all")

    # -- index ----------------------------------------------------------------------------
    def index(self, ds: RetrievalDataset, table: IdTable) -> dict:
        # One CSRTrie per task: its allowed() serves the HF path's prefix_allowed_tokens_fn, its
        # vectorised children()/step() the genretr engine.
        from genretr.decoding.csr_trie import CSRTrie

        split = self.cfg.eval.split
        pools = sorted({self.pool_name(t) for t in self.tasks()})
        # MLLMs: the trie holds the identifiers as the LLM's tokens, which depend on its tokenizer
        tokens = self.cfg.backbone.model.get("pretrained") if self._mllm() else None
        llm = [self.cfg.backbone] if self._mllm() else []  # its code makes those tokens
        key = self.keys["index"] = config_key("index", self.keys["identify"], split, pools,
                                              *([self.cfg.backbone.model._target_, tokens] if self._mllm() else []),
                                              stage_fingerprint("index", *llm))

        def write(tmp: Path):
            for name in pools:
                (tmp / name).mkdir()
                CSRTrie.from_table(table.subset(ds.splits[split].pools[name])).save(tmp / name)

        path = self.store.produce("index", key, write)
        tries = {name: CSRTrie.load(path / name) for name in pools}
        return {task: tries[self.pool_name(task)] for task in self.tasks()}

    # -- evaluate (genretr.evaluate_stage) ------------------------------------------------
    def evaluate(self, ds, emb: Embeddings, model=None, table=None, tries=None) -> dict:
        from genretr.evaluate_stage import evaluate

        return evaluate(self, ds, emb, model, table, tries)

    def _searcher(self, ds, emb: Embeddings, task: str, model, table, tries):
        from genretr.evaluate_stage import searcher

        return searcher(self, ds, emb, task, model, table, tries)

    def _timed(self, stage: str, work, *args):
        """`work(*args)`, its wall time added to `stage_seconds[stage]` (results.json's provenance)."""
        start = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - start

    def run(self) -> dict | None:
        stop = self.cfg.stage
        if stop not in STAGES:
            raise GenretrError(f"stage={stop} is not one of {', '.join(STAGES)}")
        done = lambda s: STAGES.index(s) >= STAGES.index(stop)
        ds = self._timed("dataset", self.dataset)
        if done("dataset"):
            return None
        emb = self._timed("encode", self.encode, ds)
        if done("encode"):
            return None
        if self.cfg.method.name == "embedding":
            return self._timed("evaluate", self.evaluate, ds, emb) if stop == "evaluate" else None
        table = self._timed("identify", self.identify, ds, emb)
        if done("identify"):
            return None
        model = self._timed("train", self.train, ds, emb, table)
        if done("train"):
            return None
        if self._mllm():  # decoded over the LLM's vocabulary: the identifiers as its tokens
            from genretr.mllm_stage import llm_table

            table = llm_table(model, table)
        tries = self._timed("index", self.index, ds, table)
        if done("index"):
            return None
        return self._timed("evaluate", self.evaluate, ds, emb, model, table, tries)


@dataclass
class _Ctx:
    """`genretr.identifiers.base.IdentifierContext`."""

    train_texts: list[str]
    workdir: Path
    seed: int = 0
    progress: bool = False
    item_captions: dict = field(default_factory=dict)
    train_query_vecs: np.ndarray | None = None
    train_query_items: list = field(default_factory=list)
    train_query_tasks: list = field(default_factory=list)
    item_modalities: list = field(default_factory=list)
    cache_dir: Path | None = None
    describe: object = None  # item ids -> captions written by the run's captioner (genretr.augment)
    images: np.ndarray | None = None  # the dataset's images (MLLM generators look at them)


def _describe(pipeline, ds, emb, item_ids: list[str]) -> list[str]:
    """Captions written by the run's captioner (genretr.augment) for `item_ids`."""
    from genretr.augment import captions_for

    written = captions_for(pipeline, ds, emb, list(item_ids), every_item=True)
    return [written[i] for i in item_ids]


def _describe_words(ds) -> list[str]:
    from genretr.describe import caption_words

    return caption_words(ds)


def _scheme_cfg(cfg: DictConfig) -> DictConfig:
    """The scheme's constructor arguments: keys the pipeline reads itself (`head`) are not passed."""
    plain = OmegaConf.to_container(cfg, resolve=True)  # resolves ${captioner}, ${generator} against the root
    plain.pop("head", None)
    return OmegaConf.create(plain)


def _identified_items(ds: RetrievalDataset, splits, tasks) -> list[str]:
    """Every item in the pools of `tasks` in `splits` (GRACE memorizes the test images too)."""
    seen: dict[str, None] = {}
    for split in splits:
        for task in tasks:
            for i in ds.splits[split].pools.get(task, []):
                seen.setdefault(i)
    return list(seen)
