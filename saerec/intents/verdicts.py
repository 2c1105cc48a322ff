"""Turn whatever a judge model printed into a summary or a verdict, and never raise.

Thousands of latents go through a model that may answer with nothing, with chatter, or with
a label buried in a sentence; one odd answer must not stop the stage. Anything that cannot be
read is recorded as "Cannot Tell", which is never kept.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

CANNOT_TELL = "Cannot Tell"
VERDICTS = ("Yes", "Probably", "Maybe", "No")
ALL_VERDICTS = (*VERDICTS, CANNOT_TELL)
DETECTION_ANSWERS = ("Yes", "No")
COHERENCE_LEVELS = ((2.0, "Yes"), (1.0, "Probably"), (0.0, "Maybe"))

_CANNOT_TELL = re.compile(r"\b(cannot|can't|can not|unable to) tell\b|\bno (clear |common )?(theme|pattern)\b")
_LABEL_PREFIX = re.compile(r"^(the )?(shopping )?(theme|answer|summary|intent|label)( is)?\s*[:\-]?\s*", re.IGNORECASE)
_VERDICT = re.compile(r"\b(yes|probably|maybe|no)\b", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]{2,}")
WORD_RUN = re.compile(r"[^\W_]+")


def parse_summary(output: object, words: Iterable[str] = (), max_words: int = 12) -> str:
    """First line of the answer, without labels or quotes, cut to ``max_words`` words.

    A summary that names no theme becomes "Cannot Tell": one that repeats a word
    ("jellies, jellies", "de la, de lait"), or the latent's ``words`` copied back as a list
    (``copies_the_list``: "acne, pimples, zits"). Words here are runs of two or more letters or
    digits, compared case-insensitively, after the cut. A phrase of list words ("nail polish",
    "sunscreen sun protection") is kept: on the demo, rejecting every summary made only of list
    words turned 52 of 256 summaries into "Cannot Tell", 41 of them of latents with a Yes.
    """
    if not isinstance(output, str):
        return CANNOT_TELL
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return CANNOT_TELL
    text = _LABEL_PREFIX.sub("", lines[0]).strip(" \t\"'`*.,;:!-")
    if _CANNOT_TELL.search(text.lower()) or not _WORD.search(text):
        return CANNOT_TELL
    summary = " ".join(text.split()[:max_words])
    if repeats_a_word(summary) or copies_the_list(summary, words):
        return CANNOT_TELL
    return summary


def repeats_a_word(text: str) -> bool:
    """Whether some word (two or more letters or digits, any case) occurs twice in ``text``."""
    found = words_of(text)
    return len(found) != len(set(found))


def copies_the_list(text: str, words: Iterable[str]) -> bool:
    """Whether ``text`` is the word list in the prompt's own form: two or more comma-separated
    items, every word of which is one of ``words``."""
    listed = _listed(words)
    items = [item for item in text.split(",") if words_of(item)]
    return bool(listed) and len(items) >= 2 and set(words_of(text)) <= listed


def only_lists_words(text: str, words: Iterable[str], at_least: int = 4) -> bool:
    """Whether ``text`` is ``at_least`` or more words, every one of them one of ``words``:
    "pura ar dhc dor cu toolz" names no theme, even without commas. Shorter phrases of list
    words ("nail polish") often do, so ``parse_summary`` keeps those."""
    listed = _listed(words)
    found = words_of(text)
    return len(found) >= at_least and set(found) <= listed


def _listed(words: Iterable[str]) -> set[str]:
    return {found for word in words for found in words_of(str(word))}


def words_of(text: str) -> list[str]:
    """The words the summary rules compare: runs of two or more letters or digits, lowercased."""
    return [run for run in WORD_RUN.findall(text.lower()) if len(run) >= 2]


def parse_verdict(output: object) -> str:
    """The first of Yes / Probably / Maybe / No the answer starts with (or says), else Cannot Tell."""
    if not isinstance(output, str):
        return CANNOT_TELL
    text = _LABEL_PREFIX.sub("", output.strip()).strip(" \t\"'`*.,;:!-")
    if _CANNOT_TELL.search(text.lower()):
        return CANNOT_TELL
    found = _VERDICT.search(text[:80])
    return found.group(1).capitalize() if found else CANNOT_TELL


def parse_detection(output: object) -> float | None:
    """1.0 for a Yes, 0.0 for a No, None when the answer says neither (left out of the score)."""
    verdict = parse_verdict(output)
    return {"Yes": 1.0, "No": 0.0}.get(verdict)


def verdict_from_coherence(z: float) -> str:
    """Map a word list's coherence, in standard deviations above random lists, to a level.

    Yes beyond 2 (more coherent than about 98% of random lists, a one-sided 2.3% test),
    Probably beyond 1, Maybe above the random mean, No below it.
    """
    for threshold, verdict in COHERENCE_LEVELS:
        if z >= threshold:
            return verdict
    return "No"


def validate_keep(keep: Iterable[str]) -> tuple[str, ...]:
    """Reject verdict names that cannot occur, so a typo in the config does not keep nothing."""
    keep = tuple(keep)
    unknown = [value for value in keep if value not in VERDICTS]
    if unknown or not keep:
        cased = [v for v in VERDICTS for u in unknown if isinstance(u, str) and u.lower() == v.lower()]
        hint = f" (verdicts are case-sensitive: did you mean {cased[0]!r}?)" if cased else ""
        raise ValueError(f"judge.keep must be a non-empty subset of {VERDICTS}, got {list(keep)}{hint}")
    return keep
