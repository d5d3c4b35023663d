"""Every stage takes its device from one place (`RunContext.device`, `genretr.hardware.run_device`) and hands it
to every model it builds (issue 16).  On a CPU the check is that a device object the test controls -- cpu:0,
which compares unequal to the plain cpu Lightning uses -- is the one the stages use."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import genretr
from genretr.hardware import run_device
from genretr.errors import GenretrError
from genretr.pipeline import Pipeline
from genretr.stages.context import RunContext

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SENTINEL = torch.device("cpu", 0)


def _genretr_caller() -> str:
    """The genretr module (file stem) nearest up the stack: the one that asked for the move."""
    package, frame = str(Path(genretr.__file__).parent), sys._getframe(2)
    while frame is not None and not frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
    return Path(frame.f_code.co_filename).stem if frame is not None else "?"


@pytest.fixture
def spy(monkeypatch):
    """Records the models moved to SENTINEL and the devices the small in-stage fits were given."""
    moved, fits, callers = [], [], []  # callers: (model class, the module that moved it)
    original_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if any(str(a) == str(SENTINEL) for a in args) or str(kwargs.get("device")) == str(SENTINEL):  # or "cpu:0"
            moved.append(type(self).__name__)
            callers.append((type(self).__name__, _genretr_caller()))
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(RunContext, "device", property(lambda self: SENTINEL))
    import genretr.captioner
    import genretr.quantizers.modality_decoupled
    import genretr.quantizers.rqvae
    for module in (genretr.captioner, genretr.quantizers.rqvae, genretr.quantizers.modality_decoupled):
        def recording(*args, _real=module.small_fit, _name=module.__name__, **kwargs):
            fits.append((_name, kwargs.get("device", args[4] if len(args) > 4 else "cpu")))
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, "small_fit", recording)
    return moved, fits, callers


def test_cart_run_puts_every_model_on_the_run_device(make_cfg, spy):
    """CART: MiniLM makes the text features, the encoder embeds, the RQ-VAE trains and encodes, the captioner trains and writes, the decoder
    searches -- each on the run's device."""
    moved, fits, _ = spy
    cfg = make_cfg("experiment=cart_base")
    Pipeline(cfg, cfg.hydra.runtime.output_dir).run()
    # the captioner's model is a T5PrefixDecoder; CART's decoder a CartSeq2Seq; MiniLM's a BertModel
    assert set(moved) >= {"BertModel", "ContrastiveEncoder", "RQVAE", "T5PrefixDecoder", "CartSeq2Seq"}
    assert {name for name, device in fits if device == SENTINEL} == {"genretr.captioner", "genretr.quantizers.rqvae"}


def test_genius_quantizer_trains_on_the_run_device(make_cfg, spy):
    moved, fits, _ = spy
    cfg = make_cfg("identifier=genius")
    Pipeline(cfg, cfg.hydra.runtime.output_dir).run()
    assert ("genretr.quantizers.modality_decoupled", SENTINEL) in fits
    assert {"ContrastiveEncoder", "T5PrefixDecoder", "ModalityDecoupledQuantizer"} <= set(moved)  # it encodes there


def test_run_device_reads_the_trainer(monkeypatch):
    assert run_device("cpu", 1) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_device("auto", 1) == torch.device("cpu")
    with pytest.raises(GenretrError, match="^trainer.accelerator=gpu, but torch sees no CUDA device"):
        run_device("gpu", 1)
    with pytest.raises(GenretrError, match="is not one of cpu, gpu"):
        run_device("tpu", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_device("gpu", [2, 5]) == torch.device("cuda", 5) and run_device("gpu", 2) == torch.device("cuda", 1)
    assert run_device("cuda", "3,4") == torch.device("cuda", 4)
    from omegaconf import OmegaConf  # as a composed trainer.devices=[2,5] hands it over

    assert run_device("gpu", OmegaConf.create({"d": [2, 5]}).d) == torch.device("cuda", 5)


def test_gpu_check_runs_compose_with_the_gpu_trainer(make_cfg):
    """experiments/hardware/gpu_check.sh (`make gpu-check`) is run only on GPU machines: here its runs must at least
    compose with `trainer=gpu` as it passes them, and the script must parse."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "hardware" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    runs = shlex.split(re.search(r"^RUNS=\((.*?)\)$", script.read_text(), re.S | re.M).group(1))
    assert len(runs) == 7 and "experiment=cart_base" in runs
    assert {"backbone=qwen25vl", "backbone=llava", "backbone=idefics"} <= {w for r in runs for w in r.split()}
    for run in runs:
        cfg = make_cfg("trainer=gpu", "encoder=scratch", *run.split())
        assert cfg.trainer.accelerator == "gpu", run


def test_mllm_run_puts_the_generator_and_the_decoder_on_the_run_device(make_cfg, spy):
    """An MLLM backbone (tiny Qwen2.5-VL): the generator that writes SSID's identifiers is put on the run's device
    when it loads, the decoder when the train stage builds it (it then learns and searches there)."""
    _, _, callers = spy
    # no stricter-prompt retries of the random model's answers, 40 training samples: where things run is the point
    cfg = make_cfg("identifier=ssid", "backbone=qwen25vl", "train.memorize_repeat=1", "backbone.fit.max_epochs=1",
                   "decoding.num_beams=5", "eval.max_queries=5", "identifier.retries=0", "train.limit=40")
    Pipeline(cfg, cfg.hydra.runtime.output_dir).run()
    assert {("Qwen25VLRetriever", "mllm_generator"), ("Qwen25VLRetriever", "train")} <= set(callers)
    assert {("BertModel", "towers"), ("ContrastiveEncoder", "encode")} <= set(callers)
