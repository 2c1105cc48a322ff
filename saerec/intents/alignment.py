"""Explain SAE latents with words: the mutual-information alignment of METHOD.md eq. (2).

s(w, i) = e_w . v_i,  p(w | i) = softmax over words of s / alpha,  p(i | w) = softmax over
latents of s / beta.  A word explains latent i when it is both *strongly* tied to it (large
p(w | i)) and *uniquely* tied to it (p(i | w) above the uniform 1 / F).  We score

    score(w, i) = p(w | i) * log(p(i | w) / p(i)),   p(i) = 1 / F,

the latent's share of the mutual information between words and latents (Wu et al. 2025).
Why the 1 / F baseline: the literal p(w | i) * log p(i | w) is never positive, so its maximum
sits on words with p(w | i) ~ 0, i.e. on words *unrelated* to the latent; dividing by the prior
turns it into the pointwise-MI weighting the paper's prose describes ("strongly and uniquely").

Both softmaxes normalise over an entire axis of an F x V matrix (32,768 x 50,000 would be
6.5 GB in float32), so nothing here builds that matrix: a first pass over (latent, word) tiles
accumulates the two log-normalisers, a second pass scores each tile and keeps a running top-N
per latent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class WordAlignment:
    """Top-N words per latent: ``word_ids`` and ``scores`` are (F, N), best first."""

    word_ids: Tensor
    scores: Tensor


def align_words(
    latents: Tensor,
    words: Tensor,
    top_n: int = 15,
    alpha: float = 1.0,
    beta: float = 1.0,
    cosine: bool = False,
    latent_chunk: int = 2048,
    word_chunk: int = 8192,
    device: str | torch.device | None = None,
) -> WordAlignment:
    """Top-``top_n`` words per latent by the MI score, computed tile by tile.

    ``latents`` are the intent vectors v_i (F x D), ``words`` the word embeddings e_w (V x D).
    ``cosine`` L2-normalises both first, so the temperatures do not depend on vector norms.
    """
    latents, words = _validated(latents, words, top_n, alpha, beta, latent_chunk, word_chunk)
    device = torch.device(device) if device is not None else latents.device
    latents, words = latents.to(device), words.to(device)
    if cosine:
        latents = torch.nn.functional.normalize(latents, dim=1)
        words = torch.nn.functional.normalize(words, dim=1)
    per_latent, per_word = log_normalisers(latents, words, alpha, beta, latent_chunk, word_chunk)
    log_prior = -math.log(latents.shape[0])
    top_n = min(top_n, words.shape[0])
    all_ids, all_scores = [], []
    for f0 in range(0, latents.shape[0], latent_chunk):
        block = latents[f0:f0 + latent_chunk]
        best = torch.full((block.shape[0], 0), -math.inf, dtype=block.dtype, device=device)
        best_ids = torch.zeros((block.shape[0], 0), dtype=torch.long, device=device)
        for v0 in range(0, words.shape[0], word_chunk):
            sims = block @ words[v0:v0 + word_chunk].T
            log_w_given_i = sims / alpha - per_latent[f0:f0 + latent_chunk, None]
            log_i_given_w = sims / beta - per_word[None, v0:v0 + word_chunk]
            scores = log_w_given_i.exp() * (log_i_given_w - log_prior)
            ids = torch.arange(v0, v0 + sims.shape[1], device=device).expand_as(scores)
            keep = min(top_n, best.shape[1] + scores.shape[1])
            best, picked = torch.cat([best, scores], dim=1).topk(keep, dim=1)
            best_ids = torch.cat([best_ids, ids], dim=1).gather(1, picked)
        all_ids.append(best_ids.cpu())
        all_scores.append(best.cpu())
    return WordAlignment(word_ids=torch.cat(all_ids), scores=torch.cat(all_scores))


def log_normalisers(
    latents: Tensor, words: Tensor, alpha: float, beta: float, latent_chunk: int, word_chunk: int
) -> tuple[Tensor, Tensor]:
    """(log sum_w exp(s/alpha) per latent, log sum_i exp(s/beta) per word), one pass over tiles."""
    per_latent = torch.full((latents.shape[0],), -math.inf, dtype=latents.dtype, device=latents.device)
    per_word = torch.full((words.shape[0],), -math.inf, dtype=latents.dtype, device=latents.device)
    for f0 in range(0, latents.shape[0], latent_chunk):
        block = latents[f0:f0 + latent_chunk]
        for v0 in range(0, words.shape[0], word_chunk):
            sims = block @ words[v0:v0 + word_chunk].T
            rows = slice(f0, f0 + sims.shape[0])
            cols = slice(v0, v0 + sims.shape[1])
            per_latent[rows] = torch.logaddexp(per_latent[rows], torch.logsumexp(sims / alpha, dim=1))
            per_word[cols] = torch.logaddexp(per_word[cols], torch.logsumexp(sims / beta, dim=0))
    return per_latent, per_word


def _validated(
    latents: Tensor, words: Tensor, top_n: int, alpha: float, beta: float, latent_chunk: int, word_chunk: int
) -> tuple[Tensor, Tensor]:
    if latents.ndim != 2 or words.ndim != 2:
        raise ValueError(f"latents and words must be 2-D, got {tuple(latents.shape)} and {tuple(words.shape)}")
    if latents.shape[1] != words.shape[1]:
        raise ValueError(f"latent dim {latents.shape[1]} != word embedding dim {words.shape[1]}")
    if latents.shape[0] == 0 or words.shape[0] == 0:
        raise ValueError("need at least one latent and one word")
    for name, value in (("top_n", top_n), ("latent_chunk", latent_chunk), ("word_chunk", word_chunk)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    dtype = torch.promote_types(latents.dtype, words.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return latents.to(dtype), words.to(dtype)
