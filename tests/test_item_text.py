"""Item texts from metadata through ``data.text_template``: the template's rules, the sequences
source's metadata file (and its bad records), the amazon source's metadata, and the config checks."""
import gzip
import json

import pytest

from saerec.config import ConfigError, load_config
from saerec.data import amazon, sequences, template
from saerec.data.inputs import check_inputs
from saerec.data.records import BadRecords, DataError
from tests.conftest import REPO
from tests.test_prepare import outputs, run_prepare

ITEMS = "item_id\tasin\ttext\n1\tA1\tred lipstick\n2\tA2\tblue polish\n3\tA3\tgreen soap\n4\tA4\tpink brush\n"
HEADER = "item_id\tasin\ttitle\tbrand\n"
META = (HEADER + "1\tA1\tOPI Nail Lacquer, Red\tOPI\n2\tA2\tBlue Polish 0.5 oz.\tEssie\n"
        "3\tA3\t\tDove\n")  # item 3 has no title; item 4 is not listed
SEQUENCES = "1 1 2 3 4\n2 2 3 4 1\n3 3 4 1 2\n"


def _render(text_template, **values):
    return template.render(template.parse(text_template, template.FIELDS["amazon"]), values)


def _folder(tmp_path, meta=META):
    folder = tmp_path / "seq"
    folder.mkdir(exist_ok=True)
    (folder / "items.tsv").write_text(ITEMS)
    (folder / "sequences.txt").write_text(SEQUENCES)
    (folder / "item_meta.tsv").write_bytes(meta if isinstance(meta, bytes) else meta.encode())
    return folder


def _texts(folder, text_template=template.TITLE_BRAND, policy="error"):
    bad = BadRecords(policy)
    return sequences.item_texts(folder, folder / "item_meta.tsv", text_template, bad), bad


def test_template_missing_fields_render_as_nothing_and_optional_parts_drop():
    title_brand = template.TITLE_BRAND
    assert _render(title_brand, title="Blue Polish 0.5 oz.", brand="Essie") == "Blue Polish 0.5 oz.. Brand: Essie"
    assert _render(title_brand, title="OPI Nail Lacquer", brand="opi") == "OPI Nail Lacquer"  # already in the title
    assert _render(title_brand, title="Glycol Renewal Mask", brand="REN") == "Glycol Renewal Mask. Brand: REN"
    assert _render(title_brand, title="Skin Cream", brand="") == "Skin Cream"
    assert _render(title_brand, title="", brand="Dove") == "Brand: Dove"  # no '. ' left before it
    assert _render(title_brand) == ""
    assert _render("{title} - {brand}", title="Soap") == "Soap"  # template separators at the ends go
    assert _render("Product: {title}[ ({description})]", title="Soap", description="") == "Product: Soap"
    assert _render("{title}[, {brand}, {description}]", title="Soap", brand="", description="mild") == "Soap, , mild"
    assert _render("{text}", text="  nail lacquer simmer  ") == "nail lacquer simmer"


@pytest.mark.parametrize("text_template, problem", [
    ("{titel}", r"unknown field \{titel\}; allowed: \{text\}, \{asin\}, \{title\}, \{brand\}$"),
    ("{title}[ by ]", r"the optional part \[ by \] holds no field"),
    ("{title}[. {brand}", r"an optional part \[ is not closed"),
    ("{title}[[{brand}]]", r"optional parts \[\.\.\.\] cannot be nested"),
    ("{title} }", r"a lone \}"),
    ("just words", r"it names no field"),
])
def test_a_bad_template_is_a_config_error_naming_the_key(tmp_path, text_template, problem):
    with pytest.raises(ConfigError, match=r"data.text_template .*: " + problem):
        load_config(None, ["data.source=sequences", f"data.path={tmp_path}", "data.item_meta=item_meta.tsv",
                           f"data.text_template={json.dumps(text_template)}"])


def test_template_fields_need_their_metadata():
    with pytest.raises(ConfigError, match=r"data.text_template '\{title\}' uses \{title\}, which data.source=sequences "
                                          r"reads from data.item_meta"):
        load_config(None, ["data.source=sequences", "data.path=/d", 'data.text_template="{title}"'])
    with pytest.raises(ConfigError, match=r"needs data.meta_path .* for data.source=amazon"):
        load_config(None, ["data.source=amazon", "data.path=/r.json.gz", 'data.text_template="{title}"'])
    with pytest.raises(ConfigError, match=r"data.item_meta is read by data.source=sequences only; data.source=amazon "
                                          r"takes titles and brands from data.meta_path"):
        load_config(None, ["data.source=amazon", "data.path=/r.json.gz", "data.item_meta=/m.tsv"])
    with pytest.raises(ConfigError, match=r"unknown field \{description\}; allowed: \{text\}, \{asin\}, \{title\}"):
        load_config(None, ["data.source=sequences", "data.path=/d", "data.item_meta=m.tsv",
                           'data.text_template="{description}"'])
    cfg = load_config(None, ["data.source=amazon", "data.path=/r.json.gz", "data.meta_path=/m.json.gz",
                             'data.text_template="{title}[. Brand: {brand}][ {description}]"']).data
    assert cfg.text_template == "{title}[. Brand: {brand}][ {description}]"


def test_sequences_metadata_through_the_template(tmp_path):
    folder = _folder(tmp_path)
    texts, bad = _texts(folder)
    assert texts == {"1": "OPI Nail Lacquer, Red", "2": "Blue Polish 0.5 oz.. Brand: Essie", "3": "Brand: Dove",
                     "4": ""}  # item 4 has no metadata: its fields are empty
    assert bad.skipped == 0
    texts, _ = _texts(folder, "{title}[ ({text})]")
    assert texts["3"] == "(green soap)" and texts["4"] == "(pink brush)"
    texts, _ = _texts(folder, "{text}")
    assert texts == sequences.read_items_tsv(folder / "items.tsv")


@pytest.mark.parametrize("row, message, kind", [
    ("2\tA2\tBlue\tPolish\tEssie\n", r"item_meta\.tsv:3: item 2 has 5 columns, expected 4 \(item_id asin title brand\) "
                                     r"\(a TAB inside its title or brand\?\); skipping it keeps item 2 "
                                     r"without metadata",
     "tab_in_text"),
    ("2\tA2\tBlue Polish\n", r"item_meta\.tsv:3: item 2 has 3 columns, expected 4", None),
    ("9\tA9\tGhost\tNone\n", r"item_meta\.tsv:3: unknown item id 9 \(not in items\.tsv\)", None),
    ("1\tA1\tOther title\tX\n", r"item_meta\.tsv:3: item 1 is listed again \(first on line 2\); skipping it keeps "
                                r"the first", "repeated_item"),
    ("x\tA2\tBlue\tEssie\n", r"item_meta\.tsv:3: expected 'item_id<TAB>asin<TAB>title<TAB>brand'", None),
])
def test_bad_metadata_records_are_named_or_skipped(tmp_path, row, message, kind):
    folder = _folder(tmp_path, HEADER + "1\tA1\tOPI Nail Lacquer, Red\tOPI\n" + row + "3\tA3\tDove Soap\tDove\n")
    with pytest.raises(DataError, match=message + r".*\(set data.on_bad_record=skip"):
        _texts(folder)
    texts, bad = _texts(folder, policy="skip")
    assert bad.skipped == 1 and bad.lines == {str(folder / "item_meta.tsv"): [3]}
    assert bad.metrics().get(f"{kind}_skipped", 0) == (1 if kind else 0)
    assert texts["1"] == "OPI Nail Lacquer, Red" and texts["3"] == "Dove Soap"  # the lines around it are read


def test_metadata_not_utf8_and_bad_header(tmp_path):
    folder = _folder(tmp_path, HEADER.encode() + b"1\tA1\tCr\xe8me\tOPI\n2\tA2\tBlue Polish\tEssie\n")
    with pytest.raises(DataError, match=r"item_meta\.tsv:2: not UTF-8 text \(byte 0xe8 at byte 8 of the line.*"
                                        r"skipping it keeps item 1 without metadata"):
        _texts(folder)
    texts, bad = _texts(folder, policy="skip")
    assert texts["1"] == "" and texts["2"] == "Blue Polish. Brand: Essie" and bad.metrics()["not_utf8_skipped"] == 1
    folder = _folder(tmp_path, "item_id\tasin\ttitle\n1\tA1\tx\n")
    with pytest.raises(DataError, match=r"item_meta\.tsv:1: expected the header 'item_id\\tasin\\ttitle\\tbrand'"):
        _texts(folder)
    folder = _folder(tmp_path, HEADER)
    with pytest.raises(DataError, match=r"item_meta\.tsv: no item rows"):
        _texts(folder)


def test_prepare_reads_the_metadata_file_inside_data_path(tmp_path):
    folder = _folder(tmp_path)
    keys = ["data.source=sequences", f"data.path={folder}", "data.text=items", "data.k_core=1"]
    runner, manifest = run_prepare(tmp_path / "a", *keys, "data.item_meta=item_meta.tsv")
    items = outputs(runner, manifest).read_table("items.parquet").to_pandas().set_index("raw_id").text
    assert list(items) == ["OPI Nail Lacquer, Red", "Blue Polish 0.5 oz.. Brand: Essie", "Brand: Dove", ""]
    assert manifest["metrics"]["items_with_text"] == 3
    with pytest.raises(DataError, match=rf"data.item_meta {folder / 'nope.tsv'}: no such file \(data.source=sequences "
                                        r"expects an item metadata file with columns item_id asin title brand\)"):
        check_inputs(load_config(None, [*keys, "data.item_meta=nope.tsv"]).data)


def _meta_gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records))
    return path


def test_amazon_metadata_through_the_same_template(tmp_path):
    meta = _meta_gz(tmp_path / "meta.json.gz", [
        {"asin": "i0", "title": "Red Lipstick", "brand": "Revlon", "description": ["soft", "warm"]},
        "{'asin': 'i1', 'title': 'Revlon Blue Polish', 'brand': 'Revlon'}\n",  # a 2014 Python literal
        {"asin": "i2", "title": "Green Soap", "brand": "Unknown"},
        {"asin": "i3", "description": "a brush", "brand": "Real"},
        {"asin": "i4", "title": "Pink Brush", "brand": 7},
    ])
    wanted = {"i0", "i1", "i2", "i3", "i4"}
    with pytest.raises(DataError, match=r"meta\.json\.gz:5: metadata brand is a JSON number, expected a string"):
        amazon.read_item_texts(meta, BadRecords("error"), wanted, template.TITLE_BRAND)
    bad = BadRecords("skip")
    texts = amazon.read_item_texts(meta, bad, wanted, template.TITLE_BRAND)
    assert texts == {"i0": "Red Lipstick. Brand: Revlon", "i1": "Revlon Blue Polish", "i2": "Green Soap",
                     "i3": "Brand: Real"}
    assert bad.lines == {str(meta): [5]}
    texts = amazon.read_item_texts(meta, BadRecords("error"), wanted)  # the default: title then description
    assert texts == {"i0": "Red Lipstick soft warm", "i1": "Revlon Blue Polish", "i2": "Green Soap", "i3": "a brush",
                     "i4": "Pink Brush"}  # the brand is not used, so its type does not matter
    texts = amazon.read_item_texts(meta, BadRecords("error"), {"i0"}, "{description}[ ({asin})]")
    assert texts == {"i0": "soft warm (i0)"}


def test_the_real_beauty_metadata(data_dir):
    folder = data_dir / "beauty"
    bad = BadRecords("error")
    texts = sequences.item_texts(folder, folder / "item_meta.tsv", template.TITLE_BRAND, bad)
    assert len(texts) == 12101 and bad.skipped == 0
    assert texts["1"] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"  # brand OPI is in the title
    assert texts["3"] == "SKIN79 The Prestige Beblesh Balm BB Cream Diamond Collection"  # no brand
    assert texts["4"] == ("WAWO 15 Color Professionl Makeup Eyeshadow Camouflage Facial Concealer Neutral Palette. "
                          "Brand: COKA")
    assert sum(1 for t in texts.values() if not t) == 7  # the items with neither title nor brand


def test_beauty_titles_config_reads_the_metadata_inside_data_path(data_dir):
    cfg = load_config(REPO / "configs" / "beauty-titles.yaml", [f"data.path={data_dir / 'beauty'}"]).data
    check_inputs(cfg)
    assert template.choose(cfg.text_template, cfg.item_meta) == template.TITLE_BRAND
