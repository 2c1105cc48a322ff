"""Raw input files read as bytes, one line at a time, so that every problem is named by its exact
line and a giant line is never held whole.

Text decoding happens per line (a file opened as text decodes ahead in chunks, so a bad byte was
reported dozens of lines early, or without a line at all). A line longer than ``CHUNK`` bytes is
read in chunks and only the start of each long quoted string (JSON or Python literal) is kept:
``MAX_TEXT_CHARS`` characters fit in ``RAW_CUT`` bytes whatever their escaping, so the caller can
cut the text to exactly ``MAX_TEXT_CHARS`` after parsing.
"""
from __future__ import annotations

import re
from typing import BinaryIO, Callable, Iterable, Iterator

MAX_TEXT_CHARS = 20_000  # a review or item text is cut to this many characters (counted as texts_truncated)
CHUNK = 1 << 20  # lines up to this many bytes are read whole
RAW_CUT = 12 * MAX_TEXT_CHARS + 24  # a character takes at most 12 raw bytes (a JSON surrogate pair)
_QUOTE = re.compile(rb"[\"']")
_ESCAPE_LENGTH = {ord("u"): 6, ord("x"): 4, ord("U"): 10}


def numbered(handle: BinaryIO, reduce: Callable[[Iterator[bytes]], bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for each line of a binary handle; a line longer than ``CHUNK`` bytes
    is passed to ``reduce`` as an iterator of its chunks (it must read them all), and what it
    returns stands for the line."""
    lineno = 0
    while True:
        head = handle.readline(CHUNK)
        if not head:
            return
        lineno += 1
        if len(head) < CHUNK or head.endswith(b"\n"):
            yield lineno, head
        else:
            yield lineno, reduce(_rest_of_line(head, handle))


def _rest_of_line(head: bytes, handle: BinaryIO) -> Iterator[bytes]:
    yield head
    while True:
        part = handle.readline(CHUNK)
        if not part:
            return
        yield part
        if part.endswith(b"\n"):
            return


def decode(line: bytes) -> str | None:
    """The line as text, or None when it is not UTF-8 (``not_utf8`` says where)."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def not_utf8(line: bytes) -> str:
    """Why ``line`` is not UTF-8, naming the first bad byte and its column."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte 0x{line[exc.start]:02x} at byte {exc.start + 1} of the line: {exc.reason})"
    return "not UTF-8 text"


def keep_head(chunks: Iterator[bytes]) -> bytes:
    """A long tab-separated line: its first chunk (ids and the start of the text), plus one TAB when
    a later chunk holds one, so the row still shows that its text has a TAB."""
    head = next(chunks)
    tab = False
    for chunk in chunks:  # every chunk is read, or the next line would start inside this one
        tab = tab or b"\t" in chunk
    return utf8_prefix(head) + (b"\t" if tab else b"")


def utf8_prefix(data: bytes) -> bytes:
    """``data`` without a UTF-8 character cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if size <= back else data[:-back]
    return data


def _complete_escapes(data: bytes) -> bytes:
    """``data`` (the start of a quoted string's body) without an escape sequence cut off at its end."""
    start = data.rfind(b"\\", max(0, len(data) - 12))
    if start < 0:
        return data
    run = start
    while run > 0 and data[run - 1] == 0x5C:
        run -= 1
    if (start - run) % 2:  # the backslash at ``start`` is itself escaped: the escapes are complete
        return data
    if start + 1 == len(data):
        return data[:start]
    length = _ESCAPE_LENGTH.get(data[start + 1], 2)
    return data if start + length <= len(data) else data[:start]


def cut_long_strings(chunks: Iterable[bytes], limit: int = RAW_CUT) -> bytes:
    """One line of a JSON (or Python literal) record with every quoted string's body cut to at most
    ``limit`` bytes, never inside an escape or a UTF-8 character; the rest of a long string is read
    and dropped, so memory holds only what is kept."""
    out = bytearray()
    quote = 0  # the open string's quote byte; 0 outside strings
    body = 0  # where the open string's body starts in ``out``
    cutting = False  # the open string is past ``limit``: its bytes are dropped
    slashes = 0  # backslashes just before the chunk, inside the open string
    for chunk in chunks:
        pos = 0
        while pos < len(chunk):
            if not quote:
                found = _QUOTE.search(chunk, pos)
                if found is None:
                    out += chunk[pos:]
                    break
                out += chunk[pos:found.end()]
                quote, body, cutting, slashes, pos = chunk[found.start()], len(out), False, 0, found.end()
                continue
            end = chunk.find(quote, pos)
            while end >= 0:
                run = end
                while run > pos and chunk[run - 1] == 0x5C:
                    run -= 1
                escaped = (end - run + (slashes if run == pos else 0)) % 2
                if not escaped:
                    break
                end = chunk.find(quote, end + 1)
            stop = len(chunk) if end < 0 else end
            if not cutting:
                room = limit - (len(out) - body)
                if stop - pos <= room:
                    out += chunk[pos:stop]
                else:
                    out += chunk[pos:pos + room]
                    kept = _complete_escapes(utf8_prefix(bytes(out[body:])))
                    del out[body + len(kept):]
                    cutting = True
            if end < 0:
                tail = chunk[pos:]
                stripped = len(tail) - len(tail.rstrip(b"\\"))
                slashes = stripped + slashes if stripped == len(tail) else stripped
                break
            out.append(quote)
            quote, pos = 0, end + 1
    return bytes(out)
