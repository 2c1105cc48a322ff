"""How often each latent fires and on which texts it fires hardest, streamed over sparse codes.

A TopK SAE gives every text k (value, latent) pairs; the corpus is far larger than memory
would like for a dense texts x latents matrix, so chunks of sparse codes are folded into a
firing count and a bounded candidate list (at most ``top_m`` texts per latent) as they come.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ActivationSummary:
    """``frequency`` (F,) is the fraction of texts on which a latent fires (value > 0);
    ``top_texts`` / ``top_values`` (F, M) are its strongest texts, best first, -1 / 0 padded."""

    frequency: Tensor
    top_texts: Tensor
    top_values: Tensor


def summarise_activations(
    chunks: Iterable[tuple[Tensor, Tensor]], num_latents: int, top_m: int
) -> ActivationSummary:
    """Fold (values, indices) chunks, each (n, k) with rows numbered on from the previous chunk."""
    if num_latents < 1 or top_m < 1:
        raise ValueError(f"num_latents and top_m must be >= 1, got {num_latents} and {top_m}")
    fired = torch.zeros(num_latents, dtype=torch.long)
    latent = torch.zeros(0, dtype=torch.long)
    text = torch.zeros(0, dtype=torch.long)
    value = torch.zeros(0)
    rows = 0
    for values, indices in chunks:
        if values.shape != indices.shape or values.ndim != 2:
            raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} must be equal (n, k)")
        indices = indices.long().cpu()
        if indices.numel() and (indices.min() < 0 or indices.max() >= num_latents):
            raise ValueError(f"latent index out of range [0, {num_latents}) in chunk starting at text {rows}")
        values = values.detach().float().cpu()
        active = values > 0
        fired += torch.bincount(indices[active], minlength=num_latents)
        text_ids = torch.arange(rows, rows + values.shape[0]).unsqueeze(1).expand_as(values)
        latent = torch.cat([latent, indices[active]])
        text = torch.cat([text, text_ids[active]])
        value = torch.cat([value, values[active]])
        latent, text, value = _keep_top(latent, text, value, top_m)
        rows += values.shape[0]
    if rows == 0:
        raise ValueError("no texts were given")
    return _as_table(latent, text, value, num_latents, top_m, fired.double() / rows)


def _keep_top(latent: Tensor, text: Tensor, value: Tensor, top_m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep each latent's ``top_m`` largest values; ties go to the earlier text."""
    order = torch.argsort(text, stable=True)
    order = order[torch.argsort(-value[order], stable=True)]
    order = order[torch.argsort(latent[order], stable=True)]
    latent, text, value = latent[order], text[order], value[order]
    rank = _rank_within_groups(latent)
    keep = rank < top_m
    return latent[keep], text[keep], value[keep]


def _rank_within_groups(sorted_keys: Tensor) -> Tensor:
    """0, 1, 2, ... restarting wherever the (sorted) key changes."""
    if sorted_keys.numel() == 0:
        return sorted_keys.clone()
    position = torch.arange(sorted_keys.numel())
    starts = torch.ones_like(sorted_keys, dtype=torch.bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), dim=0).values
    return position - group_start


def _as_table(
    latent: Tensor, text: Tensor, value: Tensor, num_latents: int, top_m: int, frequency: Tensor
) -> ActivationSummary:
    top_texts = torch.full((num_latents, top_m), -1, dtype=torch.long)
    top_values = torch.zeros((num_latents, top_m))
    rank = _rank_within_groups(latent)
    top_texts[latent, rank] = text
    top_values[latent, rank] = value
    return ActivationSummary(frequency=frequency, top_texts=top_texts, top_values=top_values)
