"""Every config option and every experiment preset composes, and every `_target_` imports."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from genretr.identifiers.base import IdTable
from genretr.stages import keys
from genretr.stages.context import RunContext
from tests.conftest import CONF, compose_cfg

GROUPS = ["dataset", "encoder", "identifier", "backbone", "method", "trainer", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def targets(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                found.append(v)
            else:
                found += targets(v)
    elif isinstance(node, list):
        for v in node:
            found += targets(v)
    return found


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"], tmp_path, tmp_path / "cache")
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    for t in targets(plain):
        assert get_object(t) is not None, t
    # every interpolation outside hydra's own resolves
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), f"conf/{g}/ is empty"


@pytest.mark.parametrize("launcher", ["slurm", "submitit_slurm"])
def test_slurm_launcher_composes(launcher, tmp_path):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], tmp_path, tmp_path / "cache")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1


def test_experiment_presets_define_sweeps(tmp_path):
    for name in options("experiment"):
        cfg = compose_cfg([f"experiment={name}"], tmp_path, tmp_path / "cache")
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_") or "\n# @package _global_" in text.split("\n\n")[0]
        # a preset either sweeps, or is a shared setting other presets build on (their defaults list it)
        shared = any(name in OmegaConf.load(CONF / "experiment" / f"{o}.yaml").get("defaults", [])
                     for o in options("experiment") if o != name)
        assert cfg.hydra.sweeper.params or shared, f"experiment={name} sweeps nothing and no preset builds on it"


@pytest.mark.parametrize("family", ["qwen25vl", "llava", "idefics"])
def test_ssid_on_an_mllm_asks_that_mllm(family, tmp_path):
    """`identifier=ssid backbone=<MLLM>` (the design card's command): the backbone writes its own identifiers,
    with its own weights, unless generator= says otherwise."""
    from hydra.utils import instantiate

    from genretr.backbones.mllm_generator import MLLMGenerator
    from genretr.generators.keywords import KeywordsGenerator

    cfg = compose_cfg(["identifier=ssid", f"backbone={family}", f"backbone.model.pretrained={tmp_path}/w"], tmp_path,
                      tmp_path / "cache")
    gen = instantiate(cfg.identifier.generator)
    assert isinstance(gen, MLLMGenerator) and gen.model == family and gen.pretrained == f"{tmp_path}/w"
    assert gen.dtype == cfg.backbone.model.dtype
    other = compose_cfg(["identifier=ssid", f"backbone={family}", "generator=keywords"], tmp_path, tmp_path / "cache")
    assert isinstance(instantiate(other.identifier.generator), KeywordsGenerator)
    t5 = compose_cfg(["identifier=ssid"], tmp_path, tmp_path / "cache")
    assert isinstance(instantiate(t5.identifier.generator), KeywordsGenerator)


@pytest.mark.parametrize("generator", ["backbone", "qwen25vl", "llava", "idefics"])
def test_tiny_mllm_generators_answer_briefly(generator, tmp_path):
    """debug=tiny: an MLLM generator answers in 16 greedy tokens (conf/generator_size/), 96 otherwise."""
    run = ["identifier=ssid", "backbone=qwen25vl", f"generator={generator}"]
    assert compose_cfg(run, tmp_path, tmp_path / "cache").generator.max_new_tokens == 96
    assert compose_cfg([*run, "debug=tiny"], tmp_path, tmp_path / "cache").generator.max_new_tokens == 16
    assert "max_new_tokens" not in compose_cfg(["debug=tiny", "identifier=ssid"], tmp_path, tmp_path / "cache").generator


def test_generator_backbone_needs_an_mllm_backbone(tmp_path):
    from genretr.errors import GenretrError
    from genretr.validate import validate

    cfg = compose_cfg(["identifier=ssid", "generator=backbone"], tmp_path, tmp_path / "cache")
    with pytest.raises(GenretrError, match=r"^generator=backbone asks the run's MLLM backbone.*T5PrefixDecoder is none"):
        validate(cfg)
    validate(compose_cfg(["identifier=string", "generator=backbone"], tmp_path, tmp_path / "cache"))  # unused: fine


# Presets whose comments say they reuse another table's trained models through the cache: that holds only if
# the stage keys of those models are equal (a preset that trains another recipe silently retrains, and its rows
# are not the other table's). They share conf/experiment/grace_recipe.yaml, which a preset
# could still override after it. grace_poolsize has its own data, so only its recipe.
REUSE = [*((p, "grace_table1", [f"identifier={i}"]) for p, ids in
           [("grace_table3", "structured,image_tokens,atomic"), ("grace_beam", "numeric,string,semantic,structured"),
            ("ssid_table1", "numeric,string,semantic,structured"), ("ssid_table2", "atomic,image_tokens")]
           for i in ids.split(",")),
         *(("grace_table2", "grace_table1", [f"identifier={i}", "train.memorize=true"])
           for i in "numeric,string,semantic,structured".split(",")),
         ("ssid_table3", "ssid_table1", ["identifier=ssid", "train.reason=both"])]


def trained_from(cfg, run_dir: Path) -> dict[str, str]:
    """The cache keys of the stages a trained model comes from, made by genretr/stages/keys.py as a run makes
    them (one IdTable with a rationale stands in for the identify stage's, alike on both sides: `train.reason`
    resolves against it, so `auto` keys as `both` here, where a scheme that writes no rationale makes it `none`)."""
    ctx = RunContext(cfg=cfg, run_dir=run_dir)
    ctx.keys["dataset"] = keys.dataset(ctx)
    ctx.keys["encode"] = keys.encode(ctx, ctx.splits(), None)
    ctx.keys["identify"] = keys.identify(ctx)
    table = IdTable(["i0", "i1"], [[3, 1], [4, 1]], ["<pad>", "</s>", "<unk>", "a", "b"], reasons={"i0": "a b"})
    return {**ctx.keys, "identify-cache": keys.identify_cache(ctx), "captions": keys.captions(ctx, ["i0", "i1"]),
            "train": keys.train(ctx, table)}


@pytest.mark.parametrize("preset,source,overrides", REUSE, ids=[f"{p}-{o[0]}" for p, _, o in REUSE])
def test_presets_reuse_the_models_they_say(preset, source, overrides, tmp_path):
    ref = trained_from(compose_cfg([f"experiment={source}", *overrides], tmp_path, tmp_path / "cache"), tmp_path)
    cfg = trained_from(compose_cfg([f"experiment={preset}", *overrides], tmp_path, tmp_path / "cache"), tmp_path)
    for stage, key in ref.items():
        assert cfg[stage] == key, f"experiment={preset} keys its {stage} stage unlike experiment={source}"


# cart_recipe's rows (`change`) and what each stands for: grace_table1 with CART's IDs and these overrides, the
# commands of the README's table
CART_RECIPE_ROWS = {"none": [], "no_memorize": ["train.memorize=false"],
                    "pseudo_queries_all": ["train.pseudo_queries_for=all"],
                    "epochs10_batch32": ["backbone.fit.max_epochs=10", "backbone.fit.batch_size=32"],
                    "epochs10": ["backbone.fit.max_epochs=10"], "d_model128": ["backbone.model.d_model=128"],
                    "warmup20": ["backbone.model.warmup_steps=20"]}


@pytest.mark.parametrize("change,decoder", [*((c, []) for c in CART_RECIPE_ROWS), ("no_memorize", ["backbone=cart"])])
def test_cart_recipe_rows_train_what_their_overrides_train(change, decoder, tmp_path):
    cfg = compose_cfg(["experiment=cart_recipe", f"change={change}", *decoder], tmp_path, tmp_path / "cache")
    assert set(cfg.changes) == set(CART_RECIPE_ROWS)
    epochs = ["backbone.fit.max_epochs=30"] if decoder else []  # CART's decoder: its own 10 epochs otherwise
    ref = compose_cfg(["experiment=grace_table1", "identifier=cart", *decoder, *CART_RECIPE_ROWS[change], *epochs],
                      tmp_path, tmp_path / "cache")
    assert trained_from(cfg, tmp_path) == trained_from(ref, tmp_path)


def test_trained_from_sees_what_the_keys_read(tmp_path):
    """The check above fails when a preset changes anything a model is trained from (here, each stage's)."""
    base = trained_from(compose_cfg(["experiment=grace_table1", "identifier=string"], tmp_path, tmp_path / "c"),
                        tmp_path)
    for override, stage in [("dataset.splits.train=100", "dataset"), ("encoder.fit.max_epochs=1", "encode"),
                            ("identifier=numeric", "identify"), ("captioner.max_len=9", "captions"),
                            ("train.memorize_repeat=1", "train"), ("seed=5", "train"),
                            ("trainer.precision=32", "train")]:
        other = compose_cfg(["experiment=grace_table1", "identifier=string", override], tmp_path, tmp_path / "c")
        assert trained_from(other, tmp_path)[stage] != base[stage], override


def test_grace_poolsize_trains_grace_recipe(tmp_path):
    cfg = compose_cfg(["experiment=grace_poolsize"], tmp_path, tmp_path / "cache")
    ref = compose_cfg(["experiment=grace_table1"], tmp_path, tmp_path / "cache")
    assert cfg.train == ref.train
