"""Quality measures: planted-intent recovery, detection balanced accuracy, negative sampling."""
import numpy as np
import pytest

from saerec.intents.quality import balanced_accuracy, planted_intent_recovery, sample_negatives
from saerec.intents.verdicts import verdict_from_coherence

PLANTED = {"nails": ["nail", "polish", "gel", "cuticle", "lacquer"], "scent": ["perfume", "floral", "aroma", "musky"]}


def test_recovery_counts_intents_with_a_pure_enough_kept_latent():
    kept = [["nail", "polish", "gel", "cuticle", "great"], ["perfume", "floral", "love", "great", "nice"]]
    found = planted_intent_recovery(kept, PLANTED, purity=0.8, top=5)
    assert found["recovery"] == 0.5 and found["recovered"] == 1
    assert found["best_purity"] == {"nails": 0.8, "scent": 0.4}
    assert planted_intent_recovery([], PLANTED)["recovery"] == 0.0
    assert planted_intent_recovery(kept, PLANTED, top=2)["recovery"] == 1.0
    with pytest.raises(ValueError, match="no planted"):
        planted_intent_recovery(kept, {})


def test_balanced_accuracy_with_a_threshold_and_by_rank():
    assert balanced_accuracy([0.9, 0.6, 0.2], [0.1, 0.7], threshold=0.5) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert balanced_accuracy([5.0, 4.0], [3.0, 1.0], threshold=None) == 1.0
    assert balanced_accuracy([5.0, 1.0], [3.0, 0.0], threshold=None) == 0.5
    assert balanced_accuracy([2.0, 2.0], [2.0, 2.0], threshold=None) == 0.5
    with pytest.raises(ValueError, match="positive and negative"):
        balanced_accuracy([], [1.0])


def test_negatives_avoid_each_latents_own_texts_and_repeat_nothing():
    rng = np.random.default_rng(0)
    own = [[0, 1, 2], [5, -1, -1], [0, 1, 2, 3, 4, 5]]
    picked = sample_negatives(7, own, per_latent=3, rng=rng)
    assert picked.shape == (3, 3)
    assert not set(picked[0]) & {0, 1, 2} and len(set(picked[0])) == 3
    assert 5 not in picked[1] and len(set(picked[1])) == 3
    assert sorted(picked[2].tolist()) == [-1, -1, 6]  # only one text is not the latent's own


def test_coherence_levels():
    assert [verdict_from_coherence(z) for z in (3.1, 2.0, 1.5, 0.2, -0.5)] == ["Yes", "Yes", "Probably", "Maybe", "No"]
