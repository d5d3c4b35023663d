"""OmegaConf resolvers genretr's configs use, registered on `import genretr` (before Hydra composes).

`${run_id:}`: what makes a run dir unique among runs started in the same second (issue 14: two such
runs shared one Hydra output dir) -- the microseconds of the first resolution and the process id,
e.g. `123456-4711`.  Cached per config (as Hydra's `${now:}`), so one run resolves one value and a
multirun's jobs, which inherit the cache of the sweep's config, share one sweep dir.

`${lightning_precision:${precision},cpu}`: the trainer's precision for genretr's `precision` option
(`auto` | `bf16` | `fp32`) on that accelerator (`genretr.hardware`): `bf16-mixed` where the hardware
multiplies bf16 natively, `32-true` elsewhere.
"""
from __future__ import annotations

import os
from datetime import datetime

from omegaconf import OmegaConf


def run_id() -> str:
    """`<microseconds>-<pid>` of now."""
    return f"{datetime.now().microsecond:06d}-{os.getpid()}"


def lightning_precision(precision: str = "auto", accelerator: str = "cpu") -> str:
    from genretr.hardware import lightning_precision as resolve

    return resolve(precision, accelerator)


def register() -> None:
    OmegaConf.register_new_resolver("run_id", run_id, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("lightning_precision", lightning_precision, replace=True)


register()
