"""genretr.fingerprint's code fingerprints (issue 14: a stage's key changes when its code changes and not
when an unrelated module does), on copies of the package so that the working tree is never edited."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genretr.fingerprint import (PACKAGE_DIR, STAGE_ROOTS, closure, code_fingerprint, module_of, stage_fingerprint,
                                 stage_modules, target_modules)

REPO = Path(__file__).resolve().parents[1]


def copy_package(dest: Path) -> Path:
    """genretr's .py files under dest/genretr."""
    shutil.copytree(PACKAGE_DIR, dest / "genretr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest / "genretr"


def append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + code)


def make_train_cfg():
    return {"model": {"_target_": "genretr.backbones.t5_prefix.T5PrefixDecoder"}}  # backbone=t5


@pytest.fixture
def encoder_cfg(make_cfg):
    return make_cfg().encoder  # encoder=minilm_cnn: SmallCNN + MiniLMText (genretr.encoders.towers)


def test_encode_key_follows_its_code_only(tmp_path, encoder_cfg):
    base = copy_package(tmp_path / "a")
    before = stage_fingerprint("encode", encoder_cfg, package_dir=base)
    assert before == stage_fingerprint("encode", encoder_cfg, package_dir=copy_package(tmp_path / "b"))

    unrelated = copy_package(tmp_path / "c")  # the decoder backbone and the report are not the encoder's code
    append(unrelated / "backbones" / "t5_prefix.py", "\nPREFIX_SCALE = 2.0\n")
    append(unrelated / "report.py", "\n\ndef new_table():\n    return 1\n")
    assert stage_fingerprint("encode", encoder_cfg, package_dir=unrelated) == before
    assert stage_fingerprint("train", make_train_cfg(), package_dir=unrelated) != \
        stage_fingerprint("train", make_train_cfg(), package_dir=base)  # ... but the decoder's

    towers = copy_package(tmp_path / "d")
    append(towers / "encoders" / "towers.py", "\nDEFAULT_WIDTH = 32\n")
    assert stage_fingerprint("encode", encoder_cfg, package_dir=towers) != before


def test_comments_docstrings_and_layout_are_not_code(tmp_path, encoder_cfg):
    base = copy_package(tmp_path / "a")
    before = stage_fingerprint("encode", encoder_cfg, package_dir=base)
    towers = base / "encoders" / "towers.py"
    lines = towers.read_text().splitlines()
    doc = ast.parse(towers.read_text()).body[0]
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):  # drop the module docstring
        del lines[doc.lineno - 1:doc.end_lineno]
    towers.write_text('"""Another docstring."""\n# a comment\n\n' + "\n".join(lines) + "\n\n\n")
    from genretr import fingerprint

    fingerprint._parsed.cache_clear(), fingerprint._closure.cache_clear()  # the same path, edited in place
    assert stage_fingerprint("encode", encoder_cfg, package_dir=base) == before


def test_closure_follows_imports_in_functions_relative_imports_and_packages(tmp_path):
    pkg = tmp_path / "genretr"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "import os\n",
        "root.py": "import json\nfrom genretr import helper as H\n\ndef f():\n    from genretr.sub.lazy import g\n",
        "helper.py": "from .sub import sibling\n",
        "unrelated.py": "from genretr.root import f\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from genretr.unrelated import f\n",
        "sub/__init__.py": "from genretr.sub.init_dep import y\n",
        "sub/lazy.py": "def g():\n    import genretr.sub.sibling\n",
        "sub/sibling.py": "",
        "sub/init_dep.py": "",
    }
    for name, code in files.items():
        (pkg / name).write_text(code)
    assert closure("genretr.root", package_dir=pkg) == [
        "genretr.helper", "genretr.root", "genretr.sub", "genretr.sub.init_dep", "genretr.sub.lazy",
        "genretr.sub.sibling"]
    assert closure("genretr.typed", package_dir=pkg) == ["genretr.typed"]  # type-only imports run no code
    fp = code_fingerprint("genretr.root", package_dir=pkg)
    (pkg / "sub" / "init_dep.py").write_text("Z = 1\n")  # a package's __init__ runs on import: its deps count
    from genretr import fingerprint

    fingerprint._parsed.cache_clear()
    assert code_fingerprint("genretr.root", package_dir=pkg) != fp


def test_stage_modules_of_the_default_run(make_cfg):
    cfg = make_cfg()
    encode = stage_modules("encode", cfg.encoder)
    assert {"genretr.stages.encode", "genretr.training", "genretr.encoders.contrastive", "genretr.encoders.towers",
            "genretr.data.tokenizer"} <= set(encode)  # data.tokenizer: imported in a function
    # the run context is named for typing only: its code (and the decoders it reaches) does not key the encoder
    assert not {"genretr.backbones.t5_prefix", "genretr.report", "genretr.stages.train", "genretr.stages.context",
                "genretr.pipeline", "genretr.decoding.engine"} & set(encode)
    assert {"genretr.stages.train", "genretr.stages.context", "genretr.backbones.t5_prefix", "genretr.captioner"} <= set(
        stage_modules("train", cfg.backbone))
    assert "genretr.generators.keywords" in stage_modules("identify", make_cfg("identifier=ssid").identifier)
    assert target_modules(cfg.trainer, cfg.logger) == []  # lightning's, not genretr's
    assert module_of("genretr.encoders.towers.SmallCNN") == "genretr.encoders.towers"
    assert module_of("genretr.data.shapes.build_shapes") == "genretr.data.shapes"


def test_fingerprint_is_stable_across_processes(encoder_cfg):
    from omegaconf import OmegaConf

    roots = STAGE_ROOTS["encode"] + tuple(target_modules(encoder_cfg))
    code = f"from genretr.fingerprint import code_fingerprint; print(code_fingerprint(*{list(reversed(roots))!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "7", "PYTHONPATH": str(REPO)}).stdout.strip()
    assert out == stage_fingerprint("encode", OmegaConf.to_container(encoder_cfg, resolve=True))


def _key_calls(path: Path):
    """(stage name, call) of every config_key(...) call in a module."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "config_key" and node.args:
            first = node.args[0]
            yield (first.value if isinstance(first, ast.Constant) else None), node


def test_every_stage_key_holds_its_code_fingerprint():
    calls = list(_key_calls(PACKAGE_DIR / "stages" / "keys.py"))
    assert {stage for stage, _ in calls} == {*STAGE_ROOTS, "text-features"}
    for stage, call in calls:
        if stage == "text-features":  # the frozen tower's features: keyed by the tower's own module
            assert any(getattr(a.func, "id", None) == "code_fingerprint" for a in call.args if isinstance(a, ast.Call))
            continue
        fps = [a for a in call.args if isinstance(a, ast.Call) and getattr(a.func, "id", None) == "stage_fingerprint"]
        assert [f.args[0].value for f in fps] == [stage], (call.lineno, ast.unparse(call))


def test_keys_are_composed_in_one_module():
    """No module but genretr.stages.keys calls config_key (issue 15: cache keys declared in one place)."""
    callers = {str(path.relative_to(PACKAGE_DIR)) for path in PACKAGE_DIR.rglob("*.py") if list(_key_calls(path))}
    assert callers == {"stages/keys.py"}


def test_keys_describe_the_code_read_when_the_run_started(tmp_path, encoder_cfg):
    """`snapshot()` (genretr.run, as a run starts) reads every module: an edit made while the run goes on does
    not change its keys, which describe the code it imported; the next run sees the edit."""
    from genretr import fingerprint

    base = copy_package(tmp_path / "a")
    assert fingerprint.snapshot(base) == len(list(base.rglob("*.py")))
    before = stage_fingerprint("encode", encoder_cfg, package_dir=base)
    append(base / "encoders" / "towers.py", "\nEDITED_DURING_THE_RUN = 1\n")
    assert stage_fingerprint("encode", encoder_cfg, package_dir=base) == before
    fingerprint._parsed.cache_clear(), fingerprint._closure.cache_clear()  # a new process
    assert stage_fingerprint("encode", encoder_cfg, package_dir=base) != before
