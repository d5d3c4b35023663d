"""UniIR CLIP-SF checkpoint -> CLIPModel directory, checked against a plain-torch OpenAI CLIP written here."""
from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import genretr  # noqa: F401  (offline env vars)
from genretr.encoders.clip import CLIPImageTower, CLIPTextTower, resolve_pretrained
from genretr.encoders.clip_convert import convert_uniir_clip_sf, main
from genretr.errors import GenretrError, MissingWeightsError
from tests.encoders.test_clip import MEAN, TEXTS, images, write_tiny_clip

# The tiny architecture of both the reference and the HF base: widths differ and the projections are not square,
# so a missed transpose or a swapped tower cannot go unnoticed.
DIMS = dict(image_size=32, patch=8, vision_width=48, vision_heads=3, text_width=32, text_heads=2, layers=2,
            context=40, embed_dim=24)


# ---------------------------------------------------------------- OpenAI CLIP (clip/model.py), ViT only, in plain torch
class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask   # an attribute, not a buffer: not in the state dict (as in OpenAI's)

    def forward(self, x):   # (L, N, D)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch, width, layers, heads, embed_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty((image_size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, embed_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)                       # (N, grid*grid, width)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class OpenAICLIP(nn.Module):
    def __init__(self, vocab_size, image_size, patch, vision_width, vision_heads, text_width, text_heads, layers,
                 context, embed_dim, vision_layers=None):
        super().__init__()
        self.visual = VisionTransformer(image_size, patch, vision_width, vision_layers or layers, vision_heads,
                                        embed_dim)
        causal = torch.full((context, context), float("-inf")).triu_(1)
        self.transformer = Transformer(text_width, layers, text_heads, attn_mask=causal)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, pixels):
        return self.visual(pixels)

    def encode_text(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection   # EOT: the highest id


class CLIPScoreFusion(nn.Module):
    """UniIR's wrapper, as far as its state dict goes: `clip_model.` + OpenAI's keys."""

    def __init__(self, clip_model):
        super().__init__()
        self.clip_model = clip_model
        self.loss_function = nn.CrossEntropyLoss()


def reference_clip(vocab_size, seed=0, **overrides) -> OpenAICLIP:
    torch.manual_seed(seed)
    clip = OpenAICLIP(vocab_size, **{**DIMS, **overrides}).eval()
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if ".ln_" in f".{name}":   # layer norms: weights around 1
                p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif name != "logit_scale":
                p.normal_(0.0, 0.1)
        clip.logit_scale.fill_(2.5)
    return clip


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """An HF CLIP directory with DIMS's architecture, plus write_tiny_clip's tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPModel

    d = write_tiny_clip(tmp_path_factory.mktemp("base"))
    tok = CLIPConfig.from_pretrained(d).text_config
    assert tok.eos_token_id == tok.vocab_size - 1 != 2   # HF pools at the first EOS = OpenAI's argmax
    config = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=DIMS["text_width"],
                         intermediate_size=4 * DIMS["text_width"], num_hidden_layers=DIMS["layers"],
                         num_attention_heads=DIMS["text_heads"], max_position_embeddings=DIMS["context"],
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=DIMS["vision_width"], intermediate_size=4 * DIMS["vision_width"],
                           num_hidden_layers=DIMS["layers"], num_attention_heads=DIMS["vision_heads"],
                           image_size=DIMS["image_size"], patch_size=DIMS["patch"]),
        projection_dim=DIMS["embed_dim"])
    assert config.text_config.hidden_act == config.vision_config.hidden_act == "quick_gelu"
    CLIPModel(config).save_pretrained(d)   # replaces write_tiny_clip's weights and config
    return d


@pytest.fixture(scope="module")
def vocab_size(base) -> int:
    from transformers import CLIPConfig

    return CLIPConfig.from_pretrained(base).text_config.vocab_size


def save_uniir(path: Path, clip: nn.Module, **extra) -> Path:
    """As UniIR's train.py save_checkpoint: the model's state dict next to the optimizer and the OmegaConf config."""
    wrapper = CLIPScoreFusion(clip)
    opt = torch.optim.AdamW(wrapper.parameters())
    torch.save({"model": wrapper.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                "config": OmegaConf.create({"model": {"clip_vision_model_name": "ViT-L/14", "lr": 1e-5},
                                            "seeds": [1, 2], "note": None}), **extra}, path)
    return path


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", ["uniir", "ddp_bare", "openai_bare"])
def test_converted_model_embeds_as_the_openai_reference(base, vocab_size, tmp_path, layout, monkeypatch):
    clip = reference_clip(vocab_size)
    ckpt = tmp_path / "clip_sf.pth"
    if layout == "uniir":
        save_uniir(ckpt, clip)
    elif layout == "ddp_bare":
        torch.save({f"module.{k}": v for k, v in CLIPScoreFusion(clip).state_dict().items()}, ckpt)
    else:
        torch.save(clip.state_dict(), ckpt)
    out = convert_uniir_clip_sf(ckpt, base, tmp_path / "converted")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"} <= \
        {f.name for f in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_sf.pth", "converted"]   # no temp dir left

    img, txt = CLIPImageTower(str(out)), CLIPTextTower(str(out))
    assert torch.allclose(img.mean.flatten(), torch.tensor(MEAN))     # the base's image processor came along
    assert img.clip.logit_scale.item() == pytest.approx(2.5)
    with torch.no_grad():
        pixels = torch.randn(3, 3, DIMS["image_size"], DIMS["image_size"], generator=torch.Generator().manual_seed(1))
        ref = clip.encode_image(pixels)
        assert ref.std() > 0.1 and not torch.allclose(ref[0], ref[1], atol=1e-2)   # not a degenerate oracle
        assert torch.allclose(img.visual_projection(img.vision_model(pixel_values=pixels).pooler_output), ref,
                              atol=1e-5)
        x = images(2)
        assert torch.allclose(img(x), clip.encode_image(img.pixel_values(x)), atol=1e-5)

        ids = txt.prepare(TEXTS)                                        # padded to the full context (40)
        ref = clip.encode_text(ids)
        assert ref.std() > 0.1 and not torch.allclose(ref[0], ref[1], atol=1e-2)
        assert torch.allclose(txt(ids), ref, atol=1e-5)

    if layout == "uniir":   # GENRETR_CLIP=OUT is all the config needs
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate

        monkeypatch.setenv("GENRETR_CLIP", str(out))
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["encoder=clip"])
        enc = instantiate(cfg.encoder.model)
        with torch.no_grad():
            ref = nn.functional.normalize(clip.encode_text(ids), dim=-1)
            assert torch.allclose(enc.embed_texts(ids), ref, atol=1e-5)


@pytest.mark.parametrize("problem, key", [
    ("wider_vision", "clip_model.visual.class_embedding"),                 # a ViT-B checkpoint on a ViT-L base, say
    ("more_layers", "clip_model.visual.transformer.resblocks.2.attn.in_proj_weight"),
    ("missing", "clip_model.visual.ln_post.bias"),
    ("extra", "clip_model.extra_head.weight"),
    ("stray", "loss_head.weight"),                                         # outside the wrapper: named as it is
])
def test_a_checkpoint_that_does_not_fit_the_base_is_one_line_naming_file_and_key(base, vocab_size, tmp_path,
                                                                                   problem, key):
    overrides = {"wider_vision": dict(vision_width=64, vision_heads=4), "more_layers": dict(vision_layers=3)}
    clip = reference_clip(vocab_size, **overrides.get(problem, {}))
    sd = CLIPScoreFusion(clip).state_dict()
    if problem == "missing":
        del sd[key]
    elif problem in ("extra", "stray"):
        sd[key] = torch.zeros(2, 2)
    ckpt = tmp_path / "clip_sf_large.pth"
    torch.save({"model": sd}, ckpt)
    with pytest.raises(GenretrError) as e:
        convert_uniir_clip_sf(ckpt, base, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and str(ckpt) in msg and repr(key) in msg and "--base" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_sf_large.pth"]   # nothing half-written


def test_pickled_objects_beyond_omegaconf_need_trust_pickle(base, vocab_size, tmp_path):
    ckpt = save_uniir(tmp_path / "ckpt.pth", reference_clip(vocab_size), args=argparse.Namespace(lr=1e-5))
    with pytest.raises(GenretrError) as e:
        convert_uniir_clip_sf(ckpt, base, tmp_path / "out")
    assert "\n" not in str(e.value) and "argparse.Namespace" in str(e.value) and "--trust-pickle" in str(e.value)
    assert not (tmp_path / "out").exists()
    assert convert_uniir_clip_sf(ckpt, base, tmp_path / "out", trust_pickle=True).is_dir()


def test_a_failed_write_leaves_nothing(base, vocab_size, tmp_path, monkeypatch):
    import shutil

    ckpt = save_uniir(tmp_path / "ckpt.pth", reference_clip(vocab_size))

    def disk_full(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(GenretrError, match="could not write .*No space left"):
        convert_uniir_clip_sf(ckpt, base, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_missing_base_and_existing_out(vocab_size, base, tmp_path):
    ckpt = save_uniir(tmp_path / "ckpt.pth", reference_clip(vocab_size))
    with pytest.raises(MissingWeightsError, match="download"):
        convert_uniir_clip_sf(ckpt, tmp_path / "no_base", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(GenretrError, match="already exists"):
        convert_uniir_clip_sf(ckpt, base, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_a_checkpoint_file_as_pretrained_says_how_to_convert(tmp_path):
    ckpt = tmp_path / "clip_sf_large.pth"
    ckpt.write_bytes(b"not a directory")
    for load in (resolve_pretrained, CLIPImageTower, CLIPTextTower):
        with pytest.raises(MissingWeightsError) as e:
            load(str(ckpt))
        msg = str(e.value)
        assert "\n" not in msg and f"python -m genretr.encoders.clip_convert {ckpt} --base " \
                                  f"openai/clip-vit-large-patch14 --out DIR" in msg and "GENRETR_CLIP=DIR" in msg


def test_cli(base, vocab_size, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"clip_model.visual.proj": torch.zeros(3, 3)}}, bad)
    assert main([str(bad), "--base", str(base), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("genretr: error: ") and str(bad) in captured.err
    assert "'clip_model.visual.proj'" in captured.err

    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    assert main([str(tmp_path / "junk.pth"), "--base", str(base), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    ckpt = save_uniir(tmp_path / "clip_sf.pth", reference_clip(vocab_size))
    assert main([str(ckpt), "--base", str(base), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and f"GENRETR_CLIP={tmp_path / 'out'}" in captured.out
    assert CLIPImageTower(str(tmp_path / "out")).clip_dim == DIMS["embed_dim"]
