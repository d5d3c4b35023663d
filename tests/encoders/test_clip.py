"""`encoder=clip`: CLIP towers on a tiny random CLIPModel + tokenizer saved to a tmp dir (no network)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import genretr  # noqa: F401  (offline env vars)
from genretr.encoders.clip import CLIPImageTower, CLIPTextTower
from genretr.encoders.contrastive import ContrastiveEncoder
from genretr.errors import MissingWeightsError

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]   # not the OpenAI constants: the tower must read them
TEXTS = ["a red circle", "a big blue square on the left", "Green triangle!", "x"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def write_tiny_clip(d: Path) -> Path:
    """A tiny random CLIPModel, its tokenizer and image processor saved to `d` by save_pretrained."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from tests.backbones.checkpoints import train_bpe
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5 without torchvision
    except ImportError:  # pragma: no cover
        from transformers import CLIPImageProcessor as Processor

    vocab, merges = train_bpe("clip", 700, ["<|startoftext|>", "<|endoftext|>"])  # CLIP's layout, trained offline
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.save_pretrained(d)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(d)
    Processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=MEAN,
              image_std=STD).save_pretrained(d)
    return d


def images(b=4, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


def features(out):
    """get_*_features: a tensor in transformers 4, a BaseModelOutputWithPooling in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_towers_load_share_and_embed(clip_dir):
    img, txt = CLIPImageTower(str(clip_dir)), CLIPTextTower(str(clip_dir), max_length=77)
    assert img.clip is txt.clip                                  # one CLIPModel for both towers
    assert img.vision_model is img.clip.vision_model and txt.text_model is img.clip.text_model
    assert txt.max_length == 40                                  # capped at max_position_embeddings
    assert torch.allclose(img.mean.flatten(), torch.tensor(MEAN)) and torch.allclose(img.std.flatten(),
                                                                                      torch.tensor(STD))
    # A second pair on the same path gets its own weights (no cross-talk between encoders in one process).
    img2 = CLIPImageTower(str(clip_dir))
    assert img2.clip is not img.clip

    enc = ContrastiveEncoder(img, txt).eval()
    x = images()
    e = enc.embed_images(x)
    assert e.shape == (4, 16) and torch.isfinite(e).all()
    assert torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
    # Same as CLIPModel's own image features on our preprocessing; non-square images work too.
    with torch.no_grad():
        ref = features(img.clip.get_image_features(pixel_values=img.pixel_values(x)))
    assert torch.allclose(img(x), ref, atol=1e-5)
    assert enc.embed_images(images(2, 48, 80)).shape == (2, 16)

    ids = enc.prepare_texts(TEXTS)
    assert ids.dtype == torch.long and ids.shape == (len(TEXTS), 40)
    assert (ids == txt.clip_tokenizer.eos_token_id).any(dim=1).all()
    t = enc.embed_texts(ids)
    assert t.shape == (len(TEXTS), 16) and torch.isfinite(t).all()
    # Trimming the padding past the last EOS changes nothing: equal to CLIP on the full padded ids.
    with torch.no_grad():
        ref = features(txt.clip.get_text_features(input_ids=ids))
    assert torch.allclose(txt(ids), ref, atol=1e-5)
    # A text's embedding does not depend on its batch (padding/trim).
    assert torch.allclose(enc.embed_texts(ids[3:]), t[3:], atol=1e-5)
    assert not hasattr(txt, "tokenizer")  # the pipeline would call tokenizers' .save() on it

    # Each CLIP weight appears once in the encoder's state_dict.
    keys = enc.state_dict().keys()
    assert not any(k.startswith("image_tower.text_model") or k.startswith("text_tower.vision_model") for k in keys)


def test_training_step_frozen_and_finetuned(clip_dir):
    x = images(4)
    # Frozen (zero-shot default): no CLIP weight trains, and CLIP stays in eval mode under .train().
    img, txt = CLIPImageTower(str(clip_dir)), CLIPTextTower(str(clip_dir))
    ids = txt.prepare(TEXTS)
    enc = ContrastiveEncoder(img, txt, temperature=0.01)
    enc.train()
    assert not any(p.requires_grad for p in img.clip.parameters())
    assert not img.vision_model.training and not txt.text_model.training
    assert [n for n, p in enc.named_parameters() if p.requires_grad] == ["log_scale"]
    loss = enc.training_step((x, ids), 0)
    assert torch.isfinite(loss)

    # out_dim: a trainable projection on top of the frozen CLIP.
    img, txt = CLIPImageTower(str(clip_dir), out_dim=8), CLIPTextTower(str(clip_dir), out_dim=8)
    enc = ContrastiveEncoder(img, txt)
    assert enc.embed_images(x).shape == (4, 8)
    enc.training_step((x, ids), 0).backward()
    assert img.proj.weight.grad is not None and txt.proj.weight.grad is not None
    assert all(p.grad is None for p in img.clip.parameters())

    # Fine-tuning: gradients reach both halves of CLIP.
    img, txt = CLIPImageTower(str(clip_dir), freeze=False), CLIPTextTower(str(clip_dir), freeze=False)
    enc = ContrastiveEncoder(img, txt, lr=1e-5, temperature=0.01)
    enc.train()
    assert img.vision_model.training
    loss = enc.training_step((x, ids), 0)
    assert torch.isfinite(loss)
    loss.backward()
    for p in (img.visual_projection.weight, img.vision_model.embeddings.patch_embedding.weight,
              txt.text_projection.weight, txt.text_model.embeddings.token_embedding.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    opt = enc.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == \
        sum(p.numel() for n, p in img.clip.named_parameters() if n != "logit_scale") + 1


@pytest.mark.parametrize("kind", ["missing_dir", "empty_dir", "hub_name"])
def test_missing_weights(tmp_path, monkeypatch, kind):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    if kind == "missing_dir":
        where = str(tmp_path / "no" / "such" / "clip")
    elif kind == "empty_dir":
        where = str(tmp_path)
    else:
        where = "openai/clip-vit-base-patch32"
    t0 = time.monotonic()
    with pytest.raises(MissingWeightsError) as e:
        CLIPTextTower(where)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and where in msg and "download" in msg and "pretrained" in msg


def test_config_composes_and_instantiates(clip_dir):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["encoder=clip", f"encoder.model.image_tower.pretrained={clip_dir}",
                                           f"encoder.model.text_tower.pretrained={clip_dir}"])
    assert cfg.encoder.fit.max_epochs == 0 and cfg.encoder.fit.batch_size == 64
    enc = instantiate(cfg.encoder.model)
    assert isinstance(enc, ContrastiveEncoder) and enc.image_tower.clip is enc.text_tower.clip
    assert enc.hparams.lr == pytest.approx(1e-5) and enc.image_tower.frozen and enc.text_tower.frozen
    emb = enc.embed_texts(enc.prepare_texts(TEXTS[:2]))
    assert emb.shape == (2, 16)


def test_images_smaller_than_the_input_are_upsampled_with_one_warning(clip_dir, caplog):
    """The tiny CLIP reads 32 px: 16 px images are upsampled (and said so once), 64 px ones cropped silently."""
    import logging

    tower = CLIPImageTower(str(clip_dir))
    with caplog.at_level(logging.WARNING):
        assert tower.pixel_values(images(h=64, w=64)).shape[-2:] == (32, 32)
        assert not caplog.records
        for _ in range(2):
            assert tower.pixel_values(images(h=16, w=20)).shape[-2:] == (32, 32)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "upsamples 16x20 images to its 32 px input" in said[0]


def test_datasets_decode_at_the_encoders_input_size(tmp_path):
    from tests.conftest import compose_cfg

    for encoder, size in (("minilm_cnn", 64), ("scratch", 64), ("clip", 224)):
        for dataset in ("shapes", "flickr30k", "coco", "mbeir"):
            cfg = compose_cfg([f"encoder={encoder}", f"dataset={dataset}"], tmp_path, tmp_path / "cache")
            assert cfg.dataset.image_size == size, (encoder, dataset)
