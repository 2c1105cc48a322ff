"""Item category labels (``item_id<TAB>categories``, '|'-separated): evaluation labels, never model input.

They measure whether an intent groups related items (``saerec.intents.purity``). The ``item_id``
column holds the source's raw item id (the integer of ``sequences.txt``, the asin of Amazon
files), so one reader serves every source. A line that is not UTF-8, lacks the TAB, or lists an
item again is a bad record; skipped, the item simply has no labels.
"""
from __future__ import annotations

from pathlib import Path

from saerec.data import lines
from saerec.data.records import BadRecords, DataError

HEADER = ["item_id", "categories"]


def read_item_categories(path: Path, bad: BadRecords) -> dict[str, list[str]]:
    """``raw item id -> its category names`` (sorted, deduplicated; empty names dropped)."""
    if not path.exists():
        raise DataError(f"{path}: file not found (data.item_categories)")
    labels: dict[str, list[str]] = {}
    lineno = 0
    with path.open("rb") as handle:
        for lineno, raw in lines.numbered(handle, lines.keep_head):
            text = lines.decode(raw)
            if text is None:
                bad.bad(path, lineno, lines.not_utf8(raw), "not_utf8")
                continue
            row = text.rstrip("\r\n").split("\t")
            if lineno == 1:
                if row != HEADER:
                    raise DataError(f"{path}:1: expected the header 'item_id<TAB>categories', "
                                    f"got {text.rstrip()[:80]!r}")
                continue
            if not text.strip():
                continue
            item = row[0].strip()
            if len(row) != 2 or not item:
                bad.bad(path, lineno, f"expected 'item_id<TAB>categories' (names separated by '|'), "
                        f"got {text.strip()[:80]!r}")
            elif item in labels:
                bad.bad(path, lineno, f"item {item} is listed again; skipping it keeps the first", "repeated_item")
            else:
                labels[item] = sorted({name.strip() for name in row[1].split("|") if name.strip()})
    if lineno == 0:
        raise DataError(f"{path}: empty file (data.item_categories)")
    return labels
