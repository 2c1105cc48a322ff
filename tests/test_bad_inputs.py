"""The loaders on real broken files (written here), called directly: each bad record is named by its
file and exact line, or skipped and counted under ``data.on_bad_record=skip``; giant texts are cut;
the scratch folders of killed runs are removed."""
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from saerec.data import amazon, lines, sequences
from saerec.data.dataset import SCRATCH_PREFIX, remove_stale_scratch, workdir
from saerec.data.records import LATEST_TIME, BadRecords, DataError
from saerec.pipeline import summarise
from tests.test_prepare import outputs, run_prepare

MAX = lines.MAX_TEXT_CHARS
ITEMS = "item_id\tasin\ttext\n1\tA\tred lipstick\n2\tB\tblue polish\n3\tC\tgreen soap\n"


def _seq_folder(tmp_path, sequences_text, items_text=ITEMS):
    folder = tmp_path / "seq"
    folder.mkdir(exist_ok=True)
    (folder / "items.tsv").write_bytes(items_text.encode() if isinstance(items_text, str) else items_text)
    (folder / "sequences.txt").write_bytes(
        sequences_text.encode() if isinstance(sequences_text, str) else sequences_text)
    return folder


def _interactions(folder, policy="error", items=None):
    bad = BadRecords(policy)
    items = items or sequences.read_items_tsv(folder / "items.tsv", bad)
    return list(sequences.read_interactions(folder / "sequences.txt", items, bad)), bad


def _review(user, asin, t, text="fine"):
    return json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": t, "reviewText": text})


def _reviews_gz(path, records):
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(r.encode() if isinstance(r, str) else r for r in records) + b"\n")
    return path


def _good_reviews(n=25):
    return [_review(f"u{k % 5}", f"i{k % 4}", 100 * k, f"text {k}") for k in range(n)]


# 6. a user listed twice would merge two sequences and leak valid/test items into training


def test_repeated_user_in_sequences_names_both_lines(tmp_path):
    folder = _seq_folder(tmp_path, "1 1 2 3\n2 2 3 1\n1 3 2 1\n")
    with pytest.raises(DataError, match=r"sequences\.txt:3: user 1 is listed again \(first on line 1\); one line "
                                        r"per user \(set data.on_bad_record=skip"):
        _interactions(folder)


def test_repeated_user_is_skipped_and_counted(tmp_path):
    folder = _seq_folder(tmp_path, "1 1 2 3\n2 2 3 1\n1 3 2 1\n")
    records, bad = _interactions(folder, "skip")
    assert [(r.user, r.item) for r in records if r.user == "1"] == [("1", "1"), ("1", "2"), ("1", "3")]
    m = bad.metrics()
    assert (m["bad_records_skipped"], m["repeated_user_skipped"]) == (1, 1)
    assert m["bad_record_lines"] == {str(folder / "sequences.txt"): [3]}


# 7. a TAB inside an items.tsv text used to drop everything after it


def test_tab_in_item_text_is_named(tmp_path):
    items = ITEMS.replace("2\tB\tblue polish", "2\tB\tblue\tpolish, 10 ml")
    folder = _seq_folder(tmp_path, "1 1 2 3\n", items)
    with pytest.raises(DataError, match=r"items\.tsv:3: the text of item 2 holds a TAB \(column 4 of 4\)"):
        sequences.read_items_tsv(folder / "items.tsv", BadRecords("error"))


def test_tab_in_item_text_skipped_keeps_the_item_without_text(tmp_path):
    items = ITEMS.replace("2\tB\tblue polish", "2\tB\tblue\tpolish, 10 ml")
    folder = _seq_folder(tmp_path, "1 1 2 3\n")
    (folder / "items.tsv").write_text(items)
    bad = BadRecords("skip")
    texts = sequences.read_items_tsv(folder / "items.tsv", bad)
    assert texts == {"1": "red lipstick", "2": "", "3": "green soap"}
    assert bad.metrics()["tab_in_text_skipped"] == 1
    records, _ = _interactions(folder, "skip", texts)
    assert [r.item for r in records] == ["1", "2", "3"], "the sequences that use the item still count"


# 8. and 14. timestamps: 1970 up to 2100-01-01 UTC, in seconds; anything else is a bad record


@pytest.mark.parametrize("stamp, message", [
    (-5, r"unixReviewTime -5 is before 1970 \(accepted: 0 to 4102444799, seconds before 2100-01-01 UTC\)"),
    (32503680000, r"unixReviewTime 32503680000 is after 2100-01-01 UTC .*a time in milliseconds\?"),  # year 3000
    (LATEST_TIME, r"unixReviewTime 4102444800 is after 2100-01-01 UTC"),
    (10 ** 20, r"unixReviewTime 100000000000000000000 is after 2100-01-01"),  # beyond int64
    (-(10 ** 40), r"unixReviewTime -10000000000000000000\.\.\. \(41 digits\) is before 1970"),
])
def test_times_out_of_range_name_file_and_line(tmp_path, stamp, message):
    records = _good_reviews()
    path = _reviews_gz(tmp_path / "reviews.json.gz", records[:3] + [_review("u1", "i2", stamp)] + records[3:])
    with pytest.raises(DataError, match=r"reviews\.json\.gz:4: " + message):
        list(amazon.read_reviews(path, BadRecords("error")))


def test_times_out_of_range_are_skipped_counted_and_shown(tmp_path):
    records = _good_reviews()
    future = _review("u1", "i3", 32503680000, "from the year 3000")
    oldest, latest = _review("u2", "i3", 0), _review("u3", "i3", LATEST_TIME - 1)
    path = _reviews_gz(tmp_path / "reviews.json.gz",
                       records[:3] + [_review("u1", "i2", -5), future, _review("u1", "i2", 10 ** 20), oldest, latest]
                       + records[3:])
    runner, manifest = run_prepare(tmp_path, "data.source=amazon", f"data.path={path}", "data.k_core=1",
                                   "data.on_bad_record=skip")
    m = manifest["metrics"]
    assert (m["bad_records_skipped"], m["bad_time_skipped"]) == (3, 3)
    assert m["bad_record_lines"] == {str(path): [4, 5, 6]}
    assert m["records_read"] == len(records) + 2, "times 0 and 2099-12-31 23:59:59 are accepted"
    assert "bad_time_skipped=3" in summarise(m)
    inter = outputs(runner, manifest).read_table("interactions.parquet").to_pandas()
    assert inter.timestamp.notna().all() and inter.timestamp.max() == LATEST_TIME - 1
    texts = outputs(runner, manifest).read_table("corpus").column("text").to_pylist()
    assert "from the year 3000" not in texts


def test_number_too_long_to_parse_is_a_bad_record(tmp_path):
    records = _good_reviews()
    huge = '{"reviewerID": "u1", "asin": "i2", "unixReviewTime": ' + "9" * 5000 + "}"
    path = _reviews_gz(tmp_path / "reviews.json.gz", records[:3] + [huge] + records[3:])
    with pytest.raises(DataError, match=r"reviews\.json\.gz:4: malformed JSON \(Exceeds the limit"):
        list(amazon.read_reviews(path, BadRecords("error")))


@pytest.mark.parametrize("sequences_text, items_text, message", [
    ("1 1 2 3\n7² 1 2 3\n", ITEMS, r"sequences\.txt:2: non-integer id in '7² 1 2 3'"),
    ("1 1 2 3\n", ITEMS + "4²\tD\tsoap\n", r"items\.tsv:5: expected 'item_id<TAB>asin<TAB>text', got '4²\\tD\\tsoap'"),
])
def test_ids_that_are_not_ascii_digits_name_file_and_line(tmp_path, sequences_text, items_text, message):
    folder = _seq_folder(tmp_path, sequences_text, items_text)
    with pytest.raises(DataError, match=message):
        _interactions(folder)
    records, bad = _interactions(folder, "skip")
    assert bad.skipped == 1 and {r.user for r in records} == {"1"}


# 15. invalid UTF-8: the exact line; skip mode skips that line only


def test_bad_byte_in_sequences_names_its_exact_line(tmp_path):
    rows = [f"{u} 1 2 3".encode() for u in range(1, 3001)]
    rows[2499] = b"2500 1 2 \xff3"
    folder = _seq_folder(tmp_path, b"\n".join(rows) + b"\n")
    with pytest.raises(DataError, match=r"sequences\.txt:2500: not UTF-8 text \(byte 0xff at byte 10 of the line"):
        _interactions(folder)
    records, bad = _interactions(folder, "skip")
    assert len({r.user for r in records}) == 2999 and "2500" not in {r.user for r in records}
    assert bad.metrics()["not_utf8_skipped"] == 1


def test_bad_byte_in_items_tsv_names_its_line(tmp_path):
    items = ITEMS.encode().replace(b"green soap", b"green \xe9 soap")
    folder = _seq_folder(tmp_path, "1 1 2\n", items)
    with pytest.raises(DataError, match=r"items\.tsv:4: not UTF-8 text \(byte 0xe9 at byte 11 of the line"):
        sequences.read_items_tsv(folder / "items.tsv", BadRecords("error"))
    bad = BadRecords("skip")
    texts = sequences.read_items_tsv(folder / "items.tsv", bad)
    assert texts == {"1": "red lipstick", "2": "blue polish", "3": ""}, "the item stays, so its sequences count"
    assert bad.lines == {str(folder / "items.tsv"): [4]}
    assert bad.examples[0].endswith("in the text of item 3; skipping it keeps item 3 without a text")
    (folder / "items.tsv").write_bytes(items.replace(b"3\tC", b"\xe93\tC"))  # in the id: the line goes
    bad = BadRecords("skip")
    assert sequences.read_items_tsv(folder / "items.tsv", bad) == {"1": "red lipstick", "2": "blue polish"}
    assert bad.kinds == {"not_utf8": 1}


def test_bad_byte_in_reviews_is_a_bad_record_not_a_corrupt_file(tmp_path):
    records = [r.encode() for r in _good_reviews(3000)]
    records[2499] = _review("u1", "i2", 7, "caf\x00").encode().replace(b"\\u0000", b"\xc3")
    path = _reviews_gz(tmp_path / "reviews.json.gz", records)
    with pytest.raises(DataError, match=r"reviews\.json\.gz:2500: not UTF-8 text \(byte 0xc3") as caught:
        list(amazon.read_reviews(path, BadRecords("error")))
    assert "corrupt" not in str(caught.value)
    bad = BadRecords("skip")
    assert len(list(amazon.read_reviews(path, bad))) == 2999
    assert (bad.skipped, bad.lines) == (1, {str(path): [2500]})


# 18. texts are cut to MAX_TEXT_CHARS, counted; a giant line is never held whole


def test_long_texts_are_cut_and_counted(tmp_path):
    records = _good_reviews()
    just_fits, too_long = "a" * MAX, "é" * (MAX + 1)
    path = _reviews_gz(tmp_path / "reviews.json.gz",
                       records[:3] + [_review("u1", "i2", 5, just_fits), _review("u2", "i2", 5, too_long)] + records[3:])
    bad = BadRecords("error")
    texts = {(r.user, r.timestamp): r.review for r in amazon.read_reviews(path, bad)}
    assert texts[("u1", 5)] == just_fits and texts[("u2", 5)] == "é" * MAX
    assert bad.metrics()["texts_truncated"] == 1 and bad.skipped == 0
    many = {f"k{i}": i for i in range(20)}
    assert "texts_truncated=1" in summarise({**many, **bad.metrics()}), "shown however many metrics come first"


def test_giant_review_line_is_cut_in_chunks_with_its_ids_after_the_text(tmp_path):
    """A review of 3 MiB (longer than a read chunk), escapes and all, with the ids after the text."""
    text = ('say "hi" \\ \u00e9\U0001F600 ' * 200_000)[: 3 * lines.CHUNK]
    record = json.dumps({"reviewText": text, "summary": "short", "reviewerID": "u9", "asin": "i1",
                         "unixReviewTime": 5})
    for ascii_only in (True, False):
        path = _reviews_gz(tmp_path / f"giant{ascii_only}.json.gz",
                           _good_reviews() + [json.dumps(json.loads(record), ensure_ascii=ascii_only)])
        bad = BadRecords("error")
        giant = [r for r in amazon.read_reviews(path, bad) if r.user == "u9"]
        assert [(r.item, r.timestamp, r.review) for r in giant] == [("i1", 5, text[:MAX])]
        assert bad.texts_truncated == 1


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_cut_long_strings_is_the_same_for_any_chunking(size):
    line = json.dumps({"a": 'x\\"y' * 10 + "\u00e9\U0001F600" * 5, "b": "short", "c": "\\" * 30}).encode()
    expected = json.loads(line)
    whole = lines.cut_long_strings([line], 20)
    assert lines.cut_long_strings([line[i:i + size] for i in range(0, len(line), size)], 20) == whole
    cut = json.loads(whole)
    assert cut["b"] == "short" and all(expected[k].startswith(cut[k]) for k in "ac")
    assert len(cut["a"]) < len(expected["a"]) and cut["c"] == "\\" * 10


def test_giant_item_text_is_cut_and_a_late_tab_still_found(tmp_path):
    long_text = "soft " * (lines.CHUNK // 2)
    items = ITEMS + f"4\tD\t{long_text}\n5\tE\t{long_text[:lines.CHUNK + 10]}\t{long_text}\n6\tF\tlast\n"
    folder = _seq_folder(tmp_path, "1 1 2\n", items)
    with pytest.raises(DataError, match=r"items\.tsv:6: the text of item 5 holds a TAB"):
        sequences.read_items_tsv(folder / "items.tsv", BadRecords("error"))
    bad = BadRecords("skip")
    texts = sequences.read_items_tsv(folder / "items.tsv", bad)
    assert texts["4"] == long_text.strip()[:MAX] and texts["5"] == "" and texts["6"] == "last"
    assert (bad.skipped, bad.texts_truncated, bad.kinds) == (1, 1, {"tab_in_text": 1})
    assert bad.lines == {str(folder / "items.tsv"): [6]}


# The sequences source through the stage: every kind above counted and shown on one line


def test_sequences_skip_mode_counts_each_kind_in_the_summary(tmp_path):
    items = ITEMS.replace("2\tB\tblue polish", "2\tB\tblue\tpolish") + "4\tD\t" + "x" * (MAX + 5) + "\n"
    rows = [f"{u} 1 2 3 4 1 2".encode() for u in range(1, 9)] + [b"3 1 2 3", b"9 1 2 \xff", b"1\xc2\xb2 1 2 3"]
    folder = _seq_folder(tmp_path, b"\n".join(rows) + b"\n", items)
    _, manifest = run_prepare(tmp_path, "data.source=sequences", f"data.path={folder}", "data.text=items",
                              "data.k_core=1", "data.on_bad_record=skip")
    m = manifest["metrics"]
    assert (m["users"], m["bad_records_skipped"]) == (8, 4)
    line = summarise(m)
    for shown in ("bad_records_skipped=4", "repeated_user_skipped=1", "tab_in_text_skipped=1", "not_utf8_skipped=1",
                  "texts_truncated=1", f"first bad records skipped: {folder / 'items.tsv'} line 3; "
                  f"{folder / 'sequences.txt'} lines 9, 10, 11"):
        assert shown in line


# 13. scratch folders of killed runs


_HOLD = """
import sys, time
from saerec.data.dataset import workdir
with workdir() as folder:
    print(folder, flush=True)
    time.sleep(600)
"""


def _holder(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD], stdout=subprocess.PIPE, text=True, env=env)
    return proc, Path(proc.stdout.readline().strip())


def test_scratch_of_a_killed_run_is_removed_and_a_running_ones_kept(tmp_path, monkeypatch):
    killed, killed_dir = _holder(tmp_path)
    running, running_dir = _holder(tmp_path)
    try:
        (killed_dir / "reviews.parquet").write_bytes(b"spool")
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_dir.is_dir(), "kill -9 leaves it behind"
        other = tmp_path / (SCRATCH_PREFIX + "no-lock")  # not made by a job of this kind: left alone
        other.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        with workdir() as mine:
            assert mine.parent == tmp_path and mine.is_dir()
            assert not killed_dir.exists()
            assert running_dir.is_dir() and other.is_dir()
            assert remove_stale_scratch(tmp_path) == [], "a live folder, its own included, is never removed"
        assert not mine.exists()
    finally:
        running.kill()
        running.wait()
    assert remove_stale_scratch(tmp_path) == [running_dir]
