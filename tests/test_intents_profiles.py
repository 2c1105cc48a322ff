"""Item intent profiles: streamed chunks of sparse codes pool into the same profiles as all at once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from saerec.intents.profiles import ProfileAccumulator


def _codes():
    items = torch.tensor([1, 1, 2, 3, 3, 3])
    values = torch.tensor([[0.5, 0.2], [0.3, 0.0], [0.9, 0.1], [0.4, 0.4], [0.2, 0.6], [0.1, 0.3]])
    latents = torch.tensor([[0, 2], [2, 1], [4, 0], [1, 2], [1, 3], [3, 0]])
    return items, values, latents


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_chunks_fold_into_the_pooled_profile_of_each_item(pooling):
    items, values, latents = _codes()
    whole, chunked = ProfileAccumulator(5, pooling), ProfileAccumulator(5, pooling)
    whole.add(items, values, latents)
    for start in range(0, 6, 2):
        chunked.add(items[start:start + 2], values[start:start + 2], latents[start:start + 2])
    kept = np.arange(5)
    one, other = whole.profiles(kept, 10), chunked.profiles(kept, 10)
    assert one.keys() == other.keys()
    for item in one:
        assert one[item][0] == other[item][0] and one[item][1] == pytest.approx(other[item][1])
    dense = torch.zeros(6, 5).scatter(1, latents, values)
    for item in (1, 2, 3):
        rows = dense[items == item]
        pooled = rows.mean(0) if pooling == "mean" else rows.max(0).values
        ids, weights = whole.profiles(kept, 10)[item]
        assert dict(zip(ids, weights)) == pytest.approx({i: float(v) for i, v in enumerate(pooled) if v > 0})
        assert weights == sorted(weights, reverse=True), "strongest intent first"


def test_profiles_keep_only_the_kept_latents_by_latent_id_and_the_strongest_first():
    items, values, latents = _codes()
    folded = ProfileAccumulator(5, "mean")
    folded.add(items, values, latents)
    profiles = folded.profiles(np.array([2, 1]), max_intents=1)
    assert set(profiles) == {1, 3}, "item 2 fires neither kept latent"
    assert profiles[1] == ([2], [pytest.approx(0.25)]), "ids are latent ids, not positions in the kept order; " \
                                                        "a zero value never fires"
    assert profiles[3] == ([1], [pytest.approx(0.2)]), "item 3's strongest kept latent only (mean over 3 texts)"
    with pytest.raises(ValueError, match="do not describe the same texts"):
        folded.add(items[:2], values, latents)


def test_pooled_table_holds_every_latent_uncut_and_an_item_that_never_fires_is_absent():
    items, values, latents = _codes()
    folded = ProfileAccumulator(5, "mean")
    folded.add(torch.cat([items, torch.tensor([9])]), torch.cat([values, torch.zeros(1, 2)]),
               torch.cat([latents, torch.tensor([[0, 1]])]))
    got = {(int(i), int(lat)): float(w) for i, lat, w in zip(*folded.pooled())}
    dense = torch.zeros(6, 5).scatter(1, latents, values)
    expected = {(item, lat): float(dense[items == item].mean(0)[lat]) for item in (1, 2, 3) for lat in range(5)
                if dense[items == item].mean(0)[lat] > 0}
    assert got == pytest.approx(expected), "item 9's one text fired nothing"
    assert folded.profiles(np.arange(5), 1)[3][0] == [3] and (3, 1) in got, \
        "profiles cut to the strongest; pooled does not"
