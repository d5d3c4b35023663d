"""Fingerprints that enter the stage keys (`genretr.artifacts.config_key`; issue 14, "provenance and honest
caching"), so that an artifact made by other code or from other input files is never reused.

Code, as DVC keys a stage on its code deps: `code_fingerprint(*roots)` hashes the root modules and every
`genretr` module they import, transitively, found by parsing with `ast` (imports inside functions count;
importing `genretr.a.b` runs `genretr/a/__init__.py`, which counts too).  A module is hashed as its syntax
tree without docstrings, so comments, docstrings and layout do not re-key a stage; any change to what the
code does does.  `stage_fingerprint(stage, *configs)` uses the roots in `STAGE_ROOTS` plus the modules named
by the `_target_`s of the configs the stage instantiates.  Not hashed: third-party packages (their versions
are provenance, recorded with the results) and `genretr/__init__.py` (process setup only: the offline
environment and the config resolvers).

Imports under `if TYPE_CHECKING:` run no code and are not followed (the stages name `RunContext` that way;
the train and index stages, which call its code, list `genretr.stages.context` among their roots).  A stage's
key also holds its upstream keys, so a change upstream re-keys everything downstream.

Data: `source_fingerprint(dataset_cfg)` describes the files a dataset config points at by content (the
Karpathy JSON, M-BEIR's jsonl/tsv, precomputed features): size, mtime and, for text files, a hash of
the bytes; directories (images) by their file list and sizes, not their bytes.  Listing costs about 10 µs
a file when the file system's metadata is cached (COCO's 123k images: about a second a run).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

PACKAGE = "genretr"
PACKAGE_DIR = Path(__file__).resolve().parent
# Plumbing that cannot change a stage's output (the cache, its keys, provenance, error classes): neither hashed
# nor followed, so an edit to a log line of the lock does not invalidate every trained model.
PLUMBING = frozenset({"genretr.artifacts", "genretr.fingerprint", "genretr.provenance", "genretr.errors"})

STAGE_ROOTS: dict[str, tuple[str, ...]] = {
    "dataset": ("genretr.stages.dataset",),
    "encode": ("genretr.stages.encode", "genretr.training"),
    # the scheme's context (the captioner-written descriptions, the towers' vectors of fused rows: the run
    # context's pair_parts), the scheme the run context builds and the IdTable it fills
    "identify": ("genretr.stages.identify", "genretr.stages.context", "genretr.identifiers.base"),
    # the scheme's own cache across identify keys (SSID's generator answers): the scheme's code, not the plumbing
    "identify-cache": ("genretr.identifiers.base", "genretr.stages.captions"),
    # the run context's query vocabulary, rationale and text embedding enter the samples and the model
    "train": ("genretr.stages.train", "genretr.stages.context", "genretr.training"),
    "index": ("genretr.stages.index", "genretr.stages.context"),
    "captions": ("genretr.stages.captions",),
}
TEXT_SUFFIXES = frozenset({".json", ".jsonl", ".tsv", ".txt", ".csv"})


# -- code ---------------------------------------------------------------------------------------------------
def _module_file(name: str, package_dir: Path) -> Path | None:
    """The file of module `name` (genretr.x.y) under `package_dir`, or None when there is none."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = package_dir.joinpath(*name.split(".")[1:])
    if name != PACKAGE and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def module_of(target: str, package_dir: Path = PACKAGE_DIR) -> str | None:
    """The genretr module that defines a `_target_` (genretr.encoders.towers.SmallCNN -> genretr.encoders.towers)."""
    parts = target.split(".")
    for n in range(len(parts), 1, -1):
        if _module_file(".".join(parts[:n]), package_dir) is not None:
            return ".".join(parts[:n])
    return None


def _type_checking_block(node) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@lru_cache(maxsize=None)
def _parsed(name: str, package_dir: Path) -> tuple[str, tuple[str, ...]]:
    """(digest of the module's code, the genretr modules it imports anywhere in its body)."""
    path = _module_file(name, package_dir)
    if path is None:
        raise ModuleNotFoundError(f"{name} is not a module under {package_dir}")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    typing_only = {id(n) for block in ast.walk(tree) if _type_checking_block(block)  # they run no code
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: from the module's package upwards
                anchor = own_package.split(".")[: len(own_package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:  # `from genretr import encode_stage`: the submodule, else the module itself
                sub = f"{base}.{a.name}"
                imported.add(sub if _module_file(sub, package_dir) is not None else base)
    for node in ast.walk(tree):  # docstrings are not code
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    deps = set()
    for mod in imported:
        resolved = mod if _module_file(mod, package_dir) is not None else module_of(mod, package_dir)
        if resolved is not None:
            deps.add(resolved)
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest(), tuple(sorted(deps))


def imports(name: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The genretr modules that module `name` imports when it runs (anywhere in its body; not under
    `if TYPE_CHECKING:`)."""
    return list(_parsed(name, Path(package_dir))[1])


def snapshot(package_dir: Path = PACKAGE_DIR) -> int:
    """Read every genretr module now (cached for this process): `genretr.run` calls it as a run starts, with
    `provenance.git_state()`, so that the stage keys describe the code the run started with even when a
    file is edited while it runs.  Returns the number of modules read."""
    package_dir = Path(package_dir)
    names = []
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        names.append(".".join((PACKAGE, *parts[:-1])) if parts[-1] == "__init__" else ".".join((PACKAGE, *parts)))
    for name in names:
        if name != PACKAGE:
            _parsed(name, package_dir)
    return len(names)


def _parents(name: str) -> list[str]:
    """The packages whose __init__ runs on importing `name` (genretr's own excluded)."""
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(2, len(parts))]


@lru_cache(maxsize=None)
def _closure(roots: tuple[str, ...], package_dir: Path) -> tuple[str, ...]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name == PACKAGE or name in PLUMBING:
            continue
        seen.add(name)
        todo.extend(p for p in _parents(name) if _module_file(p, package_dir) is not None)
        todo.extend(_parsed(name, package_dir)[1])
    return tuple(sorted(seen))


def closure(*roots: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """`roots` and the genretr modules they import, transitively (sorted; see the module docstring)."""
    return list(_closure(tuple(sorted(set(roots))), Path(package_dir)))


def code_fingerprint(*roots: str, package_dir: Path = PACKAGE_DIR) -> str:
    """A short hash of the code of `closure(*roots)`: module names and their syntax trees (cached per process)."""
    package_dir = Path(package_dir)
    digests = [(name, _parsed(name, package_dir)[0]) for name in closure(*roots, package_dir=package_dir)]
    return hashlib.sha1(json.dumps(digests).encode()).hexdigest()[:16]


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def target_modules(*configs, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The genretr modules named by the `_target_`s anywhere in `configs` (third-party targets are left out)."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and (mod := module_of(target, package_dir)) is not None:
                found.add(mod)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for cfg in configs:
        walk(_plain(cfg))
    return sorted(found)


def stage_modules(stage: str, *configs, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The modules whose code keys `stage`: its `STAGE_ROOTS`, the `_target_` modules of `configs`, their imports."""
    return closure(*STAGE_ROOTS[stage], *target_modules(*configs, package_dir=package_dir), package_dir=package_dir)


def stage_fingerprint(stage: str, *configs, package_dir: Path = PACKAGE_DIR) -> str:
    """`code_fingerprint` of `stage`'s roots and of the `_target_` modules of the configs it instantiates."""
    return code_fingerprint(*STAGE_ROOTS[stage], *target_modules(*configs, package_dir=package_dir),
                            package_dir=package_dir)


# -- data ---------------------------------------------------------------------------------------------------
def _file_digest(path: str) -> dict:
    """A text file by its bytes' hash (a copy or a touch keeps its key); another file by size and mtime."""
    st = os.stat(path)
    if Path(path).suffix.lower() not in TEXT_SUFFIXES:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": st.st_size, "sha1": h.hexdigest()}


def _dir_digest(path: str) -> dict:
    """A directory by its file list and sizes (symlinked folders followed, each folder once), not its bytes."""
    h, n = hashlib.sha1(), 0
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(path, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already listed
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(top, name)
            try:
                size = os.stat(full).st_size
            except OSError:  # a dangling link
                size = -1
            h.update(f"{os.path.relpath(full, path)}\t{size}\n".encode())
            n += 1
    return {"files": n, "listing_sha1": h.hexdigest()}


def source_fingerprint(dataset_cfg) -> dict:
    """{config key: content descriptor} of every string in the dataset config (but `_target_` and `name`) that
    names an existing file or directory, as given or under the config's `root` (M-BEIR's relative paths);
    {} for a generated dataset.  `root` itself is not listed: it is where the named files are looked for
    (M-BEIR's root holds millions of images, which its jsonl files name)."""
    plain = _plain(dataset_cfg)
    root = plain.get("root") if isinstance(plain, dict) else None
    out: dict[str, dict] = {}

    def walk(node, at: str):
        if isinstance(node, dict):
            for k in sorted(node):
                if k not in ("_target_", "name"):
                    walk(node[k], f"{at}.{k}" if at else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{at}[{i}]")
        elif isinstance(node, str) and node and at != "root":
            for path in dict.fromkeys([node, *([os.path.join(str(root), node)] if root and at != "root" else [])]):
                if os.path.isfile(path):
                    out[at] = _file_digest(path)
                    break
                if os.path.isdir(path):
                    out[at] = _dir_digest(path)
                    break

    walk(plain, "")
    return out
