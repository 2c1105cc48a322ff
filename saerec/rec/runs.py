"""One training run of one variant and seed: the single path that train_rec and every sweep trial take.

Both callers pass the config's ``rec`` and ``evaluate`` sections (a sweep trial's ``rec`` with its
own k, epochs and patience) to ``train_run``; only what they do with a due checkpoint differs (a
Ray Train checkpoint or a Tune trial's state file). So a sweep trial and train_rec with the same
settings and seed select the same epoch: same model factory, same seeding, same selection, same
checkpoint cadence.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor, nn

from saerec.rec.batching import LeaveOneOut, leave_one_out
from saerec.rec.grounded import ItemProfiles
from saerec.rec.metrics import item_train_counts
from saerec.rec.training import FitResult, fit, seed_everything
from saerec.rec.variants import build_model, model_spec

if TYPE_CHECKING:
    from saerec.config import EvaluateSection, RecSection

SELECT_METRIC = "ndcg@20"
SELECTION_KS = (5, 10, 20)


def selection_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """The cut-offs a run is validated at: the reported ``ks`` plus those the selection needs."""
    return tuple(sorted(set(ks) | set(SELECTION_KS)))


def split(sequences: Sequence[Sequence[int]], n_items: int, rec: RecSection, evaluate: EvaluateSection
          ) -> LeaveOneOut:
    """The leave-one-out split runs train, select and test on (``evaluate.protocol``, ``rec.max_len`` windows)."""
    return leave_one_out(sequences, n_items, rec.max_len, evaluate.protocol)


@dataclass
class TrainedRun:
    """A finished run: its model (holding the selected weights), its spec and the fit's record."""

    model: nn.Module
    spec: dict[str, Any]
    result: FitResult


EpochHook = Callable[[dict[str, Any], "dict[str, Any] | None"], None]


def train_run(variant: str, seed: int, rec: RecSection, evaluate: EvaluateSection, data: LeaveOneOut,
              intents: Tensor | None, *,
              n_items: int, profiles: ItemProfiles | None = None, device: torch.device | str = "cpu",
              resume: dict[str, Any] | None = None,
              on_epoch: EpochHook | None = None, wrap: Callable[[nn.Module], nn.Module] | None = None,
              shard: tuple[int, int] = (0, 1)) -> TrainedRun:
    """Seed, build the variant, fit with selection on valid, and load the selected weights.

    ``on_epoch(metrics, snapshot)`` runs after every epoch; ``snapshot`` is the resumable state when
    a save is due, else ``None``: once ``rec.checkpoint_seconds`` have passed since the last save, and
    always after the last epoch, so a killed run loses at most that much work and fast epochs do not
    flood storage. ``resume`` is such a snapshot. ``wrap`` may wrap the model for data parallelism
    (DDP); the returned model is the bare one. ``rec.tuned``'s entry for ``variant`` (``rec.for_model``)
    applies here, so every caller trains a model at its tuned settings.
    """
    rec = rec.for_model(variant)
    shape = None if intents is None else tuple(intents.shape)
    spec = model_spec(variant, rec.encoder(n_items), rec.intent(), shape, profiles)
    fit_cfg = rec.fit(evaluate, seed)
    seed_everything(seed)
    model = build_model(spec, intents, profiles)
    if getattr(model, "reads_profiles", False):
        model.ground_unseen(torch.as_tensor(item_train_counts(data.train, n_items)))
    model = model.to(device)
    trained = wrap(model) if wrap is not None else model
    last_saved = time.monotonic()

    def epoch_done(state: Any, snapshot: dict[str, Any]) -> None:
        nonlocal last_saved
        final = state.stopper.should_stop or state.epoch >= fit_cfg.max_epochs
        due = final or time.monotonic() - last_saved >= rec.checkpoint_seconds
        if due:
            last_saved = time.monotonic()
        if on_epoch is not None:
            on_epoch({**state.history[-1], **state.progress(fit_cfg)}, snapshot if due else None)

    result = fit(trained, data, fit_cfg, rec.max_len, device=device, resume=resume, on_epoch=epoch_done,
                 shard=shard)
    model.load_state_dict(result.best_model)
    return TrainedRun(model=model.eval(), spec=spec, result=result)
