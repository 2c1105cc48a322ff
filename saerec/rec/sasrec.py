"""SASRec (Kang & McAuley 2018) with pre-LayerNorm blocks: the baseline and SAERec's encoder.

``SASRec`` is also the frame every backbone shares (``EncoderConfig.backbone``): item and position
embeddings, the backbone's stack of causal blocks, the output layer tied to the item table, and
the hooks the item representations and SAERec override. ``sasrec`` stacks the pre-LN blocks
below and ends with a LayerNorm. ``bsarec`` (saerec.rec.bsarec) puts a LayerNorm on the embeddings
and stacks post-LN BSARec blocks, as the BSARec paper's code does.

Sequences are RIGHT-padded with item 0. With a causal mask a real position then only ever
attends to real positions, so no key-padding mask is needed and no row is fully masked.
Position ids count back from the most recent item, so the same item in the same place
relative to "now" gets the same position whatever the padded width of its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saerec.rec.bsarec import BSARecBlock
from saerec.rec.losses import full_softmax_cross_entropy
from saerec.rec.metrics import mask_scores

BACKBONES = ("sasrec", "bsarec")


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the sequence encoder (the paper's: 2 blocks, 2 heads, d=64, length 50).

    ``scale_embeddings`` multiplies item embeddings by sqrt(d) as the original SASRec does; on
    Beauty it made no difference on valid (bench/rec.py), so the plain sum is the default.
    ``backbone`` picks the blocks; ``bsarec_alpha`` (the filter's share) and ``bsarec_c`` (the
    frequency cut-off; ``c >= max_len`` keeps every frequency) are read by ``bsarec`` only. Their
    defaults are BSARec's best on Beauty.
    """

    n_items: int
    d: int = 64
    blocks: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.5
    init_std: float = 0.02
    scale_embeddings: bool = False
    backbone: str = "sasrec"
    bsarec_alpha: float = 0.7
    bsarec_c: int = 5

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; allowed: {', '.join(BACKBONES)}")
        if not 0.0 <= self.bsarec_alpha <= 1.0:
            raise ValueError(f"bsarec_alpha must be in [0, 1], got {self.bsarec_alpha}")
        if self.bsarec_c < 1:
            raise ValueError(f"bsarec_c must be >= 1, got {self.bsarec_c}")
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.d % self.heads:
            raise ValueError(f"d={self.d} is not divisible by heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CausalBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x)), causal attention."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = dropout
        self.ln_attn = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn_in = nn.Linear(d, d)
        self.ffn_out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.attn_out(att.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ffn_out(self.drop(F.relu(self.ffn_in(self.ln_ffn(x))))))


def init_weights(module: nn.Module, std: float) -> None:
    """N(0, std) for every weight matrix and embedding, zero biases, unit LayerNorms.

    Small init matters: item embeddings double as the output layer, and N(0, 1) there
    stalls cross-entropy training near chance.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def backbone_stack(cfg: EncoderConfig) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    """The backbone's (embedding norm, causal blocks, final norm); sasrec's keeps its old weight names."""
    if cfg.backbone == "bsarec":
        blocks = (BSARecBlock(cfg.d, cfg.heads, cfg.dropout, cfg.max_len, cfg.bsarec_alpha, cfg.bsarec_c)
                  for _ in range(cfg.blocks))
        return nn.LayerNorm(cfg.d), nn.ModuleList(blocks), nn.Identity()
    blocks = (CausalBlock(cfg.d, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
    return nn.Identity(), nn.ModuleList(blocks), nn.LayerNorm(cfg.d)


class SASRec(nn.Module):
    """Self-attentive next-item model; item embeddings are shared with the output layer. Its
    blocks are the backbone's (see the module docstring)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.emb_ln, self.blocks, self.final_ln = backbone_stack(cfg)
        init_weights(self, cfg.init_std)

    def encode(self, seqs: Tensor, lengths: Tensor) -> Tensor:
        """(B, L) right-padded item ids and (B,) lengths -> (B, L, d) causal states."""
        b, length = seqs.shape
        if length > self.cfg.max_len:
            raise ValueError(f"sequence width {length} exceeds max_len {self.cfg.max_len}")
        steps = torch.arange(length, device=seqs.device)
        pos = (lengths.unsqueeze(1) - 1 - steps.unsqueeze(0)).clamp(min=0)
        x = self.item_vectors(seqs)
        if self.cfg.scale_embeddings:
            x = x * math.sqrt(self.cfg.d)
        x = x + self.pos_emb(pos)
        x = self.emb_drop(self.emb_ln(x))
        for block in self.blocks:
            x = block(x)
        return self.final_ln(x)

    def item_table(self) -> Tensor:
        """(n_items + 1, d) every item's representation (row 0 = padding), the input and output
        embedding alike; models that build items from parts override it with ``item_vectors``."""
        return self.item_emb.weight

    def item_vectors(self, ids: Tensor) -> Tensor:
        """The representations of the items ``ids`` (any shape), as ``item_table()[ids]``."""
        return self.item_emb(ids)

    def retrieval_context(self, seqs: Tensor) -> Tensor | None:
        """Hook: a (B, L, c) tensor per position that ``refine`` receives at the positions it
        refines (SAERec's history retrieval reads each position's summed history profile); None
        for models that need none."""
        return None

    def refine(self, tokens: Tensor, items: Tensor, users: Tensor, user_items: Tensor,
               context: Tensor | None = None, user_context: Tensor | None = None) -> Tensor:
        """Hook for models that post-process per-position states: ``tokens`` (N, d) with the input
        item id at each position ``items`` (N,), and each sequence's last state ``users`` (B, d)
        and last item ``user_items`` (B,); ``context`` and ``user_context`` are
        ``retrieval_context`` at the same positions. SASRec uses the states as they are."""
        return tokens

    def forward(self, seqs: Tensor, lengths: Tensor, targets: Tensor | None = None,
                last_only: bool = False) -> Tensor:
        """User representations, or the training loss when ``targets`` (B, L) are given.

        Representations are taken at every real position (N, d) in row-major order, or at the
        last one (B, d). Only real positions are kept, so nobody pays for logits at padding;
        with ``targets``, only the positions that have one (a target of 0 carries no loss).
        The loss lives in ``forward`` so that a DistributedDataParallel wrapper sees the call.
        """
        states = self.encode(seqs, lengths)
        rows = torch.arange(seqs.shape[0], device=seqs.device)
        last, last_items = states[rows, lengths - 1], seqs[rows, lengths - 1]
        context = self.retrieval_context(seqs)
        last_context = None if context is None else context[rows, lengths - 1]
        if last_only:
            return self.refine(last, last_items, last, last_items, last_context, last_context)
        mask = torch.arange(seqs.shape[1], device=seqs.device).unsqueeze(0) < lengths.unsqueeze(1)
        if targets is not None:
            mask = mask & (targets > 0)
        reps = self.refine(states[mask], seqs[mask], last, last_items,
                           None if context is None else context[mask], last_context)
        if targets is None:
            return reps
        return full_softmax_cross_entropy(reps, self.item_table()[1:], targets[mask] - 1)

    def item_scores(self, reps: Tensor) -> Tensor:
        """(N, d) -> (N, n_items + 1) dot products with every item embedding (column 0 = padding)."""
        return reps @ self.item_table().T

    def full_sort_scores(self, seqs: Tensor, lengths: Tensor, mask_seen: bool = True) -> Tensor:
        """(B, n_items + 1) every item's score as the next item after each history (RecBole's
        ``full_sort_predict``): padding (column 0) and, with ``mask_seen``, the history's items are
        -inf (``mask_scores``), so the row's order is the recommendation list and no caller re-masks."""
        return mask_scores(self.item_scores(self(seqs, lengths, last_only=True)), seqs if mask_seen else None)
