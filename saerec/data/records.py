"""The one shape every loader yields, so k-core, splitting and the corpus are written once; and the
checks every loader applies to a raw record's fields, so all sources reject the same things."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saerec.data.lines import MAX_TEXT_CHARS

EXAMPLES = 5
# Accepted times: seconds since 1970-01-01 UTC, before 2100-01-01 UTC. A negative time cannot be
# told from "no time", and a later one is a typo or milliseconds that would become the test item.
LATEST_TIME = 4_102_444_800
_SURROGATE = re.compile("[\ud800-\udfff]")


class DataError(ValueError):
    """Bad input data; the message names the file and the line or record."""


@dataclass(frozen=True)
class Interaction:
    """One user-item event in file order; ``review`` is None when the source has no review text."""
    user: str
    item: str
    timestamp: int | None
    review: str | None


@dataclass
class BadRecords:
    """The ``data.on_bad_record`` policy: raise on the first bad record, or skip it and count.

    A ``kind`` given to ``bad`` is also counted on its own (``{kind}_skipped``). Texts repaired on
    the way are kept and counted: lone UTF-16 surrogates replaced, texts cut to ``MAX_TEXT_CHARS``.
    """
    policy: str
    skipped: int = 0
    examples: list[str] = field(default_factory=list)
    lines: dict[str, list[int]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    surrogates_replaced: int = 0
    texts_truncated: int = 0

    def bad(self, path: str | Path, line: int, why: str, kind: str | None = None) -> None:
        message = f"{path}:{line}: {why}"
        if self.policy == "error":
            raise DataError(message + " (set data.on_bad_record=skip to skip and count such records)")
        self.skipped += 1
        if kind:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(message)
            self.lines.setdefault(str(path), []).append(line)

    def metrics(self) -> dict[str, Any]:
        """What the manifest records: the count, and the first few records' file, line and reason."""
        out: dict[str, Any] = {"bad_records_skipped": self.skipped, "surrogates_replaced": self.surrogates_replaced,
                               "texts_truncated": self.texts_truncated}
        out.update({f"{kind}_skipped": n for kind, n in self.kinds.items()})
        if self.examples:
            out["bad_record_lines"] = self.lines
            out["bad_record_examples"] = self.examples
        return out

    def text(self, value: str) -> str:
        """``value`` cut to ``MAX_TEXT_CHARS`` (one giant review must not take the memory of millions),
        with every lone UTF-16 surrogate (a cut emoji, as JSON ``"\\ud83d"``) replaced by U+FFFD: one
        broken character does not make a review unusable, but it cannot be stored."""
        if len(value) > MAX_TEXT_CHARS:
            value = value[:MAX_TEXT_CHARS]
            self.texts_truncated += 1
        fixed, n = _SURROGATE.subn("\ufffd", value)
        if n:
            self.surrogates_replaced += 1
        return fixed


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def id_problem(record: dict[str, Any], key: str) -> str | None:
    """Why ``record[key]`` is not a usable id, or None: ids must be non-empty strings without broken
    characters (an integer ``asin`` would silently become another item than the string one)."""
    value = record.get(key)
    if value is None or value == "":
        return f"record is missing {key}"
    if not isinstance(value, str):
        return f"{key} {value!r} is a JSON {json_type(value)}, expected a string"
    if not value.strip():
        return f"{key} is blank"
    if len(value) > MAX_TEXT_CHARS:
        return f"{key} is longer than {MAX_TEXT_CHARS} characters"
    if _SURROGATE.search(value):
        return f"{key} {value!r} holds a lone UTF-16 surrogate (a broken character)"
    return None


def text_problem(record: dict[str, Any], key: str) -> str | None:
    """Why ``record[key]`` is not a text (absent or null is fine: the record has no such text)."""
    value = record.get(key)
    if value is None or isinstance(value, str):
        return None
    return f"{key} is a JSON {json_type(value)}, expected a string"


def time_problem(record: dict[str, Any], key: str) -> str | None:
    """Why ``record[key]`` is not an accepted time (absent or null is fine: the record has no time)."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{key} {value!r} is a JSON {json_type(value)}, expected an integer"
    digits = str(abs(value))
    shown = str(value) if len(digits) <= 30 else f"{'-' if value < 0 else ''}{digits[:20]}... ({len(digits)} digits)"
    if value < 0:
        return f"{key} {shown} is before 1970 (accepted: 0 to {LATEST_TIME - 1}, seconds before 2100-01-01 UTC)"
    if value >= LATEST_TIME:
        return (f"{key} {shown} is after 2100-01-01 UTC (accepted: 0 to {LATEST_TIME - 1}, seconds; "
                "a time in milliseconds?)")
    return None
