"""One training run of one variant and seed: the single path that train_rec and every sweep trial take.

Both callers build the same ``RunSettings`` from the config (``run_settings``) and call
``train_run``; only what they do with a due checkpoint differs (a Ray Train checkpoint or a Tune
trial's state file). So a sweep trial and train_rec with the same settings and seed select the
same epoch: same model factory, same seeding, same selection, same checkpoint cadence.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from saerec.rec.batching import LeaveOneOut, Protocol, leave_one_out
from saerec.rec.grounded import ItemProfiles
from saerec.rec.sasrec import EncoderConfig
from saerec.rec.training import FitConfig, FitResult, fit, seed_everything
from saerec.rec.variants import build_model, model_spec

SELECT_METRIC = "ndcg@20"
SELECTION_KS = (5, 10, 20)


@dataclass(frozen=True)
class RunSettings:
    """Model, optimisation and selection settings of a run.

    After an epoch a run offers its resumable state for saving once ``checkpoint_seconds`` have
    passed since the last save, and always after its last epoch: a killed run loses at most that
    much work, and fast epochs do not flood storage.
    """

    d: int = 64
    blocks: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.5
    k: int = 5
    ema_beta: float = 0.9
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 20
    ks: tuple[int, ...] = SELECTION_KS
    mask_history: bool = True
    checkpoint_seconds: float = 30.0
    protocol: Protocol = "strict"
    prefix_augment: bool = False
    bsarec_alpha: float = 0.7
    bsarec_c: int = 5

    def encoder(self, n_items: int) -> EncoderConfig:
        """The encoder settings (the variant picks the backbone, see ``model_spec``)."""
        return EncoderConfig(n_items=n_items, d=self.d, blocks=self.blocks, heads=self.heads,
                             max_len=self.max_len, dropout=self.dropout, bsarec_alpha=self.bsarec_alpha,
                             bsarec_c=self.bsarec_c)

    def fit_config(self, seed: int) -> FitConfig:
        return FitConfig(lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                         max_epochs=self.max_epochs, patience=self.patience, select_metric=SELECT_METRIC,
                         ks=self.ks, mask_history=self.mask_history, seed=seed, prefix_augment=self.prefix_augment)

    def split(self, sequences: Sequence[Sequence[int]], n_items: int) -> LeaveOneOut:
        """The leave-one-out split these runs train, select and test on (``protocol``)."""
        return leave_one_out(sequences, n_items, self.max_len, self.protocol)


def run_settings(rec: Any, evaluate: Any, max_epochs: int | None = None, patience: int | None = None) -> RunSettings:
    """The settings of a run from the ``rec`` and ``evaluate`` config sections (``max_epochs`` and
    ``patience`` override rec's, as a sweep may). Selection masks the history as the test does."""
    return RunSettings(d=rec.d, blocks=rec.blocks, heads=rec.heads, max_len=rec.max_len, dropout=rec.dropout,
                       k=rec.k, ema_beta=rec.ema_beta, lr=rec.lr, weight_decay=rec.weight_decay,
                       batch_size=rec.batch_size, max_epochs=max_epochs or rec.max_epochs,
                       patience=patience or rec.patience, ks=tuple(sorted(set(evaluate.ks) | set(SELECTION_KS))),
                       mask_history=evaluate.mask_history, checkpoint_seconds=rec.checkpoint_seconds,
                       protocol=evaluate.protocol, prefix_augment=rec.prefix_augment,
                       bsarec_alpha=rec.bsarec_alpha, bsarec_c=rec.bsarec_c)


def with_k(settings: RunSettings, k: int) -> RunSettings:
    return dataclasses.replace(settings, k=k)


@dataclass
class TrainedRun:
    """A finished run: its model (holding the selected weights), its spec and the fit's record."""

    model: nn.Module
    spec: dict[str, Any]
    result: FitResult


EpochHook = Callable[[dict[str, Any], "dict[str, Any] | None"], None]


def train_run(variant: str, seed: int, settings: RunSettings, split: LeaveOneOut, intents: Tensor | None, *,
              n_items: int, profiles: ItemProfiles | None = None, device: torch.device | str = "cpu",
              resume: dict[str, Any] | None = None,
              on_epoch: EpochHook | None = None, wrap: Callable[[nn.Module], nn.Module] | None = None,
              shard: tuple[int, int] = (0, 1)) -> TrainedRun:
    """Seed, build the variant, fit with selection on valid, and load the selected weights.

    ``on_epoch(metrics, snapshot)`` runs after every epoch; ``snapshot`` is the resumable state when
    a save is due (see ``RunSettings``), else ``None``. ``resume`` is such a snapshot. ``wrap``
    may wrap the model for data parallelism (DDP); the returned model is the bare one.
    """
    shape = None if intents is None else tuple(intents.shape)
    spec = model_spec(variant, settings.encoder(n_items), settings.k, settings.ema_beta, shape, profiles)
    fit_cfg = settings.fit_config(seed)
    seed_everything(seed)
    model = build_model(spec, intents, profiles).to(device)
    trained = wrap(model) if wrap is not None else model
    last_saved = time.monotonic()

    def epoch_done(state: Any, snapshot: dict[str, Any]) -> None:
        nonlocal last_saved
        final = state.stopper.should_stop or state.epoch >= fit_cfg.max_epochs
        due = final or time.monotonic() - last_saved >= settings.checkpoint_seconds
        if due:
            last_saved = time.monotonic()
        if on_epoch is not None:
            on_epoch({**state.history[-1], **state.progress(fit_cfg)}, snapshot if due else None)

    result = fit(trained, split, fit_cfg, settings.max_len, device=device, resume=resume, on_epoch=epoch_done,
                 shard=shard)
    model.load_state_dict(result.best_model)
    return TrainedRun(model=model.eval(), spec=spec, result=result)
