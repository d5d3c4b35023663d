"""Qwen2.5-VL as an identifier generator (SSID Sec. IV-A, Table II: `Qwen2.5-VL-7B-Instruct`).

Images become ``<|vision_start|><|image_pad|>...<|vision_end|>`` (one pad per merged 2x2 patch); positions
are Qwen's 3-D M-RoPE (`get_rope_index`), so decoding steps continue at the prompt's largest position + 1
on all three axes.
"""
from __future__ import annotations

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from genretr.backbones.mllm import MLLMRetriever, as_uint8_image, char_tokenizer

SPECIALS = ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
TINY = {
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}},
    "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                      "fullatt_block_indexes": [0]},
}


class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without its video processor, which transformers can only build with torchvision
    (huggingface/transformers#48558); images and text are processed by the parent unchanged."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen25VLRetriever(MLLMRetriever):
    family = "qwen25vl"
    hub_id = "Qwen/Qwen2.5-VL-7B-Instruct"
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    vision_prefixes = ("model.visual.",)
    per_token_fields = ("mm_token_type_ids",)
    model_class = Qwen2_5_VLForConditionalGeneration
    processor_class = ImageOnlyQwen25VLProcessor

    def build(self, config: dict, tokenizer):
        text = {**TINY["text_config"], **config.pop("text_config", {})}
        vision = {**TINY["vision_config"], **config.pop("vision_config", {})}
        vision["out_hidden_size"] = text["hidden_size"]
        ids = tokenizer.convert_tokens_to_ids
        text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                               video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                               vision_end_token_id=ids("<|vision_end|>"), **config)
        return Qwen2_5_VLForConditionalGeneration(cfg)

    def tiny_processor(self):
        images = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14,
                                          temporal_patch_size=2, merge_size=2)
        return ImageOnlyQwen25VLProcessor(image_processor=images, tokenizer=char_tokenizer(SPECIALS))

    def process(self, prompts, images):
        imgs = [as_uint8_image(im) for im in images if im is not None]
        return self.processor(text=prompts, images=imgs or None, padding=True, return_tensors="pt")

    def position_ids(self, batch):
        pos, _ = self.hf.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                              image_grid_thw=batch.get("image_grid_thw"),
                                              attention_mask=batch["attention_mask"])
        return pos  # (3, B, L)

    def next_positions(self, batch):
        return batch["position_ids"].amax(dim=(0, 2)) + 1

    def step_positions(self, pos):
        return pos.view(1, -1, 1).expand(3, -1, 1)
