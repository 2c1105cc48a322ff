"""Full-ranking metrics against hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from saerec.rec.metrics import hr_ndcg, target_ranks


def test_rank_counts_items_scored_above_target_and_ignores_padding():
    scores = torch.tensor([[99.0, 0.1, 0.5, 0.3, 0.9]])
    assert target_ranks(scores, torch.tensor([3])).tolist() == [2]
    assert target_ranks(scores, torch.tensor([4])).tolist() == [0]
    assert target_ranks(scores, torch.tensor([1])).tolist() == [3]


def test_history_masking_removes_seen_items_and_buries_a_seen_target():
    scores = torch.tensor([[0.0, 0.1, 0.5, 0.3, 0.9]])
    history = torch.tensor([[4, 0]])
    assert target_ranks(scores, torch.tensor([3]), history).tolist() == [1]
    assert target_ranks(scores, torch.tensor([4]), history).tolist() == [4]


def test_ties_rank_against_the_target():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]


def test_hr_and_ndcg_match_hand_computation():
    out = hr_ndcg(torch.tensor([0, 1, 5, 30]), ks=(1, 5, 10))
    assert out["hr@1"] == pytest.approx(0.25)
    assert out["hr@5"] == pytest.approx(0.5)
    assert out["hr@10"] == pytest.approx(0.75)
    assert out["ndcg@1"] == pytest.approx(0.25)
    assert out["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(7)) / 4)


def test_hr_ndcg_rejects_empty_input():
    with pytest.raises(ValueError, match="no ranks"):
        hr_ndcg(torch.tensor([], dtype=torch.long), ks=(5,))
