"""Raw Amazon review files (McAuley et al.), JSON lines, gzip or plain, read one line at a time.

2014 ``meta_*.json.gz`` files hold Python literals rather than JSON, so metadata lines fall back
to ``ast.literal_eval``. Reviews without ``reviewText`` fall back to ``summary``, then to no text:
the interaction is kept, it only contributes nothing to the corpus. A record whose ids are not
strings, whose time is not an integer from 1970 to 2099 (``records.time_problem``), whose texts are
not strings or whose line is not UTF-8 is a bad record (named by file and line;
``data.on_bad_record`` says whether it stops the stage); a lone UTF-16 surrogate in a text is
replaced by U+FFFD, a text over ``lines.MAX_TEXT_CHARS`` is cut, both are counted, and the record
is kept.

An item's text is ``data.text_template`` over its metadata fields (``saerec.data.template``):
``title``, ``brand`` (Amazon's "Unknown" counts as none), ``description`` (a list of strings is
joined), ``asin``, and ``text``, the title then the description, which is the default.
"""
from __future__ import annotations

import ast
import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from saerec.data import lines, template
from saerec.data.records import (BadRecords, DataError, Interaction, id_problem, json_type, text_problem,
                                 time_problem)

ID_KEYS = ("reviewerID", "asin")
TEXT_KEYS = ("reviewText", "summary")


def _open(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path} is a folder; expected a JSON-lines file (.json or .json.gz)")
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _lines(path: Path, bad: BadRecords) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines, decoded one by one so a bad byte is named by its own line (a bad
    record); a truncated or corrupt gzip names the last good line."""
    lineno = 0
    try:
        with _open(path) as handle:
            for lineno, raw in lines.numbered(handle, lines.cut_long_strings):
                text = lines.decode(raw)
                if text is None:
                    bad.bad(path, lineno, lines.not_utf8(raw), "not_utf8")
                elif text.strip():
                    yield lineno, text
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: unreadable after line {lineno} (truncated or corrupt file: {exc})") from exc


def _parse(line: str, literal_ok: bool) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        if not literal_ok:
            raise
        return ast.literal_eval(line)


def _review_problem(record: dict[str, Any]) -> str | None:
    missing = [k for k in ID_KEYS if record.get(k) in (None, "")]
    if missing:
        return f"record is missing {', '.join(missing)}"
    for problem in (*(id_problem(record, k) for k in ID_KEYS), *(text_problem(record, k) for k in TEXT_KEYS)):
        if problem:
            return problem
    return time_problem(record, "unixReviewTime")


def read_reviews(path: str | Path, bad: BadRecords) -> Iterator[Interaction]:
    """Stream interactions from a ``reviews_*.json(.gz)`` file."""
    path = Path(path)
    seen = 0
    for lineno, line in _lines(path, bad):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.bad(path, lineno, f"malformed JSON ({exc.msg})")
            continue
        except (ValueError, RecursionError) as exc:  # a number of over 4,300 digits, nesting too deep
            bad.bad(path, lineno, f"malformed JSON ({str(exc)[:80]})")
            continue
        if not isinstance(record, dict):
            bad.bad(path, lineno, "record is not a JSON object")
            continue
        problem = _review_problem(record)
        if problem:
            bad.bad(path, lineno, problem, "bad_time" if problem.startswith("unixReviewTime") else None)
            continue
        text = record.get("reviewText") or record.get("summary") or None
        seen += 1
        yield Interaction(record["reviewerID"], record["asin"], record.get("unixReviewTime"),
                          bad.text(text) if text else None)
    if seen == 0:
        raise DataError(f"{path}: no usable review records")


def _fields(record: dict[str, Any], used: set[str]) -> dict[str, str] | str:
    """The template's fields of a metadata record, or why one it uses has a type no catalogue text
    has (``text`` uses the title and the description)."""
    raw = {k: record.get(k) or "" for k in ("title", "brand", "description")}
    if isinstance(raw["description"], list) and all(isinstance(d, str) for d in raw["description"]):
        raw["description"] = " ".join(raw["description"])
    for key in sorted((used | ({"title", "description"} if "text" in used else set())) & set(raw)):
        if not isinstance(raw[key], str):
            return f"metadata {key} is a JSON {json_type(raw[key])}, expected a string (or a list of strings)"
    fields = {k: v.strip() if isinstance(v, str) else "" for k, v in raw.items()}
    if fields["brand"].lower() == "unknown":
        fields["brand"] = ""
    fields["text"] = " ".join(p for p in (raw["title"], raw["description"]) if isinstance(p, str) and p.strip()).strip()
    fields["asin"] = record["asin"]
    return fields


def read_item_texts(path: str | Path, bad: BadRecords, wanted: set[str],
                    text_template: str = template.PLAIN) -> dict[str, str]:
    """Item texts (``text_template``, by default the title then the description) from a
    ``meta_*.json(.gz)`` file, for wanted asins."""
    path = Path(path)
    parsed = template.parse(text_template, template.FIELDS["amazon"])
    texts: dict[str, str] = {}
    for lineno, line in _lines(path, bad):
        try:
            record = _parse(line, literal_ok=True)
        except (json.JSONDecodeError, ValueError, SyntaxError, MemoryError, RecursionError):
            bad.bad(path, lineno, "malformed metadata record")
            continue
        if not isinstance(record, dict):
            bad.bad(path, lineno, "metadata record is not an object")
            continue
        problem = id_problem(record, "asin")
        if problem:
            bad.bad(path, lineno, f"metadata {problem}")
            continue
        if record["asin"] not in wanted:
            continue
        fields = _fields(record, parsed.fields)
        if isinstance(fields, str):
            bad.bad(path, lineno, fields)
            continue
        text = template.render(parsed, fields)
        if text:
            texts[record["asin"]] = bad.text(text)
    return texts
