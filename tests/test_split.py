"""One split: prepare publishes it, the reader checks it and the recommender trains by it, all from
``saerec.data.split``."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from saerec import artifacts, schemas
from saerec.data.split import split_labels
from saerec.pipeline import StageError, StageFiles
from saerec.rec.batching import leave_one_out
from saerec.storage import Store
from tests.rec_toy import unique_sequences


def test_the_last_item_is_test_the_one_before_valid_and_short_users_only_train():
    assert split_labels(np.array([4, 2, 3])).tolist() == ["train", "train", "valid", "test", "train", "train",
                                                          "train", "valid", "test"]


@pytest.mark.parametrize("protocol", ["strict", "paper"])
def test_leave_one_out_holds_out_the_items_the_published_split_labels(protocol):
    seqs = unique_sequences([2, 3, 5, 1, 7])
    data = leave_one_out(seqs, n_items=18, max_len=10, protocol=protocol)
    labels = np.split(split_labels(np.array([len(s) for s in seqs])), np.cumsum([len(s) for s in seqs])[:-1])
    labelled = [(np.array(s), np.array(label)) for s, label in zip(seqs, labels)]
    assert data.test.targets.tolist() == [s[label == "test"][0] for s, label in labelled if "test" in label]
    assert data.valid.targets.tolist() == [s[label == ("test" if protocol == "paper" else "valid")][0]
                                           for s, label in labelled if "test" in label]
    kept = ("train", "valid") if protocol == "paper" else ("train",)
    assert [t.tolist() for t in data.train] == [
        (s[np.isin(label, kept)] if "test" in label else s).tolist() for s, label in labelled]


def _prepared(tmp_path, splits: list[str]) -> StageFiles:
    store = Store(str(tmp_path))
    files = StageFiles(store, store.join("prepare"))
    n = len(splits)
    files.write_table(artifacts.INTERACTIONS.name, pa.table({
        "user": pa.array([1] * n, pa.int32()), "item": pa.array(range(1, n + 1), pa.int32()),
        "position": pa.array(range(n), pa.int32()), "timestamp": pa.array([None] * n, pa.int64()),
        "split": pa.array(splits, pa.string())}, schema=schemas.INTERACTIONS))
    files.write_table(artifacts.ITEMS.name, pa.table({
        "item": pa.array(range(1, n + 1), pa.int32()), "raw_id": [str(i) for i in range(n)], "text": [""] * n},
        schema=schemas.ITEMS))
    return files


def test_reading_checks_the_published_split_against_the_rule(tmp_path):
    good = artifacts.read_sequences(_prepared(tmp_path / "good", ["train", "train", "valid", "test"]))
    assert good.sequences[0].tolist() == [1, 2, 3, 4]
    with pytest.raises(StageError, match=r"splits user 1 as \['train', 'valid', 'train', 'test'\]; expected valid = "
                                         "second-to-last"):
        artifacts.read_sequences(_prepared(tmp_path / "bad", ["train", "valid", "train", "test"]))
