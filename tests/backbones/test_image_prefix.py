"""genretr.backbones.image_prefix + captioner=pixels: a captioner that reads the image, not its embedding."""
import numpy as np
import pytest
import torch

from genretr.captioner import Captioner, fit_captioner, join_words, wants_pixels, words
from genretr.backbones.image_prefix import ImagePrefixDecoder
from genretr.errors import GenretrError

# where a bright square sits decides the caption: only the pixels say it (no embedding is given)
CAPTIONS = ["a square at the top left", "a square at the bottom right", "an empty picture"]
TINY = {"input": "pixels", "cnn": dict(cnn_width=4, grid=2, cell_dim=4),
        "model": dict(d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout=0.0, prefix_len=2, prefix_hidden=64,
                      lr=1e-2, warmup_steps=5),
        "fit": dict(max_epochs=12, batch_size=8), "max_len": 10}


def images(n=36, seed=0):
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 3
    x = rng.integers(0, 40, size=(n, 16, 16, 3)).astype(np.uint8)
    for img, b in zip(x, label):
        if b == 0:
            img[1:6, 1:6] = 250
        elif b == 1:
            img[10:15, 10:15] = 250
    return x, label


@pytest.fixture(scope="module")
def captioner():
    torch.set_num_threads(1)
    x, label = images()
    return fit_captioner(x, [[CAPTIONS[b]] for b in label], TINY, seed=0)


def test_decoder_reads_images_into_prefix_vectors():
    m = ImagePrefixDecoder(vocab_size=11, cnn_width=4, grid=2, cell_dim=4, d_model=16, num_layers=1, num_heads=2,
                           d_ff=32, prefix_len=3, prefix_hidden=16)
    states, mask = m.encode(torch.from_numpy(images(5)[0]))
    assert states.shape == (5, 3, 16) and mask is None
    assert m.hparams.input_dim == 2 * 2 * 4
    assert torch.allclose(m.image_vector(torch.from_numpy(images(2)[0])).norm(dim=-1), torch.ones(2))


def test_pixel_captioner_learns_where_things_are(captioner, tmp_path):
    x, label = images(seed=1)  # fresh images
    out = captioner.describe(x)
    assert np.mean([o == join_words(words(CAPTIONS[b])) for o, b in zip(out, label)]) > 0.9, out[:3]
    captioner.save(tmp_path / "cap")
    again = Captioner.load(tmp_path / "cap")
    assert again.pixels and again.describe(x) == out


def test_pixel_captioner_rejects_vectors(captioner):
    with pytest.raises(GenretrError, match="uint8 images"):
        captioner.describe(np.zeros((2, 16), np.float32))
    with pytest.raises(GenretrError, match="captioner.input=pictures is not one of"):
        wants_pixels({"input": "pictures"})
    assert not wants_pixels({"model": {}})
