"""Grounded SASRec: items built from their text's intents, so that every score is a sum of named intents.

Item j's representation, as input and as output alike, is ``ID_j + sum_i a_ji E_i``: its own ID
embedding plus its intent profile ``a_j`` (the SAE activations of its texts, pooled per item)
over one vector per intent ``E_i``. The score of item j for a user state h is then exactly

    h . ID_j  +  sum_i a_ji (h . E_i)

so an explanation lists the intents by their contribution a_ji (h . E_i), and these parts add up
to the model's own score. ``E_i`` is a free vector per intent, or the paper's projection of the
intent's SAE direction (``p_i = W_m v_i``, eq. 3) when the intent vectors are given. An item
without text has an empty profile and is its ID embedding alone. An item with no training
interaction (a new arrival) is its intents alone: under a full softmax its ID embedding would only
ever be pushed down as a negative, learning "never bought" rather than anything about the item, so
training sets its ID scale to 0 (``ground_unseen``) and its text places it.

Profiles are padded to ``m`` intents per item: ``ids`` (n_items + 1, m) and ``weights`` of the
same shape, weight 0 marking padding; row 0 is the padding item.

``GroundedItems`` is the one grounded item table; ``GroundedSASRec`` puts it under any backbone
(``EncoderConfig.backbone``: SASRec or BSARec), since the encoder never sees how items are built.
``GroundedSAERec`` is the full SAERec (intent attention and fusion) over them, its attention
reading the same E_i.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saerec.rec.saerec_model import IntentConfig, SAERec
from saerec.rec.sasrec import EncoderConfig, SASRec


@dataclass(frozen=True)
class ItemProfiles:
    """Each item's intents and weights, padded to the same width (weight 0 = no intent)."""

    ids: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        if self.ids.shape != self.weights.shape or self.ids.dim() != 2:
            raise ValueError(f"profile ids and weights must be equal (n_items + 1, m) matrices, got "
                             f"{tuple(self.ids.shape)} and {tuple(self.weights.shape)}")

    @classmethod
    def from_lists(cls, n_items: int, rows: dict[int, tuple[list[int], list[float]]]) -> "ItemProfiles":
        """Profiles from ``{item: (intent ids, weights)}``; items not listed get an empty profile."""
        width = max([len(ids) for ids, _ in rows.values()] + [1])
        ids = torch.zeros(n_items + 1, width, dtype=torch.long)
        weights = torch.zeros(n_items + 1, width)
        for item, (intent_ids, values) in rows.items():
            if not 1 <= item <= n_items:
                raise ValueError(f"profile of item {item}: item ids are 1..{n_items}")
            ids[item, :len(intent_ids)] = torch.as_tensor(intent_ids, dtype=torch.long)
            weights[item, :len(values)] = torch.as_tensor(values, dtype=torch.float32)
        return cls(ids, weights)


class GroundedItems:
    """Grounded item representations for a SASRec-family model (see the module docstring).

    A mixin placed before the model class: it keeps the profiles as buffers and overrides the
    item table; the model supplies ``item_emb`` and ``intent_table()``: E, one d-dimensional
    vector per intent, (n_intents, d).
    """

    profile_ids: Tensor
    profile_weights: Tensor
    item_emb: nn.Embedding
    cfg: EncoderConfig
    reads_profiles = True

    def _keep_profiles(self, profiles: ItemProfiles, n_intents: int) -> None:
        if profiles.ids.shape[0] != self.cfg.n_items + 1:
            raise ValueError(f"profiles cover {profiles.ids.shape[0] - 1} items, the model {self.cfg.n_items}")
        if profiles.ids.numel() and int(profiles.ids.max()) >= n_intents:
            raise ValueError(f"a profile names intent {int(profiles.ids.max())}, but there are {n_intents}")
        self.register_buffer("profile_ids", profiles.ids.clone())
        self.register_buffer("profile_weights", profiles.weights.float().clone())
        self.register_buffer("id_scale", torch.ones(self.cfg.n_items + 1))

    def ground_unseen(self, train_counts: Tensor) -> None:
        """Leave the ID part out of every item with no training interaction (``train_counts``: per item
        id, padding 0 included), so that its intents alone represent it, as input and as output."""
        if train_counts.shape != self.id_scale.shape:
            raise ValueError(f"train_counts needs one count per item id 0..{self.cfg.n_items}, got {tuple(train_counts.shape)}")
        self.id_scale.copy_((train_counts > 0).float())

    def _id_part(self, ids: Tensor) -> Tensor:
        return self.item_emb(ids) * self.id_scale[ids].unsqueeze(-1)

    def _intent_part(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        part = F.embedding_bag(self.profile_ids[flat], self.intent_table(), mode="sum",
                               per_sample_weights=self.profile_weights[flat])
        return part.view(*ids.shape, -1)

    def item_table(self) -> Tensor:
        return (self.item_emb.weight * self.id_scale.unsqueeze(1)
                + self._intent_part(torch.arange(self.cfg.n_items + 1, device=self.item_emb.weight.device)))

    def item_vectors(self, ids: Tensor) -> Tensor:
        return self._id_part(ids) + self._intent_part(ids)

    @torch.no_grad()
    def score_parts(self, reps: Tensor, items: Tensor) -> dict[str, Tensor]:
        """The exact parts of the scores of ``items`` (B, N) for user states ``reps`` (B, d):
        ``id`` (B, N) = h . ID_j, and per profile slot ``intents`` (B, N, m) intent ids, their
        ``weights`` a_ji (0 = an empty slot) and ``contributions`` (B, N, m) = a_ji (h . E_i);
        id + contributions.sum(-1) is the score."""
        table = self.intent_table()
        ids, weights = self.profile_ids[items], self.profile_weights[items]
        per_intent = reps @ table.T
        contributions = weights * per_intent.gather(1, ids.reshape(len(reps), -1)).view_as(weights)
        own = (self._id_part(items) * reps.unsqueeze(1)).sum(-1)
        return {"id": own, "intents": ids, "weights": weights, "contributions": contributions}


class GroundedSASRec(GroundedItems, SASRec):
    """SASRec, or the backbone ``cfg.backbone`` names, over grounded items (see the module docstring)."""

    def __init__(self, cfg: EncoderConfig, profiles: ItemProfiles, n_intents: int,
                 intents: Tensor | None = None) -> None:
        super().__init__(cfg)
        self._keep_profiles(profiles, n_intents)
        if intents is None:
            self.intent_emb = nn.Parameter(torch.randn(n_intents, cfg.d) * cfg.init_std)
            self.intent_proj = None
        else:
            if intents.shape[0] != n_intents:
                raise ValueError(f"{intents.shape[0]} intent vectors for {n_intents} intents")
            self.register_buffer("intent_vectors", intents.detach().float().clone())
            self.intent_proj = nn.Linear(intents.shape[1], cfg.d, bias=False)
            nn.init.normal_(self.intent_proj.weight, 0.0, cfg.init_std * intents.shape[1] ** -0.5)

    @property
    def n_intents(self) -> int:
        return self.intent_emb.shape[0] if self.intent_proj is None else self.intent_vectors.shape[0]

    def intent_table(self) -> Tensor:
        return self.intent_emb if self.intent_proj is None else self.intent_proj(self.intent_vectors)


class GroundedSAERec(GroundedItems, SAERec):
    """The full SAERec (personal and public intent attention, fusion) over grounded items.

    The intents the attention reads are the same E_i the items are built from, so personal
    retrieval by cos(h, E_i) compares a user state with vectors that live in item space. E_i is
    a free vector per intent, or the paper's projection W_m v_i (``projected``). The score is
    still h . item vector with h the fused state, so explanations stay exact.
    """

    def __init__(self, cfg: EncoderConfig, intents: Tensor, icfg: IntentConfig, profiles: ItemProfiles,
                 projected: bool = False) -> None:
        super().__init__(cfg, intents, icfg)
        self._keep_profiles(profiles, intents.shape[0])
        self.intent_emb = None if projected else nn.Parameter(torch.randn(intents.shape[0], cfg.d) * cfg.init_std)
        if icfg.query == "history":  # the profiles as one dense (items, intents) table, built once
            dense = torch.zeros(cfg.n_items + 1, intents.shape[0])
            self.register_buffer("profile_table", dense.scatter_add_(1, self.profile_ids, self.profile_weights),
                                 persistent=False)

    def history_profiles(self, seqs: Tensor) -> Tensor:
        """(B, L) right-padded item ids -> (B, L, n_intents): at each position, the summed profile
        weights of the items read so far, its own included (padding, item 0, has no profile)."""
        return self.profile_table[seqs].cumsum(dim=1)

    def intent_table(self) -> Tensor:
        return self.projected_intents()

    def projected_intents(self) -> Tensor:
        return super().projected_intents() if self.intent_emb is None else self.intent_emb
