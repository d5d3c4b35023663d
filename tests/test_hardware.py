"""genretr.hardware (issue 18): bf16 where the hardware multiplies it natively, fp32 one option away, and
one torch thread per job when jobs share the machine."""
from __future__ import annotations

import pytest

from genretr import hardware


@pytest.fixture
def cpu(monkeypatch):
    """Pretend the CPU reports `flags` (and that no GPU exists)."""
    def set_flags(*flags):
        hardware.cpu_bf16_kind.cache_clear()
        monkeypatch.setattr(hardware, "_cpu_flags", lambda: frozenset(flags) | {"sse2"})
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)

    yield set_flags
    hardware.cpu_bf16_kind.cache_clear()


@pytest.mark.parametrize("flags, kind", [(("amx_bf16", "amx_tile", "avx512_bf16"), "amx"),
                                         (("avx512_bf16", "avx512f"), "avx512_bf16"), (("avx2",), None)])
def test_bf16_hardware_is_read_from_the_cpu_flags(cpu, flags, kind):
    cpu(*flags)
    assert hardware.bf16_kind("cpu") == kind
    assert hardware.bf16_kind("gpu") == kind  # no GPU: the trainer falls back to the CPU
    expected = "bf16-mixed" if kind else "32-true"
    assert hardware.lightning_precision("auto", "cpu") == expected
    assert hardware.step_dtype("auto", "cpu") == ("bfloat16" if kind else "float32")
    # forced either way, whatever the hardware
    assert hardware.lightning_precision("fp32", "cpu") == "32-true"
    assert hardware.lightning_precision("bf16", "cpu") == "bf16-mixed"
    assert hardware.step_dtype("fp32", "cpu") == "float32"


@pytest.mark.parametrize("native", [True, False], ids=["ampere-or-later", "emulated-bf16"])
def test_a_gpu_counts_as_bf16_hardware_only_where_it_multiplies_bf16_natively(monkeypatch, native):
    """torch.cuda.is_bf16_supported() says yes on a V100 or T4 too (bf16 emulated); auto keeps those in fp32."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert hardware.bf16_kind("cuda") == ("cuda" if native else None)
    assert hardware.lightning_precision("auto", "gpu") == ("bf16-mixed" if native else "32-true")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision=half is not one of auto, bf16, fp32"):
        hardware.lightning_precision("half")


@pytest.mark.parametrize("threads, jobs, cores, expected", [
    ("auto", 1, 2, 2),   # a single run: every core
    ("auto", 2, 2, 1),   # two jobs side by side on 2 cores: one thread each
    ("auto", 3, 2, 1),   # more jobs than cores: still one
    ("auto", 2, 16, 8),
    (None, 2, 16, 8),
    (3, 2, 16, 3),       # set explicitly: as set
    ("4", 1, 2, 4),
])
def test_threads_share_out_the_cores(monkeypatch, threads, jobs, cores, expected):
    monkeypatch.setattr(hardware, "cores", lambda: cores)
    assert hardware.auto_threads(threads, jobs) == expected


def test_trainer_precision_follows_the_precision_option(make_cfg, cpu):
    cpu("avx512_bf16")
    assert make_cfg().trainer.precision == "bf16-mixed"
    assert make_cfg("precision=fp32").trainer.precision == "32-true"
    assert make_cfg("precision=fp32", "trainer.precision=bf16-mixed").trainer.precision == "bf16-mixed"
    cpu("avx2")
    assert make_cfg().trainer.precision == "32-true"
    assert make_cfg("trainer=gpu").trainer.precision == "32-true"  # no GPU, no bf16 on this CPU
