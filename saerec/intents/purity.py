"""Category purity: does an intent group items a shop would file together?

For one intent, take its top-``n`` labelled items by profile weight; its purity is the share of
them carried by the single most common category among them. Categories carried by more than
``max_share`` of the labelled items are skipped: a department such as Beauty's "Skin Care"
(31 % of items) is common in any set and says nothing about what the intent is; an item whose
only categories are skipped still counts in ``n``, against purity. The same number is computed
for controls of the same size: random item sets (chance), the clusters of a k-means of the
items' text embeddings (the ``n`` items nearest each centroid) and the latents the judge rejects.

The labels are evaluation data: nothing here feeds a model.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from saerec.rec.kmeans import kmeans


@dataclass(frozen=True)
class Labels:
    """Each labelled item's informative categories, and the departments skipped as too broad."""

    categories: dict[int, frozenset[str]]
    skipped: list[str]

    @property
    def items(self) -> np.ndarray:
        """The labelled items, sorted: the universe every set is drawn from."""
        return np.array(sorted(self.categories), dtype=np.int64)


def labels(item_categories: Mapping[int, Sequence[str]], max_share: float) -> Labels:
    """Drop the categories carried by more than ``max_share`` of the labelled items."""
    labelled = {int(i): set(c) for i, c in item_categories.items() if c}
    counts = Counter(name for names in labelled.values() for name in names)
    skipped = sorted(name for name, count in counts.items() if count > max_share * len(labelled))
    return Labels({i: frozenset(names - set(skipped)) for i, names in labelled.items()}, skipped)


def purity(items: Sequence[int], lab: Labels) -> tuple[float, str | None]:
    """The share of ``items`` in their most common category, and that category (ties: first by name)."""
    if len(items) == 0:
        raise ValueError("purity of an empty item set")
    counts = Counter(name for item in items for name in lab.categories.get(int(item), ()))
    if not counts:
        return 0.0, None
    best = min(counts, key=lambda name: (-counts[name], name))
    return counts[best] / len(items), best


def top_items(items: np.ndarray, groups: np.ndarray, weights: np.ndarray, wanted: Sequence[int], n: int,
              lab: Labels) -> dict[int, np.ndarray]:
    """Per group in ``wanted`` (an intent, a latent): its ``n`` labelled items of highest weight
    (ties by item id), from the sparse (item, group, weight) triples. Groups with fewer than
    ``n`` labelled items of positive weight are left out: a tiny set is pure by chance."""
    keep = np.isin(items, lab.items) & np.isin(groups, np.asarray(wanted)) & (weights > 0)
    items, groups, weights = items[keep], groups[keep], weights[keep]
    order = np.lexsort((items, -weights, groups))
    items, groups = items[order], groups[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if len(groups) else np.array([], int)
    out: dict[int, np.ndarray] = {}
    for start, end in zip(starts, [*starts[1:], len(groups)]):
        if end - start >= n:
            out[int(groups[start])] = items[start:start + n]
    return out


def random_sets(lab: Labels, n: int, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` random sets of ``n`` distinct labelled items: what chance purity is measured on."""
    universe = lab.items
    if n > len(universe):
        raise ValueError(f"random sets of {n} items from {len(universe)} labelled items")
    rng = np.random.default_rng(seed)
    return [rng.choice(universe, size=n, replace=False) for _ in range(draws)]


def kmeans_sets(item_ids: np.ndarray, vectors: torch.Tensor, clusters: int, n: int, seed: int,
                lab: Labels) -> list[np.ndarray]:
    """k-means (``clusters`` centroids) of the labelled items' L2-normalised text embeddings; per
    centroid its ``n`` most similar items (cosine), the counterpart of an intent's top items."""
    labelled = np.isin(item_ids, lab.items)
    ids, x = item_ids[labelled], torch.nn.functional.normalize(vectors[torch.from_numpy(labelled)].float(), dim=1)
    if not 1 <= clusters <= len(ids) or n > len(ids):
        raise ValueError(f"k-means of {clusters} clusters, {n} items each, over {len(ids)} labelled items with text")
    centroids = kmeans(x, clusters, seed=seed)[0]
    nearest = (x @ torch.nn.functional.normalize(centroids, dim=1).T).T.topk(n, dim=1).indices
    return [ids[row.numpy()] for row in nearest]


def mean_purity(sets: Sequence[np.ndarray], lab: Labels) -> float | None:
    """The mean purity over ``sets``; None when there is none."""
    return float(np.mean([purity(s, lab)[0] for s in sets])) if len(sets) else None


GROUPS = ("kept", "rejected", "clusters", "chance")  # chance: random item sets


@dataclass(frozen=True)
class Scored:
    """One scored item set: its group (``GROUPS``), its id (a latent, a cluster, a draw), its purity
    and the category that gives it (None when none of its items has an informative category)."""

    group: str
    id: int
    purity: float
    category: str | None


@dataclass(frozen=True)
class Study:
    """What a purity comparison needs: the pooled profile triples, which latents were kept, and the
    items' text embeddings for the k-means control."""

    items: np.ndarray
    latents: np.ndarray
    weights: np.ndarray
    kept: np.ndarray
    n_latents: int
    text_items: np.ndarray
    text_vectors: torch.Tensor


def compare(study: Study, lab: Labels, n: int, draws: int, seed: int) -> list[Scored]:
    """Every kept and rejected latent with ``n`` labelled items, ``len(kept)`` k-means clusters and
    ``draws`` random sets, each scored by purity. Nothing when fewer than ``n`` items are labelled or
    every category was skipped as too broad (a demo of 6 planted intents: each is on ~20 % of items)."""
    if len(lab.items) < n or not any(lab.categories.values()):
        return []
    rejected = np.setdiff1d(np.arange(study.n_latents), study.kept)
    out: list[Scored] = []
    for group, wanted in (("kept", study.kept), ("rejected", rejected)):
        sets = top_items(study.items, study.latents, study.weights, wanted, n, lab)
        out += [Scored(group, latent, *purity(sets[latent], lab)) for latent in sorted(sets)]
    labelled_text = int(np.isin(study.text_items, lab.items).sum())
    clusters = min(len(study.kept), labelled_text)
    if clusters >= 1 and labelled_text >= n:
        sets = kmeans_sets(study.text_items, study.text_vectors, clusters, n, seed, lab)
        out += [Scored("clusters", c, *purity(s, lab)) for c, s in enumerate(sets)]
    out += [Scored("chance", d, *purity(s, lab)) for d, s in enumerate(random_sets(lab, n, draws, seed))]
    return out


def summary(scored: Sequence[Scored]) -> dict[str, float | int | None]:
    """Mean purity per group, how many sets each has, and kept's ratio to each control."""
    means: dict[str, float | None] = {}
    out: dict[str, float | int | None] = {}
    for group in GROUPS:
        values = [s.purity for s in scored if s.group == group]
        means[group] = round(float(np.mean(values)), 4) if values else None
        out[f"purity_{group}"] = means[group]
        out[f"purity_{group}_sets"] = len(values)
    for control in ("chance", "clusters", "rejected"):
        kept, other = means["kept"], means[control]
        out[f"purity_ratio_vs_{control}"] = round(kept / other, 3) if kept is not None and other else None
    return out
