"""`MLLMRetriever`: a multimodal LLM that generates identifiers (GRACE Sec. 3.4-3.6, SSID Sec. III-D to III-G).

Samples are dicts ``{"image": uint8 HxWx3 | None, "text": str | None, "answer": identifier | None,
"reason": str | None, "instruction": str | None}``:

* learning to memorize (GRACE Eq. 1): an image with inst-m -> its identifier;
* learning to retrieve (GRACE Eq. 2): a caption with inst-r -> the identifier of its image;
* SSID's rationale-guided supervision (Sec. III-D, Table III), `reason`:
  ``both`` the answer is ``identifier <sep> reason: ... <eos>`` and the prompt asks for the reason in
  training and at inference; ``train_only`` the same targets, but the inference prompt asks for the
  identifier alone (the train/inference mismatch of Table III's middle row); ``none`` the answer is
  ``identifier <eos>``.  The loss is the cross-entropy of the answer tokens only.

The identifier is tokenized by the model's own tokenizer (SSID "vocabulary compatibility"), except the
tokens of schemes with a vocabulary of their own (`IdTable.new_tokens`: structured, atomic, image-token,
CART and GENIUS IDs), added as one new token each with trainable rows, and the pieces of GRACE's string /
numeric IDs, read as the plain digit string (`genretr.backbones.mllm_vocab`, which also holds the atomic
classifier head); the token that follows it in every answer (`<sep>`, the tokenizer's encoding of
`separator`, or `<eos>` with ``reason=none``) terminates it.  Decoding space (what the trie and the
engine see): token ``i + 2`` is LLM token ``i``, 0 is PAD (the engine's start token, never scored), 1 is
the terminator (EOS of the trie); `identifier_token_ids` / `id_table` build the trie over it.

Decoding (`step_decoder`, a `genretr.decoding.protocol.StepDecoder`): the prompt of each query
runs once (its KV cache and last-position logits kept); every step feeds the beams' tokens through the
HF model with an HF `DynamicCache` over prompt + generated tokens, reordered by ``index_select`` on the
beam dimension (`Cache.reorder_cache`), so the prompt's keys/values are copied per beam.  Batches are
left-padded with explicit position ids, so a padded query scores exactly as alone.

Weights load from a local checkpoint or the HF cache only (`MissingWeightsError` otherwise); ``pretrained:
null`` with a `config` dict builds a randomly initialised model with a character-level tokenizer
(`char_tokenizer`), for tests.  A sample's "prompt" replaces the instruction verbatim (SSID generation).
A subclass per family (qwen25vl.py, llava.py, idefics.py) says how to build, load and feed its model.

Saved and checkpointed is what trains (`genretr.training.TrainableStateCheckpoints`): under LoRA the adapters
and the identifier-token rows, without it all but the frozen vision tower; the rest is rebuilt.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from genretr.backbones.lora import apply_lora
from genretr.backbones.mllm_step import MLLMStepDecoder
from genretr.backbones.mllm_vocab import IdentifierVocabulary, head_width
from genretr.errors import GenretrError, MissingWeightsError
from genretr.identifiers.base import IdTable
from genretr.training import TrainableStateCheckpoints
from genretr.weights import CheckpointNotFound, load_error_cause, local_checkpoint

REASON_MODES = ("both", "train_only", "none")
DTYPES = ("float32", "bfloat16", "float16")
OFFSET = 2  # decoding id = LLM id + OFFSET; 0 = PAD, 1 = terminator
IGNORE = -100
INST_MEMORIZE = "Predict the identifier for the image."  # GRACE inst-m
INST_RETRIEVE = "Predict the image identifier corresponding to the given query."  # GRACE inst-r
ASK_REASON = " Answer with the identifier, then on a new line 'reason:' and one sentence explaining it."
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def plain(x):
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


def char_tokenizer(special_tokens: list[str]):
    """A character-level tokenizer over printable ASCII (any text encodes) with `<pad> <unk> <s> </s>` and the
    family's special tokens: the tokenizer of randomly initialised (``pretrained: null``) models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<unk>", "<s>", "</s>"]
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(base + list(special_tokens) + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens=list(special_tokens))


class MLLMRetriever(TrainableStateCheckpoints, L.LightningModule):
    family = ""  # registry name (conf/backbone/<family>.yaml)
    hub_id = ""  # the checkpoint SSID Sec. IV-A used, named in the missing-weights message
    image_placeholder = ""  # image marker of the plain prompt template
    vision_prefixes: tuple = ()  # parameter names of the vision tower (frozen with freeze_vision)
    per_token_fields: tuple = ()  # processor outputs shaped (B, L, ...) that follow input_ids' padding
    turn_end: str | None = None  # the token an instruct checkpoint ends its turn with, where it is not eos

    def __init__(self, pretrained: str | None = None, config: dict | None = None, processor=None,
                 reason: str = "both", lora: dict | None = None, freeze_vision: bool = True, lr: float = 1e-4,
                 weight_decay: float = 0.0, warmup_steps: int = 100, separator: str = "\n",
                 dtype: str = "float32", gradient_checkpointing: bool = False,
                 identifier_tokens: list[str] | None = None, number_ids: bool = False, identifier_head: str = "vocab"):
        """`identifier_tokens`, `number_ids`, `identifier_head`: how identifiers are spelled and ranked
        (`genretr.backbones.mllm_vocab.identifier_options` of the IdTable; the tokens are not logged)."""
        super().__init__()
        config, lora, identifier_tokens = plain(config), plain(lora), plain(identifier_tokens)
        self.save_hyperparameters(ignore=["processor", "identifier_tokens"])
        if reason not in REASON_MODES:
            raise GenretrError(f"backbone.reason={reason} is not one of {', '.join(REASON_MODES)}")
        if dtype not in DTYPES:
            raise GenretrError(f"backbone.dtype={dtype} is not one of {', '.join(DTYPES)}")
        self.reason = reason
        if isinstance(processor, (str, Path)):
            processor = self.processor_class.from_pretrained(str(processor), local_files_only=True)
        if pretrained:
            self.hf, loaded = self._load(str(pretrained), dtype)
            self.processor = processor or loaded
        elif config is None:
            raise GenretrError(f"backbone {self.family}: set pretrained=PATH (a local checkpoint or an HF id in the "
                               "HF cache), or config={...} for a randomly initialised model")
        else:
            self.processor = processor or self.tiny_processor()
            self.hf = self.build(dict(config), self.processor.tokenizer).to(getattr(torch, dtype))
        tok = self.processor.tokenizer
        self.eos_id = tok.eos_token_id
        if self.eos_id is None:
            raise GenretrError(f"backbone {self.family}: the tokenizer has no eos token")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        # free-text answers stop at eos or at the end of the assistant's turn (idefics-instruct: <end_of_utterance>)
        vocab = tok.get_vocab() if self.turn_end else {}
        self.stop_ids = [self.eos_id] + ([vocab[self.turn_end]] if self.turn_end in vocab else [])
        sep = tok(separator, add_special_tokens=False)["input_ids"]
        if not sep:
            raise GenretrError(f"backbone.separator={separator!r} encodes to no token")
        self.sep_id = sep[-1]
        self.terminator = self.eos_id if reason == "none" else self.sep_id
        self._set_trainable(lora, freeze_vision)
        self.identifiers = IdentifierVocabulary(self, identifier_tokens, number_ids, identifier_head)
        if gradient_checkpointing:
            # renamed activation_checkpointing_enable in transformers 5 (the old name warns, and goes in v6)
            enable = getattr(self.hf, "activation_checkpointing_enable", None) or self.hf.gradient_checkpointing_enable
            enable()
            self.hf.enable_input_require_grads()

    # -- family hooks -------------------------------------------------------------------------------------
    model_class = None
    processor_class = None

    def build(self, config: dict, tokenizer):
        """A randomly initialised model from a (tiny) config dict and the tokenizer's special ids."""
        raise NotImplementedError

    def tiny_processor(self):
        """The processor of a randomly initialised model: `char_tokenizer` + a small image processor."""
        raise NotImplementedError

    def process(self, prompts: list[str], images: list) -> dict:
        """The processor's batch for prompts (holding `image_placeholder` where an image goes)."""
        raise NotImplementedError

    def extend_field(self, name: str, rows: torch.Tensor, n: int) -> torch.Tensor:
        """A per-token field for `n` appended answer tokens (default: zeros)."""
        return torch.cat([rows, rows.new_zeros((n, *rows.shape[1:]))])

    def position_ids(self, batch: dict) -> torch.Tensor:
        """Positions of a left-padded batch (1-D RoPE: count of real tokens before each)."""
        return (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)

    def next_positions(self, batch: dict) -> torch.Tensor:
        return batch["attention_mask"].sum(-1)

    def step_positions(self, pos: torch.Tensor) -> torch.Tensor:
        return pos[:, None]

    def step_extras(self, batch: dict, out) -> dict:
        """Per-query tensors every decoding step needs besides the cache (rows = queries)."""
        return {}

    def step_inputs(self, extras: dict) -> dict:
        return {}

    # -- loading ------------------------------------------------------------------------------------------
    @classmethod
    def check_weights(cls, pretrained: str) -> None:
        """Raise `MissingWeightsError` unless `pretrained` is a checkpoint on this machine, and `GenretrError` if
        it is one of another architecture (before any stage runs: `genretr.pipeline.Pipeline.check_weights`);
        loading may still fail on a broken one."""
        try:
            path = local_checkpoint(pretrained)
        except CheckpointNotFound as e:
            raise cls.missing_weights(pretrained, str(e)) from None
        cls.check_architecture(path)

    @classmethod
    def check_architecture(cls, checkpoint: Path) -> None:
        """Refuse a checkpoint of another architecture (config.json's model_type): transformers loads a LLaVA-1.5
        checkpoint into LLaVA-NeXT's classes, or an Idefics2 one into Idefics', with a warning only, and the run
        failed at its first image, after the weights had loaded."""
        try:
            found = json.loads((checkpoint / "config.json").read_text()).get("model_type")
        except (ValueError, AttributeError) as e:  # not JSON, or not an object
            raise GenretrError(f"backbone {cls.family}: {checkpoint / 'config.json'} is not a model config "
                               f"({load_error_cause(e)})") from None
        wanted = cls.model_class.config_class.model_type
        if found is not None and found != wanted:
            raise GenretrError(f"backbone {cls.family}: '{checkpoint}' (backbone.model.pretrained) holds a {found} "
                               f"checkpoint (config.json's model_type), and backbone={cls.family} loads {wanted} "
                               f"ones, e.g. {cls.hub_id}")

    @classmethod
    def missing_weights(cls, path: str, cause: str) -> MissingWeightsError:
        return MissingWeightsError(
            f"backbone {cls.family}: no weights at '{path}' ({cause}). Fetch them where there is network, e.g. "
            f"`huggingface-cli download {cls.hub_id} --local-dir DIR`, and set backbone.model.pretrained=DIR")

    def _load(self, path: str, dtype: str):
        path = str(Path(path).expanduser())  # as `check_weights` reads it (transformers does not expand "~")
        try:
            checkpoint = local_checkpoint(path)
        except CheckpointNotFound:
            checkpoint = None  # from_pretrained below says what is missing
        if checkpoint is not None:
            self.check_architecture(checkpoint)
        try:
            model = self.model_class.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
            processor = self.processor_class.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            if Path(path).is_dir() and not isinstance(e, OSError):
                raise
            cause = load_error_cause(e)
            raise self.missing_weights(path, f"not a checkpoint directory, not in the HF cache: {cause}") from None
        return model, processor

    def _set_trainable(self, lora: dict | None, freeze_vision: bool) -> None:
        vision = self.vision_prefixes if freeze_vision else ()
        if lora:
            apply_lora(self.hf, int(lora.get("rank", 8)), float(lora.get("alpha", 16)),
                       lora.get("target_modules", LLM_TARGETS), float(lora.get("dropout", 0.0)),
                       exclude_prefixes=self.vision_prefixes)
        else:
            for name, p in self.hf.named_parameters():
                p.requires_grad_(not name.startswith(vision))

    # -- prompts and batches ------------------------------------------------------------------------------
    def asks_reason(self, train: bool) -> bool:
        return self.reason == "both" or (self.reason == "train_only" and train)

    def user_text(self, s: dict, train: bool) -> str:
        """The user turn: `prompt` verbatim if given (generation), else inst-m / inst-r (+ the query)."""
        if s.get("prompt"):
            return s["prompt"]
        inst = s.get("instruction") or (INST_RETRIEVE if s.get("text") else INST_MEMORIZE)
        if self.asks_reason(train):
            inst += ASK_REASON
        return inst + (f"\nquery: {s['text']}" if s.get("text") else "")

    def prompt(self, s: dict, train: bool) -> str:
        """The checkpoint's chat template rendered for one user turn (the processor's, else its tokenizer's:
        `IdeficsProcessor` keeps none), or a plain USER/ASSISTANT prompt when the checkpoint has none."""
        has_image, text = s.get("image") is not None, self.user_text(s, train)
        renderer = next((x for x in (self.processor, self.processor.tokenizer)
                         if getattr(x, "chat_template", None)), None)
        if renderer is not None:
            content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
            return renderer.apply_chat_template([{"role": "user", "content": content}],
                                                add_generation_prompt=True, tokenize=False)
        return f"USER: {self.image_placeholder if has_image else ''}{text}\nASSISTANT:"

    def token_ids(self, text: str) -> list[int]:
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, s: dict) -> list[int]:
        """identifier <terminator> [reason: ... <eos>] as LLM token ids (the training target); the item's token
        alone with the classifier head."""
        ids = self.identifiers.encode(s["answer"])
        if self.identifiers.head == "classifier":
            return ids
        if self.reason == "none":
            return ids + [self.eos_id]
        if not s.get("reason"):
            raise GenretrError(f"backbone.reason={self.reason} needs a reason with every answer; "
                               f"'{s['answer']}' has none")
        return ids + [self.sep_id] + self.token_ids(f"reason: {s['reason']}") + [self.eos_id]

    def collate(self, samples: list[dict]) -> dict:
        """The model batch (left-padded): with every sample's "answer" a training batch whose `labels` mark the
        answer tokens; otherwise the prompts alone, as decoding reads them."""
        check_samples(samples)
        train = all(s.get("answer") is not None for s in samples)
        return self.batch(samples, train, [self.answer_ids(s) for s in samples] if train else None)

    def batch(self, samples: list[dict], train: bool, tails: list[list[int]] | None = None) -> dict:
        """Prompts (training or inference wording) followed by `tails` (LLM ids; labelled when given)."""
        check_samples(samples)
        enc = self.process([self.prompt(s, train) for s in samples], [s.get("image") for s in samples])
        tails = tails if tails is not None else [[] for _ in samples]
        mask = enc["attention_mask"].bool()
        rows = [enc["input_ids"][b][mask[b]].tolist() + list(tails[b]) for b in range(len(samples))]
        B, Lmax = len(rows), max(len(r) for r in rows)
        input_ids = torch.full((B, Lmax), self.pad_id, dtype=torch.long)
        attention = torch.zeros(B, Lmax, dtype=torch.long)
        labels = torch.full((B, Lmax), IGNORE, dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, Lmax - len(r):] = torch.tensor(r)
            attention[b, Lmax - len(r):] = 1
            if tails[b]:
                labels[b, Lmax - len(tails[b]):] = torch.tensor(tails[b])
        out = {"input_ids": input_ids, "attention_mask": attention}
        if any(tails):
            out["labels"] = labels
        for name in self.per_token_fields:
            vals = [self.extend_field(name, enc[name][b][mask[b]], len(tails[b])) for b in range(B)]
            field = vals[0].new_zeros((B, Lmax, *vals[0].shape[1:]))
            for b, v in enumerate(vals):
                field[b, Lmax - len(v):] = v
            out[name] = field
        out.update({k: v for k, v in enc.items() if k not in out and k not in ("input_ids", "attention_mask")})
        out["position_ids"] = self.position_ids(out)
        return out

    # -- training -----------------------------------------------------------------------------------------
    def model_inputs(self, batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k != "labels"}

    def forward(self, batch: dict, logits_to_keep: int = 0) -> torch.Tensor:
        return self.hf(**self.model_inputs(batch), use_cache=False, logits_to_keep=logits_to_keep).logits

    def loss(self, batch: dict) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens (they end every left-padded row: only those logits are made)."""
        if self.identifiers.head == "classifier":
            return self.identifiers.classifier_loss(batch)
        labels = batch["labels"]
        keep = min(int((labels != IGNORE).sum(1).max()) + 1, labels.shape[1])
        logits = self(batch, logits_to_keep=keep)
        target = labels[:, -keep:][:, 1:]
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("decoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=len(batch["input_ids"]))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warm = max(1, int(self.hparams.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- identifiers in the decoding space -----------------------------------------------------------------
    @property
    def lm_vocab_size(self) -> int:
        return head_width(self.hf.get_output_embeddings())

    def identifier_token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each identifier's tokens in the decoding space (LLM id + 2), without the terminator."""
        out = []
        for text in texts:
            ids = self.identifiers.encode(text)
            if not ids:
                raise GenretrError(f"identifier {text!r} encodes to no token")
            if self.terminator in ids:
                raise GenretrError(f"identifier {text!r} contains the terminator token {self.terminator}")
            out.append([i + OFFSET for i in ids])
        return out

    def decoding_vocab(self) -> list[str]:
        names = self.processor.tokenizer.convert_ids_to_tokens(list(range(len(self.processor.tokenizer))))
        names = names[: self.lm_vocab_size] + [f"<unused_{i}>" for i in range(len(names), self.lm_vocab_size)]
        return ["<pad>", "</s>"] + [str(n) for n in names]

    def id_table(self, item_ids: list[str], texts: list[str]) -> IdTable:
        """The items' identifiers as an `IdTable` over the decoding space (trie: `CSRTrie.from_table`)."""
        return IdTable.from_lists(item_ids, self.identifier_token_ids(texts), self.decoding_vocab())

    def to_llm(self, tokens: torch.Tensor) -> torch.Tensor:
        llm = torch.where(tokens == 1, self.terminator, tokens - OFFSET)
        return torch.where(tokens == 0, self.pad_id, llm)

    def to_decoding(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, V) LLM logits -> (R, V + 2): column 1 is the terminator's logit, its own column and PAD's -inf."""
        out = logits.new_full((logits.shape[0], logits.shape[1] + OFFSET), float("-inf"))
        out[:, OFFSET:] = logits
        out[:, 1] = logits[:, self.terminator]
        out[:, self.terminator + OFFSET] = float("-inf")
        return out

    # -- decoding -----------------------------------------------------------------------------------------
    @property
    def decoding_vocab_size(self) -> int:
        """Tokens of the decoding space: the LLM's, shifted by OFFSET (PAD and the terminator first)."""
        return self.lm_vocab_size + OFFSET

    def step_decoder(self) -> MLLMStepDecoder:
        return MLLMStepDecoder(self)

    @torch.no_grad()
    def teacher_forced_logits(self, queries: list[dict], seqs: list[list[int]]) -> list[torch.Tensor]:
        """For each query and decoding-space sequence (EOS = terminator included), the (len, V + 2) decoding
        logits that predict its tokens, from one full forward of prompt + sequence."""
        dev = next(self.parameters()).device
        tails = [self.to_llm(torch.tensor(s)).tolist() for s in seqs]
        batch = {k: v.to(dev) for k, v in self.batch(queries, False, [t[:-1] for t in tails]).items()}
        logits = self(batch).float()
        return [self.to_decoding(logits[b, logits.shape[1] - len(t):]) for b, t in enumerate(tails)]

    def sequence_scores(self, queries: list[dict], seqs: list[list[int]]) -> torch.Tensor:
        """Summed log-probability (full-vocabulary softmax) of each decoding-space sequence, teacher-forced."""
        out = []
        for lg, s in zip(self.teacher_forced_logits(queries, seqs), seqs):
            lp = lg.log_softmax(-1).gather(1, torch.tensor(s, device=lg.device)[:, None])
            out.append(lp.sum())
        return torch.stack(out).cpu()

def retriever_class(name: str) -> type[MLLMRetriever]:
    """The MLLMRetriever subclass of a family name (qwen25vl, llava, idefics)."""
    import importlib

    modules = {"qwen25vl": "genretr.backbones.qwen25vl", "llava": "genretr.backbones.llava",
               "idefics": "genretr.backbones.idefics"}
    if name not in modules:
        raise GenretrError(f"MLLM family {name!r} is not one of {', '.join(modules)}")
    module = importlib.import_module(modules[name])
    return next(c for c in vars(module).values()
                if isinstance(c, type) and issubclass(c, MLLMRetriever) and c.family == name)


def check_samples(samples: list[dict]) -> None:
    for i, s in enumerate(samples):
        if s.get("image") is None and not s.get("text") and not s.get("prompt"):
            raise GenretrError(f"sample {i} has neither an image nor a text")


def as_uint8_image(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise GenretrError(f"an image must be a uint8 HxWx3 array, got {arr.dtype} {arr.shape}")
    return arr
