"""genretr's imports run one way (issue 15): data → models → decoding → stages → the run.  Read from the
source with `genretr.fingerprint.imports` (every import a module runs, lazy ones included; not those under
`if TYPE_CHECKING:`)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from genretr import fingerprint

PACKAGE_DIR = Path(fingerprint.PACKAGE_DIR)
# lowest first; a module may import its own layer and those below
LAYERS = [
    ("genretr.errors", "genretr.artifacts", "genretr.fingerprint", "genretr.provenance", "genretr.resolvers",
     "genretr.hardware", "genretr.heap", "genretr.stats", "genretr.training", "genretr.weights"),
    ("genretr.data",),
    ("genretr.encoders", "genretr.quantizers", "genretr.identifiers", "genretr.generators"),
    ("genretr.backbones",),
    ("genretr.decoding",),
    ("genretr.evaluation", "genretr.samples", "genretr.captioner", "genretr.rationale", "genretr.describe",
     "genretr.mllm_stage"),
    ("genretr.stages",),
    ("genretr.pipeline", "genretr.validate"),
    ("genretr.run", "genretr.report", "genretr.report_stats", "genretr.reproduce", "genretr.bench", "genretr.search",
     "genretr.add", "genretr.additions"),
]
# Known upward imports, each with its reason; the test fails when one disappears, so the list only shrinks.
# None is left: GRACE's semantic IDs get their captioner through the IdentifierContext, and the MLLM generator
# lives beside the MLLM backbone it loads (genretr.backbones.mllm_generator).
EXCEPTIONS: set[tuple[str, str]] = set()
STAGE_MODULES = [f"genretr.stages.{s}" for s in ("dataset", "encode", "identify", "train", "index", "evaluate")]


def modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("genretr", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        out.append(".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts))
    return [m for m in out if m != "genretr"]


def layer(module: str) -> int | None:
    for i, group in enumerate(LAYERS):
        if any(module == g or module.startswith(g + ".") for g in group):
            return i
    return None


def graph() -> dict[str, list[str]]:
    return {m: [d for d in fingerprint.imports(m) if d != "genretr"] for m in modules()}


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer(m) is None] == []


def test_no_module_imports_a_higher_layer():
    upward = {(m, d) for m, deps in graph().items() for d in deps if layer(d) > layer(m)}
    assert upward - EXCEPTIONS == set()
    assert EXCEPTIONS - upward == set(), "an exception no longer happens: remove it from EXCEPTIONS"


def test_no_import_cycle():
    g, state, cycles = graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for d in g.get(m, []):
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in g:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_only_the_pipeline_sequences_the_stages():
    for m, deps in graph().items():
        if m != "genretr.pipeline":
            assert not set(deps) & set(STAGE_MODULES), f"{m} imports a stage module"


def test_no_module_imports_a_private_name_of_another():
    found = []
    for m in modules():
        for node in ast.walk(ast.parse(_source(m))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("genretr"):
                found += [f"{m}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert found == []


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_stages_read_the_context_through_its_public_members(stage):
    private = [n.attr for n in ast.walk(ast.parse(_source(stage))) if isinstance(n, ast.Attribute)
               and isinstance(n.value, ast.Name) and n.value.id == "ctx" and n.attr.startswith("_")]
    assert private == []


def test_no_scheme_imports_a_sibling_scheme():
    shared = {"genretr.identifiers", "genretr.identifiers.base", "genretr.identifiers.common",
              "genretr.identifiers.saved_captioner"}  # helpers, not schemes
    schemes = [m for m in modules() if m.startswith("genretr.identifiers.") and m not in shared]
    assert len(schemes) >= 9
    assert {(m, d) for m in schemes for d in fingerprint.imports(m) if d in schemes} == set()


def test_kmeans_lives_in_quantizers():
    outside = [m for m in modules() if not m.startswith("genretr.quantizers")
               and any(isinstance(n, ast.FunctionDef) and "kmeans" in n.name.lower()
                       for n in ast.walk(ast.parse(_source(m))))]
    assert outside == []


def _source(module: str) -> str:
    path = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def test_stages_never_branch_on_backbone_kind_or_method():
    """What differs between kinds of decoder is its adapter's (genretr.stages.decoders) and an add-on is a
    component (genretr.stages.addons): no condition in a stage reads the method, the backbone's kind or input."""
    flags = ("method.name", "backbone.kind", "backbone.input", "backbone.get", "backbone.model._target_")
    found = []
    for path in sorted((PACKAGE_DIR / "stages").rglob("*.py")):
        if "decoders" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            tests = [node.test] if isinstance(node, (ast.If, ast.IfExp, ast.While)) else []
            tests += node.ifs if isinstance(node, ast.comprehension) else []
            found += [f"{path.name}:{t.lineno}: {ast.unparse(t)}" for t in tests if any(f in ast.unparse(t) for f in flags)]
    assert found == []
