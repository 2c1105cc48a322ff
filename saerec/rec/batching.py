"""Leave-one-out split and length-bucketed, right-padded batches.

Split, ``strict`` protocol (the default, and the only one our claims use): test = last item,
valid = second-to-last, training = the rest. Training inputs AND targets come only from the
training part; valid inputs are the training part; test inputs are everything but the last item.

``paper`` protocol, the public SAERec code's: training sequences end at the valid item
(everything but the last item) and the selection set IS the test set (input everything but the
last item, answer the last), so epochs are chosen on the test item and the reported test
metrics are those of the selected checkpoint. It exists to measure what that protocol adds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from saerec.data.split import split_labels


@dataclass(frozen=True)
class RankingSet:
    """Users' history windows (right-padded, newest last) and the one held-out item to rank."""

    users: np.ndarray
    inputs: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


Protocol = Literal["strict", "paper"]
PROTOCOLS: tuple[str, ...] = ("strict", "paper")


@dataclass(frozen=True)
class LeaveOneOut:
    """Training sequences plus the selection (``valid``) and test ranking sets; ``n_items`` bounds
    the ids. Under the ``paper`` protocol ``valid`` is the test set itself."""

    n_items: int
    train: list[np.ndarray]
    valid: RankingSet
    test: RankingSet
    protocol: Protocol = "strict"


def _as_items(seq: Sequence[int], user: int, n_items: int) -> np.ndarray:
    arr = np.asarray(seq, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"user {user}: sequence must be a flat list of item ids")
    if arr.size and (arr.min() < 1 or arr.max() > n_items):
        bad = arr[(arr < 1) | (arr > n_items)][0]
        raise ValueError(f"user {user}: item id {bad} outside 1..{n_items}")
    return arr


def _windows(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (U, max_len) matrix of each history's last max_len items and their lengths."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    lengths = np.zeros(len(histories), dtype=np.int64)
    for row, hist in enumerate(histories):
        tail = hist[-max_len:]
        out[row, : len(tail)] = tail
        lengths[row] = len(tail)
    return out, lengths


def leave_one_out(sequences: Sequence[Sequence[int]], n_items: int, max_len: int,
                  protocol: Protocol = "strict") -> LeaveOneOut:
    """Split chronological per-user sequences by the split prepare publishes (``saerec.data.split``):
    users with too few items to hold two out only contribute training."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    sequences = [_as_items(seq, user, n_items) for user, seq in enumerate(sequences)]
    lengths = np.array([len(items) for items in sequences], dtype=np.int64)
    labels = np.split(split_labels(lengths), np.cumsum(lengths)[:-1])
    train, users, valid_hist, valid_tgt, test_hist, test_tgt = [], [], [], [], [], []
    for user, (items, label) in enumerate(zip(sequences, labels)):
        history, valid, test = items[label == "train"], items[label == "valid"], items[label == "test"]
        if not len(test):
            train.append(items)
            continue
        train.append(items[label != "test"] if protocol == "paper" else history)
        users.append(user)
        valid_hist.append(history)
        valid_tgt.append(valid[0])
        test_hist.append(items[label != "test"])
        test_tgt.append(test[0])
    user_ids = np.asarray(users, dtype=np.int64)
    valid = RankingSet(user_ids, *_windows(valid_hist, max_len), np.asarray(valid_tgt, dtype=np.int64))
    test = RankingSet(user_ids, *_windows(test_hist, max_len), np.asarray(test_tgt, dtype=np.int64))
    return LeaveOneOut(n_items, train, test if protocol == "paper" else valid, test, protocol)


@dataclass(frozen=True)
class TrainingExamples:
    """Next-item examples: input = seq[:-1], target = seq[1:], both right-padded to max_len.

    A target of 0 marks a position without a loss (padding, or an augmented prefix's earlier
    positions)."""

    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)


def training_examples(train: Sequence[np.ndarray], max_len: int, prefixes: bool = False) -> TrainingExamples:
    """One example per training sequence of >= 2 items, from its last max_len + 1 items, with a
    loss at every position.

    ``prefixes`` (ICSRec's recipe, used by the public SAERec code): every prefix of every
    training sequence is an example of its own, with the loss at its last position only; a
    sequence of n items gives n - 1 examples.
    """
    if not prefixes:
        kept = [np.asarray(s)[-(max_len + 1):] for s in train if len(s) >= 2]
        inputs, lengths = _windows([s[:-1] for s in kept], max_len)
        targets, _ = _windows([s[1:] for s in kept], max_len)
        return TrainingExamples(inputs, targets, lengths)
    histories, answers = [], []
    for seq in train:
        seq = np.asarray(seq)
        for end in range(1, len(seq)):
            histories.append(seq[max(0, end - max_len):end])
            answers.append(seq[end])
    inputs, lengths = _windows(histories, max_len)
    targets = np.zeros_like(inputs)
    targets[np.arange(len(lengths)), lengths - 1] = answers
    return TrainingExamples(inputs, targets, lengths)


def bucketed_batches(examples: TrainingExamples, batch_size: int, rng: np.random.Generator,
                     bucket: bool = True) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Shuffled batches, each cut to its own longest sequence.

    With ``bucket``, sorting by (length, random key) groups equal lengths in a fresh random
    order each epoch and the batch order is shuffled, so the optimiser never sees a length
    curriculum; without it, batches are plain random draws (and mostly padded to the maximum).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = rng.random(len(examples))
    order = np.lexsort((keys, examples.lengths)) if bucket else np.argsort(keys)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for pick in rng.permutation(len(chunks)):
        rows = chunks[pick]
        width = int(examples.lengths[rows].max())
        yield (torch.from_numpy(examples.inputs[rows, :width]),
               torch.from_numpy(examples.lengths[rows]),
               torch.from_numpy(examples.targets[rows, :width]))


def ranking_batches(data: RankingSet, batch_size: int) -> Iterator[tuple[np.ndarray, Tensor, Tensor, Tensor]]:
    """(row indices, inputs, lengths, targets) in length order, each batch cut to its longest history."""
    order = np.argsort(data.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(data.lengths[rows].max())
        yield (rows, torch.from_numpy(data.inputs[rows, :width]), torch.from_numpy(data.lengths[rows]),
               torch.from_numpy(data.targets[rows]))
