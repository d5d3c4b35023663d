"""Benchmarks: `python -m genretr.bench SUBCOMMAND [options]` (see `--help`): `decoding`, `stability`, `training`,
`scale`.  Results go under `bench_out/` (gitignored)."""
from __future__ import annotations

DTYPE_NAMES = ("fp32", "bf16")  # the engine's `step_dtype` takes them as they are (genretr.decoding.engine.as_dtype)


def timed_dtypes(arg: str | None, accelerator: str = "cpu") -> tuple[list[str], str]:
    """The dtypes a bench times, and a line saying why: `--dtypes` as given (a comma list holding fp32, the
    baseline every ratio and budget divides by, and optionally bf16), else fp32 and, where `accelerator`
    multiplies bf16 natively (`genretr.hardware.bf16_kind`), bf16 (issue 18: bf16 only where the hardware has
    it; emulated, it trained ~19x slower than fp32 on an AVX2-only EPYC)."""
    from genretr.hardware import bf16_kind

    if arg:
        dtypes = [d for d in DTYPE_NAMES if d in arg.split(",")]
        unknown = sorted(set(arg.split(",")) - set(DTYPE_NAMES) - {""})
        if unknown or "fp32" not in dtypes:
            raise SystemExit(f"genretr.bench: --dtypes {arg}: fp32 (the baseline), then optionally bf16")
        return dtypes, f"dtypes {','.join(dtypes)} (--dtypes)"
    kind = bf16_kind(accelerator)
    if kind:
        return list(DTYPE_NAMES), f"dtypes fp32,bf16 (bf16 hardware: {kind})"
    return ["fp32"], ("dtypes fp32 only: no bf16 hardware here, where precision=auto runs fp32 "
                      "(--dtypes fp32,bf16 times emulated bf16 too)")
