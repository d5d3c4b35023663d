"""Tiny MLLM checkpoints on disk, laid out like the hub ones genretr loads with ``backbone.model.pretrained=DIR``.

For each family (Qwen2.5-VL, LLaVA-NeXT, IDEFICS) `write_checkpoint` saves, with ``save_pretrained``, a randomly
initialised tiny model of genretr's `model_class` and a processor of genretr's `processor_class` holding:

* a tokenizer TRAINED OFFLINE with the `tokenizers` library on `corpus()` (a BPE over a few hundred words,
  digits and the words the tests use), built as the family's own tokenizer class from the trained vocab and
  merges (Qwen: byte-level BPE, `Qwen2Tokenizer`; LLaVA / IDEFICS: Llama's metaspace BPE with byte fallback,
  `LlamaTokenizer`), with the family's special tokens;
* a chat template in the family's format (`CHAT_TEMPLATES`), so prompts go through ``apply_chat_template``;
* the family's image processor with small sizes.

Model sizes mirror genretr's own tiny configs (`TINY` in genretr/backbones/<family>.py); like the hub checkpoints,
the LM's vocabulary is padded past the tokenizer's (Qwen, LLaVA) or split into a base and an additional
vocabulary (IDEFICS's decoupled embeddings).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from genretr.backbones.mllm import ASK_REASON, INST_MEMORIZE, INST_RETRIEVE

FAMILIES = ("qwen25vl", "llava", "idefics")
IDENTIFIERS = ["red circle", "red square", "blue square - left", "green star"]
REASONS = ["it is red and round", "it is a red box", "a blue box on the left", "a green star"]
QUERIES = ["a red round thing", "a red box", "a blue box at the left", "a green star shape"]
WORDS = """the a an of on in at to and or is it its with without this that these those there here what which who
image picture photo query caption identifier identifiers reason reasons predict find answer describe explain
sentence line new one two three four five six seven eight nine ten first second third left right top bottom
middle center near far above below behind front small large big tiny huge round square circle star triangle box
shape shapes thing things object objects color colour red blue green yellow black white gray orange purple pink
brown dark light bright background foreground scene item items dog cat man woman person people car tree house
street water sky grass table chair book phone cup plate food ball toy bird horse boat train plane bus bike
sitting standing walking running holding looking playing eating riding wearing next beside corresponding given
user assistant system you are helpful chat between curious human artificial intelligence gives detailed polite
answers questions"""
MARKERS = {  # text every prompt of the family's chat template holds (and the plain template never does)
    "qwen25vl": "<|im_start|>assistant\n",
    "llava": "A chat between a curious human",
    "idefics": "<end_of_utterance>\nAssistant:",
}

QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_TEMPLATE = (  # llava-v1.6-vicuna: images first, then the text, "USER: ... ASSISTANT:"
    "{{ 'A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human\\'s questions. ' }}{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
IDEFICS_TEMPLATE = (  # idefics-instruct: "User:<image>text<end_of_utterance>\nAssistant:"
    "{% for message in messages %}{{ message['role'] | capitalize }}:{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>{% else %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
CHAT_TEMPLATES = {"qwen25vl": QWEN_TEMPLATE, "llava": LLAVA_TEMPLATE, "idefics": IDEFICS_TEMPLATE}

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def corpus() -> list[str]:
    """Training text of the tokenizers: the vocabulary above, digits and numbers, genretr's instructions and the
    tests' identifiers, reasons and queries (so they tokenize into few pieces, as with a real tokenizer)."""
    words = WORDS.split()
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    lines += [" ".join(str(n) for n in range(k, k + 20)) for k in range(0, 200, 20)] + ["0 1 2 3 4 5 6 7 8 9"]
    lines += [INST_MEMORIZE, INST_RETRIEVE, ASK_REASON.strip(), "query: reason: identifier: caption:"]
    lines += IDENTIFIERS + REASONS + QUERIES
    return lines * 3


def train_bpe(kind: str, vocab_size: int, specials: list[str]) -> tuple[dict, list]:
    """(vocab, merges) of a BPE trained on `corpus()`: ``bytelevel`` (GPT-2 / Qwen), ``clip`` (byte-level on
    lowercased words, word-final tokens ending in ``</w>``, every byte alone and word-final in the vocabulary, the
    specials last as OpenAI's CLIP has them: its text pooling reads the EOS as the largest id) or
    ``metaspace`` (Llama: "▁" word starts, with the 256 ``<0xNN>`` byte-fallback tokens after the specials, as
    sentencepiece has)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(**({"end_of_word_suffix": "</w>"} if kind == "clip" else {})))
    if kind == "clip":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, initial_alphabet=alphabet,
                                      end_of_word_suffix="</w>")
        tok.train_from_iterator((text.lower() for text in corpus()), trainer)
        model = json.loads(tok.to_str())["model"]
        vocab = dict(model["vocab"])
        for t in alphabet + [c + "</w>" for c in alphabet] + specials:  # bytes the corpus never ends a word with
            vocab.setdefault(t, len(vocab))
        return vocab, [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        bytes_ = [f"<0x{i:02X}>" for i in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + bytes_, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def qwen_tokenizer():
    """A Qwen2.5-VL-Instruct-like tokenizer: byte-level BPE, no bos, eos <|im_end|>, pad <|endoftext|>."""
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe("bytelevel", 700, ["<|endoftext|>"])
    extra = [t for t in QWEN_SPECIALS if t != "<|endoftext|>"]
    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", extra_special_tokens=extra,
                          chat_template=CHAT_TEMPLATES["qwen25vl"])


def llama_tokenizer(extra: list[str], template: str):
    """A Llama (vicuna) tokenizer: metaspace BPE with byte fallback, <unk> <s> </s>, pad <unk>, plus `extra`."""
    from transformers import LlamaTokenizer

    vocab, merges = train_bpe("metaspace", 760, ["<unk>", "<s>", "</s>"])
    return LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                          pad_token="<unk>", add_bos_token=True, extra_special_tokens=extra,
                          chat_template=template)


def padded(n: int, multiple: int = 64) -> int:
    """A vocabulary size rounded up, as hub checkpoints pad their embedding matrices past the tokenizer."""
    return -(-n // multiple) * multiple


def qwen25vl(tokenizer):
    """Tiny Qwen2.5-VL (untied LM head, padded vocabulary) and its image-only processor (28*28..56*56 pixels)."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from genretr.backbones.qwen25vl import TINY, ImageOnlyQwen25VLProcessor, Qwen25VLRetriever

    tiny = copy.deepcopy(TINY)
    text, vision = tiny["text_config"], tiny["vision_config"]
    vision["out_hidden_size"] = text["hidden_size"]
    ids = tokenizer.convert_tokens_to_ids
    text.update(vocab_size=padded(len(tokenizer)), pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                           video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                           vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)
    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, temporal_patch_size=2,
                                      merge_size=2)
    processor = ImageOnlyQwen25VLProcessor(image_processor=images, tokenizer=tokenizer,
                                           chat_template=CHAT_TEMPLATES["qwen25vl"])
    return Qwen25VLRetriever.model_class(cfg), processor


def llava(tokenizer):
    """Tiny LLaVA-NeXT (CLIP tower at 28 px, anyres grid of 28/56 px tiles) and its processor."""
    from transformers import LlavaNextConfig
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from genretr.backbones.llava import TINY, TINY_GRID, LlavaNextRetriever

    tiny = copy.deepcopy(TINY)
    text, vision = tiny["text_config"], tiny["vision_config"]
    text.update(vocab_size=padded(len(tokenizer)), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    cfg = LlavaNextConfig(text_config=text, vision_config=vision, image_grid_pinpoints=TINY_GRID,
                          image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    side = vision["image_size"]
    images = LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                        image_grid_pinpoints=TINY_GRID)
    processor = LlavaNextRetriever.processor_class(
        image_processor=images, tokenizer=tokenizer, patch_size=vision["patch_size"],
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATES["llava"])
    return LlavaNextRetriever.model_class(cfg), processor


def idefics(tokenizer):
    """IDEFICS with the hub's layout: the image tokens are the last two ids, in the decoupled additional
    vocabulary (``additional_vocab_size=2``), and the saved config freezes the text layers as the hub's does."""
    from transformers import IdeficsConfig
    from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil

    from genretr.backbones.idefics import TINY, IdeficsRetriever

    tiny = copy.deepcopy(TINY)
    assert tokenizer.convert_tokens_to_ids(["<fake_token_around_image>", "<image>"]) == \
        [len(tokenizer) - 2, len(tokenizer) - 1]
    cfg = IdeficsConfig(**tiny, vocab_size=len(tokenizer) - 2, additional_vocab_size=2,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, freeze_text_layers=True, freeze_vision_layers=True)
    side = tiny["vision_config"]["image_size"]
    processor = IdeficsRetriever.processor_class(image_processor=IdeficsImageProcessorPil(image_size=side),
                                                 tokenizer=tokenizer, image_size=side,
                                                 chat_template=CHAT_TEMPLATES["idefics"])
    return IdeficsRetriever.model_class(cfg), processor


def tokenizer(family: str):
    """The family's tokenizer, trained offline (`train_bpe`)."""
    if family == "qwen25vl":
        return qwen_tokenizer()
    if family == "llava":
        return llama_tokenizer(["<image>"], CHAT_TEMPLATES["llava"])
    if family == "idefics":
        return llama_tokenizer(["<end_of_utterance>", "<fake_token_around_image>", "<image>"],
                               CHAT_TEMPLATES["idefics"])
    raise ValueError(f"unknown MLLM family {family!r}")


def write_checkpoint(family: str, path: Path, seed: int = 0) -> Path:
    """Save a tiny random `family` model and its processor under `path` (``save_pretrained``); returns `path`."""
    torch.manual_seed(seed)
    model, processor = {"qwen25vl": qwen25vl, "llava": llava, "idefics": idefics}[family](tokenizer(family))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def qwen_hub_layout(src: Path, dst: Path) -> Path:
    """A copy of a saved tiny Qwen2.5-VL checkpoint in the layout of the hub's ``Qwen2.5-VL-7B-Instruct`` repo
    (what ``huggingface-cli download`` fetches): a flat config.json with legacy ``rope_scaling`` (mrope),
    preprocessor_config.json with ``min_pixels``/``max_pixels``, chat_template.json, and
    ``processor_class: Qwen2_5_VLProcessor`` (genretr loads it with its own image-only subclass)."""
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    for key in ("model_type", "layer_types"):
        text.pop(key, None)
    cfg["vision_config"].pop("rope_parameters", None)
    cfg.update(text, rope_theta=rope["rope_theta"],
               rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    images = json.loads((dst / "processor_config.json").read_text())["image_processor"]
    (dst / "processor_config.json").unlink()
    pre = {"min_pixels": images["size"]["shortest_edge"], "max_pixels": images["size"]["longest_edge"],
           **{k: images[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")},
           "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
    (dst / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    template = (dst / "chat_template.jinja").read_text()
    (dst / "chat_template.jinja").unlink()
    (dst / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tok = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**tok, "processor_class": "Qwen2_5_VLProcessor"}, indent=2))
    return dst
