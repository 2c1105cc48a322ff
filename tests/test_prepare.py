"""The prepare stage on real and broken inputs, run through the real stage runner."""
import collections
import gzip
import json
import posixpath

import numpy as np
import pytest

from saerec.config import load_config
from saerec.data.inputs import check_inputs
from saerec.data.records import DataError
from saerec.pipeline import Runner, summarise
from saerec.stages import load_stage
from saerec.storage import Store
from tests.conftest import TINY_DEMO

# prepare reads only the data section; the rest of the tiny demo is not this file's concern
TINY_DATA = [o for o in TINY_DEMO if o.startswith("data.")]


def run_prepare(tmp_path, *overrides):
    cfg = load_config(None, [f"storage.uri={tmp_path / 'out'}", *overrides])
    store = Store(cfg.storage.uri)
    runner = Runner(cfg, store)
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


ALL_BEAUTY = ("amazon-2018-all-beauty", "All_Beauty_5.json.gz")


def _same_valid_and_test(inter):
    """Users whose valid and test rows are one interaction (same item at the same time)."""
    valid = inter[inter.split == "valid"].set_index("user")[["item", "timestamp"]]
    test = inter[inter.split == "test"].set_index("user")[["item", "timestamp"]].loc[valid.index]
    return int(((valid.item == test.item) & (valid.timestamp == test.timestamp)).sum())


def test_all_beauty_duplicates_are_dropped(tmp_path, data_dir):
    path = data_dir.joinpath(*ALL_BEAUTY)
    lines = [line for line in gzip.open(path, "rt") if line.strip()]
    records = [json.loads(line) for line in lines]
    keys = collections.Counter((r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in records)
    assert len(lines) - len(set(lines)) == 1027, "the file's exact repeated lines"
    # 1,027 repeated lines plus 81 records that repeat a (user, item, time) with an edited text or rating
    assert sum(n - 1 for n in keys.values()) == 1108

    runner, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.text=reviews",
                                   "data.k_core=1")
    m = manifest["metrics"]
    assert m["records_read"] == 5269 and m["duplicates_dropped"] == 1108
    # 8 users have fewer than the 3 interactions a split needs once their repeats go (12 interactions)
    assert m["users_dropped_short"] == 8 and m["interactions"] == 5269 - 1108 - 12
    assert m["users"] == 983 and m["items"] == 84
    assert "duplicates_dropped=1108" in summarise(m)
    out = outputs(runner, manifest)
    inter = out.read_table("interactions.parquet").to_pandas()
    assert not inter.duplicated(["user", "item", "timestamp"]).any()
    assert _same_valid_and_test(inter) == 0
    corpus = out.read_table("corpus").to_pandas()
    assert len(corpus) == m["corpus_reviews"] > 0
    assert corpus.text.str.strip().str.len().min() > 0
    assert not corpus.text.str.strip().duplicated().any(), "each distinct text once"
    assert m["corpus_repeats_dropped"] > 0


def test_all_beauty_duplicates_kept_on_request(tmp_path, data_dir):
    """data.duplicates=keep reproduces the file as it is, and with it the inflated evaluation."""
    path = data_dir.joinpath(*ALL_BEAUTY)
    runner, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.text=reviews",
                                   "data.k_core=1", "data.duplicates=keep")
    m = manifest["metrics"]
    assert (m["duplicates_dropped"], m["corpus_repeats_dropped"], m["interactions"]) == (0, 0, 5269)
    assert (m["users"], m["items"]) == (991, 85)
    assert _same_valid_and_test(outputs(runner, manifest).read_table("interactions.parquet").to_pandas()) == 384


def test_same_item_at_another_time_is_a_new_interaction(tmp_path):
    lines = [_review("u1", "i0", 10, "first time"), _review("u1", "i1", 20), _review("u1", "i0", 30, "again"),
             _review("u1", "i0", 30, "again"), _review("u1", "i2", 40)]
    lines += [_review(f"u{k}", f"i{j}", j, f"t{k}{j}") for k in range(2, 4) for j in range(3)]
    path = _write_gz(tmp_path / "reviews.json.gz", lines)
    runner, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1")
    assert manifest["metrics"]["duplicates_dropped"] == 1
    inter = outputs(runner, manifest).read_table("interactions.parquet").to_pandas()
    users = outputs(runner, manifest).read_table("users.parquet").to_pandas()
    u1 = int(users[users.raw_id == "u1"].user.iloc[0])
    assert inter[inter.user == u1].sort_values("position").timestamp.tolist() == [10, 20, 30, 40]


def test_split_never_leaks_valid_or_test_text(tmp_path):
    runner, manifest = run_prepare(tmp_path, *TINY_DATA)
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
    _, full = run_prepare(tmp_path / "a", *TINY_DATA)
    r1, dropped = run_prepare(tmp_path / "b", *TINY_DATA, "data.review_drop=0.3")
    r2, again = run_prepare(tmp_path / "c", *TINY_DATA, "data.review_drop=0.3")
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


# Records a loader must refuse by name (file:line), never with a traceback; line 4 of the file.
WRONG_TYPES = [
    ({"reviewerID": "u1", "asin": "i1", "unixReviewTime": 7, "reviewText": {"body": "nice"}},
     r"reviewText is a JSON object, expected a string"),
    ({"reviewerID": "u1", "asin": "i1", "unixReviewTime": 7, "summary": ["nice"]},
     r"summary is a JSON array, expected a string"),
    ({"reviewerID": "u1", "asin": "i1", "unixReviewTime": 7, "reviewText": 42}, r"reviewText is a JSON number"),
    ({"reviewerID": "u1", "asin": 123, "unixReviewTime": 7, "reviewText": "x"},
     r"asin 123 is a JSON number, expected a string"),
    ({"reviewerID": ["u1"], "asin": "i1", "unixReviewTime": 7}, r"reviewerID \['u1'\] is a JSON array"),
    ({"reviewerID": "u1", "asin": "i1", "unixReviewTime": "7"}, r"unixReviewTime '7' is a JSON string, expected an"),
    ({"reviewerID": "u1", "asin": "i1", "unixReviewTime": True}, r"unixReviewTime True is a JSON boolean"),
]


@pytest.mark.parametrize("record, message", WRONG_TYPES)
def test_fields_of_the_wrong_type_name_file_and_line(tmp_path, record, message):
    lines = _good_lines()
    path = _write_gz(tmp_path / "reviews.json.gz", lines[:3] + [json.dumps(record)] + lines[3:])
    with pytest.raises(DataError, match=r"reviews\.json\.gz:4: " + message + r".*data\.on_bad_record=skip"):
        run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1")
    _assert_nothing_published(tmp_path, Runner(load_config(None, [f"storage.uri={tmp_path / 'out'}"]),
                                               Store(str(tmp_path / "out"))))


def test_skip_mode_skips_every_kind_and_the_summary_says_where(tmp_path):
    lines = _good_lines()
    bad = ["{oops", json.dumps({"asin": "i1"})] + [json.dumps(r) for r, _ in WRONG_TYPES]
    path = _write_gz(tmp_path / "reviews.json.gz", lines[:3] + bad + lines[3:])
    _, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1",
                              "data.on_bad_record=skip")
    m = manifest["metrics"]
    assert m["bad_records_skipped"] == len(bad) and m["interactions"] == len(lines)
    assert m["bad_record_lines"] == {str(path): [4, 5, 6, 7, 8]}, "the first five, by file"
    assert m["bad_record_examples"][3].startswith(f"{path}:7: summary is a JSON array")
    line = summarise(m)
    assert f"bad_records_skipped={len(bad)}" in line
    assert f"first bad records skipped: {path} lines 4, 5, 6, 7, 8" in line


def test_lone_surrogate_is_replaced_and_counted(tmp_path):
    """A cut emoji ("\\ud83d" in the JSON) cannot be stored as UTF-8; the character becomes U+FFFD
    and the review is kept. In an id it is a bad record: an id must match exactly."""
    lines = _good_lines()
    broken = '{"reviewerID": "u1", "asin": "i2", "unixReviewTime": 9, "reviewText": "lovely \\ud83d scent"}'
    path = _write_gz(tmp_path / "reviews.json.gz", lines[:3] + [broken] + lines[3:])
    runner, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1")
    assert manifest["metrics"]["surrogates_replaced"] == 1
    assert manifest["metrics"]["interactions"] == len(lines) + 1
    assert "surrogates_replaced=1" in summarise(manifest["metrics"])
    texts = outputs(runner, manifest).read_table("corpus").column("text").to_pylist()
    assert "lovely \ufffd scent" in texts

    bad_id = '{"reviewerID": "u\\udc00", "asin": "i2", "unixReviewTime": 9}'
    path = _write_gz(tmp_path / "ids.json.gz", lines[:3] + [bad_id] + lines[3:])
    with pytest.raises(DataError, match=r"ids\.json\.gz:4: reviewerID .* holds a lone UTF-16 surrogate"):
        run_prepare(tmp_path / "ids", "data.source=amazon", f"data.path={path}", "data.k_core=1")


def test_metadata_of_the_wrong_type_is_a_bad_record(tmp_path):
    reviews = _write_gz(tmp_path / "reviews.json.gz", _good_lines())
    meta = _write_gz(tmp_path / "meta.json.gz", [
        json.dumps({"asin": "i0", "title": "red lipstick"}), json.dumps({"asin": 1, "title": "x"}),
        json.dumps({"asin": "i1", "title": {"en": "blue"}}), json.dumps({"asin": "i2", "description": ["soft", "warm"]})])
    with pytest.raises(DataError, match=r"meta\.json\.gz:2: metadata asin 1 is a JSON number"):
        run_prepare(tmp_path, "data.source=amazon", f"data.path={reviews}", f"data.meta_path={meta}", "data.k_core=1")
    runner, manifest = run_prepare(tmp_path / "skip", "data.source=amazon", f"data.path={reviews}",
                                   f"data.meta_path={meta}", "data.k_core=1", "data.on_bad_record=skip")
    assert manifest["metrics"]["bad_records_skipped"] == 2
    assert manifest["metrics"]["bad_record_lines"] == {str(meta): [2, 3]}
    items = outputs(runner, manifest).read_table("items.parquet").to_pandas().set_index("raw_id").text
    assert (items["i0"], items["i1"], items["i2"]) == ("red lipstick", "", "soft warm")


def _data(**keys):
    return load_config(None, [f"data.{k}={v}" for k, v in keys.items()]).data


def test_input_paths_of_the_wrong_kind_are_named(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    with pytest.raises(DataError, match=rf"data.path {folder} is a folder; data.source=amazon expects a file"):
        check_inputs(_data(source="amazon", path=folder))
    with pytest.raises(DataError, match=rf"data.path {tmp_path / 'nope.json.gz'}: no such file"):
        check_inputs(_data(source="amazon", path=tmp_path / "nope.json.gz"))
    reviews = _write_gz(tmp_path / "reviews.json.gz", _good_lines())
    with pytest.raises(DataError, match=rf"data.meta_path {folder} is a folder"):
        check_inputs(_data(source="amazon", path=reviews, meta_path=folder))
    with pytest.raises(DataError, match=rf"data.path {reviews} is a file; data.source=sequences expects a folder"):
        check_inputs(_data(source="sequences", path=reviews))
    (folder / "sequences.txt").write_text("1 1 2 1\n")
    with pytest.raises(DataError, match=rf"data.path {folder} has no items.tsv"):
        check_inputs(_data(source="sequences", path=folder))
    (folder / "sequences.txt").unlink()
    (folder / "items.tsv").write_text("item_id\tasin\ttext\n1\tA\tred\n")
    with pytest.raises(DataError, match=rf"data.path {folder} has no sequences.txt"):
        check_inputs(_data(source="sequences", path=folder))
    # the stage itself checks the same way (a Runner without the job's pre-flight)
    with pytest.raises(DataError, match="is a folder; data.source=amazon expects a file"):
        run_prepare(tmp_path, "data.source=amazon", f"data.path={folder}")


def test_unreadable_input_is_named(tmp_path):
    import os
    from pathlib import Path
    if os.geteuid() != 0:
        path = _write_gz(tmp_path / "reviews.json.gz", _good_lines())
        path.chmod(0)
    elif Path("/proc/self/mem").exists():
        path = Path("/proc/self/mem")  # a file even root cannot read from the start (EIO)
    else:
        pytest.skip("root reads any file here")
    with pytest.raises(DataError, match=rf"data.path {path} cannot be read"):
        check_inputs(_data(source="amazon", path=path))


@pytest.mark.parametrize("overrides, message", [
    (["data.text=reviews"], r"no training review in {reviews} has reviewText or summary; set data.meta_path"),
    (["data.text=items"], r"data.text=items needs data.meta_path"),
    (["data.text=both"], r"no training review in {reviews} has a text and there is no data.meta_path"),
])
def test_empty_corpus_names_the_file_and_the_key_to_try(tmp_path, overrides, message):
    reviews = _write_gz(tmp_path / "reviews.json.gz", [
        json.dumps({"reviewerID": f"u{u}", "asin": f"i{(u + j) % 4}", "unixReviewTime": j}) for u in range(5)
        for j in range(5)])
    with pytest.raises(DataError, match=r"the text corpus is empty .*" + message.format(reviews=reviews)):
        run_prepare(tmp_path, "data.source=amazon", f"data.path={reviews}", "data.k_core=1", *overrides)
