"""The composed config checked before the first stage runs (`genretr.run.execute`).

`validate(cfg)` raises `GenretrError` with one line naming the key, its value and what is allowed,
so a typo costs a second instead of the stages before the option is first read.  It checks:
choices (stage, method, pools, schedules, engines), the types and ranges of numeric and boolean
options, task names and whether the dataset can serve them, whether the run needs a train split
the dataset config does not have, and that online W&B logging has an API key.  What only the data
can tell (a file's contents, a task missing from an M-BEIR file not named after its task) is left
to the dataset stage.  The checks scattered where options are read stay; these come first.
"""
from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genretr.data import karpathy, mbeir, precomputed, shapes
from genretr.data.schema import AUDIO, IMAGE, TASK_TARGET, UNIVERSAL, VIDEO
from genretr.errors import GenretrError
from genretr.hardware import PRECISIONS
from genretr.stages import STAGES
from genretr.rationale import MODES as REASON_MODES

ABSENT = object()
CHOICES = {  # key -> allowed values (checked when the key is set)
    "precision": PRECISIONS,  # first: trainer.precision resolves from it
    "stage": STAGES,
    "method.name": ("embedding", "generative"),
    "eval.pool": ("task", UNIVERSAL),
    "eval.index": ("flat", "ivf", "hnsw"),
    "encoder.fit.tasks": ("captions", "all"),
    "train.schedule": ("interleaved", "phased"),
    "train.reason": REASON_MODES,
    "train.pseudo_queries_for": ("missing", "all"),
    "decoding.engine": ("genretr", "hf"),
    "backbone.input": ("prefix", "tokens"),
    "encoder.model.schedule": ("constant", "cosine"),
    "backbone.model.schedule": ("constant", "cosine"),
    "backbone.fit.early_stop.monitor": ("exact", "loss"),  # genretr.training.EARLY_STOP_MONITORS
    "backbone.model.query_mix": ("paper", "authors_code"),
}
INTS = {  # key -> (minimum, null allowed)
    "eval.top_k": (1, False),
    "eval.max_queries": (1, True),
    "eval.page_queries": (0, True),
    "loader_workers": (0, False),
    "decoding.num_beams": (1, False),
    "decoding.batch_size": (1, False),
    "encoder.fit.max_epochs": (0, False),
    "encoder.fit.batch_size": (1, False),
    "backbone.fit.max_epochs": (0, False),
    "backbone.fit.batch_size": (1, False),
    "backbone.fit.early_stop.patience": (0, False),
    "backbone.fit.early_stop.min_epochs": (0, False),
    "backbone.max_src_len": (1, False),
    "captioner.fit.max_epochs": (0, False),
    "captioner.fit.batch_size": (1, False),
    "captioner.num_beams": (1, False),
    "captioner.max_len": (2, False),
    "train.memorize_repeat": (0, False),
    "train.memorize_epochs": (0, False),
    "train.limit": (0, True),
}
# each component's `fit` block: the keys a stage reads (another is a typo or an option of another block)
FIT_KEYS = {"encoder.fit": ("max_epochs", "batch_size", "tasks"),
            "backbone.fit": ("max_epochs", "batch_size", "early_stop"),
            "captioner.fit": ("max_epochs", "batch_size")}
FLOATS = ("decoding.length_penalty", "captioner.length_penalty", "backbone.fit.early_stop.min_delta",
          "backbone.fit.early_stop.holdout")
UNIT_INTERVAL = ("encoder.model.warmup",)  # fractions in [0, 1)
BOOLS = ("progress", "encoder.instructions", "train.memorize", "train.retrieve", "train.pseudo_queries",
         "train.describe", "train.consistency", "decoding.constrained", "decoding.rerank", "decoding.compile")
SEED_MAX = 2**32 - 1  # numpy's (and Lightning's seed_everything's) bound

# dataset._target_ -> the adapter's kind; each kind's own numeric options, as INTS (relative to `dataset.`)
DATASETS = {"genretr.data.shapes.build_shapes": "shapes", "genretr.data.karpathy.build_karpathy": "karpathy",
            "genretr.data.mbeir.build_mbeir": "mbeir", "genretr.data.precomputed.build_precomputed": "precomputed"}
DATASET_INTS = {
    "shapes": {"image_size": (1, False), "captions_per_image": (1, False), "max_objects": (1, False)},
    "karpathy": {"image_size": (1, False), "max_images_per_split": (1, True)},
    "mbeir": {"image_size": (1, False), "max_queries_per_file": (1, True), "max_pool_size": (1, True)},
    "precomputed": {"max_items_per_split": (1, True)},
}
MBEIR_TASK_IN_NAME = re.compile(r"_task(\d+)_")  # M-BEIR's query file names: mbeir_mscoco_task0_test.jsonl
WANDB_HOST = "https://api.wandb.ai"


def validate(cfg: DictConfig) -> None:
    """Raise `GenretrError` (one line) on the first option of `cfg` that cannot run."""
    for key, allowed in CHOICES.items():
        _choice(cfg, key, allowed)
    for key, (low, nullable) in INTS.items():
        _int(cfg, key, low, nullable)
    if _get(cfg, "decoding.precision") is not None:
        _choice(cfg, "decoding.precision", PRECISIONS)
    threads = _get(cfg, "threads")
    if threads not in (ABSENT, None, "auto") and not (_is_int(threads) and int(threads) >= 1):
        raise GenretrError(f"threads={_show(threads)} is not auto or an integer >= 1")
    seed = _get(cfg, "seed")
    if seed is not ABSENT and not (_is_int(seed) and 0 <= int(seed) <= SEED_MAX):
        raise GenretrError(f"seed={_show(seed)} is not an integer in 0..{SEED_MAX}")
    for key in FLOATS + UNIT_INTERVAL:
        _float(cfg, key)
    for key in UNIT_INTERVAL:
        if (value := _get(cfg, key)) is not ABSENT and not 0.0 <= float(value) < 1.0:
            raise GenretrError(f"{key}={_show(value)} is not a fraction in [0, 1)")
    for key in BOOLS:
        _bool(cfg, key)
    _check_fit_keys(cfg)
    kind = DATASETS.get(str(_get(cfg, "dataset._target_", "")))
    if kind is not None:
        _check_dataset(cfg, kind)
    _check_tasks(cfg, kind)
    _check_adapter(cfg)
    _check_add_ons(cfg)
    _check_engine(cfg)
    _check_reads_only_text(cfg)
    _check_index_options(cfg)
    _check_generator(cfg)
    _check_scheme_options(cfg)
    _check_wandb(cfg)


def _check_fit_keys(cfg) -> None:
    """A `fit` key no stage reads is refused, not ignored (`backbone.fit.memorize_repeat` is `train.*`'s)."""
    for block, known in FIT_KEYS.items():
        fit = _get(cfg, block)
        if not isinstance(fit, DictConfig):
            continue
        for key in fit:
            if key not in known:
                elsewhere = f"; did you mean train.{key}?" if _get(cfg, f"train.{key}") is not ABSENT else ""
                raise GenretrError(f"{block}.{key} is not read by any stage ({block} takes {', '.join(known)})"
                                   f"{elsewhere}")


def _check_engine(cfg) -> None:
    """decoding.engine=hf runs the backbone's own HF `generate` (`decoding.hf`): only backbones that have one."""
    if _get(cfg, "decoding.engine") != "hf" or _get(cfg, "method.name") == "embedding":
        return
    target = _get(cfg, "backbone.model._target_")
    if target is ABSENT or target is None:
        return
    from hydra.utils import get_class

    if not hasattr(get_class(str(target)), "generate"):
        raise GenretrError(f"decoding.engine=hf needs a backbone with HF generate; {str(target).rsplit('.', 1)[-1]} "
                           "(backbone.model._target_) is searched by decoding.engine=genretr only")


def _check_index_options(cfg) -> None:
    """eval.index_options: the faiss index's knobs (genretr.evaluation.embedding.build_index)."""
    options = _get(cfg, "eval.index_options", None)
    unknown = sorted(set(options or {}) - {"nlist", "nprobe", "hnsw_m", "ef_search"})
    if unknown:
        raise GenretrError(f"eval.index_options: {', '.join(unknown)} is not one of nlist, nprobe, hnsw_m, ef_search")


def _check_generator(cfg) -> None:
    """The generator an identifier asks (SSID's) resolves; generator=backbone needs an MLLM backbone."""
    scheme = cfg.get("identifier")
    if not isinstance(scheme, DictConfig) or "generator" not in OmegaConf.to_container(scheme, resolve=False):
        return
    try:
        OmegaConf.to_container(cfg.generator, resolve=True)
    except OmegaConfBaseException as e:
        if "backbone.family" in str(e):
            raise GenretrError(f"generator=backbone asks the run's MLLM backbone, and backbone "
                               f"{_get(cfg, 'backbone.model._target_', '?')} is none (use backbone=qwen25vl|llava|"
                               "idefics, or generator=keywords|qwen25vl|llava|idefics)") from None
        raise GenretrError(f"generator: {str(e).splitlines()[0]}") from None


def _check_adapter(cfg) -> None:
    """A generative run's backbone names its decoder adapter (genretr.stages.decoders)."""
    generative = _get(cfg, "method.name") != "embedding"
    if generative and _get(cfg, "backbone.adapter._target_") in (ABSENT, None):
        raise GenretrError("backbone.adapter._target_ is missing: the backbone YAML names how the stages drive its "
                           "decoder, e.g. adapter: {_target_: genretr.stages.decoders.sequence.SequenceDecoder} "
                           "(see conf/backbone/t5.yaml)")
    if generative != (_get(cfg, "method.decoder", None) not in (ABSENT, None)):
        raise GenretrError(f"method.name={_get(cfg, 'method.name')} with method.decoder="
                           f"{'set' if not generative else 'null'}: a generative method names its decoder "
                           "(decoder: ${backbone.adapter}, conf/method/generative.yaml), the embedding one none")


def _check_add_ons(cfg) -> None:
    """The paper add-ons the run turns on are ones its decoder adapter takes (genretr.stages.addons), and early
    stopping is one it can do."""
    if _get(cfg, "method.name") == "embedding" or _get(cfg, "backbone.adapter._target_") in (ABSENT, None):
        return
    from hydra.utils import instantiate

    from genretr.stages.addons import add_ons

    adapter = instantiate(cfg.backbone.adapter)
    add_ons(cfg).check(adapter)
    _check_early_stop(cfg, adapter)


def _check_early_stop(cfg, adapter) -> None:
    """backbone.fit.early_stop (patience > 0) holds out a share in (0, 1) and needs a decoder that validates."""
    if int(_get(cfg, "backbone.fit.early_stop.patience", 0) or 0) == 0:
        return
    if not getattr(adapter, "stops_early", False):
        raise GenretrError(f"backbone.fit.early_stop: {type(adapter).__name__} does not validate on held-out "
                           "queries; set backbone.fit.early_stop.patience=0")
    holdout = float(_get(cfg, "backbone.fit.early_stop.holdout", 0.0))
    if not 0.0 < holdout < 1.0:
        raise GenretrError(f"backbone.fit.early_stop.holdout={holdout} must lie in (0, 1) to stop early")
    if _get(cfg, "train.retrieve", True) is False:
        raise GenretrError("backbone.fit.early_stop holds out training queries, and train.retrieve=false trains on "
                           "none; set backbone.fit.early_stop.patience=0")


def _check_reads_only_text(cfg) -> None:
    """A decoder that reads only words (`backbone.reads_only_text`: CART's, Sec. 3.4) gets an empty sample for a
    query without text (i2t, i2i) and, learning to memorize (GRACE Sec. 3.3: the item itself), for an image,
    audio or video item: refused here rather than at its first training batch."""
    if _get(cfg, "backbone.reads_only_text", False) is not True or _get(cfg, "method.name") == "embedding":
        return
    name = str(_get(cfg, "backbone.model._target_", "the decoder")).rsplit(".", 1)[-1]
    tasks = [str(t) for t in _get(cfg, "eval.tasks", None) or []]
    imageonly = [t for t in tasks if mbeir.QUERY_SIDE.get(t.split("2")[0]) == IMAGE]  # the query's modality
    if imageonly:
        raise GenretrError(f"eval.tasks: {name} reads only words, and the queries of {imageonly[0]} are images")
    if _get(cfg, "train.memorize", False) is not True or int(_get(cfg, "train.memorize_repeat", 1) or 0) == 0:
        return
    if _get(cfg, "dataset.universal", False) is True:  # identify also names the universal pool's items
        tasks += [str(t) for t in _get(cfg, "dataset.tasks", None) or []]
    textless = [t for t in tasks if TASK_TARGET.get(t) in (IMAGE, AUDIO, VIDEO)]
    if textless:
        raise GenretrError(f"train.memorize=true: {name} reads only words, and the {TASK_TARGET[textless[0]]} "
                           f"items of {textless[0]} have none to memorize; set train.memorize=false (CART's recipe: "
                           "query -> identifier only, as experiment=cart_base)")


def _check_scheme_options(cfg) -> None:
    """Every `identifier.*` key is an argument of the scheme's constructor, which checks its value."""
    import inspect

    target = _get(cfg, "identifier._target_")
    node = _get(cfg, "identifier")
    if _get(cfg, "method.name") == "embedding" or target in (ABSENT, None) or node is ABSENT:
        return
    from hydra.utils import get_class

    scheme = get_class(str(target))
    params = inspect.signature(scheme.__init__).parameters
    options = [k for k in node if not str(k).startswith("_")]
    unknown = [k for k in options if k not in params]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise GenretrError(f"identifier.{unknown[0]} is not an option of {scheme.__name__} (identifier._target_); "
                           "its options: " + ", ".join(k for k in params if k != "self"))
    if hasattr(scheme, "check_options"):  # the scheme's own checks of its values, before any stage runs
        checked = inspect.signature(scheme.check_options).parameters
        scheme.check_options(**{k: _get(cfg, f"identifier.{k}") for k in options if k in checked})


# -- values -------------------------------------------------------------------------------------
def _get(cfg: DictConfig, key: str, default=ABSENT):
    return OmegaConf.select(cfg, key, default=default, throw_on_missing=False)


def _show(value) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _choice(cfg, key: str, allowed) -> None:
    value = _get(cfg, key)
    if value is not ABSENT and value not in allowed:
        raise GenretrError(f"{key}={_show(value)} is not one of {', '.join(allowed)}")


def _is_int(value) -> bool:
    """An int, or a string of one (what an `${oc.env:...}` interpolation gives); never a bool or a float."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()) is not None


def _int(cfg, key: str, low: int, nullable: bool, value=ABSENT) -> None:
    value = _get(cfg, key) if value is ABSENT else value
    if value is ABSENT or value is None and nullable:
        return
    if value is None or not _is_int(value) or int(value) < low:
        raise GenretrError(f"{key}={_show(value)} is not an integer >= {low}" + (" or null" if nullable else ""))


def _float(cfg, key: str) -> None:
    value = _get(cfg, key)
    if value is ABSENT:
        return
    try:
        ok = not isinstance(value, bool) and value is not None and float(value) == float(value)  # not NaN
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GenretrError(f"{key}={_show(value)} is not a number")


def _bool(cfg, key: str) -> None:
    value = _get(cfg, key)
    if value is not ABSENT and not isinstance(value, bool):
        raise GenretrError(f"{key}={_show(value)} is not one of true, false")


# -- dataset ------------------------------------------------------------------------------------
def _check_dataset(cfg, kind: str) -> None:
    """The adapter's numeric options; the eval split and (when the run trains) a train split."""
    for key, (low, nullable) in DATASET_INTS[kind].items():
        _int(cfg, f"dataset.{key}", low, nullable)
    if kind == "shapes":
        _shapes_options(cfg)
    if kind == "precomputed":
        _choice(cfg, "dataset.modality", tuple(precomputed.TASK_OF))
    splits = _dataset_splits(cfg, kind)
    if splits is None:
        return
    split = str(_get(cfg, "eval.split", "test"))
    if split not in splits:
        raise GenretrError(f"eval.split={split} is not a split of dataset {cfg.dataset.get('name', kind)} "
                           f"(its splits: {', '.join(splits)})")
    if "train" not in splits:
        needs = _needs_train(cfg)
        if needs:
            raise GenretrError(f"dataset.splits has no train split, but {needs} trains on it: add "
                               "dataset.splits.train, or run method=embedding with encoder.fit.max_epochs=0")


def _shapes_options(cfg) -> None:
    sizes = _get(cfg, "dataset.splits")
    if not isinstance(sizes, DictConfig) or not sizes:
        raise GenretrError(f"dataset.splits={_show(sizes)} must map split names to image counts")
    for split, n in sizes.items():
        _int(cfg, f"dataset.splits.{split}", 1, False, n)
    _bool(cfg, "dataset.universal")
    fraction = _get(cfg, "dataset.edit_fraction")
    _float(cfg, "dataset.edit_fraction")
    if fraction is not ABSENT and not 0.0 <= float(fraction) <= 1.0:
        raise GenretrError(f"dataset.edit_fraction={fraction} is not in [0, 1]")


def _dataset_splits(cfg, kind: str) -> list[str] | None:
    """The splits the dataset config gives (None where only the data knows: precomputed)."""
    if kind == "karpathy":
        return list(karpathy.SPLITS)
    if kind in ("shapes", "mbeir"):
        splits = _get(cfg, "dataset.splits")
        return [str(s) for s in splits] if isinstance(splits, DictConfig) else None
    return None


def _needs_train(cfg) -> str | None:
    """What of this run trains on the train split (None: nothing — an untrained encoder's embeddings)."""
    if _get(cfg, "method.name") != "embedding":
        return f"method={_get(cfg, 'method.name')}"
    epochs = _get(cfg, "encoder.fit.max_epochs", 0)
    return f"encoder.fit.max_epochs={epochs}" if int(epochs) > 0 else None


# -- tasks --------------------------------------------------------------------------------------
def _check_tasks(cfg, kind: str | None) -> None:
    tasks = _get(cfg, "eval.tasks")
    if tasks is ABSENT:
        return
    if not isinstance(tasks, ListConfig) or not tasks:
        raise GenretrError(f"eval.tasks={_show(tasks)} is not a non-empty list of tasks, e.g. eval.tasks=[t2i]")
    for t in tasks:
        if t not in TASK_TARGET:
            raise GenretrError(f"eval.tasks={_show(tasks)}: {t} is not a task (tasks: {', '.join(TASK_TARGET)})")
    served, how = _served(cfg, kind)
    missing = [t for t in tasks if served is not None and t not in served]
    if missing:
        raise GenretrError(f"eval.tasks={_show(tasks)}: dataset {_get(cfg, 'dataset.name', kind)} has no "
                           f"{', '.join(missing)} queries ({how})")
    if _get(cfg, "eval.pool") == UNIVERSAL:
        _check_universal(cfg, kind)


def _served(cfg, kind: str | None) -> tuple[list[str] | None, str]:
    """The tasks the dataset config can serve and where that comes from (None: only the data knows)."""
    if kind == "shapes":
        tasks = _get(cfg, "dataset.tasks", None)
        try:
            tasks = shapes.check_tasks(None if tasks is None else list(tasks))
        except TypeError:
            raise GenretrError(f"dataset.tasks={_show(tasks)} is not a list of tasks") from None
        return tasks, f"dataset.tasks lists {', '.join(tasks)}"
    if kind == "karpathy":
        return list(karpathy.TASKS), f"its tasks: {', '.join(karpathy.TASKS)}"
    if kind == "precomputed":
        task = precomputed.TASK_OF[_get(cfg, "dataset.modality")]
        return [task], f"dataset.modality={_get(cfg, 'dataset.modality')} gives {task}"
    if kind == "mbeir":
        split = str(_get(cfg, "eval.split", "test"))
        sources = _get(cfg, f"dataset.splits.{split}", None) or []
        ids = [MBEIR_TASK_IN_NAME.search(Path(str(s.get("queries", ""))).name) for s in sources]
        if not ids or not all(ids) or not all(int(m.group(1)) in mbeir.TASK_IDS for m in ids):
            return None, ""
        tasks = list(dict.fromkeys(mbeir.TASK_IDS[int(m.group(1))] for m in ids))
        return tasks, f"the query files of dataset.splits.{split} are of {', '.join(tasks)}"
    return None, ""


def _check_universal(cfg, kind: str | None) -> None:
    """eval.pool=universal needs the dataset to build the union pool of the eval split."""
    split = str(_get(cfg, "eval.split", "test"))
    if kind == "shapes" and not _get(cfg, "dataset.universal", False):
        raise GenretrError("eval.pool=universal: dataset shapes builds no universal pool (set dataset.universal=true)")
    if kind == "mbeir" and not (_get(cfg, "dataset.universal", None) or {}).get(split):
        raise GenretrError(f"eval.pool=universal: dataset.universal names no pool file for split {split} "
                           f"(e.g. +dataset.universal.{split}=cand_pool/global/mbeir_union_{split}_cand_pool.jsonl)")
    if kind in ("karpathy", "precomputed"):
        raise GenretrError(f"eval.pool=universal: dataset {_get(cfg, 'dataset.name', kind)} has no universal pool "
                           "(eval.pool=task)")


# -- W&B ----------------------------------------------------------------------------------------
def _check_wandb(cfg) -> None:
    """logger=wandb: `logger.offline` is the one switch; online needs an API key, found as wandb finds it."""
    if not str(_get(cfg, "logger._target_", "") or "").endswith(".WandbLogger"):
        return
    _bool(cfg, "logger.offline")
    offline = _get(cfg, "logger.offline", False)
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if offline and mode == "online":
        raise GenretrError("WANDB_MODE=online is not the switch: unset it and log online with logger.offline=false")
    if not offline and mode == "offline":
        raise GenretrError("logger.offline=false but WANDB_MODE=offline: unset WANDB_MODE to log online, "
                           "or drop logger.offline=false to log offline")
    if not offline and mode not in ("dryrun", "disabled") and not wandb_api_key_found():
        raise GenretrError(f"logger.offline=false logs to W&B at {_wandb_host()} but no API key was found (no "
                           f"WANDB_API_KEY, no entry in {_netrc_path()}): set WANDB_API_KEY or run `wandb login`, "
                           "or log offline without logger.offline=false")


def _wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL") or WANDB_HOST


def _netrc_path() -> Path:
    """The .netrc wandb reads: $NETRC, else ~/.netrc, else ~/_netrc (wandb.sdk.lib.wbauth.wbnetrc)."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    unix, windows = Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def wandb_api_key_found() -> bool:
    """Whether wandb will find credentials without asking: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or a
    password for the W&B host ($WANDB_BASE_URL, default api.wandb.ai) in the .netrc (no network)."""
    if os.environ.get("WANDB_API_KEY", "").strip() or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(_wandb_host()).netloc
    try:
        creds = netrc.netrc(str(_netrc_path())).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])
