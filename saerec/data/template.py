"""Item texts from a template over an item's metadata fields (``data.text_template``).

The template is plain text with ``{field}`` placeholders, e.g. ``{title}[. Brand: {brand}]``:

- a field renders as its value, stripped; a field the item lacks renders as nothing;
- ``[...]`` marks an optional part (at least one field, no nesting): it is dropped when each of its
  fields is empty or already appears, as whole words and ignoring case, in the text rendered before
  it (so ``[. Brand: {brand}]`` adds nothing for "OPI Nail Lacquer" of brand OPI, nor for no brand);
- template text before the first non-empty field and after the last one loses the spaces and
  separators ``. , ; : - | /`` at the text's ends (a title-less item gives ``Brand: OPI``, not
  ``. Brand: OPI``); a field's own characters are never trimmed; an item whose fields are all
  empty gets no text at all.

``{``, ``}``, ``[`` and ``]`` have no literal form. The fields each source offers are in ``FIELDS``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

FIELDS = {
    "sequences": ("text", "asin", "title", "brand"),  # text: items.tsv; the others: data.item_meta
    "amazon": ("text", "asin", "title", "brand", "description"),  # text: title and description, as before
}
META_FIELDS = ("asin", "title", "brand")  # the sequences fields read from data.item_meta
PLAIN = "{text}"  # the default: each source's own item text, as without a template
TITLE_BRAND = "{title}[. Brand: {brand}]"  # the default of data.source=sequences with data.item_meta
SEPARATORS = " \t.,;:-|/"
_TOKEN = re.compile(r"\{([^{}\[\]]*)\}|\[|\]|\{|\}|[^{}\[\]]+")


@dataclass(frozen=True)
class Part:
    """A run of template text: ``pieces`` are literals (str) and fields (``(name,)``)."""
    pieces: tuple[str | tuple[str], ...]
    optional: bool


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[Part, ...]

    @property
    def fields(self) -> set[str]:
        return {p[0] for part in self.parts for p in part.pieces if isinstance(p, tuple)}


def choose(template: str | None, item_meta: str | None) -> str:
    """The template in force: ``data.text_template``, else title and brand when metadata is
    configured for the sequences source, else each source's own item text."""
    return template if template else TITLE_BRAND if item_meta else PLAIN


def parse(template: str, fields: tuple[str, ...]) -> Template:
    """The parsed template; ValueError says what is wrong and which fields are allowed."""
    allowed = ", ".join("{" + f + "}" for f in fields)
    parts: list[Part] = []
    pieces: list[str | tuple[str]] = []
    optional = False

    def close(is_optional: bool) -> None:
        if is_optional and not any(isinstance(p, tuple) for p in pieces):
            raise ValueError(f"the optional part [{''.join(p for p in pieces if isinstance(p, str))}] holds no field")
        if pieces:
            parts.append(Part(tuple(pieces), is_optional))
        pieces.clear()

    for match in _TOKEN.finditer(template):
        token = match.group(0)
        if match.group(1) is not None:
            name = match.group(1)
            if name not in fields:
                raise ValueError(f"unknown field {token}; allowed: {allowed}")
            pieces.append((name,))
        elif token == "[":
            if optional:
                raise ValueError("optional parts [...] cannot be nested")
            close(False)
            optional = True
        elif token == "]":
            if not optional:
                raise ValueError("a ] closes no optional part")
            close(True)
            optional = False
        elif token in "{}":
            raise ValueError(f"a lone {token} (fields are written {{name}}, one of: {allowed}; "
                             "braces have no literal form)")
        else:
            pieces.append(token)
    if optional:
        raise ValueError("an optional part [ is not closed")
    close(False)
    parsed = Template(template, tuple(parts))
    if not parsed.fields:
        raise ValueError(f"it names no field; allowed: {allowed}")
    return parsed


def _appears(value: str, text: str) -> bool:
    """``value`` in ``text`` as whole words, ignoring case (a string search: a regex per brand would
    be compiled anew for each item)."""
    value, text = value.lower(), text.lower()
    start = text.find(value)
    while start >= 0:
        end = start + len(value)
        if not (start and _word(text[start - 1])) and not (end < len(text) and _word(text[end])):
            return True
        start = text.find(value, start + 1)
    return False


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


def render(template: Template, values: Mapping[str, str]) -> str:
    """The item's text (rules in the module docstring); ``values`` may lack fields."""
    out: list[tuple[str, bool]] = []  # (text, is a non-empty field value)
    for part in template.parts:
        rendered = [(p, False) if isinstance(p, str) else ((values.get(p[0]) or "").strip(), True)
                    for p in part.pieces]
        if part.optional:
            before = "".join(text for text, _ in out)
            if all(not text or _appears(text, before) for text, is_field in rendered if is_field):
                continue
        out.extend((text, is_field and bool(text)) for text, is_field in rendered)
    filled = [k for k, (_, is_value) in enumerate(out) if is_value]
    if not filled:
        return ""
    first, last = filled[0], filled[-1]
    head = "".join(text for text, _ in out[:first]).lstrip(SEPARATORS)
    tail = "".join(text for text, _ in out[last + 1:]).rstrip(SEPARATORS)
    return head + "".join(text for text, _ in out[first:last + 1]) + tail
