"""Full-ranking HR@K and NDCG@K (no negative sampling), with optional history masking."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from saerec.rec.batching import RankingSet, ranking_batches


def target_ranks(scores: Tensor, targets: Tensor, history: Tensor | None = None) -> Tensor:
    """0-based rank of each target among all items; column 0 (padding) never competes.

    scores (B, n_items + 1); targets (B,); history (B, L) item ids (0 = padding) whose scores
    are pushed to -inf first, so already-seen items cannot outrank the target. A target that
    is itself in the history is ranked last. Ties count against the target (strict >, plus
    an equal score ranks ahead), so a constant scorer cannot look good.
    """
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    if history is not None:
        scores.scatter_(1, history, float("-inf"))
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
            scores = model.item_scores(model(seqs, lengths, last_only=True))
            ranks[rows] = target_ranks(scores, targets, seqs if mask_history else None).cpu().numpy()
    finally:
        model.train(was_training)
    return ranks


def evaluate(model: torch.nn.Module, data: RankingSet, ks: Sequence[int] = (5, 10, 20),
             mask_history: bool = True, batch_size: int = 1024,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """HR@K and NDCG@K of ``model`` on one ranking set."""
    return hr_ndcg(rank_users(model, data, mask_history, batch_size, device), ks)
