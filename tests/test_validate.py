"""genretr.validate: a config that cannot run is refused in one line naming the key, before any stage;
every shipped option and preset passes."""
from __future__ import annotations

import pytest

from genretr.errors import GenretrError
from genretr.validate import validate, wandb_api_key_found
from tests.conftest import CONF

MBEIR_TEST_ONLY = ["dataset=mbeir", "~dataset.splits.train"]
BAD = {  # overrides (on debug=tiny) -> what the one-line message must say
    "num_beams not a number": (["decoding.num_beams=abc"], "decoding.num_beams=abc is not an integer >= 1"),
    "num_beams zero": (["decoding.num_beams=0"], "decoding.num_beams=0 is not an integer >= 1"),
    "num_beams float": (["decoding.num_beams=2.5"], "decoding.num_beams=2.5 is not an integer"),
    "batch size bool": (["encoder.fit.batch_size=true"], "encoder.fit.batch_size=true is not an integer"),
    "negative epochs": (["backbone.fit.max_epochs=-1"], "backbone.fit.max_epochs=-1 is not an integer >= 0"),
    "top_k": (["eval.top_k=0"], "eval.top_k=0 is not an integer >= 1"),
    "max_queries": (["eval.max_queries=0"], "eval.max_queries=0 is not an integer >= 1 or null"),
    "loader_workers": (["loader_workers=-1"], "loader_workers=-1 is not an integer >= 0"),
    "seed negative": (["seed=-1"], "seed=-1 is not an integer in 0..4294967295"),
    "seed too big": (["seed=4294967296"], "seed=4294967296 is not an integer in 0..4294967295"),
    "seed text": (["seed=abc"], "seed=abc is not an integer"),
    "src length": (["backbone.max_src_len=0"], "backbone.max_src_len=0 is not an integer >= 1"),
    "length penalty": (["decoding.length_penalty=long"], "decoding.length_penalty=long is not a number"),
    "flag": (["decoding.constrained=yes"], "decoding.constrained=yes is not one of true, false"),
    "shapes split size": (["dataset.splits.test=0"], "dataset.splits.test=0 is not an integer >= 1"),
    "edit fraction": (["dataset.edit_fraction=1.5"], "dataset.edit_fraction=1.5 is not in [0, 1]"),
    "karpathy limit": (["dataset=coco", "dataset.max_images_per_split=0"], "dataset.max_images_per_split=0"),
    "precision": (["precision=half"], "precision=half is not one of auto, bf16, fp32"),
    "compile flag": (["decoding.compile=maybe"], "decoding.compile=maybe is not one of true, false"),
    "search precision": (["decoding.precision=fp16"], "decoding.precision=fp16 is not one of auto, bf16, fp32"),
    "threads": (["threads=0"], "threads=0 is not auto or an integer >= 1"),
    "fit key of another block": (["+backbone.fit.memorize_repeat=1"],
                                 "backbone.fit.memorize_repeat is not read by any stage (backbone.fit takes "
                                 "max_epochs, batch_size, early_stop); did you mean train.memorize_repeat?"),
    "early stop patience": (["backbone.fit.early_stop.patience=-2"],
                            "backbone.fit.early_stop.patience=-2 is not an integer >= 0"),
    "early stop monitor": (["backbone.fit.early_stop.monitor=acc"],
                           "backbone.fit.early_stop.monitor=acc is not one of exact, loss"),
    "early stop without a holdout": (["backbone.fit.early_stop.patience=3", "backbone.fit.early_stop.holdout=0"],
                                     "backbone.fit.early_stop.holdout=0.0 must lie in (0, 1) to stop early"),
    "early stop without queries": (["backbone.fit.early_stop.patience=3", "train.retrieve=false"],
                                   "backbone.fit.early_stop holds out training queries, and train.retrieve=false"),
    "query mix": (["backbone.model.query_mix=both"], "backbone.model.query_mix=both is not one of paper, authors_code"),
    "early stop, MLLM": (["backbone=qwen25vl", "+backbone.fit.early_stop.patience=3"],
                         "backbone.fit.early_stop: MLLMDecoder does not validate on held-out queries"),
    "fit key typo": (["+captioner.fit.epochs=3"], "captioner.fit.epochs is not read by any stage"),
    "no adapter": (["~backbone.adapter"], "backbone.adapter._target_ is missing"),
    "atomic head": (["identifier=atomic", "identifier.head=softmax"], "identifier.head=softmax is not one of vocab, classifier"),
    "GENIUS first code": (["identifier=genius", "identifier.modality_code=decoupled"],
                          "identifier.modality_code=decoupled is not one of learned, given, classifier, none"),
    "GENIUS first level": (["identifier=genius", "identifier.first_level_size=4"],
                           "identifier.first_level_size=4: the modality code has 3 values"),
    "SSID captions": (["identifier=ssid", "identifier.captions=two"], "identifier.captions=two is not one of first, all"),
    "head of a scheme without one": (["+identifier.head=classifier"], "identifier.head is not an option of StringIdentifier"),
    "scheme option typo": (["identifier=ssid", "+identifier.retry=3"], "identifier.retry is not an option of SsidIdentifier"),
    "threads text": (["threads=many"], "threads=many is not auto or an integer >= 1"),
    "stage": (["stage=bogus"], "stage=bogus is not one of dataset, encode, identify, train, index, evaluate"),
    "method": (["method.name=retrieval"], "method.name=retrieval is not one of embedding, generative"),
    "pool": (["eval.pool=global"], "eval.pool=global is not one of task, universal"),
    "encoder tasks": (["encoder.fit.tasks=every"], "encoder.fit.tasks=every is not one of captions, all"),
    "schedule": (["train.schedule=sequential"], "train.schedule=sequential is not one of interleaved, phased"),
    "reason": (["train.reason=always"], "train.reason=always is not one of auto, both, train_only, none"),
    "engine": (["decoding.engine=vllm"], "decoding.engine=vllm is not one of genretr, hf"),
    "hf engine, CART": (["decoding.engine=hf", "backbone=cart"], "decoding.engine=hf needs a backbone with HF "
                        "generate; CartSeq2Seq (backbone.model._target_) is searched by decoding.engine=genretr only"),
    "hf engine, MLLM": (["decoding.engine=hf", "backbone=qwen25vl"], "Qwen25VLRetriever (backbone.model._target_)"),
    "encoder schedule": (["encoder.model.schedule=linear"], "encoder.model.schedule=linear is not one of constant, cosine"),
    "encoder warm-up": (["encoder.model.warmup=1.5"], "encoder.model.warmup=1.5 is not a fraction in [0, 1)"),
    "unknown task": (["eval.tasks=[x2y]"], "eval.tasks=[x2y]: x2y is not a task"),
    "tasks not a list": (["eval.tasks=t2i"], "eval.tasks=t2i is not a non-empty list"),
    "shapes task not generated": (["eval.tasks=[t2i,t2t]"], "dataset shapes has no t2t queries (dataset.tasks lists"),
    "karpathy task": (["dataset=flickr30k", "eval.tasks=[it2i]"], "dataset flickr30k has no it2i queries"),
    "precomputed task": (["dataset=precomputed"], "dataset precomputed has no t2i queries (dataset.modality=audio"),
    "mbeir task from file names": (["dataset=mbeir", "eval.tasks=[t2it]"], "dataset mbeir_mscoco has no t2it"),
    "shapes no universal pool": (["eval.pool=universal"], "set dataset.universal=true"),
    "mbeir no universal pool": (["dataset=mbeir", "eval.pool=universal"], "dataset.universal names no pool file"),
    "eval split": (["eval.split=dev"], "eval.split=dev is not a split of dataset shapes"),
    "mbeir test only, generative": (MBEIR_TEST_ONLY, "dataset.splits has no train split, but method=generative"),
    "mbeir test only, trained encoder": ([*MBEIR_TEST_ONLY, "method=embedding"],
                                         "no train split, but encoder.fit.max_epochs=2"),
    "shapes without train": (["~dataset.splits.train"], "dataset.splits has no train split"),
    "CART memorizing images": (["backbone=cart"], "train.memorize=true: CartSeq2Seq reads only words, and the image "
                               "items of t2i have none to memorize; set train.memorize=false"),
    "CART memorizing audio": (["dataset=precomputed", "eval.tasks=[t2a]", "backbone=cart"],
                              "the audio items of t2a have none to memorize"),
    "CART memorizing the universal pool": (["backbone=cart", "dataset.tasks=[t2i,t2t]", "eval.tasks=[t2t]",
                                            "dataset.universal=true"], "the image items of t2i have none"),
    "CART reading image queries": (["backbone=cart", "train.memorize=false", "eval.tasks=[i2t]"],
                                   "eval.tasks: CartSeq2Seq reads only words, and the queries of i2t are images"),
}
GOOD = {
    "tiny": [],
    "mbeir test only, untrained encoder": [*MBEIR_TEST_ONLY, "method=embedding", "encoder.fit.max_epochs=0"],
    "numeric string (an env interpolation)": ["decoding.num_beams='3'"],
    "null limits": ["eval.max_queries=null", "train.limit=null"],
    "fp32, two threads": ["precision=fp32", "threads=2"],
    "hf engine, T5": ["decoding.engine=hf"],
    "hf engine, embedding method": ["decoding.engine=hf", "backbone=cart", "method=embedding"],
    "CART, query -> identifier only": ["backbone=cart", "train.memorize=false"],
    "CART memorizing text items": ["backbone=cart", "dataset.tasks=[t2i,t2t]", "eval.tasks=[t2t]"],
    "CART, memorize samples repeated 0 times": ["backbone=cart", "train.memorize_repeat=0"],
    "bf16, torch's own thread count": ["precision=bf16", "threads=null"],
    "every shapes task": ["dataset.tasks=[t2i,t2t,i2i]", "eval.tasks=[t2t,i2i]"],
    "universal pool built": ["dataset.universal=true", "eval.pool=universal"],
    "precomputed audio": ["dataset=precomputed", "eval.tasks=[t2a]"],
    "mbeir files of other names": ["dataset=mbeir", "eval.tasks=[t2it]",
                                   "dataset.splits.test=[{queries: q.jsonl, pool: p.jsonl}]"],
}


@pytest.fixture
def no_wandb_key(tmp_path, monkeypatch):
    """No W&B credentials anywhere: a temp HOME (no ~/.netrc), no key variables."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def refusal(cfg) -> str:
    with pytest.raises(GenretrError) as info:
        validate(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("case", list(BAD))
def test_bad_option_is_one_line_naming_it(case, make_cfg):
    overrides, expected = BAD[case]
    assert expected in refusal(make_cfg(*overrides))


@pytest.mark.parametrize("case", list(GOOD))
def test_runnable_config_passes(case, make_cfg):
    validate(make_cfg(*GOOD[case]))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_preset_passes(preset, make_cfg):
    validate(make_cfg(f"experiment={preset}", "hydra.mode=RUN"))


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in ("dataset", "encoder", "identifier", "backbone",
                                                                 "method", "trainer", "logger", "generator")
                                          for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_option_passes(group, option, make_cfg, no_wandb_key):
    extra = ["eval.tasks=[t2a]"] if option == "precomputed" else []  # its only task
    extra += ["train.memorize=false"] if option == "cart" else []  # CART's recipe (its decoder reads only words)
    validate(make_cfg(f"{group}={option}", *extra))


def test_wandb_offline_needs_no_key(make_cfg, no_wandb_key):
    validate(make_cfg("logger=wandb"))


def test_wandb_online_without_a_key_is_refused(make_cfg, no_wandb_key):
    msg = refusal(make_cfg("logger=wandb", "logger.offline=false"))
    assert "logger.offline=false" in msg and "no API key" in msg and str(no_wandb_key / ".netrc") in msg


def test_wandb_online_with_a_netrc_entry_passes(make_cfg, no_wandb_key, monkeypatch):
    (no_wandb_key / ".netrc").write_text("machine example.org login user password other\n")
    assert not wandb_api_key_found()  # an entry for another host is not W&B's
    with (no_wandb_key / ".netrc").open("a") as f:
        f.write("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (no_wandb_key / ".netrc").chmod(0o600)
    assert wandb_api_key_found()
    validate(make_cfg("logger=wandb", "logger.offline=false"))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a self-hosted server: its own entry
    assert not wandb_api_key_found()


def test_wandb_online_with_an_api_key_passes(make_cfg, no_wandb_key, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    validate(make_cfg("logger=wandb", "logger.offline=false"))


def test_wandb_mode_is_not_a_second_switch(make_cfg, no_wandb_key, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert "WANDB_MODE=online is not the switch" in refusal(make_cfg("logger=wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert "WANDB_MODE=offline" in refusal(make_cfg("logger=wandb", "logger.offline=false", run="b"))
    validate(make_cfg("logger=csv", run="c"))  # other loggers ignore it


def test_wandb_offline_flag_must_be_a_boolean(make_cfg, no_wandb_key):
    assert "logger.offline=maybe is not one of true, false" in refusal(make_cfg("logger=wandb", "logger.offline=maybe"))


@pytest.mark.parametrize("overrides", [["method.decoder=null"], ["method=embedding", "method.name=generative"]])
def test_a_generative_method_names_its_decoder_and_the_embedding_one_none(make_cfg, overrides):
    with pytest.raises(GenretrError, match=r"a generative method names its decoder"):
        validate(make_cfg(*overrides))


def test_early_stop_choices_are_the_training_monitors():
    from genretr.training import EARLY_STOP_MONITORS
    from genretr.validate import CHOICES

    assert sorted(CHOICES["backbone.fit.early_stop.monitor"]) == sorted(EARLY_STOP_MONITORS)


def test_validation_imports_no_lightning():
    """`genretr.run` validates before it imports Lightning (~5 s), so that a typo is answered in about two seconds:
    validating builds the config's decoder adapter (the add-on check), which must not import it either.  (CART's
    and GENIUS's identifier modules do: their quantizers are LightningModules.)"""
    import subprocess
    import sys

    code = """
import sys
from hydra import compose, initialize_config_dir
from genretr.validate import validate
import genretr.run
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    for overrides in ([], ["backbone=cart", "train.memorize=false"], ["identifier=ssid", "backbone=qwen25vl"]):
        validate(compose("config", overrides=["debug=tiny", *overrides]))
print(sorted(m for m in sys.modules if m.startswith("lightning")))
"""
    out = subprocess.run([sys.executable, "-c", code, str(CONF)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
