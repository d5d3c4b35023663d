"""`dataset=mbeir`: M-BEIR (UniIR, Wei et al. 2023), the benchmark of GENIUS Sec. 5.1 and
App. A, read into the shared schema (`schema.py`).

M-BEIR as distributed (HF `TIGER-Lab/M-BEIR`), paths relative to `root`:

    query/{train,val,test}/mbeir_<dataset>[_task<N>]_<split>.jsonl   one query per line:
        qid ("9:17", dataset id ":" number), query_txt, query_img_path, query_modality,
        pos_cand_list, neg_cand_list (dids), task_id (0..8, UniIR's MBEIR_TASK)
    query/union_train/mbeir_union_up_train.jsonl   every train file, upsampled (qids repeat)
    qrels/{train,val,test}/mbeir_<dataset>[_task<N>]_<split>_qrels.txt   TREC: qid 0 did relevance task_id
    cand_pool/local/mbeir_<dataset>_task<N>[_test]_cand_pool.jsonl   task-specific pools
    cand_pool/global/mbeir_union_<split>_cand_pool.jsonl              the universal pool
        one candidate per line: did, txt, img_path, modality
    instructions/query_instructions.tsv   query_modality, cand_modality, dataset, dataset_id, prompt...
    mbeir_images/...                      `*_img_path` are relative to root

A config lists, per split, sources `{queries: FILE, pool: FILE}`, each with an optional `qrels`.  Each
query's task comes from its `task_id`; its task-specific pool is its source's pool restricted to the
task's target modality (M-BEIR's local pools hold one modality, so this is the pool as-is); sources
of one split that share a task share one pool (their union).  `universal: {split: FILE}`
adds `pools["universal"]`, the global pool that universal retrieval searches (GENIUS Table 2).
A config without a train split (test queries only) gets an empty one: an untrained encoder's
embeddings need none, and runs that train on it are refused first (genretr.validate).

Qrels (`mbeir_qrels.py`): a source without a `qrels` key reads M-BEIR's file of its query file,
`qrels/<dir>/<name>_qrels.txt` for `query/<dir>/<name>.jsonl`, when it exists; `qrels: FILE` names
one (it must exist), `qrels: null` reads none.  The qrels must agree with every query's
`pos_cand_list` (and task_id); when the whole query file is read, every qrels qid must be a query.

Training follows UniIR's MBEIRMainDataset in train mode: a train query's relevant items are all
its positives.  UniIR's union training file (`query/union_train/mbeir_union_up_train.jsonl`)
repeats queries to upsample small datasets: in the train split, identical repeats of a (task, qid)
collapse into its first entry (the number dropped is logged; no sample weight is kept), while a
repeat that differs (text, image, modality or positives) is an error, as is any repeat elsewhere.

Evaluation follows UniIR's eval mode: in every other split a query's relevant items are its
positives from its own dataset (the did prefix matches the qid prefix; OVEN/InfoSeek list some
positives of the other dataset).  Every relevant item must be in the query's pool, and in the
universal pool when there is one.
Instructions are the TSV's prompts for (dataset id, query modality, target modality); a query
takes one by a hash of its qid (deterministic; UniIR samples one at random per epoch).

Modalities map one to one: "image", "text", "image,text" ("text,image" too).  Item ids are
M-BEIR dids, query ids `<split>/<task>/<qid>`.  Every bad input raises `DataError` naming the
file and the entry (jsonl line, TSV line) before anything is returned.
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, replace

from genretr.data import textfile
from genretr.data.images import ImageFiles
from genretr.data.mbeir_qrels import Qrels, standard_path
from genretr.data.schema import IMAGE, INSTRUCTIONS, PAIR, TASK_TARGET, TEXT, UNIVERSAL, Item, Query, \
    RetrievalDataset, Split
from genretr.errors import DataError, GenretrError

log = logging.getLogger(__name__)

# UniIR's MBEIR_TASK ids (5, "image -> text,image", is unused).
TASK_IDS = {0: "t2i", 1: "t2t", 2: "t2it", 3: "i2t", 4: "i2i", 6: "it2t", 7: "it2i", 8: "it2it"}
TASK_NUMBER = {task: tid for tid, task in TASK_IDS.items()}
TRAIN = "train"  # the split training reads (schema.RetrievalDataset.training_pairs); every other one is evaluated
SOURCE_KEYS = ({"queries", "pool"}, {"queries", "pool", "qrels"})  # required, allowed
MODALITIES = {"image": IMAGE, "text": TEXT, "image,text": PAIR, "text,image": PAIR}
QUERY_SIDE = {"t": TEXT, "i": IMAGE, "it": PAIR}  # task name prefix → query modality


@dataclass(frozen=True)
class Candidate:
    did: str
    modality: str
    text: str | None
    img_path: str | None
    where: tuple[str, str]  # (file, "line N"), for error messages


@dataclass(frozen=True)
class RawQuery:
    qid: str
    task: str
    modality: str
    text: str | None
    img_path: str | None
    positives: tuple[str, ...]
    where: tuple[str, str]
    relevant: tuple[str, ...] = ()  # set once its pool is known (`_relevant`)
    instruction: str = ""


def read_jsonl(path: str, limit: int | None = None):
    """("line N", object) per non-blank line of an M-BEIR JSON-lines file (genretr.data.textfile)."""
    return textfile.read_jsonl(path, "see conf/dataset/mbeir.yaml; nothing is downloaded", limit)


def _field(path: str, line: str, raw: dict, key: str, needed: bool) -> str | None:
    """A string field; None when absent or empty, a DataError when `needed`."""
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(path, line, f"'{key}' is not a string")
    value = value.strip() if value else None
    if needed and not value:
        raise DataError(path, line, f"missing or empty '{key}'")
    return value


def _modality(path: str, line: str, raw: dict, key: str) -> str:
    m = _field(path, line, raw, key, True)
    if m not in MODALITIES:
        raise DataError(path, line, f"unknown {key} {m!r}; expected one of {', '.join(MODALITIES)}")
    return MODALITIES[m]


def parse_candidate(path: str, line: str, raw: dict) -> Candidate:
    did = _field(path, line, raw, "did", True)
    line = f"{line} (did={did})"
    modality = _modality(path, line, raw, "modality")
    text = _field(path, line, raw, "txt", modality in (TEXT, PAIR))
    img = _field(path, line, raw, "img_path", modality in (IMAGE, PAIR))
    return Candidate(did, modality, text if modality != IMAGE else None, img if modality != TEXT else None,
                     (path, line))


def parse_query(path: str, line: str, raw: dict) -> RawQuery:
    qid = _field(path, line, raw, "qid", True)
    line = f"{line} (qid={qid})"
    modality = _modality(path, line, raw, "query_modality")
    if "task_id" not in raw:
        raise DataError(path, line, "missing 'task_id'")
    tid = raw["task_id"]
    task = TASK_IDS.get(tid) if isinstance(tid, int) and not isinstance(tid, bool) else None
    if task is None:
        raise DataError(path, line, f"unknown task_id {tid!r}; expected one of {sorted(TASK_IDS)}")
    if QUERY_SIDE[task.split("2")[0]] != modality:
        raise DataError(path, line, f"query_modality {modality!r} does not fit task_id {tid} ({task})")
    positives = raw.get("pos_cand_list")
    if not isinstance(positives, list) or not positives or not all(isinstance(p, str) for p in positives):
        raise DataError(path, line, "missing, empty or malformed 'pos_cand_list' (a list of did strings)")
    text = _field(path, line, raw, "query_txt", modality in (TEXT, PAIR))
    img = _field(path, line, raw, "query_img_path", modality in (IMAGE, PAIR))
    return RawQuery(qid, task, modality, text if modality != IMAGE else None, img if modality != TEXT else None,
                    tuple(positives), (path, line))


def load_instructions(path: str) -> dict[tuple[str, str, str], list[str]]:
    """(dataset id, query modality, candidate modality) → prompts, from M-BEIR's TSV (header skipped)."""
    prompts = {}
    for n, line in textfile.text_lines(path, "set dataset.instructions: null to use genretr's"):
        if n == 1 or not line.strip():  # the header, or a blank line
            continue
        parts = [p.strip() for p in line.split("\t")]
        texts = [p for p in parts[4:] if p]
        if len(parts) < 5 or not texts:
            raise DataError(path, f"line {n}", "expected query_modality, cand_modality, dataset, dataset_id and "
                                               "at least one prompt, tab-separated")
        for col, m in enumerate(parts[:2]):
            if m not in MODALITIES:
                raise DataError(path, f"line {n}", f"unknown modality {m!r} in column {col + 1}")
        prompts[(parts[3], MODALITIES[parts[0]], MODALITIES[parts[1]])] = texts
    return prompts


class _Pools:
    """Candidates by did across every pool file read, each file read once."""

    def __init__(self, max_pool_size: int | None):
        self.cands: dict[str, Candidate] = {}
        self.files: dict[str, list[str]] = {}
        self.max_pool_size = max_pool_size

    def read(self, path: str) -> list[str]:
        if path not in self.files:
            dids, seen = [], set()
            for line, raw in read_jsonl(path):
                c = parse_candidate(path, line, raw)
                if c.did in seen:
                    raise DataError(path, c.where[1], f"duplicate did {c.did!r}")
                seen.add(c.did)
                old = self.cands.setdefault(c.did, c)
                if (old.modality, old.text, old.img_path) != (c.modality, c.text, c.img_path):
                    raise DataError(path, c.where[1], f"did {c.did!r} differs from {old.where[0]} [{old.where[1]}]")
                dids.append(c.did)
            self.files[path] = dids
        return self.files[path]

    def subset(self, path: str, keep: set[str]) -> list[str]:
        """The pool file's dids, cut to the first `max_pool_size` plus every did in `keep`."""
        dids = self.read(path)
        if self.max_pool_size is None:
            return dids
        return [d for n, d in enumerate(dids) if n < self.max_pool_size or d in keep]


def _relevant(q: RawQuery, pool: set[str], pool_path: str, cands: dict[str, Candidate],
              same_dataset: bool) -> tuple[str, ...]:
    """The query's positives, each in its pool; with `same_dataset` (UniIR's evaluation rule, not its
    training's) only those from the query's own dataset."""
    own = tuple(dict.fromkeys(q.positives))
    if same_dataset:
        prefix = q.qid.split(":")[0]
        own = tuple(p for p in own if p.split(":")[0] == prefix)
        if not own:
            raise DataError(*q.where, f"no positive candidate from the query's dataset {prefix!r}")
    for did in own:
        if did not in pool:
            raise DataError(*q.where, f"positive candidate {did!r} is not in the pool {pool_path}")
        if cands[did].modality != TASK_TARGET[q.task]:
            raise DataError(*q.where, f"positive candidate {did!r} is {cands[did].modality!r}, "
                                      f"but {q.task} retrieves {TASK_TARGET[q.task]!r}")
    return own


def _instruction(q: RawQuery, prompts: dict | None, tsv: str | None) -> str:
    if prompts is None:
        return INSTRUCTIONS[q.task]
    key = (q.qid.split(":")[0], q.modality, TASK_TARGET[q.task])
    if key not in prompts:
        raise DataError(*q.where, f"no instruction for dataset {key[0]}, {key[1]} -> {key[2]} in {tsv}")
    options = prompts[key]
    return options[zlib.crc32(q.qid.encode()) % len(options)]


def _check_config(splits, universal, max_queries_per_file, max_pool_size):
    if not isinstance(splits, dict) or not splits:
        raise GenretrError("dataset.splits must map split names to lists of {queries: FILE, pool: FILE}")
    required, allowed = SOURCE_KEYS
    for split, sources in splits.items():
        if not isinstance(sources, list) or not sources or not all(
                isinstance(s, dict) and required <= set(s) <= allowed for s in sources):
            raise GenretrError(f"dataset.splits.{split} must be a non-empty list of "
                               f"{{queries: FILE, pool: FILE}}, each with an optional qrels: FILE (or null)")
        for s in sources:
            if s.get("qrels") is not None and not isinstance(s["qrels"], str):
                raise GenretrError(f"dataset.splits.{split}: qrels={s['qrels']!r} is not a file name or null")
    unknown = set(universal or {}) - set(splits)
    if unknown:
        raise GenretrError(f"dataset.universal names splits not in dataset.splits: {sorted(unknown)}")
    for key, v in (("max_queries_per_file", max_queries_per_file), ("max_pool_size", max_pool_size)):
        if v is not None and int(v) < 1:
            raise GenretrError(f"dataset.{key} must be >= 1 or null, got {v}")


def _qrels(src: dict, at) -> Qrels | None:
    """The source's qrels: `qrels: FILE`, none for `qrels: null`, else M-BEIR's file of its query file if there."""
    if "qrels" in src:
        return Qrels(at(src["qrels"])) if src["qrels"] else None
    rel = standard_path(src["queries"])
    return Qrels(at(rel)) if rel and os.path.isfile(at(rel)) else None


def _differs(a: RawQuery, b: RawQuery) -> str | None:
    """The first field in which two entries of one (task, qid) differ (None: a repeat)."""
    for key, x, y in (("query_modality", a.modality, b.modality), ("query_txt", a.text, b.text),
                      ("query_img_path", a.img_path, b.img_path),
                      ("pos_cand_list", set(a.positives), set(b.positives))):
        if x != y:
            return key
    return None


def read_queries(split: str, sources: list[dict], at, pools: _Pools, limit: int | None, prompts: dict | None,
                 tsv: str | None) -> list[tuple[RawQuery, str]]:
    """One split's queries, each with its relevant items and instruction, and its pool file.

    In the train split, identical repeats of a query (UniIR's upsampled union file) collapse into its
    first entry; a repeat that differs, or any repeat in another split, is a DataError."""
    out, seen, repeats = [], {}, 0
    for src in sources:
        qpath, ppath = at(src["queries"]), at(src["pool"])
        pool, qrels, asked = set(pools.read(ppath)), _qrels(src, at), set()
        for line, raw in read_jsonl(qpath, limit):
            q = parse_query(qpath, line, raw)
            if qrels is not None:
                qrels.check(q.qid, TASK_NUMBER[q.task], q.positives, q.where)
                asked.add(q.qid)
            if (q.task, q.qid) in seen:
                first = out[seen[q.task, q.qid]][0]
                also = f"{first.where[0]} [{first.where[1]}]"
                if split != TRAIN:
                    raise DataError(*q.where, f"duplicate qid {q.qid!r} for {q.task} (also {also}; only the "
                                              f"{TRAIN} split collapses repeated queries)")
                field = _differs(first, q)
                if field:
                    raise DataError(*q.where, f"duplicate qid {q.qid!r} for {q.task} conflicts with {also}: "
                                              f"its {field} differs")
                repeats += 1
                continue
            seen[q.task, q.qid] = len(out)
            out.append((replace(q, relevant=_relevant(q, pool, ppath, pools.cands, same_dataset=split != TRAIN),
                                instruction=_instruction(q, prompts, tsv)), ppath))
        if qrels is not None and limit is None:
            qrels.check_all_asked(asked, qpath)
    if repeats:
        log.info("mbeir %s: %d repeated entries (UniIR's upsampling) collapsed into their first; %d queries",
                 split, repeats, len(out))
    return out


def split_pools(qs: list[tuple[RawQuery, str]], pools: _Pools, universal: str | None) -> dict[str, list[str]]:
    """Task → the union of its sources' pools (target modality only); plus the universal pool."""
    keep = {r for q, _ in qs for r in q.relevant}
    out = {}
    for task in dict.fromkeys(q.task for q, _ in qs):
        members: dict[str, None] = {}
        for ppath in dict.fromkeys(p for q, p in qs if q.task == task):
            members.update((d, None) for d in pools.subset(ppath, keep)
                           if pools.cands[d].modality == TASK_TARGET[task])
        out[task] = list(members)
    if universal:
        out[UNIVERSAL] = pools.subset(universal, keep)
        members = set(out[UNIVERSAL])
        for q, _ in qs:
            missing = [r for r in q.relevant if r not in members]
            if missing:
                raise DataError(*q.where, f"positive candidate {missing[0]!r} is not in the universal pool {universal}")
    return out


def image_files(refs: dict[str, tuple[str, str]], at, size: int, name: str) -> ImageFiles:
    """Every referenced image (relative path → the entry naming it), in order, checked to exist now and
    decoded when the dataset artifact is written (genretr.data.images)."""
    for rel, where in refs.items():  # cheap existence check before the slow decode
        if not os.path.isfile(at(rel)):
            raise DataError(*where, f"image file not found: {at(rel)}")
    return ImageFiles([at(rel) for rel in refs], size, list(refs.values()), name)


def build_mbeir(root: str, splits: dict, universal: dict | None = None, instructions: str | None = None,
                image_size: int = 64, max_queries_per_file: int | None = None, max_pool_size: int | None = None,
                name: str = "mbeir") -> RetrievalDataset:
    """M-BEIR query and pool files → one RetrievalDataset with task-specific and universal pools.

    `max_queries_per_file` keeps each query file's first N queries; `max_pool_size` keeps each
    pool file's first N candidates plus every positive of the kept queries (quick runs).
    """
    _check_config(splits, universal, max_queries_per_file, max_pool_size)
    root, universal = str(root), dict(universal or {})
    at = lambda rel: os.path.join(root, str(rel))
    tsv = at(instructions) if instructions else None
    prompts = load_instructions(tsv) if tsv else None
    pools = _Pools(None if max_pool_size is None else int(max_pool_size))
    limit = None if max_queries_per_file is None else int(max_queries_per_file)
    queries = {split: read_queries(split, sources, at, pools, limit, prompts, tsv)
               for split, sources in splits.items()}
    pool_ids = {split: split_pools(qs, pools, at(universal[split]) if universal.get(split) else None)
                for split, qs in queries.items()}

    item_ids = list(dict.fromkeys(d for ps in pool_ids.values() for pool in ps.values() for d in pool))
    refs: dict[str, tuple[str, str]] = {}  # image path → the first entry that shows it
    for c in (pools.cands[d] for d in item_ids):
        if c.img_path:
            refs.setdefault(c.img_path, c.where)
    for q, _ in (x for qs in queries.values() for x in qs):
        if q.img_path:
            refs.setdefault(q.img_path, q.where)
    images = image_files(refs, at, int(image_size), name)
    image_index = {rel: n for n, rel in enumerate(refs)}

    items = {d: Item(d, pools.cands[d].modality, image=image_index.get(pools.cands[d].img_path),
                     text=pools.cands[d].text) for d in item_ids}
    built = {split: Split([Query(f"{split}/{q.task}/{q.qid}", q.task, q.relevant, q.instruction,
                                 image=image_index.get(q.img_path), text=q.text) for q, _ in qs], pool_ids[split])
             for split, qs in queries.items()}
    built.setdefault(TRAIN, Split())
    return RetrievalDataset(name, images, items, built)
