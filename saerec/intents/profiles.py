"""Item intent profiles: the SAE activations of each item's texts, pooled per item.

Chunks of sparse codes (each text's k (latent, value) pairs, with the item the text belongs to)
are folded into one running sparse item x latent table as they come, so memory follows the
number of (item, latent) pairs that ever fire, never the corpus. Pooling is ``mean`` (the
default: an item's profile is the average code of its texts, so items with many reviews are not
louder than items with one) or ``max`` (an intent counts as strongly as its strongest text).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Pooling = Literal["mean", "max"]


@dataclass
class ProfileAccumulator:
    """Running per-(item, latent) sums (or maxima) and per-item text counts."""

    n_latents: int
    pooling: Pooling = "mean"
    keys: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    values: Tensor = field(default_factory=lambda: torch.zeros(0))
    texts: dict[int, int] = field(default_factory=dict)

    def add(self, items: Tensor, values: Tensor, latents: Tensor) -> None:
        """One chunk: ``items`` (n,) and the texts' top-k ``values`` / ``latents`` (n, k)."""
        if values.shape != latents.shape or values.shape[0] != items.shape[0]:
            raise ValueError(f"items {tuple(items.shape)}, values {tuple(values.shape)} and latents "
                             f"{tuple(latents.shape)} do not describe the same texts")
        for item, count in zip(*np.unique(items.numpy(), return_counts=True)):
            self.texts[int(item)] = self.texts.get(int(item), 0) + int(count)
        fired = values > 0
        keys = (items.long().unsqueeze(1) * self.n_latents + latents.long())[fired]
        self._merge(torch.cat([self.keys, keys]), torch.cat([self.values, values[fired].float()]))

    def _merge(self, keys: Tensor, values: Tensor) -> None:
        unique, where = torch.unique(keys, return_inverse=True)
        reduce = "sum" if self.pooling == "mean" else "amax"
        merged = torch.zeros(len(unique)).scatter_reduce(0, where, values, reduce=reduce, include_self=False)
        self.keys, self.values = unique, merged

    def pooled(self) -> tuple[Tensor, Tensor, Tensor]:
        """The whole pooled table as (item, latent, weight) triples, every latent that fired,
        before any cut to an item's strongest intents."""
        items, latents, values = self.keys // self.n_latents, self.keys % self.n_latents, self.values
        if self.pooling == "mean" and len(items):
            counts = torch.zeros(max(int(items.max()), max(self.texts)) + 1)
            counts[torch.as_tensor(list(self.texts), dtype=torch.long)] = torch.as_tensor(
                list(self.texts.values()), dtype=torch.float32)
            values = values / counts[items]
        return items, latents, values

    def profiles(self, kept: np.ndarray, max_intents: int) -> dict[int, tuple[list[int], list[float]]]:
        """``{item: (latent ids, weights)}`` over the ``kept`` latents, each item's strongest
        ``max_intents`` first; items whose texts fire none of them are absent. The ids are SAE latent
        ids, whatever order ``kept`` lists them in."""
        member = torch.zeros(self.n_latents, dtype=torch.bool)
        member[torch.as_tensor(kept, dtype=torch.long)] = True
        items, latents, values = self.pooled()
        keep = member[latents]
        items, latents, values = items[keep], latents[keep], values[keep]
        out: dict[int, tuple[list[int], list[float]]] = {}
        order = np.lexsort((-values.numpy(), items.numpy()))
        items_np, latents_np, values_np = items.numpy()[order], latents.numpy()[order], values.numpy()[order]
        starts = np.flatnonzero(np.r_[True, items_np[1:] != items_np[:-1]]) if len(items_np) else np.array([], int)
        for start, end in zip(starts, [*starts[1:], len(items_np)]):
            stop = min(end, start + max_intents)
            out[int(items_np[start])] = (latents_np[start:stop].tolist(), values_np[start:stop].tolist())
        return out
