"""SAE quality metrics, named as the SAE literature names them (fvu, l0, dead_pct).

Everything here is computed from sufficient statistics (sums and counts) so a distributed
evaluation can add the statistics of its shards and get exactly the corpus-level numbers.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

DENSITY_BIN_EDGES = tuple(float(edge) for edge in range(-8, 1))  # log10 activation frequency


def fvu(x: Tensor, reconstruction: Tensor) -> Tensor:
    """Fraction of variance unexplained: squared error over squared deviation from the mean.

    0 is a perfect reconstruction; 1 is no better than predicting the batch mean.
    """
    if x.shape != reconstruction.shape:
        raise ValueError(f"fvu needs equal shapes, got {tuple(x.shape)} and {tuple(reconstruction.shape)}")
    variance = (x - x.mean(0)).pow(2).sum()
    return (reconstruction - x).pow(2).sum() / variance.clamp_min(torch.finfo(x.dtype).tiny)


def fvu_from_sums(sse: float, sum_x: Tensor, sum_sq: float, n: int) -> float:
    """Corpus FVU from streamed sums: sum of squared errors, sum of x, sum of ||x||², count."""
    if n <= 0:
        raise ValueError(f"fvu_from_sums needs a positive count, got {n}")
    total_variance = sum_sq - float(sum_x.double().pow(2).sum()) / n
    return sse / total_variance if total_variance > 0 else math.inf


def l0(top_values: Tensor) -> float:
    """Mean number of non-zero codes per input."""
    if top_values.numel() == 0:
        raise ValueError("l0 needs at least one row of codes")
    return float((top_values != 0).sum(dim=-1).float().mean())


def activation_counts(top_values: Tensor, top_indices: Tensor, n_latents: int) -> Tensor:
    """How many inputs each latent fired on (non-zero code), as an int64 tensor of length F.

    A scatter-add rather than bincount or boolean indexing: both of those wait on the device
    to size their output, which would stall every training step on a GPU.
    """
    fired = (top_values != 0).flatten().long()
    counts = torch.zeros(n_latents, dtype=torch.int64, device=top_indices.device)
    return counts.scatter_add_(0, top_indices.flatten().long(), fired)


def activation_frequency(counts: Tensor, n_samples: int) -> Tensor:
    """Fraction of inputs on which each latent fired."""
    if n_samples <= 0:
        raise ValueError(f"activation_frequency needs a positive sample count, got {n_samples}")
    return counts.double() / n_samples


def dead_pct(counts: Tensor) -> float:
    """Percentage of latents that never fired over the counted inputs."""
    return 100.0 * float((counts == 0).double().mean())


def density_histogram(
    counts: Tensor, n_samples: int, bin_edges: tuple[float, ...] = DENSITY_BIN_EDGES
) -> dict[str, list[float] | list[int] | int]:
    """Histogram of log10 activation frequency over live latents, plus the dead count.

    The usual SAE health plot: a healthy dictionary has a single bump well above the dead
    floor; a second bump near 0 (log10 freq ~ 0) means latents that fire on everything.
    Frequencies outside the edges are clipped into the first/last bin.
    """
    frequency = activation_frequency(counts, n_samples)
    live = frequency[frequency > 0]
    log_freq = live.log10().clamp(bin_edges[0], bin_edges[-1])
    edges = torch.tensor(bin_edges, dtype=torch.float64)
    bins = torch.bucketize(log_freq, edges[1:-1], right=True)
    hist = torch.bincount(bins, minlength=len(bin_edges) - 1)
    return {
        "bin_edges_log10": list(bin_edges),
        "counts": [int(c) for c in hist],
        "dead": int((frequency == 0).sum()),
    }
