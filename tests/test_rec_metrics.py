"""Full-ranking metrics against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saerec.rec.metrics import bucket_metrics, hr_ndcg, item_train_counts, mask_scores, popularity_buckets, target_ranks


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


def test_masking_copies_the_scores_and_buries_padding_and_history():
    scores = torch.tensor([[0.0, 0.1, 0.5, 0.3, 0.9], [0.2, 0.4, 0.1, 0.6, 0.3]])
    masked = mask_scores(scores, torch.tensor([[4, 2], [1, 0]]))
    inf = float("-inf")
    assert torch.equal(masked, torch.tensor([[inf, 0.1, inf, 0.3, inf], [inf, inf, 0.1, 0.6, 0.3]]))
    assert scores[0, 4] == scores.new_tensor(0.9), "the caller's scores are left as they were"
    assert torch.equal(mask_scores(scores), torch.tensor([[inf, 0.1, 0.5, 0.3, 0.9], [inf, 0.4, 0.1, 0.6, 0.3]]))


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


def test_training_counts_come_from_the_training_sequences_only():
    counts = item_train_counts([np.array([1, 2, 1]), np.array([], dtype=np.int64), np.array([3])], n_items=4)
    assert counts.tolist() == [0, 2, 1, 1, 0], "item 4 (seen only in valid or test) has no training interaction"


def test_popularity_buckets_head_is_the_top_fifth_with_ties_cold_is_two_or_fewer():
    #                  id: 0  1  2  3  4  5  6  7  8  9 10
    counts = np.array([0, 9, 7, 7, 5, 3, 3, 2, 1, 0, 4])
    buckets, head_min = popularity_buckets(counts)
    # 10 items: the 2nd most frequent has 7, so head = counts >= 7 (item 3 ties item 2 and joins it)
    assert head_min == 7
    assert buckets.tolist() == [2, 0, 0, 0, 1, 1, 1, 2, 2, 2, 1]
    # when the top fifth is itself cold, every non-cold item is head
    few, few_min = popularity_buckets(np.array([0, 3, 2, 1, 1, 1, 0, 0, 0, 0, 0]))
    assert few_min == 3 and few.tolist() == [2, 0] + [2] * 9
    with pytest.raises(ValueError, match="head_share"):
        popularity_buckets(counts, head_share=0.0)


def test_bucket_metrics_average_each_buckets_users_alone():
    out = bucket_metrics(np.array([0, 5, 30, 1]), np.array([0, 0, 1, 0]), ks=(1, 10))
    assert out["head"]["users"] == 3 and out["tail"]["users"] == 1
    assert out["head"]["hr@1"] == pytest.approx(1 / 3)
    assert out["head"]["ndcg@10"] == pytest.approx((1 + 1 / math.log2(7) + 1 / math.log2(3)) / 3)
    assert out["tail"] == {"users": 1, "hr@1": 0.0, "ndcg@1": 0.0, "hr@10": 0.0, "ndcg@10": 0.0}
    assert out["cold"] == {"users": 0}, "an empty bucket has a count and no averages"
