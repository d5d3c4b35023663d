"""LLaVA-1.6 (LLaVA-NeXT) as an identifier generator (SSID Sec. IV-A, Table II: `llava-v1.6-vicuna-7b-hf`).

A CLIP vision tower reads the image at several tiles (the "anyres" grid); the projector maps its patch
features into the Llama embedding space at the ``<image>`` positions, which the processor expands to one
token per feature.  Positions are plain 1-D RoPE.
"""
from __future__ import annotations

from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from genretr.backbones.mllm import MLLMRetriever, as_uint8_image, char_tokenizer

TINY_GRID = [[28, 56], [56, 28], [56, 56]]
TINY = {
    "text_config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 28, "patch_size": 14,
                      "projection_dim": 32},
    "image_grid_pinpoints": TINY_GRID,
}


class LlavaNextRetriever(MLLMRetriever):
    family = "llava"
    hub_id = "llava-hf/llava-v1.6-vicuna-7b-hf"
    image_placeholder = "<image>\n"
    vision_prefixes = ("model.vision_tower.",)
    model_class = LlavaNextForConditionalGeneration
    processor_class = LlavaNextProcessor

    def build(self, config: dict, tokenizer):
        text = {**TINY["text_config"], **config.pop("text_config", {})}
        vision = {**TINY["vision_config"], **config.pop("vision_config", {})}
        text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        cfg = LlavaNextConfig(text_config=text, vision_config=vision,
                              image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                              **{"image_grid_pinpoints": TINY["image_grid_pinpoints"], **config})
        return LlavaNextForConditionalGeneration(cfg)

    def tiny_processor(self):
        side = TINY["vision_config"]["image_size"]
        images = LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                            image_grid_pinpoints=TINY_GRID)
        return LlavaNextProcessor(image_processor=images, tokenizer=char_tokenizer(["<image>"]),
                                  patch_size=TINY["vision_config"]["patch_size"],
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1)

    def process(self, prompts, images):
        imgs = [as_uint8_image(im) for im in images if im is not None]
        return self.processor(text=prompts, images=imgs or None, padding=True, return_tensors="pt")
