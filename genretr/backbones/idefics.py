"""IDEFICS (the open Flamingo, GRACE's and SSID's baseline backbone, Sec. 3.1 / IV-A) as an identifier generator.

Flamingo-style: a vision encoder (+ optional perceiver resampler) produces image states that the LM's
gated cross-attention layers read; ``image_attention_mask`` says which image each text token sees (the
last one before it).  The cross-attention keeps no cache, so every decoding step passes the prompt's
image states again (`image_encoder_embeddings`, or `perceiver_embeddings` with a resampler) and the
mask row of the prompt's last token, as HF `generate` does.
"""
from __future__ import annotations

import torch
from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsProcessor
from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil

from genretr.backbones.mllm import MLLMRetriever, as_uint8_image, char_tokenizer

TINY = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "cross_layer_interval": 1, "alpha_initializer": "ones",  # "normal" fails in transformers 5.23's init
    "vision_config": {"embed_dim": 32, "image_size": 28, "intermediate_size": 64, "patch_size": 14,
                      "num_hidden_layers": 1, "num_attention_heads": 4},
    "perceiver_config": {"use_resampler": False},
}


class IdeficsRetriever(MLLMRetriever):
    family = "idefics"
    hub_id = "HuggingFaceM4/idefics-9b-instruct"
    image_placeholder = "<image>"
    vision_prefixes = ("model.vision_model.", "model.perceiver_resampler.")
    per_token_fields = ("image_attention_mask",)
    model_class = IdeficsForVisionText2Text
    processor_class = IdeficsProcessor
    turn_end = "<end_of_utterance>"  # idefics-instruct's "User:...<end_of_utterance>\nAssistant:" turns

    def build(self, config: dict, tokenizer):
        vision = {**TINY["vision_config"], **config.pop("vision_config", {})}
        perceiver = {**TINY["perceiver_config"], **config.pop("perceiver_config", {})}
        cfg = IdeficsConfig(**{**TINY, **config, "vision_config": vision, "perceiver_config": perceiver},
                            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            freeze_text_layers=False, freeze_vision_layers=False)
        return IdeficsForVisionText2Text(cfg)

    def tiny_processor(self):
        side = TINY["vision_config"]["image_size"]
        return IdeficsProcessor(image_processor=IdeficsImageProcessorPil(image_size=side),
                                tokenizer=char_tokenizer(["<image>", "<fake_token_around_image>"]), image_size=side)

    def process(self, prompts, images):
        """IDEFICS prompts are lists of texts and images: the placeholder is where the image goes."""
        parts = []
        for prompt, image in zip(prompts, images):
            if image is None:
                parts.append([prompt])
            else:
                before, _, after = prompt.partition(self.image_placeholder)
                parts.append([p for p in (before, as_uint8_image(image), after) if not isinstance(p, str) or p])
        return self.processor(text=parts, return_tensors="pt")

    def extend_field(self, name, rows, n):
        """Answer tokens see the image(s) the prompt's last token sees."""
        return torch.cat([rows, rows[-1:].expand(n, *rows.shape[1:])])

    def step_extras(self, batch, out):
        """The prompt's image states under the keyword the model takes them back by. transformers >= 5.24
        returns the vision encoder's states in ``image_outputs`` (``image_hidden_states`` became the pooled
        features): they go back as ``image_encoder_embeddings`` and the resampler, if any, reruns on them.
        Before 5.24 ``image_hidden_states`` were the states the cross-attention read (after the resampler)."""
        mask = batch["image_attention_mask"][:, -1:]
        if getattr(out, "image_outputs", None) is not None:
            return {"image_encoder_embeddings": out.image_outputs.last_hidden_state, "image_attention_mask": mask}
        key = "perceiver_embeddings" if self.hf.config.use_resampler else "image_encoder_embeddings"
        return {key: out.image_hidden_states, "image_attention_mask": mask}

    def step_inputs(self, extras):
        return dict(extras)
