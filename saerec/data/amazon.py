"""Raw Amazon review files (McAuley et al.), JSON lines, gzip or plain, read one line at a time.

2014 ``meta_*.json.gz`` files hold Python literals rather than JSON, so metadata lines fall back
to ``ast.literal_eval``. Reviews without ``reviewText`` fall back to ``summary``, then to no text:
the interaction is kept, it only contributes nothing to the corpus.
"""
from __future__ import annotations

import ast
import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from saerec.data.records import BadRecords, DataError, Interaction


def _open(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines; a truncated or corrupt gzip names the last good line."""
    lineno = 0
    try:
        with _open(path) as handle:
            for lineno, line in enumerate(handle, start=1):
                if line.strip():
                    yield lineno, line
    except (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable after line {lineno} (truncated or corrupt file: {exc})") from exc


def _parse(line: str, literal_ok: bool) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        if not literal_ok:
            raise
        return ast.literal_eval(line)


def read_reviews(path: str | Path, bad: BadRecords) -> Iterator[Interaction]:
    """Stream interactions from a ``reviews_*.json(.gz)`` file."""
    path = Path(path)
    seen = 0
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.bad(where, f"malformed JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            bad.bad(where, "record is not a JSON object")
            continue
        missing = [k for k in ("reviewerID", "asin") if not record.get(k)]
        if missing:
            bad.bad(where, f"record is missing {', '.join(missing)}")
            continue
        timestamp = record.get("unixReviewTime")
        if timestamp is not None and not isinstance(timestamp, int):
            bad.bad(where, f"unixReviewTime {timestamp!r} is not an integer")
            continue
        text = record.get("reviewText") or record.get("summary") or None
        seen += 1
        yield Interaction(str(record["reviewerID"]), str(record["asin"]), timestamp, text)
    if seen == 0:
        raise DataError(f"{path}: no usable review records")


def read_item_texts(path: str | Path, bad: BadRecords, wanted: set[str]) -> dict[str, str]:
    """Item descriptions (title, then description) from a ``meta_*.json(.gz)`` file, for wanted asins."""
    path = Path(path)
    texts: dict[str, str] = {}
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            record = _parse(line, literal_ok=True)
        except (json.JSONDecodeError, ValueError, SyntaxError):
            bad.bad(where, "malformed metadata record")
            continue
        if not isinstance(record, dict) or not record.get("asin"):
            bad.bad(where, "metadata record is missing asin")
            continue
        asin = str(record["asin"])
        if asin not in wanted:
            continue
        description = record.get("description") or ""
        if isinstance(description, list):
            description = " ".join(str(d) for d in description)
        text = " ".join(p for p in (str(record.get("title") or ""), str(description)) if p.strip())
        if text.strip():
            texts[asin] = text.strip()
    return texts
