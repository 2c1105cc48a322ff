"""Category labels: the TSV reader, prepare publishing them by item id, and the demo's planted labels."""
from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from saerec import artifacts
from saerec.config import ConfigError, load_config
from saerec.data import demo
from saerec.data.categories import read_item_categories
from saerec.data.records import BadRecords, DataError
from saerec.pipeline import Runner, StageInput
from saerec.stages import load_stage
from saerec.storage import Store


# sha256 of the reviews and meta files of the spec below, written by the generator before it wrote labels
BEFORE_LABELS = "a73347470ca786f9daf78a98c9f12b2b3513009b8f00a25eca736687e02aacf8"


def _prepare(tmp_path, *overrides):
    cfg = load_config(None, [f"storage.uri={tmp_path / 'out'}", *overrides])
    runner = Runner(cfg, Store(cfg.storage.uri))
    manifest = runner.run_stage(load_stage("prepare"))
    return manifest, StageInput(runner.store, manifest)


def _sequences(folder, categories: str):
    folder.mkdir()
    (folder / "items.tsv").write_text("item_id\tasin\ttext\n1\tA\tred lipstick\n2\tB\tblue polish\n3\tC\tgel\n")
    (folder / "sequences.txt").write_text("1 1 2 3 1\n2 2 1 3 2\n")
    (folder / "cats.tsv").write_text(categories)


def test_reader_names_file_and_line_of_a_bad_record(tmp_path):
    path = tmp_path / "cats.tsv"
    path.write_text("item_id\tcategories\n1\tMakeup|Lips| |Lips\n2\n1\tEyes\n")
    with pytest.raises(DataError, match=r"cats\.tsv:3: expected 'item_id<TAB>categories'"):
        read_item_categories(path, BadRecords("error"))
    bad = BadRecords("skip")
    assert read_item_categories(path, bad) == {"1": ["Lips", "Makeup"]}
    assert bad.metrics()["repeated_item_skipped"] == 1
    path.write_text("item\tcats\n")
    with pytest.raises(DataError, match=r"cats\.tsv:1: expected the header"):
        read_item_categories(path, bad)


def test_prepare_publishes_labels_by_item_id_relative_to_the_data_folder(tmp_path):
    _sequences(tmp_path / "seq", "item_id\tcategories\n2\tNails|Nail Polish\n1\tLips\n9\tGone\n")
    manifest, out = _prepare(tmp_path, "data.source=sequences", f"data.path={tmp_path / 'seq'}", "data.k_core=1",
                             "data.item_categories=cats.tsv")
    items = dict(zip(*artifacts.read_table(out, artifacts.ITEMS, ["raw_id", "item"]).to_pydict().values()))
    labels = artifacts.read_item_categories(out)
    assert labels == {items["1"]: ["Lips"], items["2"]: ["Nail Polish", "Nails"]}, "item 3 unlabelled, 9 not kept"
    assert (manifest["metrics"]["items_with_categories"], manifest["metrics"]["category_names"]) == (2, 3)
    corpus = artifacts.dataset(out, artifacts.CORPUS).to_table().column("text").to_pylist()
    assert not any("Nail" in t or "Lips" in t for t in corpus), "labels are never model input"


def test_missing_label_file_is_named_before_any_work(tmp_path):
    _sequences(tmp_path / "seq", "")
    with pytest.raises(DataError, match=r"data\.item_categories .*nope\.tsv: no such file"):
        _prepare(tmp_path, "data.source=sequences", f"data.path={tmp_path / 'seq'}", "data.item_categories=nope.tsv")
    with pytest.raises(ConfigError, match="data.item_categories is for data.source=amazon or sequences"):
        load_config(None, ["data.item_categories=x.tsv"])


def test_demo_labels_each_item_with_its_planted_intents_without_changing_its_data(tmp_path):
    spec = demo.DemoSpec(users=40, items=30, intents=5, min_length=5, max_length=8, seed=4)
    files = demo.generate(spec, tmp_path / "demo")
    meta = [json.loads(line) for line in gzip.open(files["meta"], "rt")]
    labels = read_item_categories(files["item_categories"], BadRecords("error"))
    names = {i["name"] for i in demo.planted_intents(5)}
    assert set(labels) == {m["asin"] for m in meta}
    for m in meta:
        assert set(labels[m["asin"]]) <= names and m["description"].split(" for ")[1] in labels[m["asin"]]
    assert any(len(v) == 2 for v in labels.values()), "an item with a secondary intent carries both"
    data = gzip.open(files["reviews"]).read() + gzip.open(files["meta"]).read()
    assert hashlib.sha256(data).hexdigest() == BEFORE_LABELS, "the labels consume none of the demo's random draws"
