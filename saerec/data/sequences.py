"""The ICLRec layout: ``sequences.txt`` (user then items, chronological) plus ``items.tsv`` texts.

Ids are ASCII digits. A user listed on two lines is a bad record (a merged sequence would put that
user's valid and test items into training), and so is a line that is not UTF-8. In ``items.tsv``
a text holding a TAB (its columns cannot be told apart) or bytes that are not UTF-8 is a bad
record too; when skipped, the item is kept without a text, so the sequences that use it still count.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from saerec.data import lines
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
