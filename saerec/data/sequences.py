"""The ICLRec layout: ``sequences.txt`` (user then items, chronological) plus ``items.tsv`` texts."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from saerec.data.records import BadRecords, DataError, Interaction


def _not_utf8(path: Path, lineno: int, exc: UnicodeDecodeError) -> DataError:
    after = f" after line {lineno}" if lineno else ""
    return DataError(f"{path}: not UTF-8 text{after} ({exc.reason})")


def read_items_tsv(path: Path) -> dict[str, str]:
    """``item_id -> text`` from ``items.tsv`` (header ``item_id asin text``)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        return _read_items_tsv(path)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, 0, exc) from exc


def _read_items_tsv(path: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file")
        if header[:1] != ["item_id"]:
            raise DataError(f"{path}:1: expected a header starting with item_id, got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) < 2 or not row[0].strip().isdigit():
                raise DataError(f"{path}:{lineno}: expected 'item_id<TAB>asin<TAB>text', got {row!r}")
            texts[row[0].strip()] = row[2].strip() if len(row) > 2 else ""
    if not texts:
        raise DataError(f"{path}: no items")
    return texts


def read_user_ids(path: Path) -> dict[str, str]:
    """``user_id -> raw reviewer id`` from the optional ``users.tsv``."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return {r[0]: r[1] for r in rows[1:] if len(r) >= 2}


def _numbered(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as handle:
        yield from enumerate(handle, start=1)


def read_interactions(path: Path, known_items: dict[str, str], bad: BadRecords) -> Iterator[Interaction]:
    """Stream interactions from ``sequences.txt``; positions stand in for timestamps."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    seen = 0
    lineno = 0
    try:
        for lineno, line in _numbered(path):
            parts = line.split()
            if not parts:
                continue
            if not all(p.isdigit() for p in parts):
                bad.bad(path, lineno, f"non-integer id in {line.strip()[:80]!r}")
                continue
            unknown = [p for p in parts[1:] if p not in known_items]
            if unknown:
                bad.bad(path, lineno, f"unknown item id {unknown[0]} (not in items.tsv)")
                continue
            for item in parts[1:]:
                seen += 1
                yield Interaction(parts[0], item, None, None)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, lineno, exc) from exc
    if seen == 0:
        raise DataError(f"{path}: no interactions")
