"""Tiny deterministic sequence data for the recommender tests."""
from __future__ import annotations

import numpy as np


def chain_sequences(n_users: int = 40, n_items: int = 24, length: int = 8, seed: int = 0) -> list[list[int]]:
    """Every user walks the item ring 1..n_items one step at a time from a random start.

    The next item is a function of the last one, so a model that learns anything at all
    ranks the held-out item first.
    """
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, size=n_users)
    return [[int((s + t) % n_items) + 1 for t in range(length)] for s in starts]


def unique_sequences(lengths: list[int]) -> list[list[int]]:
    """Sequences whose item ids are all distinct across users (so leaks are easy to spot)."""
    out, nxt = [], 1
    for n in lengths:
        out.append(list(range(nxt, nxt + n)))
        nxt += n
    return out
