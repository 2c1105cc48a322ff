"""Seeded k-means for KMeans-Intent."""
from __future__ import annotations

import pytest
import torch

from saerec.rec.kmeans import kmeans


def _blobs():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    return centres, torch.cat([c + 0.1 * torch.randn(30, 2, generator=gen) for c in centres])


def test_kmeans_recovers_well_separated_centres_and_assignments():
    centres, x = _blobs()
    found, assign = kmeans(x, 3, seed=0)
    order = torch.cdist(centres, found).argmin(dim=1)
    assert torch.allclose(found[order], centres, atol=0.1)
    assert all(len(set(assign[i * 30:(i + 1) * 30].tolist())) == 1 for i in range(3))


def test_kmeans_is_deterministic_per_seed():
    _, x = _blobs()
    assert torch.equal(kmeans(x, 5, seed=4)[0], kmeans(x, 5, seed=4)[0])


def test_kmeans_returns_distinct_centroids_even_with_duplicate_points():
    x = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    centroids, _ = kmeans(x, 4, seed=0)
    assert len({tuple(c.tolist()) for c in centroids}) == 4


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="n_clusters must be in"):
        kmeans(torch.zeros(3, 2), 4)
