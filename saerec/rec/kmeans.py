"""Seeded k-means in torch: the centroids of text embeddings are KMeans-Intent's intent set."""
from __future__ import annotations

import torch
from torch import Tensor


def _sq_dists(x: Tensor, centroids: Tensor) -> Tensor:
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.T + centroids.pow(2).sum(1)).clamp_min(0)


def kmeans_pp_init(x: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to D(x)^2."""
    first = torch.randint(len(x), (1,), generator=generator)
    centroids = [x[first]]
    closest = _sq_dists(x, centroids[0]).squeeze(1)
    for _ in range(1, n_clusters):
        total = closest.sum()
        if total <= 0:
            pick = torch.randint(len(x), (1,), generator=generator)
        else:
            pick = torch.multinomial(closest / total, 1, generator=generator)
        centroids.append(x[pick])
        closest = torch.minimum(closest, _sq_dists(x, x[pick]).squeeze(1))
    return torch.cat(centroids)


def kmeans(x: Tensor, n_clusters: int, iters: int = 50, seed: int = 0, tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm from k-means++ seeds; returns (centroids (C, D), assignment (N,)).

    An emptied cluster is re-seeded at the point farthest from its centre, so exactly
    ``n_clusters`` distinct intents come out.
    """
    if x.dim() != 2:
        raise ValueError(f"k-means needs an (N, D) matrix, got shape {tuple(x.shape)}")
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be in [1, {len(x)}] for {len(x)} points, got {n_clusters}")
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    centroids = kmeans_pp_init(x, n_clusters, gen)
    assign = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iters):
        dists = _sq_dists(x, centroids)
        best, assign = dists.min(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n_clusters).unsqueeze(1)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        empty = (counts.squeeze(1) == 0).nonzero().flatten()
        if len(empty):
            far = best.topk(len(empty)).indices
            new[empty] = x[far]
        shift = (new - centroids).pow(2).sum()
        centroids = new
        if shift <= tol and not len(empty):
            break
    assign = _sq_dists(x, centroids).argmin(dim=1)
    return centroids, assign
