"""SAERec, METHOD.md eqs. (3)-(8): SASRec states fused with personal and public intent attention.

Retrieval position (a deliberate choice): at training time every position t retrieves its own
personal intents from its own causal state h_t and predicts item t+1 from them. Retrieving once
from the sequence's last state and sharing that set with all positions would let position t see
intents chosen by a state that has already read items t+1.. (its own target among them), a leak
the model would learn to exploit and could never use at evaluation. Per-position retrieval keeps
training and evaluation the same computation: at evaluation the last history position retrieves.

Public intents (eq. 4) are scored from each sequence's LAST state in the batch (one vote per
user, as the paper's "fraction of users"), kept in a buffer, and frozen in eval mode.

Every branch module always exists (same state dict for every ablation); a switch only removes
the branch from the forward pass, so its parameters receive no gradient.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saerec.rec.sasrec import EncoderConfig, SASRec, init_weights


@dataclass(frozen=True)
class IntentConfig:
    """Retrieval size, EMA decay and the ablation switches (False = the paper's noX variant).

    ``query`` and ``fusion_rule`` hold the two places where the public SAERec code departs from
    the paper's equations: its personal retrieval reads the position's input item embedding
    (``item``) instead of the transformer state (``state``, eq. 3), and it fuses the branches as
    ``a + softmax(a . [b, c] / sqrt(d)) [b, c]``, a residual on the self-attention state
    (``residual``), instead of eq. (6)'s adaptive fusion (``adaptive``). ``history`` (grounded
    items only) retrieves the k intents with the most weight in the profiles of the items read
    so far, the position's own included: the text's evidence instead of a learned similarity.
    """

    k: int = 5
    ema_beta: float = 0.9
    personal: bool = True
    public: bool = True
    fusion: bool = True
    ema: bool = True
    query: Literal["state", "item", "history"] = "state"
    fusion_rule: Literal["adaptive", "residual"] = "adaptive"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta}")
        if self.query not in ("state", "item", "history") or self.fusion_rule not in ("adaptive", "residual"):
            raise ValueError(f"query must be state, item or history and fusion_rule adaptive or residual, got "
                             f"{self.query!r} and {self.fusion_rule!r}")


class IntentAttention(nn.Module):
    """Eq. (5): each query state attends over a handful of intent projections (multi-head).

    Keys and values are projected once for the whole intent table and then gathered: the same
    numbers as projecting each query's k retrieved intents, at a fraction of the work.
    """

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key_value = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.attn_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, queries: Tensor, table: Tensor, ids: Tensor, bias: Tensor) -> Tensor:
        """queries (N, d); table (n_intents, d); ids (N, k) per query or (k,) shared; bias like ids."""
        n, d = queries.shape
        h, dh = self.heads, d // self.heads
        k, v = self.key_value(table)[ids].chunk(2, dim=-1)
        if ids.dim() == 1:
            # Shared keys: one (h, N, dh) x (h, dh, k) product per head, never an (N, h, k, dh) copy.
            q = self.query(queries).view(n, h, dh).transpose(0, 1)
            k, v = k.view(-1, h, dh).transpose(0, 1), v.view(-1, h, dh).transpose(0, 1)
            logits = (q @ k.transpose(-1, -2)) / dh ** 0.5 + bias
            att = self.attn_drop(torch.softmax(logits, dim=-1))
            return self.drop(self.out((att @ v).transpose(0, 1).reshape(n, d)))
        q = self.query(queries).view(n, h, 1, dh)
        k = k.reshape(k.shape[0], -1, h, dh).transpose(1, 2)
        v = v.reshape(v.shape[0], -1, h, dh).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) / dh ** 0.5 + bias.unsqueeze(1).unsqueeze(2)
        att = self.attn_drop(torch.softmax(logits, dim=-1))
        return self.drop(self.out((att @ v).reshape(n, d)))


class AdaptiveFusion(nn.Module):
    """Eq. (6): alpha_j = softmax_j(w^T tanh(W_f Z_j + b)), h = sum_j alpha_j Z_j."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.score = nn.Linear(d, 1, bias=False)

    def forward(self, branches: Tensor) -> tuple[Tensor, Tensor]:
        """branches (N, J, d) -> fused (N, d) and weights (N, J)."""
        alpha = torch.softmax(self.score(torch.tanh(self.proj(branches))).squeeze(-1), dim=-1)
        return (alpha.unsqueeze(-1) * branches).sum(dim=1), alpha


class SAERec(SASRec):
    """SASRec states refined by personal/public intent attention and adaptive fusion."""

    reads_profiles = False  # grounded models (saerec.rec.grounded) hold item profiles

    def __init__(self, cfg: EncoderConfig, intents: Tensor, icfg: IntentConfig) -> None:
        if intents.dim() != 2 or intents.shape[0] < 1:
            raise ValueError(f"intents must be a non-empty (n_intents, D) matrix, got shape {tuple(intents.shape)}")
        if icfg.k > intents.shape[0]:
            raise ValueError(f"k={icfg.k} exceeds the number of intents ({intents.shape[0]})")
        if icfg.query == "history" and not self.reads_profiles:
            raise ValueError("query='history' retrieves from item profiles: it needs a grounded model")
        super().__init__(cfg)
        self.icfg = icfg
        self.register_buffer("intent_vectors", intents.detach().float().clone())
        self.register_buffer("public_score", torch.zeros(intents.shape[0]))
        self.register_buffer("steer_bias", torch.zeros(intents.shape[0]), persistent=False)
        self.intent_proj = nn.Linear(intents.shape[1], cfg.d, bias=False)
        self.personal_attn = IntentAttention(cfg.d, cfg.heads, cfg.dropout)
        self.public_attn = IntentAttention(cfg.d, cfg.heads, cfg.dropout)
        self.fusion = AdaptiveFusion(cfg.d)
        for module in (self.intent_proj, self.personal_attn, self.public_attn, self.fusion):
            init_weights(module, cfg.init_std)
        nn.init.normal_(self.intent_proj.weight, 0.0, intents.shape[1] ** -0.5)

    @property
    def n_intents(self) -> int:
        return self.intent_vectors.shape[0]

    def projected_intents(self) -> Tensor:
        """Eq. (3): p_i = W_m v_i for every intent, (n_intents, d)."""
        return self.intent_proj(self.intent_vectors)

    def personal_ids(self, queries: Tensor, projected: Tensor) -> Tensor:
        """Eq. (3): top-k intents by cosine(h, p_i) (+ any steering bias), (N, k) indices; with
        history retrieval the queries are already per-intent scores (N, n_intents)."""
        with torch.no_grad():
            scores = queries if self.icfg.query == "history" else (
                F.normalize(queries, dim=-1) @ F.normalize(projected, dim=-1).T)
            return (scores + self.steer_bias).topk(self.icfg.k, dim=-1).indices

    def public_ids(self) -> Tensor:
        """The k intents with the highest public score (EMA or raw counts), (k,) indices."""
        return self.public_score.topk(self.icfg.k).indices

    def update_public(self, user_queries: Tensor, projected: Tensor) -> None:
        """Eq. (4): f <- beta f + (1 - beta) a, a_i = fraction of users whose personal top-k holds i.

        noEMA keeps raw cumulative retrieval counts instead.
        """
        ids = self.personal_ids(user_queries, projected)
        counts = torch.bincount(ids.flatten(), minlength=self.n_intents).to(self.public_score.dtype)
        if self.icfg.ema:
            beta = self.icfg.ema_beta
            self.public_score.mul_(beta).add_(counts / user_queries.shape[0], alpha=1.0 - beta)
        else:
            self.public_score.add_(counts)

    def retrieval_context(self, seqs: Tensor) -> Tensor | None:
        return self.history_profiles(seqs) if self.icfg.query == "history" else None

    def queries(self, states: Tensor, items: Tensor, context: Tensor | None = None) -> Tensor:
        """What personal retrieval reads: the states, the input items' embeddings, or the
        positions' history profiles (``context``)."""
        if self.icfg.query == "history":
            if context is None:
                raise ValueError("history retrieval needs each position's history profile (retrieval_context)")
            return context
        return states if self.icfg.query == "state" else self.item_vectors(items)

    def branches(self, tokens: Tensor, items: Tensor, users: Tensor, user_items: Tensor,
                 context: Tensor | None = None, user_context: Tensor | None = None) -> list[Tensor]:
        """[O_self, O_per, O_pub] for the enabled branches; updates the public score when training."""
        projected = self.projected_intents()
        if self.training:
            self.update_public(self.queries(users, user_items, user_context), projected)
        out = [tokens]
        if self.icfg.personal:
            if self.icfg.k >= self.n_intents:
                # Every intent is retrieved: attention over a set does not depend on its order, so
                # one shared index list replaces a gathered (N, k, d) table per query.
                ids = torch.arange(self.n_intents, device=tokens.device)
            else:
                ids = self.personal_ids(self.queries(tokens, items, context), projected)
            out.append(self.personal_attn(tokens, projected, ids, self.steer_bias[ids]))
        if self.icfg.public:
            ids = self.public_ids()
            out.append(self.public_attn(tokens, projected, ids, self.steer_bias[ids]))
        return out

    def fuse(self, branches: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Adaptive fusion (eq. 6), the public code's residual fusion, or the plain sum for noFus;
        also returns the weights (N, J) (residual: 1 for the self branch, then the softmax weights)."""
        stacked = torch.stack(branches, dim=1)
        if len(branches) == 1:
            return branches[0], torch.ones(stacked.shape[:2], device=stacked.device)
        if not self.icfg.fusion:
            return stacked.sum(dim=1), torch.ones(stacked.shape[:2], device=stacked.device)
        if self.icfg.fusion_rule == "residual":
            own, others = stacked[:, 0], stacked[:, 1:]
            weights = torch.softmax((others @ own.unsqueeze(-1)).squeeze(-1) / own.shape[-1] ** 0.5, dim=-1)
            fused = own + (weights.unsqueeze(-1) * others).sum(dim=1)
            return fused, torch.cat([torch.ones_like(weights[:, :1]), weights], dim=1)
        return self.fusion(stacked)

    def refine(self, tokens: Tensor, items: Tensor, users: Tensor, user_items: Tensor,
               context: Tensor | None = None, user_context: Tensor | None = None) -> Tensor:
        return self.fuse(self.branches(tokens, items, users, user_items, context, user_context))[0]

    @torch.no_grad()
    def explain(self, seqs: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """Per user: personal intent ids (B, k), the public ids (k,), and the branch weights (B, J)."""
        if self.training:
            raise RuntimeError("explain() needs eval mode: in training mode it would move the public score")
        states = self.encode(seqs, lengths)
        rows = torch.arange(seqs.shape[0], device=seqs.device)
        last, last_items = states[rows, lengths - 1], seqs[rows, lengths - 1]
        context = self.retrieval_context(seqs)
        context = None if context is None else context[rows, lengths - 1]
        projected = self.projected_intents()
        _, alpha = self.fuse(self.branches(last, last_items, last, last_items, context, context))
        return {"personal": self.personal_ids(self.queries(last, last_items, context), projected),
                "public": self.public_ids(),
                "weights": alpha}


@contextlib.contextmanager
def steering(model: SAERec, intent_ids: Sequence[int], strength: float) -> Iterator[SAERec]:
    """Counterfactually up-weight intents: +strength on their retrieval cosine and attention logits.

    Boosted intents are then retrieved as personal intents more often and weigh more inside
    both intent branches; the model's weights are untouched and the bias is removed on exit.
    """
    ids = torch.as_tensor(list(intent_ids), dtype=torch.long, device=model.steer_bias.device)
    if ids.numel() and (ids.min() < 0 or ids.max() >= model.n_intents):
        raise ValueError(f"intent ids must be in [0, {model.n_intents}), got {ids.tolist()}")
    saved = model.steer_bias.clone()
    model.steer_bias[ids] += strength
    try:
        yield model
    finally:
        model.steer_bias.copy_(saved)
