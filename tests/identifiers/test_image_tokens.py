"""genretr.identifiers.image_tokens (GRACE Appendix C: residual-quantized image tokens)."""
from types import SimpleNamespace

import numpy as np
import pytest

from genretr.errors import GenretrError
from genretr.identifiers.base import EOS, IdentifierContext, SPECIAL_TOKENS
from genretr.identifiers.image_tokens import ImageTokenIdentifier, residual_quantize

CTX = IdentifierContext(train_texts=[], workdir=None)


def vectors(n=300, d=16, seed=0, duplicates=5):
    """Random unit vectors; the last `duplicates` rows repeat row 0 (the same image twice)."""
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x[n - duplicates:] = x[0]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items_for(x):
    return [SimpleNamespace(id=f"i{i}") for i in range(len(x))]


def test_four_tokens_one_per_level():
    x = vectors()
    t = ImageTokenIdentifier(codebook_size=16).build(items_for(x), x, CTX)
    assert t.vocab == SPECIAL_TOKENS + [f"v{l}_{c}" for l in range(1, 5) for c in range(16)]
    assert t.new_tokens == t.vocab[2:]
    for i in range(len(x)):
        toks = t.tokens(f"i{i}")
        assert len(toks) == 5 and toks[-1] == EOS
        assert [t.vocab[k].split("_")[0] for k in toks[:-1]] == ["v1", "v2", "v3", "v4"]
    # the repeated image collides (shared identifier, all its items behind it); random vectors rarely do
    dup = t.items_of(t.tokens("i0"))
    assert {f"i{i}" for i in (0, 295, 296, 297, 298, 299)} <= set(dup)
    assert t.collisions() < 20


def test_codebook_clamped_to_the_number_of_items():
    x = vectors(n=40, duplicates=1)
    t = ImageTokenIdentifier(levels=2).build(items_for(x), x, CTX)  # 256 codes > 40 items
    assert t.vocab_size == 2 + 2 * 40


def test_disambiguation_makes_every_id_unique():
    x = vectors()
    shared = ImageTokenIdentifier(codebook_size=16).build(items_for(x), x, CTX)
    t = ImageTokenIdentifier(codebook_size=16, disambiguate=True).build(items_for(x), x, CTX)
    assert t.collisions() == 0 and len({t.tokens(f"i{i}") for i in range(len(x))}) == len(x)
    groups = {}
    for i in range(len(x)):
        groups.setdefault(shared.tokens(f"i{i}"), []).append(i)
    for members in groups.values():
        for j, i in enumerate(members):
            words = t.text(f"i{i}").split()
            assert words[:4] == shared.text(f"i{i}").split()  # same codes ...
            assert words[4:] == ([f"#{j}"] if len(members) > 1 else [])  # ... and a counter only when shared
    assert set(t.new_tokens) - set(shared.new_tokens) == {f"#{j}" for j in range(max(map(len, groups.values())))}


def test_levels_refine_the_residual():
    """Level 1 codes are the clusters; each level lowers the quantization error."""
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 16))
    label = np.repeat(np.arange(4), 50)
    x = (centers[label] + 0.05 * rng.normal(size=(200, 16))).astype(np.float32)
    codes = residual_quantize(x, levels=3, codebook_size=4)
    assert all(len(set(codes[label == b, 0])) == 1 for b in range(4)) and len(set(codes[:, 0])) == 4
    errors = []
    for levels in (1, 2, 3):
        codes = residual_quantize(x, levels=levels, codebook_size=8, seed=0)
        recon = np.zeros_like(x)
        for level in range(levels):  # a code's centroid = the mean residual of its members
            r = x - recon
            for c in set(codes[:, level]):
                m = codes[:, level] == c
                recon[m] += r[m].mean(0)
        errors.append(np.linalg.norm(x - recon, axis=1).mean())
    assert errors[0] > errors[1] > errors[2]


def test_bad_config_and_input():
    with pytest.raises(GenretrError, match="levels >= 1"):
        ImageTokenIdentifier(levels=0)
    with pytest.raises(GenretrError, match="one embedding per item"):
        ImageTokenIdentifier().build(items_for(vectors()), None, CTX)
    x = vectors(n=10, duplicates=1)
    x[3, 0] = np.nan
    with pytest.raises(GenretrError, match="NaN"):
        ImageTokenIdentifier().build(items_for(x), x, CTX)
