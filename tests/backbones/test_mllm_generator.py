"""SSID generation by a (tiny, random) MLLM end to end: prompts with images in, random text out, which the
SSID stage must parse, retry, fall back on and count.  Missing weights: one clear error, no network."""
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from genretr.data.schema import Item
from genretr.errors import MissingWeightsError
from genretr.generators import Request
from genretr.backbones.mllm_generator import MLLMGenerator
from genretr.identifiers.base import IdentifierContext
from genretr.identifiers.ssid import SsidIdentifier


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def Ctx(workdir: Path, images: np.ndarray, **kw) -> IdentifierContext:
    kw.setdefault("train_texts", ["a red circle", "a blue square"])
    return IdentifierContext(workdir=workdir, images=images, **kw)


def two_images():
    return np.random.default_rng(0).integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", ["qwen25vl", "llava", "idefics"])
def test_tiny_mllm_answers_are_parsed_retried_and_fall_back(family, tmp_path):
    gen = MLLMGenerator(model=family, pretrained=None, config={}, batch_size=2, max_new_tokens=12, dtype="float32",
                        device="cpu")
    calls = []
    generate = gen.generate
    gen.generate = lambda reqs: calls.append([r.item_id for r in reqs]) or generate(reqs)
    items = [Item("x0", "image", image=0), Item("x1", "image", image=1)]
    ctx = Ctx(tmp_path, two_images(), item_captions={"x1": ["a blue square"]})
    table = SsidIdentifier(gen, retries=1, batch_size=2).build(items, np.zeros((2, 4), np.float32), ctx)
    summary = json.loads((tmp_path / "ssid_summary.json").read_text())
    assert sum(summary["outcomes"].values()) == 2
    assert summary["outcomes"]["fallback"] == 2  # random text never holds the three lines
    assert calls == [["x0", "x1"], ["x0", "x1"]]  # one try and one stricter retry, batched
    records = [json.loads(x) for x in Path(summary["cache"]).read_text().splitlines()]
    assert all(isinstance(r["raw"], str) and r["outcome"] == "fallback" for r in records)
    assert table.text("x1") == "blue square"  # the known caption's words
    assert table.text("x0")  # the random answer's words or the item id


def test_generation_is_deterministic_and_sees_the_image():
    gen = MLLMGenerator(model="qwen25vl", config={}, max_new_tokens=8, dtype="float32", device="cpu")
    imgs = two_images()
    reqs = [Request("a", "describe", image=imgs[0]), Request("b", "describe", image=imgs[1]), Request("c", "describe")]
    out = gen.generate(reqs)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    assert out == MLLMGenerator(model="qwen25vl", config={}, max_new_tokens=8, dtype="float32",
                                device="cpu").generate(reqs)
    state = gen.load().step_decoder().prepare([{"prompt": "describe", "image": im} for im in imgs])
    assert not torch.allclose(state.logits[0], state.logits[1])  # the two images change the answer's distribution


def test_missing_weights_raise_one_clear_error_at_first_use(tmp_path):
    gen = MLLMGenerator(model="llava", pretrained=str(tmp_path / "nothing-here"))  # nothing loads yet
    with pytest.raises(MissingWeightsError, match="huggingface-cli download llava-hf/llava-v1.6-vicuna-7b-hf"):
        gen.generate([Request("a", "p")])
    with pytest.raises(MissingWeightsError, match="not in the HF cache"):
        MLLMGenerator(model="idefics", pretrained="genretr-tests/absent").load()


def test_the_generator_runs_on_the_runs_device_unless_its_config_names_one(tmp_path):
    """generator=backbone leaves `device` null: SSID places the generator where the run's models go."""
    here = torch.device("cpu", 0)  # a device object this test controls (the run's)
    free = MLLMGenerator(model="qwen25vl", pretrained=None, config={}, max_new_tokens=2, dtype="float32")
    pinned = MLLMGenerator(model="qwen25vl", pretrained=None, config={}, max_new_tokens=2, dtype="float32",
                           device="cpu")
    for gen in (free, pinned):
        SsidIdentifier(gen, retries=0).build([Item("x0", "image", image=0)], np.zeros((1, 4), np.float32),
                                             Ctx(tmp_path / str(id(gen)), two_images(), device=here))
    assert free.device == "cpu:0" and pinned.device == "cpu"


def test_the_generator_frees_its_model_once_the_identifiers_are_written(tmp_path):
    """SSID releases the MLLM after generating (also when generation fails), before the train stage loads a model."""
    gen = MLLMGenerator(model="qwen25vl", pretrained=None, config={}, max_new_tokens=2, dtype="float32", device="cpu")
    seen = []
    generate = gen.generate
    gen.generate = lambda reqs: (out := generate(reqs), seen.append(gen.loaded))[0]
    SsidIdentifier(gen, retries=0).build([Item("x0", "image", image=0)], np.zeros((1, 4), np.float32),
                                         Ctx(tmp_path, two_images()))
    assert seen == [True] and not gen.loaded
    gen.load()
    model = weakref.ref(gen.load())
    gen.release()
    assert model() is None  # the weights are gone, not merely unreferenced by the generator
    gen.generate = lambda reqs: (gen.load(), 1 / 0)
    with pytest.raises(ZeroDivisionError):
        SsidIdentifier(gen, retries=0, cache=False).build([Item("x1", "image", image=1)],
                                                          np.zeros((1, 4), np.float32), Ctx(tmp_path / "b", two_images()))
    assert not gen.loaded


def test_greedy_answers_end_at_the_first_stop_token():
    """An instruct checkpoint ends its turn with its own token (idefics-instruct: <end_of_utterance>, not eos):
    the answer stops there, and the search with it once every answer has stopped."""
    from types import SimpleNamespace

    from genretr.backbones.mllm_generator import greedy

    script, steps = [[5, 9, 7, 7], [6, 6, 2, 7]], []  # two answers' tokens; 9 ends a turn, 2 is eos
    onehot = lambda t: torch.nn.functional.one_hot(torch.tensor([row[t] for row in script]), 12).float()  # noqa: E731

    class ScriptedSteps:
        device = "cpu"

        def prepare(self, samples):
            return SimpleNamespace(cache=None, logits=onehot(0))

        def new_cache(self, rows, T):
            return SimpleNamespace(kv=None)

        def llm_step(self, tok, t, N, S, state, cache):
            steps.append(t)
            return onehot(t)

    decode = lambda row, skip_special_tokens: " ".join(map(str, row))  # noqa: E731
    model = SimpleNamespace(step_decoder=ScriptedSteps, pad_id=0, eos_id=2, stop_ids=[2, 9],
                            processor=SimpleNamespace(tokenizer=SimpleNamespace(decode=decode)))
    assert greedy(model, [{}, {}], max_new_tokens=4) == ["5", "6 6"]
    assert steps == [1, 2]  # both answers stopped at the third token
