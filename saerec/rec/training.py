"""Framework-free training: seeded epochs over bucketed batches, early stopping on valid.

The loop is split into small resumable pieces (``FitState``, ``train_epoch``, ``fit``) so a
Ray Train worker can checkpoint after any epoch and pick up exactly where it stopped.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from saerec.rec.batching import LeaveOneOut, TrainingExamples, bucketed_batches, training_examples
from saerec.rec.metrics import evaluate


@dataclass(frozen=True)
class FitConfig:
    """Optimisation and model-selection settings (paper: Adam 1e-3 with weight decay)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 20
    select_metric: str = "ndcg@20"
    ks: tuple[int, ...] = (5, 10, 20)
    mask_history: bool = True
    eval_batch_size: int = 1024
    seed: int = 0
    bucket: bool = True
    token_weighted: bool = True
    prefix_augment: bool = False

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("max_epochs, patience and batch_size must all be >= 1")
        metric, _, k = self.select_metric.partition("@")
        if metric not in ("hr", "ndcg") or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"select_metric {self.select_metric!r} must be hr@K or ndcg@K with K in {self.ks}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable on one machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class EarlyStopping:
    """Tracks the best valid score; stops after ``patience`` epochs without improvement."""

    patience: int
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, epoch: int, score: float) -> bool:
        """Record one epoch's score; True when it is a new best."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class FitState:
    """Everything needed to resume: epoch counter, stopper, best weights, history, RNG."""

    epoch: int = 0
    stopper: EarlyStopping = field(default_factory=lambda: EarlyStopping(patience=1))
    best_model: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    rng_state: dict[str, Any] | None = None
    epoch_seconds: float = 0.0  # the last epoch's wall time, training and validation (progress only, not saved)

    def to_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A torch-serialisable snapshot including the live model and optimiser."""
        return {"epoch": self.epoch, "stopper": vars(self.stopper).copy(), "best_model": self.best_model,
                "history": self.history, "rng_state": self.rng_state,
                "model": model.state_dict(), "optimizer": optimizer.state_dict()}

    def progress(self, cfg: FitConfig) -> dict[str, Any]:
        """Where the fit stands after its last epoch, for a progress line: the bound, the best
        validation score so far, the epochs of patience left and the last epoch's wall time."""
        return {"max_epochs": cfg.max_epochs, f"best_{cfg.select_metric}": self.stopper.best_score,
                "best_epoch": self.stopper.best_epoch, "patience_left": cfg.patience - self.stopper.bad_epochs,
                "epoch_seconds": self.epoch_seconds}

    @classmethod
    def from_dict(cls, snap: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> "FitState":
        """Restore model and optimiser in place and return the loop state."""
        model.load_state_dict(snap["model"])
        optimizer.load_state_dict(snap["optimizer"])
        return cls(epoch=snap["epoch"], stopper=EarlyStopping(**snap["stopper"]), best_model=snap["best_model"],
                   history=list(snap["history"]), rng_state=snap["rng_state"])


def make_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    """Adam with (L2) weight decay, the paper's lambda ||Theta||^2 term of eq. (8)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The recommender inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, examples: TrainingExamples,
                batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu",
                shard: tuple[int, int] = (0, 1), bucket: bool = True, token_weighted: bool = True) -> float:
    """One pass over the (length-bucketed) batches; returns the per-position mean loss.

    ``token_weighted`` scales each batch's mean loss by its share of loss positions (positions
    with a target / mean per batch), so every training position weighs the same over an epoch. Without
    it, bucketing would up-weight the positions of short-sequence batches (few tokens, same
    step) against those of long histories, a different objective from random batching.
    ``shard = (rank, world)``: every worker draws the same batch order from the same RNG and
    takes every world-th batch, so data-parallel workers step in lockstep on disjoint data.
    """
    model.train()
    rank, world = shard
    total, count = 0.0, 0
    batches = list(bucketed_batches(examples, batch_size, rng, bucket))
    mean_tokens = float((examples.targets > 0).sum()) / max(len(batches), 1)
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    for seqs, lengths, targets in batches[rank:usable:world]:
        seqs, lengths, targets = seqs.to(device), lengths.to(device), targets.to(device)
        loss = model(seqs, lengths, targets)
        optimizer.zero_grad(set_to_none=True)
        n = int((targets > 0).sum())
        (loss * (n / mean_tokens) if token_weighted else loss).backward()
        optimizer.step()
        total += loss.item() * n
        count += n
    return total / max(count, 1)


@dataclass
class FitResult:
    """The selected epoch and its weights, plus the per-epoch history."""

    best_epoch: int
    best_valid: dict[str, float]
    best_model: dict[str, torch.Tensor]
    history: list[dict[str, float]]

    @property
    def mean_epoch_seconds(self) -> float:
        return float(np.mean([h["train_seconds"] for h in self.history]))


def fit(model: nn.Module, data: LeaveOneOut, cfg: FitConfig, max_len: int,
        device: torch.device | str = "cpu", resume: dict[str, Any] | None = None,
        on_epoch: Callable[[FitState, dict[str, Any]], None] | None = None,
        shard: tuple[int, int] = (0, 1)) -> FitResult:
    """Train until valid ``select_metric`` stops improving for ``patience`` epochs.

    Test data is never touched here: model selection sees the valid set only. ``on_epoch``
    receives the state and a resumable snapshot after every epoch (for checkpoints). ``model``
    may be DDP-wrapped; every worker then evaluates the same weights and stops together.
    """
    examples = training_examples(data.train, max_len, cfg.prefix_augment)
    core = unwrap_ddp(model)
    optimizer = make_optimizer(model, cfg)
    if resume is not None:
        state = FitState.from_dict(resume, core, optimizer)
    else:
        seed_everything(cfg.seed)
        state = FitState(stopper=EarlyStopping(cfg.patience))
    rng = np.random.default_rng(cfg.seed)
    if state.rng_state is not None:
        rng.bit_generator.state = state.rng_state["numpy"]
        torch.set_rng_state(state.rng_state["torch"])
    while state.epoch < cfg.max_epochs and not state.stopper.should_stop:
        start = time.perf_counter()
        loss = train_epoch(model, optimizer, examples, cfg.batch_size, rng, device, shard, cfg.bucket,
                           cfg.token_weighted)
        seconds = time.perf_counter() - start
        valid = evaluate(core, data.valid, cfg.ks, cfg.mask_history, cfg.eval_batch_size, device)
        state.epoch += 1
        if state.stopper.update(state.epoch, valid[cfg.select_metric]):
            state.best_model = copy.deepcopy({k: v.detach().cpu() for k, v in core.state_dict().items()})
        state.history.append({"epoch": state.epoch, "loss": loss, "train_seconds": seconds,
                              **{f"valid_{k}": v for k, v in valid.items()}})
        state.rng_state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
        state.epoch_seconds = time.perf_counter() - start
        if on_epoch is not None:
            on_epoch(state, state.to_dict(core, optimizer))
    if state.best_model is None:
        raise RuntimeError("fit ran no epoch (max_epochs reached before the first one)")
    best = next(h for h in state.history if h["epoch"] == state.stopper.best_epoch)
    best_valid = {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")}
    return FitResult(state.stopper.best_epoch, best_valid, state.best_model, state.history)

