"""One line per epoch of a Ray Train run, logged by the job's driver, so a slow run is told from a hung one.

Ray Train V2 calls each ``ray.train.UserCallback`` on its controller actor after every
``ray.train.report``. ``epoch_lines`` hands ``TorchTrainer`` such a callback, which forwards rank 0's
metrics through a ``ray.util.queue.Queue`` to a thread of the driver; that thread logs them as the
job's own lines while ``TorchTrainer.fit`` blocks the main thread. ``quiet_reports``, called in the
workers, drops Ray Train's own per-report lines (a ``TrainingReport(...)`` dump of every metric and
checkpoint path), which said the same thing unreadably.
"""
from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from queue import Empty
from typing import Any, Callable, Iterator

import ray
import ray.train
from ray.util.queue import Queue

log = logging.getLogger(__name__)

# Ray Train 2.60 names the logger of its report dumps after its module's file, not its module.
_REPORT_DUMPS = "ray.train.v2._internal.execution.context"
_CHECKPOINT_LINES = "ray.train.v2._internal.execution.storage"


class _Forward(ray.train.UserCallback):
    """On the Train controller: pass rank 0's metrics of each report on to the driver."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            self.queue.put(metrics[0])


@contextmanager
def epoch_lines(line: Callable[[dict[str, Any]], str | None]) -> Iterator[list[ray.train.UserCallback]]:
    """Callbacks for ``RunConfig(callbacks=...)``; while the block runs, each report's metrics
    become ``line(metrics)``, logged on the driver (None: nothing for that report)."""
    queue = Queue(actor_options={"num_cpus": 0})
    finished = threading.Event()

    def show() -> None:
        while True:
            try:
                metrics = queue.get(timeout=0.5)
            except Empty:
                if finished.is_set():
                    return
                continue
            except ray.exceptions.RayError:  # Ray is shutting down; the stage reports the failure
                return
            text = line(metrics)
            if text:
                log.info(text)

    thread = threading.Thread(target=show, name="train-epoch-lines", daemon=True)
    thread.start()
    try:
        yield [_Forward(queue)]
    finally:
        finished.set()
        thread.join(timeout=30)
        queue.shutdown()


def quiet_reports() -> None:
    """In a Train worker: keep Ray Train's per-report and per-checkpoint INFO lines out of the job's log."""
    dumps = sys.modules.get(_REPORT_DUMPS)
    for name in (getattr(dumps, "__file__", None), _CHECKPOINT_LINES):
        if name:
            logging.getLogger(name).setLevel(logging.WARNING)
