"""Where a result came from: the `provenance` block of results.json (code, environment, timings).

A number is reproducible only together with the commit that made it (and whether the tree had
uncommitted changes), the versions of the libraries that ran it, the thread count and the device
(torch's CPU kernels sum in another order at another thread count) and the seed.
`genretr.report` warns when the rows of one table disagree on the commit.
"""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The direct dependencies whose versions can change a number (pyproject.toml).
PACKAGES = ("torch", "transformers", "lightning", "hydra-core", "omegaconf", "faiss-cpu", "scikit-learn",
            "tokenizers", "torchmetrics", "numpy", "wandb", "genretr")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


# What a run executes or installs from: a change there (committed or not, a new file too) is a dirty tree.
CODE_PATHS = ("genretr", "conf", "pyproject.toml", "requirements.lock")


def git_state() -> dict:
    """{commit, dirty} of the checkout genretr is imported from, read now (`genretr.run` reads it as a run
    starts); both None outside a git checkout.  Dirty: `CODE_PATHS` differ from the commit or hold
    untracked files (an edited README does not count)."""
    root = Path(__file__).resolve().parents[1]
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def versions() -> dict:
    """Installed versions of Python and of `PACKAGES` (None when one is not installed)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_name(accelerator: str) -> str:
    """The device the trainer runs on, in words: `cpu` or the CUDA device's name."""
    import torch

    if str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def search_step(cfg, device: str) -> str | None:
    """The dtype the genretr engine ran the model step in (None: no generative search; HF runs it as is)."""
    from genretr.hardware import search_dtype

    decoding = cfg.get("decoding") or {}
    if cfg.get("method", {}).get("name") != "generative" or decoding.get("engine", "genretr") != "genretr":
        return None
    return search_dtype(cfg, device)


def provenance(cfg, stage_seconds: dict, git: dict, stage_device: str | None = None) -> dict:
    """The `provenance` block of results.json for a run of `cfg` started at `git` (`git_state()` then) whose
    stages took `stage_seconds` and put their models on `stage_device` (`RunContext.device`)."""
    import torch

    from genretr.hardware import bf16_kind

    accelerator = cfg.trainer.get("accelerator", "cpu")
    device = device_name(accelerator)
    option = cfg.get("precision", "auto")
    precision = {"option": option, "bf16_hardware": bf16_kind(accelerator), "trainer": cfg.trainer.get("precision"),
                 "search_step": search_step(cfg, device)}
    return {"git": git, "seed": int(cfg.seed), "torch_threads": torch.get_num_threads(), "device": device,
            "precision": precision, "versions": versions(),
            "stage_seconds": {k: round(v, 2) for k, v in stage_seconds.items()}, "stage_device": stage_device,
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None}
