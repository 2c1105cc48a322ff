"""One module per pipeline stage; each exposes ``STAGE``. ``STAGE_ORDER`` is the job's order."""
from __future__ import annotations

import importlib

from saerec.pipeline import Stage

STAGE_ORDER: tuple[str, ...] = ("prepare", "embed", "train_sae", "explain", "judge", "profile", "train_rec", "evaluate", "sweep",
                                 "report")


def load_stage(name: str) -> Stage:
    if name not in STAGE_ORDER:
        raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_ORDER)}")
    return importlib.import_module(f"saerec.stages.{name}").STAGE
