"""The prepare stage on real and broken inputs, run through the real stage runner."""
import gzip
import json
import posixpath

import numpy as np
import pytest

from saerec.config import load_config
from saerec.data.records import DataError
from saerec.pipeline import Runner
from saerec.stages import load_stage
from saerec.storage import Store
from tests.conftest import TINY_DEMO


def run_prepare(tmp_path, *overrides):
    cfg = load_config(None, [f"storage.uri={tmp_path / 'out'}", *overrides])
    store = Store(cfg.storage.uri)
    runner = Runner(cfg, store, log=lambda _: None)
    return runner, runner.run_stage(load_stage("prepare"))


def outputs(runner, manifest):
    from saerec.pipeline import StageInput
    return StageInput(runner.store, manifest)


def test_beauty_counts(tmp_path, data_dir):
    runner, manifest = run_prepare(tmp_path, "data.source=sequences", f"data.path={data_dir / 'beauty'}",
                                   "data.text=items")
    m = manifest["metrics"]
    assert (m["users"], m["items"], m["interactions"]) == (22363, 12101, 198502)
    assert m["corpus_items"] + m["corpus_empty_skipped"] == 12101 and m["corpus_reviews"] == 0
    assert m["corpus_empty_skipped"] == 1  # item 10205 has no text in items.tsv
    out = outputs(runner, manifest)
    inter = out.read_table("interactions.parquet").to_pandas()
    assert inter.groupby("user").size().min() >= 5
    assert (inter[inter.split == "test"].groupby("user").size() == 1).all()


def test_all_beauty_reviews_load_with_missing_texts(tmp_path, data_dir):
    path = data_dir / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz"
    runner, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.text=reviews",
                                   "data.k_core=1")
    m = manifest["metrics"]
    assert m["records_read"] == 5269
    assert m["users"] == 991 and m["items"] == 85
    corpus = outputs(runner, manifest).read_table("corpus").to_pandas()
    assert len(corpus) == m["corpus_reviews"] > 0
    assert corpus.text.str.strip().str.len().min() > 0


def test_split_never_leaks_valid_or_test_text(tmp_path):
    runner, manifest = run_prepare(tmp_path, *TINY_DEMO)
    out = outputs(runner, manifest)
    inter = out.read_table("interactions.parquet").to_pandas()
    corpus = out.read_table("corpus").to_pandas()
    reviews = corpus[corpus.kind == "review"]
    held_out = set(map(tuple, inter[inter.split != "train"][["user", "item"]].values))
    train = set(map(tuple, inter[inter.split == "train"][["user", "item"]].values))
    pairs = set(map(tuple, reviews[["user", "item"]].astype(int).values))
    assert pairs and pairs <= train
    assert not (pairs & (held_out - train))
    last = inter.groupby("user").position.transform("max")
    assert (inter.split[inter.position == last] == "test").all()
    assert (inter.split[inter.position == last - 1] == "valid").all()
    planted = out.read_json("planted_intents.json")
    assert len(planted) == 6 and all(len(p["words"]) >= 10 for p in planted)


def test_review_drop_is_reproducible(tmp_path):
    _, full = run_prepare(tmp_path / "a", *TINY_DEMO)
    r1, dropped = run_prepare(tmp_path / "b", *TINY_DEMO, "data.review_drop=0.3")
    r2, again = run_prepare(tmp_path / "c", *TINY_DEMO, "data.review_drop=0.3")
    n_full = full["metrics"]["corpus_reviews"] + full["metrics"]["corpus_items"]
    n_drop = dropped["metrics"]["corpus_reviews"] + dropped["metrics"]["corpus_items"]
    assert 0.6 * n_full < n_drop < 0.8 * n_full
    a = outputs(r1, dropped).read_table("corpus").column("text").to_pylist()
    b = outputs(r2, again).read_table("corpus").column("text").to_pylist()
    assert a == b


def _review(user, asin, t, text="fine"):
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t, "reviewText": text})


def _good_lines():
    return [_review(f"u{u}", f"i{(u + j) % 4}", 100 * j, f"text {u} {j}") for u in range(5) for j in range(5)]


def _write_gz(path, lines):
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _assert_nothing_published(tmp_path, runner):
    stage_dir = runner.stage_dir("prepare")
    assert runner.manifest("prepare") is None
    assert not runner.store.list_files(stage_dir)


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: lines[:3] + ["{not json"] + lines[3:], r"reviews\.json\.gz:4: malformed JSON"),
    (lambda lines: lines[:7] + [json.dumps({"reviewerID": "u1", "unixReviewTime": 5})] + lines[7:],
     r"reviews\.json\.gz:8: record is missing asin"),
    (lambda lines: [], r"no usable review records"),
])
def test_bad_review_files_name_file_and_line(tmp_path, mutate, message):
    path = _write_gz(tmp_path / "reviews.json.gz", mutate(_good_lines()))
    with pytest.raises(DataError, match=message):
        runner, _ = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1")
    runner = Runner(load_config(None, [f"storage.uri={tmp_path / 'out'}"]), Store(str(tmp_path / "out")))
    _assert_nothing_published(tmp_path, runner)


def test_skip_policy_counts_bad_records(tmp_path):
    lines = _good_lines()
    path = _write_gz(tmp_path / "reviews.json.gz", lines[:3] + ["{oops", json.dumps({"asin": "i1"})] + lines[3:])
    _, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1",
                              "data.on_bad_record=skip")
    assert manifest["metrics"]["bad_records_skipped"] == 2
    assert manifest["metrics"]["interactions"] == len(lines)


def test_truncated_gzip_is_reported(tmp_path):
    whole = _write_gz(tmp_path / "whole.json.gz", _good_lines() * 50)
    cut = tmp_path / "reviews.json.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=r"reviews\.json\.gz: unreadable after line \d+ \(truncated"):
        run_prepare(tmp_path, "data.source=amazon", f"data.path={cut}", "data.k_core=1")


def test_unknown_item_in_sequences_is_reported(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    (folder / "items.tsv").write_text("item_id\tasin\ttext\n1\tA\tred lipstick\n2\tB\tblue polish\n")
    (folder / "sequences.txt").write_text("1 1 2 1 2\n2 2 1 7 1\n")
    with pytest.raises(DataError, match=r"sequences\.txt:2: unknown item id 7"):
        run_prepare(tmp_path, "data.source=sequences", f"data.path={folder}", "data.k_core=1")


def test_empty_sequences_file_is_reported(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    (folder / "items.tsv").write_text("item_id\tasin\ttext\n1\tA\tred lipstick\n")
    (folder / "sequences.txt").write_text("")
    with pytest.raises(DataError, match=r"sequences\.txt: no interactions"):
        run_prepare(tmp_path, "data.source=sequences", f"data.path={folder}")


def test_chronological_order_follows_timestamps(tmp_path):
    lines = [_review("u1", f"i{j}", t) for j, t in enumerate([50, 10, 30, 20, 40])]
    lines += [_review(f"u{k}", f"i{j}", 1) for k in range(2, 4) for j in range(5)]
    path = _write_gz(tmp_path / "reviews.json.gz", lines)
    runner, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1")
    inter = outputs(runner, manifest).read_table("interactions.parquet").to_pandas()
    users = outputs(runner, manifest).read_table("users.parquet").to_pandas()
    u1 = int(users[users.raw_id == "u1"].user.iloc[0])
    seq = inter[inter.user == u1].sort_values("position")
    assert np.all(np.diff(seq.timestamp.values) > 0)
    assert posixpath.basename(manifest["output_dir"]).startswith("attempt-")
