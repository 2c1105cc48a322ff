"""How good are the intents: planted-intent recovery (demo) and held-out detection accuracy."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def planted_intent_recovery(
    kept_words: Sequence[Sequence[str]],
    planted: Mapping[str, Iterable[str]],
    purity: float = 0.8,
    top: int = 10,
) -> dict[str, object]:
    """Share of planted intents for which some kept latent's first ``top`` words are at least
    ``purity`` inside that intent's words.

    ``top`` defaults to the 10 words the paper shows per intent: a planted intent owns 12 words,
    so a purity measured on 15 words would demand every one of them and allow nothing else.
    """
    if not planted:
        raise ValueError("no planted intents to recover")
    best: dict[str, float] = {}
    for name, words in planted.items():
        own = set(words)
        shares = [sum(word in own for word in list(latent)[:top]) / len(list(latent)[:top])
                  for latent in kept_words if len(latent)]
        best[name] = round(max(shares, default=0.0), 4)
    recovered = sum(share >= purity for share in best.values())
    return {"recovery": recovered / len(planted), "recovered": recovered, "planted": len(planted),
            "best_purity": best}


def balanced_accuracy(positive: Sequence[float], negative: Sequence[float], threshold: float | None = 0.5) -> float:
    """Mean of the hit rate on ``positive`` scores and the rejection rate on ``negative`` ones.

    ``threshold=None`` is for scores without a fixed scale: the judge then calls the
    ``len(positive)`` highest-scoring texts positive (it knows how many there are), ties included.
    """
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if positive.size == 0 or negative.size == 0:
        raise ValueError(f"need positive and negative scores, got {positive.size} and {negative.size}")
    if threshold is None:
        threshold = float(np.sort(np.concatenate([positive, negative]))[::-1][positive.size - 1])
    return float(((positive >= threshold).mean() + (negative < threshold).mean()) / 2)


def sample_negatives(
    n_texts: int, exclude: Sequence[Sequence[int]], per_latent: int, rng: np.random.Generator
) -> np.ndarray:
    """For each latent, ``per_latent`` random text ids outside its own ``exclude`` list (-1 = none).

    Rejection sampling: a latent's top texts are a tiny share of the corpus, so a handful of
    redraws almost always suffices; with a corpus too small to avoid them we fall back to -1.
    """
    out = np.full((len(exclude), per_latent), -1, dtype=np.int64)
    for row, own in enumerate(exclude):
        banned = {int(t) for t in own if t >= 0}
        allowed = n_texts - len(banned)
        if allowed <= 0:
            continue
        picked: list[int] = []
        while len(picked) < min(per_latent, allowed):
            candidate = int(rng.integers(n_texts))
            if candidate not in banned:
                banned.add(candidate)
                picked.append(candidate)
        out[row, :len(picked)] = picked
    return out
