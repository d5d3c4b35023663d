"""MiniLM features in shards (issue 16: a killed featurisation of a million captions resumes where it stopped)."""
import pytest
import torch

from genretr.artifacts import ArtifactStore
from genretr.encoders.contrastive import ContrastiveEncoder
from genretr.encoders.towers import MiniLMText, SmallCNN
from genretr.stages.encode import prepare_texts

TEXTS = [f"{'a big ' * (i % 4)}{c} {s} number {i}" for i, (c, s) in
         enumerate((c, s) for c in ("red", "green", "blue", "cyan", "grey") for s in ("circle", "square", "star"))]


class Killed(Exception):
    pass


@pytest.fixture
def tower(monkeypatch):
    """fp32 MiniLM in batches of 2 and shards of 4 texts (8 shards over TEXTS' 15), counting its batches."""
    torch.set_num_threads(1)
    monkeypatch.setattr(MiniLMText, "SHARD_TEXTS", 4)
    # every batch computed again, not remembered (tests/conftest.py's minilm_batches_once): the bit-for-bit
    # comparisons below are then also the premise of that fixture
    monkeypatch.setattr(MiniLMText, "_embed", getattr(MiniLMText._embed, "__wrapped__", MiniLMText._embed))
    t = MiniLMText(precision="fp32", batch_size=2)
    t.batches = 0
    embed = t._embed

    def counted(*args):
        t.batches += 1
        if t.batches == getattr(t, "kill_at", None):
            raise Killed
        return embed(*args)

    monkeypatch.setattr(t, "_embed", counted)
    return t


def test_shards_give_the_unsharded_features_bit_for_bit(tower, tmp_path):
    whole = tower.prepare(TEXTS)
    sharded = tower.prepare(TEXTS, shard_dir=tmp_path)
    assert torch.equal(whole, sharded)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"shard-{i:06d}-size4.pt" for i in range(4)]  # 15 texts / 4


def test_a_killed_featurisation_resumes_from_its_shards(tower, tmp_path):
    reference = tower.prepare(TEXTS)
    tower.batches, tower.kill_at = 0, 6  # killed in the third shard (batches 5-6): two shards written
    with pytest.raises(Killed):
        tower.prepare(TEXTS, shard_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000000-size4.pt", "shard-000001-size4.pt"]
    tower.batches, tower.kill_at = 0, None
    assert torch.equal(tower.prepare(TEXTS, shard_dir=tmp_path), reference)
    assert tower.batches == 4  # shards 2 and 3 only (2 + 2 batches), not the 8 of the whole
    tower.batches = 0
    tower.prepare(TEXTS, shard_dir=tmp_path)
    assert tower.batches == 0  # every shard there: MiniLM is not even loaded
    tower.batch_size = 3  # shards of 3: none of the size-4 shards is read
    assert torch.allclose(tower.prepare(TEXTS, shard_dir=tmp_path), reference, atol=1e-5)
    assert tower.batches == 5


def test_the_text_features_stage_resumes_and_leaves_no_work(tower, tmp_path):
    encoder = ContrastiveEncoder(SmallCNN(out_dim=8, width=4), tower)
    store = ArtifactStore(tmp_path / "cache")
    tower.kill_at = 3
    with pytest.raises(Killed):
        prepare_texts(encoder, TEXTS, TEXTS, store)
    work = list((tmp_path / "cache" / "text-features").glob("*/work"))
    assert len(work) == 1 and [p.name for p in work[0].glob("shard-*")] == ["shard-000000-size4.pt"]
    assert not list((tmp_path / "cache" / "text-features").glob("*/artifact"))  # nothing half-written
    tower.batches, tower.kill_at = 0, None
    features = prepare_texts(encoder, TEXTS, TEXTS, store)
    assert tower.batches == 6 and not work[0].exists()  # the missing shards; the work dir goes with success
    assert torch.equal(features, tower.prepare(TEXTS))


def test_the_features_are_made_on_the_device_given(tower, monkeypatch):
    """On the CPU the check is that the device given is the device used (tests/test_device.py's rule)."""
    seen = []
    load = tower._load
    monkeypatch.setattr(tower, "_load", lambda device, dtype: seen.append((device, dtype)) or load(device, dtype))
    tower.prepare(TEXTS[:3], device=torch.device("cpu"))
    assert seen == [(torch.device("cpu"), torch.float32)]
    model = load(torch.device("cpu"), torch.float32)[1]
    assert next(model.parameters()).device == torch.device("cpu")
