"""The job's messages: every module logs to a child of the ``saerec`` logger, and the job shows them
as it always has, one line per event (progress and results on stdout, errors on stderr)."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

ROOT = "saerec"
T = TypeVar("T")
log = logging.getLogger(f"{ROOT}.progress")


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def show_job_messages() -> None:
    """Send the ``saerec`` loggers' INFO lines to stdout and WARNING and above to stderr, as bare
    messages. Only the job's entry point calls this; a library user configures logging as they like."""
    logger = logging.getLogger(ROOT)
    if getattr(logger, "_saerec_configured", False):
        return
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger._saerec_configured = True  # type: ignore[attr-defined]


def counted(items: Iterable[T], total: int, prefix: str, noun: str, every_s: float = 30.0) -> Iterator[T]:
    """Yield ``items``, logging ``{prefix} done/total noun (pct), rate, time left`` every ``every_s``
    seconds and once at the end: a job log then shows a slow loop moving, where a progress bar
    redrawn in place shows nothing until it ends."""
    start = last = time.monotonic()
    done = shown = 0

    def line() -> str:
        elapsed = time.monotonic() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", about {(total - done) / rate:.0f} s left" if rate > 0 and done < total else ""
        share = f" ({100 * done / total:.0f}%)" if total else ""
        return f"{prefix} {done}/{total} {noun}{share}, {rate:.2f} {noun}/s{left}"

    for item in items:
        yield item
        done += 1
        if time.monotonic() - last >= every_s:
            last, shown = time.monotonic(), done
            log.info(line())
    if shown != done or not done:
        log.info(line())
