"""The ICLRec layout: ``sequences.txt`` (user then items, chronological) plus ``items.tsv`` texts.

Ids are ASCII digits. A user listed on two lines is a bad record (a merged sequence would put that
user's valid and test items into training), and so is a line that is not UTF-8. In ``items.tsv``
a text holding a TAB (its columns cannot be told apart) or bytes that are not UTF-8 is a bad
record too; when skipped, the item is kept without a text, so the sequences that use it still count.

The optional item metadata file (``data.item_meta``, header ``item_id asin title brand``) gives
the fields of ``data.text_template`` (``saerec.data.template``). A metadata line with another
column count (a TAB inside a title), bytes that are not UTF-8, an id that is not in ``items.tsv``
or an id listed again is a bad record; when skipped, the item keeps its ``items.tsv`` text field
but has no title, brand or asin, as does an item the file does not list.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from saerec.data import lines, template
from saerec.data.records import BadRecords, DataError, Interaction

_ID = re.compile(r"[0-9]+")


def _is_id(value: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts ``²`` and other digits ``int`` refuses)."""
    return _ID.fullmatch(value) is not None


def read_items_tsv(path: Path, bad: BadRecords | None = None) -> dict[str, str]:
    """``item_id -> text`` from ``items.tsv`` (header ``item_id asin text``)."""
    bad = bad or BadRecords("error")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    texts: dict[str, str] = {}
    lineno = 0
    with path.open("rb") as handle:
        for lineno, raw in lines.numbered(handle, lines.keep_head):
            text = lines.decode(raw)
            if text is None:
                _bad_bytes(path, lineno, raw, bad, texts)
                continue
            row = text.rstrip("\r\n").split("\t")
            if lineno == 1:
                if row[:1] != ["item_id"]:
                    raise DataError(f"{path}:1: expected a header starting with item_id, got {row!r}")
                continue
            if len(row) < 2 or not _is_id(row[0].strip()):
                bad.bad(path, lineno, f"expected 'item_id<TAB>asin<TAB>text', got {text.strip()[:80]!r}")
                continue
            if len(row) > 3:
                bad.bad(path, lineno, f"the text of item {row[0].strip()} holds a TAB (column 4 of {len(row)}); "
                        f"skipping it keeps item {row[0].strip()} without a text", "tab_in_text")
                texts[row[0].strip()] = ""
                continue
            texts[row[0].strip()] = bad.text(row[2].strip()) if len(row) > 2 else ""
        if lineno == 0:
            raise DataError(f"{path}: empty file")
    if not texts:
        raise DataError(f"{path}: no items")
    return texts


def _bad_bytes(path: Path, lineno: int, raw: bytes, bad: BadRecords, texts: dict[str, str]) -> None:
    """An ``items.tsv`` line that is not UTF-8: when only its text is, skipping keeps the item without
    a text (dropping it would make every sequence that uses it a bad record too)."""
    columns = [lines.decode(c) for c in raw.rstrip(b"\r\n").split(b"\t")[:3]]
    item = columns[0].strip() if columns[0] is not None else ""
    if len(columns) < 3 or columns[1] is None or not _is_id(item):
        bad.bad(path, lineno, lines.not_utf8(raw), "not_utf8")
        return
    bad.bad(path, lineno, f"{lines.not_utf8(raw)} in the text of item {item}; skipping it keeps item {item} "
            "without a text", "not_utf8")
    texts[item] = ""


META_HEADER = ["item_id", "asin", "title", "brand"]


def read_item_meta(path: Path, known_items: dict[str, str], bad: BadRecords) -> dict[str, dict[str, str]]:
    """``item_id -> {asin, title, brand}`` from the metadata file, for items of ``items.tsv``."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    meta: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    lineno = 0
    with path.open("rb") as handle:
        for lineno, raw in lines.numbered(handle, lines.keep_head):
            text = lines.decode(raw)
            if text is None:
                item = lines.decode(raw.split(b"\t", 1)[0]) or ""
                whose = f"item {item.strip()}" if _is_id(item.strip()) else "its item"
                bad.bad(path, lineno, f"{lines.not_utf8(raw)}; skipping it keeps {whose} without metadata", "not_utf8")
                continue
            row = text.rstrip("\r\n").split("\t")
            if lineno == 1:
                if row != META_HEADER:
                    raise DataError(f"{path}:1: expected the header {chr(9).join(META_HEADER)!r} (TAB-separated), "
                                    f"got {text.rstrip()[:80]!r}")
                continue
            if not text.strip():
                continue
            item = row[0].strip()
            if not _is_id(item):
                bad.bad(path, lineno, f"expected 'item_id<TAB>asin<TAB>title<TAB>brand', got {text.strip()[:80]!r}")
            elif len(row) != len(META_HEADER):
                tab = len(row) > len(META_HEADER)
                bad.bad(path, lineno, f"item {item} has {len(row)} columns, expected {len(META_HEADER)} (item_id asin "
                        f"title brand){' (a TAB inside its title or brand?)' if tab else ''}; skipping it keeps item "
                        f"{item} without metadata", "tab_in_text" if tab else None)
            elif item not in known_items:
                bad.bad(path, lineno, f"unknown item id {item} (not in items.tsv)")
            elif item in first_line:
                bad.bad(path, lineno, f"item {item} is listed again (first on line {first_line[item]}); "
                        "skipping it keeps the first", "repeated_item")
            else:
                first_line[item] = lineno
                meta[item] = {k: bad.text(v.strip()) for k, v in zip(META_HEADER[1:], row[1:])}
    if lineno <= 1:
        raise DataError(f"{path}: no item rows (expected the header {' '.join(META_HEADER)} and one row per item)")
    return meta


def item_texts(folder: Path, meta_path: Path | None, text_template: str, bad: BadRecords) -> dict[str, str]:
    """``item_id -> text`` for every item of ``items.tsv``: ``text_template`` over its ``items.tsv``
    text (``{text}``) and, with ``meta_path``, its metadata fields."""
    texts = read_items_tsv(folder / "items.tsv", bad)
    parsed = template.parse(text_template, template.FIELDS["sequences"])
    meta = read_item_meta(meta_path, texts, bad) if meta_path is not None else {}
    return {item: bad.text(template.render(parsed, {"text": text, **meta.get(item, {})}))
            for item, text in texts.items()}


def read_user_ids(path: Path) -> dict[str, str]:
    """``user_id -> raw reviewer id`` from the optional ``users.tsv``."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return {r[0]: r[1] for r in rows[1:] if len(r) >= 2}


def read_interactions(path: Path, known_items: dict[str, str], bad: BadRecords) -> Iterator[Interaction]:
    """Stream interactions from ``sequences.txt``; positions stand in for timestamps."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    seen = 0
    first_line: dict[str, int] = {}
    with path.open("rb") as handle:
        for lineno, raw in lines.numbered(handle, b"".join):
            line = lines.decode(raw)
            if line is None:
                bad.bad(path, lineno, lines.not_utf8(raw), "not_utf8")
                continue
            parts = line.split()
            if not parts:
                continue
            if not all(_is_id(p) for p in parts):
                bad.bad(path, lineno, f"non-integer id in {line.strip()[:80]!r}")
                continue
            unknown = [p for p in parts[1:] if p not in known_items]
            if unknown:
                bad.bad(path, lineno, f"unknown item id {unknown[0]} (not in items.tsv)")
                continue
            if parts[0] in first_line:
                bad.bad(path, lineno, f"user {parts[0]} is listed again (first on line {first_line[parts[0]]}); "
                        "one line per user", "repeated_user")
                continue
            first_line[parts[0]] = lineno
            for item in parts[1:]:
                seen += 1
                yield Interaction(parts[0], item, None, None)
    if seen == 0:
        raise DataError(f"{path}: no interactions")
