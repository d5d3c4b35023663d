"""A paper table from its preset (`make reproduce-<table>`, issue 15):
`python -m genretr.reproduce PRESET [--seeds N] [--jobs J] [--dry-run] [OVERRIDE ...]`.

Reads the `report:` block of conf/experiment/PRESET.yaml (the preset file's own, not one inherited through its
defaults list), removes multirun/PRESET (the models stay in the artifact cache), runs each of the block's
sweeps -- a Hydra multirun over seeds 0 .. N-1 with J jobs side by side (hydra/launcher=parallel) and the
OVERRIDEs appended -- then writes its table(s) with genretr.report.  The block::

    report:
      reference: experiments/genius/table1_mbeir.yaml  # genretr.report's options: reference, metrics, tasks,
      metrics: R@5                                     # plot, series; out and png are under multirun/PRESET
      sweeps:           # default: [{overrides: [experiment=PRESET]}]
        - overrides: [experiment=genius_table1]
        - {dir: embedding, overrides: [experiment=genius_table1, method=embedding, hydra.sweeper.params=null]}
      tables:           # default: one table.md; each entry overrides the options above for one table
        - {reference: experiments/genius/table3_coco.yaml, out: table_coco.md}

A sweep's `dir` is its folder under multirun/PRESET (none: multirun/PRESET itself); the report reads them
all.  Each command prints before it runs; the first that fails stops the rest.  `--dry-run` only prints.
Errors print one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
# genretr.report's options in the order they are passed; `out` and `png` name files under multirun/PRESET
TABLE_OPTIONS = ("reference", "tasks", "metrics", "out", "plot", "series", "png")
BLOCK_KEYS = {"sweeps", "tables", *TABLE_OPTIONS}
SWEEP_KEYS = {"dir", "overrides"}


class ReproduceError(Exception):
    """A preset without a usable report block."""


def report_block(preset: str) -> dict:
    """The validated `report:` block of conf/experiment/<preset>.yaml."""
    path = PRESETS / f"{preset}.yaml"
    if not path.is_file():
        raise ReproduceError(f"no preset {path}")
    try:
        block = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("report")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ReproduceError(f"{path}: unreadable ({e})") from None
    if not isinstance(block, dict):
        raise ReproduceError(f"{path}: no `report:` block (see python -m genretr.reproduce --help)")
    if set(block) - BLOCK_KEYS:
        raise ReproduceError(f"{path}: report.{sorted(set(block) - BLOCK_KEYS)[0]} is not one of "
                             f"{', '.join(sorted(BLOCK_KEYS))}")
    for sweep in block.get("sweeps") or []:
        if (not isinstance(sweep, dict) or set(sweep) - SWEEP_KEYS or not isinstance(sweep.get("overrides"), list)
                or not sweep["overrides"]):
            raise ReproduceError(f"{path}: report.sweeps entry {sweep!r} is not {{dir: D, overrides: [k=v, ...]}}")
    for table in block.get("tables") or []:
        if not isinstance(table, dict) or set(table) - set(TABLE_OPTIONS):
            raise ReproduceError(f"{path}: report.tables entry {table!r} sets other keys than "
                                 f"{', '.join(TABLE_OPTIONS)}")
    return block


def _option(value) -> str:
    """A report option as genretr.report reads it: lists comma-joined (`metrics: [R@1, R@10]`)."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def commands(preset: str, seeds: int = 3, jobs: int = 2, overrides=(), python: str = sys.executable) -> list[list[str]]:
    """The commands `make reproduce-<table>` runs for `preset`, in order: `rm -rf multirun/<preset>`, each
    sweep, each report."""
    if seeds < 1 or jobs < 1:
        raise ReproduceError(f"--seeds {seeds} --jobs {jobs}: both must be at least 1")
    block, root = report_block(preset), f"multirun/{preset}"
    sweep = [python, "-m", "genretr.run", "-m", "seed=" + ",".join(str(s) for s in range(seeds)),
             "hydra/launcher=parallel", f"hydra.launcher.n_jobs={jobs}"]
    out = [["rm", "-rf", root]]
    for s in block.get("sweeps") or [{"overrides": [f"experiment={preset}"]}]:
        folder = f"{root}/{s['dir']}" if s.get("dir") else root
        out.append(sweep + [str(o) for o in s["overrides"]] + [f"hydra.sweep.dir={folder}", *overrides])
    shared = {k: block[k] for k in TABLE_OPTIONS if block.get(k) is not None}
    for table in block.get("tables") or [{}]:
        options = {"out": "table.md", **shared, **table}
        cmd = [python, "-m", "genretr.report", root]
        for key in TABLE_OPTIONS:
            if options.get(key) is not None:
                value = _option(options[key])
                cmd += [f"--{key}", f"{root}/{value}" if key in ("out", "png") else value]
        out.append(cmd)
    return out


def run(cmds: list[list[str]], dry_run: bool = False) -> int:
    """Print and run `cmds` in turn (the `rm -rf` in-process); the first non-zero exit status stops them."""
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if dry_run:
            continue
        if cmd[:2] == ["rm", "-rf"]:
            shutil.rmtree(cmd[2], ignore_errors=True)
        elif (rc := subprocess.run(cmd).returncode) != 0:
            return rc
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genretr.reproduce", description=__doc__.split("\n\n")[0],
                                epilog="Any other argument is a Hydra override appended to every sweep.",
                                allow_abbrev=False)
    p.add_argument("preset", help="a conf/experiment preset with a report block, e.g. grace_table1")
    p.add_argument("--seeds", type=int, default=3, help="run seeds 0 .. N-1 (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a, overrides = p.parse_known_args(argv)
    try:
        cmds = commands(a.preset, a.seeds, a.jobs, overrides)
    except ReproduceError as e:
        print(f"genretr.reproduce: error: {e}", file=sys.stderr)
        return 2
    return run(cmds, a.dry_run)


if __name__ == "__main__":
    sys.exit(main())
