"""What the machine offers and the defaults that follow from it (issue 18): bf16 where the matrix units
run it natively, fp32 elsewhere; one torch thread per job when jobs share the machine.

* `bf16_kind(accelerator)`: ``"amx"`` (Intel AMX tiles), ``"avx512_bf16"`` (AVX512-BF16 dot products, e.g.
  AMD Zen 4), ``"cuda"`` (a GPU with bf16) or None.  On a CPU with either, a bf16 matmul runs 2-4x faster than
  fp32 (`python -m genretr.bench training` prints both peaks).
* `lightning_precision(precision, accelerator)`: the trainer's precision for genretr's ``precision`` option
  (``auto`` | ``bf16`` | ``fp32``): ``bf16-mixed`` (autocast; weights, optimiser and loss stay fp32) or ``32-true``.
* `step_dtype(precision, device)`: the dtype of the search's model step (its scores stay fp32).
* `auto_threads(threads, n_jobs)`: torch's intra-op threads for a run.
* `run_device(accelerator, devices)`: the one device a run's stages put their models and tensors on.
* `cpu_vendor()`: the CPU's vendor.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=None)
def _cpuinfo_field(name: str) -> str | None:
    """The first CPU's `name` line of /proc/cpuinfo (Linux), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _cpu_flags() -> frozenset:
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_vendor() -> str:
    """The CPU's vendor (``GenuineIntel``, ``AuthenticAMD``…), or ``unknown`` where /proc/cpuinfo is not."""
    return _cpuinfo_field("vendor_id") or "unknown"


@functools.lru_cache(maxsize=None)
def cpu_bf16_kind() -> str | None:
    """``"amx"`` or ``"avx512_bf16"`` when this CPU multiplies bf16 natively, else None."""
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if not flags:  # not Linux: ask torch (private, hence guarded)
        try:
            import torch

            if torch.cpu._is_avx512_bf16_supported():
                return "avx512_bf16"
        except (AttributeError, RuntimeError):
            pass
    return None


def bf16_kind(accelerator: str = "cpu") -> str | None:
    """How `accelerator` (``cpu`` | ``gpu`` | ``cuda`` | ``auto``) runs bf16 natively, or None."""
    if str(accelerator) in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            # native only: by default torch also says yes where bf16 is emulated (before Ampere: V100, T4)
            return "cuda" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    return cpu_bf16_kind()


def _check(precision: str) -> str:
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision} is not one of {', '.join(PRECISIONS)}")
    return precision


def use_bf16(precision: str, accelerator: str = "cpu") -> bool:
    """Whether genretr's ``precision`` option means bf16 on `accelerator`."""
    precision = _check(precision)
    return precision == "bf16" or (precision == "auto" and bf16_kind(accelerator) is not None)


def lightning_precision(precision: str = "auto", accelerator: str = "cpu") -> str:
    """The Lightning `Trainer(precision=…)` for genretr's ``precision`` option (the `${lightning_precision:…}`
    resolver of conf/trainer/*.yaml)."""
    return "bf16-mixed" if use_bf16(precision, accelerator) else "32-true"


def step_dtype(precision: str, device) -> str:
    """``"bfloat16"`` or ``"float32"``: the dtype the search runs the model step in on `device`."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return "bfloat16" if use_bf16(precision, kind) else "float32"


def search_dtype(cfg, device) -> str:
    """The dtype of the search's model step for run config `cfg`: `decoding.precision`, else `precision`."""
    decoding = cfg.get("decoding") or {}
    return step_dtype(decoding.get("precision") or cfg.get("precision", "auto"), device)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_threads(threads, n_jobs: int = 1) -> int:
    """torch's intra-op threads: `threads` when set, else the cores shared out among `n_jobs` jobs running
    side by side (one each on a 2-core machine running 2 jobs: two threads per job while another job runs
    oversubscribes the cores and runs up to 10x slower)."""
    if threads not in (None, "auto"):
        return int(threads)
    return max(1, cores() // max(1, int(n_jobs)))


def run_device(accelerator: str = "cpu", devices=1):
    """The torch device of this process for the trainer's `accelerator` (cpu | gpu | cuda | auto | mps) and
    `devices`: the process's own GPU under DDP (LOCAL_RANK), the first listed one for a device list."""
    import torch

    from genretr.errors import GenretrError

    accelerator = str(accelerator)
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if accelerator == "mps":
        return torch.device("mps")
    if accelerator not in ("gpu", "cuda", "auto"):
        raise GenretrError(f"trainer.accelerator={accelerator} is not one of cpu, gpu, cuda, auto, mps")
    if not torch.cuda.is_available():
        raise GenretrError(f"trainer.accelerator={accelerator}, but torch sees no CUDA device (use trainer=cpu)")
    if isinstance(devices, str):
        listed = [int(d) for d in devices.split(",") if d.strip()] if "," in devices else None
    else:  # a list, tuple or OmegaConf ListConfig of device indices, or a count
        listed = [int(d) for d in devices] if isinstance(devices, Sequence) else None
    rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", int(listed[rank]) if listed else rank)


def release_freed_memory() -> None:
    """Hand what a finished stage freed back to the OS (a full gc, then glibc's `malloc_trim` where there is
    one), so the next stage's peak does not sit on the last one's garbage (issue 16's peak RSS)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing more to do
        pass


def status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MB; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def describe(precision: str, accelerator: str, device: str = "cpu") -> dict:
    """The precision block of results.json's provenance."""
    return {"option": str(precision), "bf16_hardware": bf16_kind(accelerator),
            "trainer": lightning_precision(precision, accelerator), "search_step": step_dtype(precision, device)}
