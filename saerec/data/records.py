"""The one shape every loader yields, so k-core, splitting and the corpus are written once."""
from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """Bad input data; the message names the file and the line or record."""


@dataclass(frozen=True)
class Interaction:
    """One user-item event in file order; ``review`` is None when the source has no review text."""
    user: str
    item: str
    timestamp: int | None
    review: str | None


class BadRecords:
    """The ``data.on_bad_record`` policy: raise on the first bad record, or skip it and count."""

    def __init__(self, policy: str):
        self.policy = policy
        self.skipped = 0
        self.examples: list[str] = []

    def bad(self, where: str, why: str) -> None:
        message = f"{where}: {why}"
        if self.policy == "error":
            raise DataError(message + " (set data.on_bad_record=skip to skip and count such records)")
        self.skipped += 1
        if len(self.examples) < 5:
            self.examples.append(message)
