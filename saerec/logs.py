"""The job's messages: every module logs to a child of the ``saerec`` logger, and the job shows them
as it always has, one line per event (progress and results on stdout, errors on stderr)."""
from __future__ import annotations

import logging
import sys

ROOT = "saerec"


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
