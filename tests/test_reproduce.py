"""genretr.reproduce and the Makefile's `reproduce-%` rule (issue 15): every preset-backed target runs the
commands its hand-written Makefile rule ran before, from the preset's `report:` block.  No training."""
from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from genretr import reproduce
from genretr.report import group_rows, load_reference
from genretr.reproduce import ReproduceError, commands, main, report_block
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parents[1]
RUN = "PY -m genretr.run -m seed=0,1,2 hydra/launcher=parallel hydra.launcher.n_jobs=2"
REPORT = "PY -m genretr.report"
CART = "--reference experiments/cart/{}_flickr30k.yaml --metrics R@1,R@5,R@10,MRR@10"
GENIUS = "--reference experiments/genius/{}_mbeir.yaml --tasks t2i,i2t,t2t,t2it,it2i --metrics R@5"


def plain(preset: str, report_options: str) -> list[str]:
    """A one-sweep target's commands as the Makefile wrote them (SEEDS=3, JOBS=2, no ARGS)."""
    return [f"rm -rf multirun/{preset}", f"{RUN} experiment={preset} hydra.sweep.dir=multirun/{preset}",
            f"{REPORT} multirun/{preset} {report_options}"]


# What `make -n <target> PY=PY` printed before the pattern rule (Makefile at 372f7c0), copied by hand.
OLD_MAKEFILE = {
    "reproduce-grace-table1": [
        "rm -rf multirun/grace_table1",
        f"{RUN} experiment=grace_table1 hydra.sweep.dir=multirun/grace_table1",
        f"{RUN} method=embedding progress=false hydra.sweep.dir=multirun/grace_table1/embedding",
        f"{REPORT} multirun/grace_table1 --reference experiments/grace/table1_flickr30k.yaml"
        " --out multirun/grace_table1/table.md"],
    "reproduce-grace-table2": plain(
        "grace_table2", "--reference experiments/grace/table2_flickr30k.yaml --out multirun/grace_table2/table.md"),
    "reproduce-grace-beam": plain(
        "grace_beam", "--out multirun/grace_beam/table.md --plot decoding.num_beams --series identifier"
        " --metrics R@1,R@10 --png multirun/grace_beam/beam.png"),
    "reproduce-grace-table3": plain(
        "grace_table3", "--reference experiments/grace/table3_flickr30k.yaml --out multirun/grace_table3/table.md"),
    "reproduce-grace-poolsize": plain(
        "grace_poolsize", "--out multirun/grace_poolsize/table.md --plot dataset.splits.test --series identifier"
        " --metrics R@1,R@10 --png multirun/grace_poolsize/poolsize.png"),
    "reproduce-cart-table4": plain("cart_table4", CART.format("table4") + " --out multirun/cart_table4/table.md"),
    "reproduce-cart-table5": plain(
        "cart_table5", CART.format("table5") + " --out multirun/cart_table5/table.md"
        " --plot backbone.model.encoder_layers --png multirun/cart_table5/layers.png"),
    "reproduce-cart-table6": plain(
        "cart_table6", CART.format("table6") + " --out multirun/cart_table6/table.md"
        " --plot identifier.codebook_size --series identifier.k --png multirun/cart_table6/size.png"),
    "reproduce-cart-table7": plain("cart_table7", CART.format("table7") + " --out multirun/cart_table7/table.md"),
    "reproduce-cart-table10": plain(
        "cart_table10", CART.format("table10") + " --out multirun/cart_table10/table.md"
        " --plot backbone.model.decoder_layers --png multirun/cart_table10/layers.png"),
    "reproduce-cart-table11": plain("cart_table11", CART.format("table11") + " --out multirun/cart_table11/table.md"),
    "reproduce-cart-vs-grace": [
        "rm -rf multirun/cart_vs_grace",
        f"{RUN} experiment=cart_vs_grace hydra.sweep.dir=multirun/cart_vs_grace",
        f"{RUN} experiment=cart_vs_grace identifier=structured,string backbone=t5 train.memorize=true"
        " train.pseudo_queries_for=missing"
        " hydra.sweep.dir=multirun/cart_vs_grace/grace_recipe",
        f"{REPORT} multirun/cart_vs_grace {CART.format('table3')} --out multirun/cart_vs_grace/table.md"],
    "reproduce-genius-table1": [
        "rm -rf multirun/genius_table1",
        f"{RUN} experiment=genius_table1 hydra.sweep.dir=multirun/genius_table1",
        f"{RUN} experiment=genius_table1 method=embedding hydra.sweeper.params=null"
        " hydra.sweep.dir=multirun/genius_table1/embedding",
        f"{REPORT} multirun/genius_table1 --reference experiments/genius/table1_mbeir.yaml --metrics R@5"
        " --out multirun/genius_table1/table.md"],
    "reproduce-genius-table2": [
        "rm -rf multirun/genius_table2",
        f"{RUN} experiment=genius_table2 hydra.sweep.dir=multirun/genius_table2",
        f"{RUN} experiment=genius_table2 method=embedding hydra.sweeper.params=null"
        " hydra.sweep.dir=multirun/genius_table2/embedding",
        f"{REPORT} multirun/genius_table2 --reference experiments/genius/table2_mbeir.yaml --metrics R@5"
        " --out multirun/genius_table2/table.md"],
    "reproduce-genius-table3": [
        "rm -rf multirun/genius_table3",
        f"{RUN} experiment=genius_table3 hydra.sweep.dir=multirun/genius_table3/genius",
        f"{RUN} experiment=grace_table3 identifier=structured,image_tokens"
        " hydra.sweep.dir=multirun/genius_table3/grace",
        f"{REPORT} multirun/genius_table3 --reference experiments/genius/table3_flickr30k.yaml"
        " --out multirun/genius_table3/table_flickr30k.md",
        f"{REPORT} multirun/genius_table3 --reference experiments/genius/table3_coco.yaml"
        " --out multirun/genius_table3/table_coco.md"],
    "reproduce-genius-table4": plain(
        "genius_table4", GENIUS.format("table4") + " --out multirun/genius_table4/table.md"),
    "reproduce-genius-table5": plain(
        "genius_table5", GENIUS.format("table5") + " --out multirun/genius_table5/table.md"),
    "reproduce-genius-table9": plain(
        "genius_table9", GENIUS.format("table9") + " --out multirun/genius_table9/table.md"
        " --plot decoding.num_beams --png multirun/genius_table9/beam.png"),
    "reproduce-genius-table11": plain(
        "genius_table11", GENIUS.format("table11") + " --out multirun/genius_table11/table.md"),
    "reproduce-table1": [  # + semantic IDs with SSID's collision counters (issue 17: like for like)
        "rm -rf multirun/ssid_table1",
        f"{RUN} experiment=ssid_table1 hydra.sweep.dir=multirun/ssid_table1",
        f"{RUN} experiment=ssid_table1 identifier=semantic identifier.collisions=disambiguate"
        " hydra.sweep.dir=multirun/ssid_table1/semantic_disambiguate",
        f"{REPORT} multirun/ssid_table1 --reference experiments/ssid/table1_flickr30k.yaml"
        " --out multirun/ssid_table1/table.md"],
    "reproduce-table2": [
        "rm -rf multirun/ssid_table2",
        f"{RUN} experiment=ssid_table2 hydra.sweep.dir=multirun/ssid_table2/t5",
        f"{RUN} experiment=ssid_table2_mllm hydra.sweep.dir=multirun/ssid_table2/mllm",
        f"{REPORT} multirun/ssid_table2 --reference experiments/ssid/table2_flickr30k.yaml"
        " --out multirun/ssid_table2/table.md"],
    "reproduce-table3": plain(
        "ssid_table3", "--reference experiments/ssid/table3_flickr30k.yaml --out multirun/ssid_table3/table.md"),
    "reproduce-ssid-fewshot": plain(
        "ssid_fewshot", "--reference experiments/ssid/fig3_flickr30k.yaml --out multirun/ssid_fewshot/table.md"
        " --plot train.limit --metrics R@1,R@5,R@10 --png multirun/ssid_fewshot/fewshot.png"),
}


def normalized(line: str):
    """A command line as what it does: a report's options in any order are the same report."""
    argv = shlex.split(line)
    if argv[:3] != ["PY", "-m", "genretr.report"]:
        return argv
    first = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    return argv[:first], sorted(zip(argv[first::2], argv[first + 1::2]))


def make_dry(*args: str) -> str:
    """`make -n ARGS...` in the repository, free of a calling make's flags and variables."""
    drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "SEEDS", "JOBS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(["make", "-n", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout


def driver_call(target: str, *variables: str) -> list[str] | None:
    """The `genretr.reproduce` call `make -n target` prints (argv after the module), or None."""
    lines = [ln for ln in make_dry(target, *variables).splitlines() if "-m genretr.reproduce " in ln]
    return shlex.split(lines[0].split("-m genretr.reproduce ", 1)[1]) if lines else None


def help_targets() -> list[str]:
    text = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return re.findall(r"^  make (reproduce-\S+)", text, flags=re.M)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


@needs_make
@pytest.mark.parametrize("target", sorted(OLD_MAKEFILE))
def test_target_runs_what_its_makefile_rule_ran(target):
    call = driver_call(target, "SEEDS=3", "JOBS=2", "ARGS=")
    assert call is not None and call[1:] == ["--seeds", "3", "--jobs", "2"], call
    got = [shlex.join(c) for c in commands(call[0], 3, 2, python="PY")]
    assert [normalized(ln) for ln in got] == [normalized(ln) for ln in OLD_MAKEFILE[target]]
    sweeps = [ln for ln in got if " genretr.run " in ln]  # sweeps keep their exact command line
    assert sweeps == [ln for ln in OLD_MAKEFILE[target] if " genretr.run " in ln]


@needs_make
def test_seeds_jobs_and_args_reach_every_sweep():
    call = driver_call("reproduce-table2", "SEEDS=2", "JOBS=1", "ARGS=size=default backbone.model.pretrained=P")
    assert call == ["ssid_table2", "--seeds", "2", "--jobs", "1", "size=default", "backbone.model.pretrained=P"]
    cmds = commands("ssid_table2", 2, 1, call[5:], python="PY")
    run = "PY -m genretr.run -m seed=0,1 hydra/launcher=parallel hydra.launcher.n_jobs=1"
    args = "size=default backbone.model.pretrained=P"
    assert [shlex.join(c) for c in cmds[1:3]] == [
        f"{run} experiment=ssid_table2 hydra.sweep.dir=multirun/ssid_table2/t5 {args}",
        f"{run} experiment=ssid_table2_mllm hydra.sweep.dir=multirun/ssid_table2/mllm {args}"]
    assert commands("ssid_table1", 1, 2, python="PY")[1][4] == "seed=0"


@needs_make
def test_make_n_reproduce_table1_prints_the_driver_call():
    out = make_dry("reproduce-table1", "SEEDS=3", "ARGS=")
    assert re.search(r"^\S*python -m genretr\.reproduce ssid_table1 --seeds 3 --jobs 2\s*$", out, flags=re.M), out


@needs_make
def test_every_reproduce_target_is_listed_and_runs_something():
    """`make help` lists every target (the preset ones and the explicit ones); each preset with a report block
    is some target's, and each target of the pattern rule names a preset with one."""
    targets = help_targets()
    assert set(OLD_MAKEFILE) <= set(targets)
    assert {"reproduce-smoke", "reproduce-genius-table7", "reproduce-efficiency", "reproduce-ssid-describer",
            "reproduce-cart", "reproduce-cart-vs-grace-full"} <= set(targets)
    calls = [driver_call(t, "ARGS=") for t in targets]
    served = {call[0] for call in calls if call}
    assert served == {p.stem for p in reproduce.PRESETS.glob("*.yaml") if "report" in yaml.safe_load(p.read_text())}


def recorded_runs(argv: list[str], choices: dict, sweeper: dict | None = None) -> list[dict]:
    """The runs a sweep command records (seed 0): its overrides, list values and the preset's sweeper params
    expanded one run each (`sweeper`: {key: "a,b"}), with the config group `choices` Hydra adds."""
    given = [a for a in argv if "=" in a and not a.startswith(("seed=", "hydra"))]
    keys = {a.split("=", 1)[0] for a in given}  # a command-line value replaces the preset's axis of that key
    axes = {**{k: v for k, v in (sweeper or {}).items() if k not in keys},
            **{a.split("=", 1)[0]: a.split("=", 1)[1] for a in given if "," in a}}
    fixed = [a for a in given if a.split("=", 1)[0] not in axes]
    runs = [[]]
    for key, values in axes.items():
        runs = [run + [f"{key}={v}"] for run in runs for v in str(values).split(",")]
    out = []
    for run in runs:
        chosen = dict(o.split("=", 1) for o in run if o.startswith("identifier="))  # a config group: a choice too
        out.append({"overrides": ["seed=0", *fixed, *run], "choices": {**choices, **chosen}})
    return out


@functools.cache
def cart_vs_grace_full_lines() -> tuple[str, ...]:
    return tuple(make_dry("reproduce-cart-vs-grace-full", "ARGS=").replace("\\\n", " ").splitlines())


def cart_vs_grace_full_line(marker: str) -> list[str]:
    """The argv of the line `make -n reproduce-cart-vs-grace-full` prints that contains `marker`."""
    return shlex.split(next(ln for ln in cart_vs_grace_full_lines() if marker in ln))


@needs_make
def test_cart_vs_grace_full_reference_rows_get_their_runs():
    """The reference `make reproduce-cart-vs-grace-full` reports with gives each paper row its runs (the overrides
    and choices they record): CART's row the target's sweep with identifier=cart, GRACE's rows
    reproduce-grace-table1's runs; structured IDs on CART's decoder and the embedding baseline match none."""
    sweep, report = (cart_vs_grace_full_line(marker) for marker in (
        "hydra.sweep.dir=multirun/cart_vs_grace_large", "genretr.report multirun/cart_vs_grace_large"))
    runs = recorded_runs(sweep, {"experiment": "cart_vs_grace", "backbone": "cart"})
    grace = yaml.safe_load((reproduce.PRESETS / "grace_table1.yaml").read_text())["hydra"]["sweeper"]["params"]
    for argv in commands("grace_table1", 1, 1, python="PY")[1:-1]:  # its sweeps
        preset = "experiment=grace_table1" in argv
        runs += recorded_runs(argv, {"backbone": "t5", "identifier": "string",
                                     **({"experiment": "grace_table1"} if preset else {})}, grace if preset else None)
    reference = load_reference(REPO / report[report.index("--reference") + 1])["rows"]
    matched = {}
    for row in group_rows(runs, reference):
        c = row.runs[0]["choices"]
        matched.setdefault(row.ref_key, []).append(f"{c.get('experiment', 'embedding')}/{c['identifier']}")
    assert {k: sorted(v) for k, v in matched.items()} == {
        "identifier=cart, backbone=cart, experiment=cart_vs_grace": ["cart_vs_grace/cart"],
        "identifier=structured, experiment=grace_table1": ["grace_table1/structured"],
        "identifier=string, experiment=grace_table1": ["grace_table1/string"],
        None: ["cart_vs_grace/structured", "embedding/string", *(f"grace_table1/{i}" for i in
                                                                 ["atomic", "image_tokens", "numeric", "semantic"])]}


@needs_make
def test_cart_vs_grace_full_trains_cart_decoder_at_the_papers_batch(tmp_path):
    """At shapes' full size both of the target's rows train CART's decoder at CART's batch of 256 (Sec. 4.2), not
    cart_base's 32 (chosen for its 450-image tables); read from the configs its sweep composes."""
    sweep = cart_vs_grace_full_line("hydra.sweep.dir=multirun/cart_vs_grace_large")
    preset = yaml.safe_load((reproduce.PRESETS / "cart_vs_grace.yaml").read_text())["hydra"]["sweeper"]["params"]
    runs = recorded_runs(sweep, {}, preset)  # the preset's own sweep axes too, as Hydra runs them
    assert sorted(c for r in runs for c in r["overrides"] if c.startswith("identifier=")) == [
        "identifier=cart", "identifier=structured"]
    for run in runs:
        cfg = compose_cfg(run["overrides"], tmp_path / "run", tmp_path / "cache")
        assert (cfg.backbone.model._target_.rsplit(".", 1)[-1], cfg.backbone.fit.batch_size) == ("CartSeq2Seq", 256)
        assert (cfg.dataset.splits.train, cfg.dataset.splits.test) == (2000, 500)


@needs_make
def test_ssid_describer_runs_six_settings_then_ssid_against_semantic_ids():
    """`make reproduce-ssid-describer`: three describers x (SSID, semantic IDs with SSID's counters), each setting
    over the seeds with --jobs and its own --out directory (removed first), then SSID against semantic IDs under
    each describer, then each scheme with the train images described against Table I's captioner."""
    lines = make_dry("reproduce-ssid-describer", "SEEDS=2", "JOBS=3", "ARGS=x=1", "PY=PY").replace("\\\n", " ")
    runs = {}
    for line in lines.splitlines():
        if "describer_oracle.py" in line and "--out" in line:
            argv = shlex.split(line.split("; ", 1)[1].split(" 2>&1 | tee ")[0])
            out = argv[argv.index("--out") + 1]
            assert f"rm -rf {out} && mkdir -p multirun/ssid_describer" in lines
            assert argv[:6] == ["PY", "experiments/ssid/describer_oracle.py", "--seeds", "0,1", "--jobs", "3"]
            runs[out.removeprefix("multirun/ssid_describer/")] = argv[6:argv.index("--out")] + argv[argv.index(
                "--out") + 2:]
    semantic = ["identifier=semantic", "identifier.collisions=disambiguate"]
    assert runs == {
        "captioner-ssid": ["experiment=ssid_table1", "--captioner", "identifier=ssid", "x=1"],
        "captioner-semantic": ["experiment=ssid_table1", "--captioner", *semantic, "x=1"],
        "captioner-all-ssid": ["experiment=ssid_table1", "--captioner", "identifier=ssid", "identifier.describe=all",
                               "x=1"],
        "captioner-all-semantic": ["experiment=ssid_table1", "--captioner", *semantic,
                                   "identifier.train_caption=generated", "x=1"],
        "pair-caption-ssid": ["experiment=ssid_table1", "identifier=ssid", "x=1"],
        "pair-caption-semantic": ["experiment=ssid_table1", *semantic, "x=1"]}
    compares = [shlex.split(ln.split("; ", 1)[1].split("|")[0]) for ln in lines.splitlines() if "--compare" in ln]
    assert [c[2:] for c in compares] == [
        [a for d in ("captioner", "captioner-all", "pair-caption") for a in (
            "--compare", f"multirun/ssid_describer/{d}-ssid", f"multirun/ssid_describer/{d}-semantic")],
        [a for s in ("ssid", "semantic") for a in (
            "--compare", f"multirun/ssid_describer/captioner-all-{s}", f"multirun/ssid_describer/captioner-{s}")]]


@pytest.mark.parametrize("preset", sorted(p.stem for p in reproduce.PRESETS.glob("*.yaml")
                                          if "\nreport:" in p.read_text()))
def test_report_block_names_existing_files_and_presets(preset):
    block = report_block(preset)
    tables = [{**block, **t} for t in block.get("tables") or [{}]]
    for table in tables:
        if table.get("reference"):
            assert (REPO / table["reference"]).is_file(), table["reference"]
        assert table.get("png") or not table.get("plot"), "a plot names its PNG"
    for sweep in block.get("sweeps") or []:
        for o in sweep["overrides"]:
            if o.startswith("experiment="):
                assert (reproduce.PRESETS / f"{o.split('=', 1)[1]}.yaml").is_file(), o


def test_dry_run_prints_and_runs_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "multirun" / "genius_table3").mkdir(parents=True)
    assert main(["genius_table3", "--dry-run", "--seeds", "1", "decoding.num_beams=5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rm -rf multirun/genius_table3" and len(lines) == 5
    assert lines[1].endswith("experiment=genius_table3 hydra.sweep.dir=multirun/genius_table3/genius "
                             "decoding.num_beams=5") and " seed=0 " in lines[1]
    assert (tmp_path / "multirun" / "genius_table3").is_dir()


def test_run_stops_at_the_first_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "multirun" / "x").mkdir(parents=True)
    rc = reproduce.run([["rm", "-rf", "multirun/x"], ["false"], ["touch", "never"]])
    assert rc == 1 and not (tmp_path / "multirun" / "x").exists() and not (tmp_path / "never").exists()


@pytest.mark.parametrize("text,message", [
    ("progress: false\n", "no `report:` block"),
    ("report: {referenc: a.yaml}\n", "report.referenc is not one of"),
    ("report: {sweeps: [{dir: a}]}\n", "report.sweeps entry"),
    ("report: {tables: [{sweeps: []}]}\n", "report.tables entry"),
])
def test_bad_blocks_are_one_line_errors(text, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "PRESETS", tmp_path)
    (tmp_path / "p.yaml").write_text("# @package _global_\n" + text)
    with pytest.raises(ReproduceError, match=re.escape(message)):
        commands("p")
    assert main(["p", "--dry-run"]) == 2 and message in capsys.readouterr().err
    assert main(["nope"]) == 2 and "no preset" in capsys.readouterr().err
