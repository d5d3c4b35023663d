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


def test_assign_codes_new_items_with_the_saved_codebooks(tmp_path):
    """Issue 19: the codebooks are saved; a new copy of a built item gets that item's codes (shared, or with the
    next counter of its group under `disambiguate`); an unseen counter is refused in one line."""
    x = vectors()
    items = items_for(x)
    ctx = IdentifierContext(train_texts=[], workdir=tmp_path)
    saved = IdentifierContext(workdir=tmp_path)  # what genretr.add gives assign
    shared = ImageTokenIdentifier(codebook_size=16)
    table = shared.build(items, x, ctx)
    added = shared.assign([SimpleNamespace(id="n0"), SimpleNamespace(id="n7")], x[[0, 7]], saved, table)
    assert added.vocab == table.vocab
    assert added.tokens("n0") == table.tokens("i0") and added.tokens("n7") == table.tokens("i7")
    unique = ImageTokenIdentifier(codebook_size=16, disambiguate=True)
    table = unique.build(items, x, ctx)  # rows 0 and 295..299 share codes: "#0".."#5"
    group = [table.vocab[t] for t in table.tokens("i0")[:-1]]
    assert group[-1] == "#0"
    with pytest.raises(GenretrError, match="needs the token '#6', which the trained decoder has never seen"):
        unique.assign([SimpleNamespace(id="n0")], x[[0]], saved, table)
    lone = next(i for i in range(1, 290) if table.vocab[table.tokens(f"i{i}")[-2]].startswith("v"))
    added = unique.assign([SimpleNamespace(id="twin")], x[[lone]], saved, table)
    assert added.tokens("twin")[:-1] == (*table.tokens(f"i{lone}")[:-1], table.vocab.index("#1"))
    with pytest.raises(GenretrError, match="no image_token_codebooks.npy"):
        unique.assign([SimpleNamespace(id="n0")], x[[0]], IdentifierContext(workdir=tmp_path / "nowhere"), table)
