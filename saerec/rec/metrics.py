"""Full-ranking HR@K and NDCG@K (no negative sampling), with optional history masking, and their
breakdown by how popular the held-out item was in training.

Popularity buckets (``popularity_buckets``), from each item's training interactions (the training
part of the split, so no valid or test interaction counts):
- ``cold``: at most ``COLD_MAX_TRAIN`` (2) training interactions, new items (0) included: an ID
  embedding has next to nothing to learn from, text is all a model has;
- ``head``: the most popular fifth of the catalogue (Pareto's 20 %), less any cold item: items with
  at least as many training interactions as the ``ceil(0.2 * n_items)``-th most frequent one, so
  ties at the border are head too and the rule depends on the counts alone;
- ``tail``: everything else.
A user belongs to the bucket of the item held out for them.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from saerec.rec.batching import RankingSet, ranking_batches


def mask_scores(scores: Tensor, history: Tensor | None = None) -> Tensor:
    """A copy of (B, n_items + 1) scores with column 0 (padding) and, given ``history`` (B, L) item
    ids (0 = padding), every seen item at -inf: the one masking rule of every ranking (metrics,
    top-N lists, attribution, steering), so masked items rank below all others."""
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    if history is not None:
        scores.scatter_(1, history, float("-inf"))
    return scores


def target_ranks(scores: Tensor, targets: Tensor, history: Tensor | None = None) -> Tensor:
    """0-based rank of each target among all items; column 0 (padding) never competes.

    scores (B, n_items + 1); targets (B,); history (B, L) item ids (0 = padding) whose scores
    are pushed to -inf first (``mask_scores``), so already-seen items cannot outrank the target.
    A target that is itself in the history is ranked last. Ties count against the target (strict >,
    plus an equal score ranks ahead), so a constant scorer cannot look good.
    """
    scores = mask_scores(scores, history)
    target_scores = scores.gather(1, targets.unsqueeze(1))
    ahead = (scores >= target_scores).sum(dim=1) - 1
    ahead = torch.where(torch.isinf(target_scores.squeeze(1)), scores.shape[1] - 1, ahead)
    return ahead


def hr_ndcg(ranks: np.ndarray | Tensor, ks: Sequence[int]) -> dict[str, float]:
    """``hr@K`` = P(rank < K); ``ndcg@K`` = mean of 1 / log2(rank + 2) over ranks < K."""
    r = torch.as_tensor(ranks, dtype=torch.float64)
    if r.numel() == 0:
        raise ValueError("no ranks to average")
    out: dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float(hit.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean())
    return out


def user_ndcg_hr(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user NDCG@k and HR@k from 0-based ranks: the terms ``hr_ndcg`` averages."""
    r = np.asarray(ranks, dtype=np.float64)
    hit = r < k
    return np.where(hit, 1.0 / np.log2(r + 2.0), 0.0), hit.astype(np.float64)


COLD_MAX_TRAIN = 2
HEAD_ITEM_SHARE = 0.2
POPULARITY_BUCKETS = ("head", "tail", "cold")


def item_train_counts(train: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Training interactions per item id, shape (n_items + 1,); index 0 (padding) stays 0."""
    found = [np.asarray(s, dtype=np.int64) for s in train if len(s)]
    items = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    return np.bincount(items, minlength=n_items + 1)


def popularity_buckets(counts: np.ndarray, head_share: float = HEAD_ITEM_SHARE,
                       cold_max: int = COLD_MAX_TRAIN) -> tuple[np.ndarray, int]:
    """Each item id's bucket (``POPULARITY_BUCKETS`` index: 0 head, 1 tail, 2 cold; padding id 0
    gets cold) from ``item_train_counts``, and the head's least training count (see module doc)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size < 2:
        raise ValueError(f"counts needs one entry per item id 0..n_items, got shape {counts.shape}")
    if not 0.0 < head_share <= 1.0:
        raise ValueError(f"head_share must be in (0, 1], got {head_share}")
    items = counts[1:]
    top = int(np.ceil(head_share * items.size))
    head_min = max(int(np.sort(items)[::-1][top - 1]), cold_max + 1)
    buckets = np.where(counts <= cold_max, 2, np.where(counts >= head_min, 0, 1))
    buckets[0] = 2
    return buckets.astype(np.int64), head_min


def bucket_metrics(ranks: np.ndarray, buckets: np.ndarray, ks: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per popularity bucket: its users and ``hr_ndcg`` of their ranks (only the count when it has none).

    ``ranks`` and ``buckets`` are per user, in the same order (a user's bucket is its target's)."""
    ranks, buckets = np.asarray(ranks), np.asarray(buckets)
    if ranks.shape != buckets.shape:
        raise ValueError(f"one bucket per rank needed, got {buckets.shape} buckets for {ranks.shape} ranks")
    out: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(POPULARITY_BUCKETS):
        mine = ranks[buckets == index]
        out[name] = {"users": int(mine.size), **(hr_ndcg(mine, ks) if mine.size else {})}
    return out


@torch.no_grad()
def rank_users(model: torch.nn.Module, data: RankingSet, mask_history: bool = True,
               batch_size: int = 1024, device: torch.device | str = "cpu") -> np.ndarray:
    """Full-ranking rank of every user's held-out item, in ``data``'s row order."""
    was_training = model.training
    model.eval()
    ranks = np.zeros(len(data), dtype=np.int64)
    try:
        for rows, seqs, lengths, targets in ranking_batches(data, batch_size):
            seqs, lengths, targets = seqs.to(device), lengths.to(device), targets.to(device)
            ranks[rows] = target_ranks(model.full_sort_scores(seqs, lengths, mask_history), targets).cpu().numpy()
    finally:
        model.train(was_training)
    return ranks


def evaluate(model: torch.nn.Module, data: RankingSet, ks: Sequence[int] = (5, 10, 20),
             mask_history: bool = True, batch_size: int = 1024,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """HR@K and NDCG@K of ``model`` on one ranking set."""
    return hr_ndcg(rank_users(model, data, mask_history, batch_size, device), ks)
