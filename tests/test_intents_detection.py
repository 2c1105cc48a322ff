"""Detection by embedding ranks a latent's texts by how close they are to its summary."""
from __future__ import annotations

import pytest

from saerec.intents.detection import EmbeddingDetector, detection_by_latent
from saerec.intents.quality import balanced_accuracy


@pytest.fixture(scope="module")
def detector() -> EmbeddingDetector:
    return EmbeddingDetector("minilm")


def test_texts_of_the_summarised_theme_rank_above_others(detector):
    themed = ["my nails never chip with this topcoat", "the best nail polish for a quick manicure"]
    others = ["a sunscreen that does not leave a white cast", "this shampoo tames my frizzy hair"]
    scores = detector(["nail polish"] * 4, themed + others)
    assert min(scores[:2]) > max(scores[2:])
    assert balanced_accuracy(scores[:2], scores[2:], None) == 1.0
    # each pair is scored against its own summary, whatever else is in the call
    assert detector(["hair care", "nail polish"], [others[1], themed[0]]) == pytest.approx(
        [detector(["hair care"], [others[1]])[0], scores[0]], abs=1e-5)


def test_detector_checks_its_input(detector):
    assert detector([], []) == []
    with pytest.raises(ValueError, match="2 summaries but 1 texts"):
        detector(["a", "b"], ["x"])


def test_detection_by_latent_scores_each_arm_from_the_judges_answers():
    checks = [{"latent": 7, "arm": arm, "label": label, "fits": fits}
              for arm, answers in ((0, [(1, 1.0), (1, 1.0), (0, 0.0), (0, 1.0)]), (1, [(1, 0.0), (0, 1.0), (0, None)]))
              for label, fits in answers]
    checks += [{"latent": 8, "arm": 0, "label": 1, "fits": 1.0}, {"latent": 8, "arm": 0, "label": 0, "fits": None}]
    assert detection_by_latent(checks) == {(7, 0): 0.75, (7, 1): 0.0}, "no negative answered: latent 8 has no score"
