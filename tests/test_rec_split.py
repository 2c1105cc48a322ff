"""The leave-one-out split and the batches never leak valid or test items into training."""
from __future__ import annotations

import numpy as np
import pytest

from saerec.rec.batching import bucketed_batches, leave_one_out, ranking_batches, training_examples
from tests.rec_toy import unique_sequences


def _split(lengths, max_len=50):
    seqs = unique_sequences(lengths)
    return seqs, leave_one_out(seqs, n_items=sum(lengths), max_len=max_len)


def test_valid_and_test_items_never_reach_training_inputs_or_targets():
    seqs, data = _split([3, 4, 5, 9, 12, 60])
    held_out = set(data.valid.targets.tolist()) | set(data.test.targets.tolist())
    examples = training_examples(data.train, max_len=50)
    seen = set(examples.inputs[examples.inputs > 0].tolist()) | set(examples.targets[examples.targets > 0].tolist())
    assert held_out and not held_out & seen
    batched = set()
    for seqs_b, lengths_b, targets_b in bucketed_batches(examples, 2, np.random.default_rng(0)):
        batched |= set(seqs_b[seqs_b > 0].tolist()) | set(targets_b[targets_b > 0].tolist())
    assert batched == seen


def test_split_positions_follow_the_strict_protocol():
    seqs, data = _split([5, 3])
    assert data.valid.targets.tolist() == [seqs[0][-2], seqs[1][-2]]
    assert data.test.targets.tolist() == [seqs[0][-1], seqs[1][-1]]
    assert data.valid.inputs[0, :3].tolist() == seqs[0][:3] and data.valid.lengths[0] == 3
    assert data.test.inputs[0, :4].tolist() == seqs[0][:4] and data.test.lengths[0] == 4
    assert data.valid.inputs[0, 3:].sum() == 0


def test_short_users_only_train_and_long_histories_keep_the_newest_items():
    seqs, data = _split([2, 60], max_len=10)
    assert data.valid.users.tolist() == [1]
    assert data.test.inputs[0].tolist() == seqs[1][-11:-1]
    examples = training_examples(data.train, max_len=10)
    assert len(examples) == 2
    long_row = int(np.argmax(examples.lengths))
    assert examples.targets[long_row].tolist() == seqs[1][-12:-2]
    assert examples.inputs[long_row].tolist() == seqs[1][-13:-3]


def test_bucketed_batches_cover_every_example_once_with_tight_padding():
    _, data = _split([3 + (i % 7) for i in range(50)])
    examples = training_examples(data.train, max_len=50)
    rows = []
    for seqs_b, lengths_b, targets_b in bucketed_batches(examples, 8, np.random.default_rng(1)):
        assert seqs_b.shape[1] == int(lengths_b.max())
        assert int(lengths_b.max()) - int(lengths_b.min()) <= 1
        assert seqs_b.shape == targets_b.shape
        rows += [tuple(r) for r in seqs_b.tolist()]
    assert len(rows) == len(examples) == len(set(rows))


def test_ranking_batches_return_every_user_once():
    _, data = _split([3, 8, 4, 6, 5])
    seen = np.concatenate([rows for rows, *_ in ranking_batches(data.valid, 2)])
    assert sorted(seen.tolist()) == list(range(len(data.valid)))


def test_out_of_range_item_names_the_user():
    with pytest.raises(ValueError, match="user 1: item id 9"):
        leave_one_out([[1, 2, 3], [1, 9, 2]], n_items=5, max_len=5)


def test_random_batches_also_cover_every_example_once():
    _, data = _split([3 + (i % 7) for i in range(30)])
    examples = training_examples(data.train, max_len=50)
    rows = [tuple(r) for s, _, _ in bucketed_batches(examples, 8, np.random.default_rng(2), bucket=False)
            for r in s.tolist()]
    assert len(rows) == len(examples) == len(set(rows))
