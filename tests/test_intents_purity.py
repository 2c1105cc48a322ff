"""Category purity (saerec.intents.purity) on constructed cases whose answer is known exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from saerec.intents import purity


def _lab(categories: dict[int, list[str]], max_share: float = 1.0) -> purity.Labels:
    return purity.labels(categories, max_share)


def test_purity_is_the_share_in_the_most_common_category():
    lab = _lab({1: ["Nails", "Nail Polish"], 2: ["Nail Polish"], 3: ["Nail Polish", "Eyes"], 4: ["Eyes"], 5: []})
    assert purity.purity([1, 2, 3, 4], lab) == (0.75, "Nail Polish")
    assert purity.purity([1, 4], lab) == (0.5, "Eyes"), "a tie goes to the first name"
    assert purity.purity([4, 99], lab) == (0.5, "Eyes"), "an unlabelled item counts against purity"
    assert 5 not in lab.categories, "an item with no category is not labelled"
    with pytest.raises(ValueError, match="empty"):
        purity.purity([], lab)


def test_departments_above_the_share_are_skipped_and_their_items_count_against_purity():
    categories = {i: ["Skin Care"] + (["Sun"] if i < 3 else []) for i in range(10)}
    lab = _lab(categories, max_share=0.5)
    assert lab.skipped == ["Skin Care"]
    assert purity.purity(list(range(6)), lab) == (0.5, "Sun"), "items 3-5 carry only the skipped department"
    assert purity.purity([5, 6], lab) == (0.0, None)


def test_top_items_take_the_highest_weights_and_drop_small_groups():
    lab = _lab({i: ["A"] for i in range(1, 8)})
    items = np.array([1, 2, 3, 4, 5, 1, 2, 9, 6])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 0, 2])
    weights = np.array([0.1, 0.9, 0.5, 0.5, 0.0, 1.0, 1.0, 5.0, 1.0])
    top = purity.top_items(items, groups, weights, [0, 1], n=2, lab=lab)
    assert set(top) == {0, 1}, "group 2 is not wanted"
    assert top[0].tolist() == [2, 3], "by weight, a tie by item id; item 9 is unlabelled"
    assert top[1].tolist() == [1, 2]
    assert set(purity.top_items(items, groups, weights, [0, 1], n=4, lab=lab)) == {0}, \
        "group 1 has 2 items and item 5 has weight 0"


def test_chance_purity_of_random_sets_is_the_category_base_rate():
    rng = np.random.default_rng(3)
    categories = {i: (["Dept", "A"] if rng.random() < 0.1 else ["Dept"]) for i in range(2000)}
    lab = _lab(categories, max_share=0.5)
    base = sum("A" in c for c in categories.values()) / len(categories)
    sets = purity.random_sets(lab, n=20, draws=2000, seed=0)
    assert all(len(set(s.tolist())) == 20 for s in sets)
    assert purity.mean_purity(sets, lab) == pytest.approx(base, abs=0.005)
    assert [s.tolist() for s in purity.random_sets(lab, 20, 3, seed=0)] == [s.tolist() for s in sets[:3]], "seeded"


def _two_blobs(n: int) -> tuple[np.ndarray, torch.Tensor, dict[int, list[str]]]:
    gen = torch.Generator().manual_seed(0)
    vectors = torch.cat([torch.tensor([1.0, 0, 0]) + 0.05 * torch.randn(n, 3, generator=gen),
                         torch.tensor([0, 1.0, 0]) + 0.05 * torch.randn(n, 3, generator=gen)])
    ids = np.arange(1, 2 * n + 1)
    return ids, vectors, {int(i): ["Left" if i <= n else "Right"] for i in ids}


def test_kmeans_sets_are_the_items_nearest_each_centroid():
    ids, vectors, categories = _two_blobs(30)
    lab = _lab(categories)
    sets = purity.kmeans_sets(ids, vectors, clusters=2, n=10, seed=0, lab=lab)
    assert sorted(purity.purity(s, lab) for s in sets) == [(1.0, "Left"), (1.0, "Right")]
    with pytest.raises(ValueError, match="60 labelled items"):
        purity.kmeans_sets(ids, vectors, clusters=2, n=61, seed=0, lab=lab)


def test_kept_latents_that_group_a_category_beat_every_control():
    ids, vectors, categories = _two_blobs(30)
    lab = _lab(categories)
    rng = np.random.default_rng(1)
    rows = [(i, 0, 1.0 + i / 100) for i in ids[:30]] + [(i, 1, 1.0 + i / 100) for i in ids[30:]]
    rows += [(int(i), latent, float(rng.random()) + 0.01) for latent in (2, 3) for i in rng.permutation(ids)[:20]]
    items, latents, weights = (np.array(col) for col in zip(*rows))
    study = purity.Study(items, latents, weights, kept=np.array([0, 1]), n_latents=5, text_items=ids,
                         text_vectors=vectors)
    scored = purity.compare(study, lab, n=10, draws=50, seed=0)
    assert [(s.group, s.id, s.purity) for s in scored if s.group in ("kept", "rejected")][:2] == \
        [("kept", 0, 1.0), ("kept", 1, 1.0)]
    assert {s.id for s in scored if s.group == "rejected"} == {2, 3}, "latent 4 never fires"
    summary = purity.summary(scored)
    assert summary["purity_kept"] == 1.0 and summary["purity_kept_sets"] == 2
    assert summary["purity_clusters_sets"] == 2 and summary["purity_chance_sets"] == 50
    assert 0.5 <= summary["purity_chance"] < 0.8, "two equal categories: chance is the larger half of 10 items"
    assert summary["purity_ratio_vs_chance"] == pytest.approx(1.0 / summary["purity_chance"], rel=1e-3)
    assert summary["purity_ratio_vs_rejected"] > 1.0
    assert purity.compare(study, lab, n=61, draws=5, seed=0) == [], "fewer labelled items than a set's size"
    broad = _lab(categories, max_share=0.4)
    assert broad.skipped == ["Left", "Right"] and purity.compare(study, broad, n=10, draws=5, seed=0) == [], \
        "no informative category left: no purity rather than zeros"
    assert purity.summary([])["purity_kept"] is None
