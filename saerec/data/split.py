"""The leave-one-out split: the one rule that prepare publishes and the recommender trains and tests by.

A user's last interaction is the test item, the one before it the valid item, the rest are training.
A user needs ``MIN_LENGTH`` interactions (one training item as history besides the two held out);
a shorter sequence is training only.
"""
from __future__ import annotations

import numpy as np

MIN_LENGTH = 3


def split_labels(lengths: np.ndarray) -> np.ndarray:
    """The split ("train", "valid" or "test") of every interaction of users with these sequence
    ``lengths``, each user's interactions in chronological order, the users one after another."""
    lengths = np.asarray(lengths, dtype=np.int64)
    from_end = np.repeat(lengths, lengths) - (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    held_out = np.repeat(lengths >= MIN_LENGTH, lengths)
    return np.where(held_out & (from_end == 1), "test", np.where(held_out & (from_end == 2), "valid", "train"))
