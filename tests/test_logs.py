"""Progress lines: a loop the job waits on says how far it is, so a slow stage is told from a hung one."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from saerec.logs import counted


@contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The INFO messages of logger ``name`` while the block runs, however the job's logging is set up."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, handler = logging.getLogger(name), Collect()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_counted_logs_done_over_total_with_a_rate_and_a_closing_line():
    with logged("saerec.progress") as lines:
        assert list(counted(iter("abcd"), 4, "[judge]", "latents", every_s=0.0)) == list("abcd")
    assert [line.split(",")[0] for line in lines] == ["[judge] 1/4 latents (25%)", "[judge] 2/4 latents (50%)",
                                                     "[judge] 3/4 latents (75%)", "[judge] 4/4 latents (100%)"]
    assert all(" latents/s" in line for line in lines)
    assert "left" in lines[0] and "left" not in lines[-1]


def test_counted_closes_with_one_line_when_nothing_came_between_intervals():
    with logged("saerec.progress") as lines:
        assert list(counted(range(3), 3, "[judge]", "latents", every_s=3600.0)) == [0, 1, 2]
        assert list(counted([], 0, "[judge]", "latents")) == []
    assert [line.split(",")[0] for line in lines] == ["[judge] 3/3 latents (100%)", "[judge] 0/0 latents"]
