"""Framework-free SAE training pieces: one epoch, one evaluation, the dead-latent state.

The Ray Train loop calls these with a DDP-wrapped model and a ``reduce`` callable that sums a
tensor across workers; a unit test calls them with a bare model and no ``reduce``. Either way
the numbers are corpus-level (sums are reduced, never per-worker averages averaged).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saerec.sae.metrics import activation_counts, dead_pct, density_histogram, fvu_from_sums
from saerec.sae.model import SAEOutput, TopKSAE

Reduce = Callable[[Tensor], Tensor]

BASE_LR = 1e-3
BASE_LR_LATENTS = 2**14
DEFAULT_DEAD_AFTER = 100_000
DEAD_COUNT_REFRESH_STEPS = 16


def default_lr(n_latents: int, base_lr: float = BASE_LR) -> float:
    """Adam learning rate that shrinks as 1/sqrt(F), the scaling Gao et al. found for TopK SAEs.

    Their 2e-4 at 2^14 latents is tuned for runs of billions of tokens; our corpora give a few
    thousand steps. On the Beauty item corpus (MiniLM, F=4096, k=32, 20 epochs of batch 1024)
    that scale left FVU at 0.25, 4x it reached 0.12 and 10x 0.079 (with 0.7% dead latents);
    BASE_LR = 1e-3 (5x) sits between.
    """
    if n_latents <= 0:
        raise ValueError(f"n_latents must be positive, got {n_latents}")
    return base_lr / math.sqrt(n_latents / BASE_LR_LATENTS)


def build_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over all SAE parameters (no weight decay: it would fight the sparsity)."""
    return torch.optim.Adam(model.parameters(), lr=lr)


def unwrap_sae(model: nn.Module) -> TopKSAE:
    """The TopKSAE inside a DDP (or similar) wrapper, or the model itself."""
    core = getattr(model, "module", model)
    if not isinstance(core, TopKSAE):
        raise TypeError(f"expected a TopKSAE (optionally wrapped), got {type(core).__name__}")
    return core


class TrainState:
    """Per-latent "inputs since last fired" counters that define dead latents for AuxK.

    A latent is dead once it has not fired on ``dead_after`` consecutive training inputs.
    The counters live on the model's device and are updated without host synchronisation;
    they are checkpointed with the model so a resumed run revives the same latents.
    ``n_dead`` is a host-side copy of the dead count, refreshed at each epoch start and every
    ``DEAD_COUNT_REFRESH_STEPS`` steps: one device sync per refresh instead of one per step.
    """

    def __init__(self, n_latents: int, dead_after: int = DEFAULT_DEAD_AFTER) -> None:
        if dead_after <= 0:
            raise ValueError(f"dead_after must be positive, got {dead_after}")
        self.dead_after = dead_after
        self.since_fired = torch.zeros(n_latents, dtype=torch.int64)
        self.samples_seen = torch.zeros((), dtype=torch.int64)
        self.epoch = 0
        self.step = 0
        self.n_dead = 0

    def to(self, device: torch.device | str) -> "TrainState":
        self.since_fired = self.since_fired.to(device)
        self.samples_seen = self.samples_seen.to(device)
        return self

    def dead_mask(self) -> Tensor:
        return self.since_fired >= self.dead_after

    def refresh_n_dead(self) -> int:
        self.n_dead = int(self.dead_mask().sum())
        return self.n_dead

    def update(self, counts: Tensor, n_samples: Tensor | int) -> None:
        """Record one step: ``counts`` per latent fired over ``n_samples`` inputs."""
        self.since_fired += n_samples
        self.since_fired.masked_fill_(counts.to(self.since_fired.device) > 0, 0)
        self.samples_seen += n_samples
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "since_fired": self.since_fired.cpu().clone(),
            "samples_seen": int(self.samples_seen),
            "dead_after": self.dead_after,
            "epoch": self.epoch,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        since_fired = state["since_fired"]
        if since_fired.shape != self.since_fired.shape:
            raise ValueError(
                f"TrainState since_fired has shape {tuple(since_fired.shape)}, "
                f"expected {tuple(self.since_fired.shape)}"
            )
        device = self.since_fired.device
        self.since_fired = since_fired.to(device, torch.int64).clone()
        self.samples_seen = torch.tensor(int(state["samples_seen"]), dtype=torch.int64, device=device)
        self.dead_after = int(state["dead_after"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])


@dataclass
class ReconstructionStats:
    """Streamed sums behind FVU, L0 and per-latent activation counts (float64, on device)."""

    sse: Tensor
    sum_x: Tensor
    sum_sq: Tensor
    nonzero: Tensor
    n: Tensor
    counts: Tensor

    @classmethod
    def zeros(cls, d_in: int, n_latents: int, device: torch.device | str = "cpu") -> "ReconstructionStats":
        def scalar() -> Tensor:
            return torch.zeros((), dtype=torch.float64, device=device)

        return cls(
            sse=scalar(),
            sum_x=torch.zeros(d_in, dtype=torch.float64, device=device),
            sum_sq=scalar(),
            nonzero=scalar(),
            n=scalar(),
            counts=torch.zeros(n_latents, dtype=torch.float64, device=device),
        )

    @torch.no_grad()
    def add(self, x: Tensor, out: SAEOutput) -> Tensor:
        """Accumulate one batch; returns the batch's per-latent activation counts."""
        counts = activation_counts(out.top_values, out.top_indices, len(self.counts))
        self.sse += (out.reconstruction.detach() - x).pow(2).sum()
        self.sum_x += x.sum(0)
        self.sum_sq += x.pow(2).sum()
        self.nonzero += counts.sum()
        self.n += x.shape[0]
        self.counts += counts
        return counts

    def reduced(self, reduce: Reduce | None) -> "ReconstructionStats":
        """Sum the statistics across workers with one collective call."""
        if reduce is None:
            return self
        d_in = len(self.sum_x)
        parts = [self.sse[None], self.sum_x, self.sum_sq[None], self.nonzero[None], self.n[None], self.counts]
        flat = reduce(torch.cat(parts))
        return ReconstructionStats(
            sse=flat[0],
            sum_x=flat[1 : 1 + d_in],
            sum_sq=flat[1 + d_in],
            nonzero=flat[2 + d_in],
            n=flat[3 + d_in],
            counts=flat[4 + d_in :],
        )

    def metrics(self) -> dict[str, Any]:
        n = int(self.n)
        if n == 0:
            raise ValueError("no inputs were seen: the batches iterable was empty")
        counts = self.counts.cpu().round().long()
        return {
            "fvu": fvu_from_sums(float(self.sse), self.sum_x.cpu(), float(self.sum_sq), n),
            "l0": float(self.nonzero) / n,
            "dead_pct": dead_pct(counts),
            "density_histogram": density_histogram(counts, n),
            "n_samples": n,
        }


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, x: Tensor) -> SAEOutput:
    """One optimiser step: AuxK sees the dead latents, the decoder stays unit-norm."""
    core = unwrap_sae(model)
    if state.step % DEAD_COUNT_REFRESH_STEPS == 0:
        state.refresh_n_dead()
    out = model(x, dead_mask=state.dead_mask(), n_dead=state.n_dead)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    core.project_decoder_grad()
    optimizer.step()
    core.normalize_decoder()
    return out


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Tensor],
    state: TrainState,
    reduce: Reduce | None = None,
) -> dict[str, Any]:
    """One pass over ``batches``: step, keep the untied decoder's constraints, track dead latents.

    ``dead_pct`` is over this epoch's inputs (latents that never fired); ``auxk_dead_pct`` is
    the share AuxK currently treats as dead. With ``reduce`` the per-step activation counts are
    summed across workers so every worker holds the same dead mask. Inside an epoch the loop
    waits on the device only to refresh the dead count, so the GPU queue stays full.
    """
    core = unwrap_sae(model)
    device = core.b_pre.device
    state.to(device)
    model.train()
    stats = ReconstructionStats.zeros(core.d_in, core.n_latents, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    aux_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_steps = 0
    state.refresh_n_dead()
    for batch in batches:
        x = batch.to(device, torch.float32, non_blocking=True)
        out = train_step(model, optimizer, state, x)
        counts = stats.add(x, out).double()
        n_batch = torch.full((1,), float(x.shape[0]), dtype=torch.float64, device=device)
        if reduce is not None:
            synced = reduce(torch.cat([counts, n_batch]))
            counts, n_batch = synced[:-1], synced[-1:]
        state.update(counts, n_batch[0].round().long())
        loss_sum += out.loss.detach()
        aux_sum += out.aux_loss.detach()
        n_steps += 1
    if n_steps == 0:
        raise ValueError("train_epoch got no batches")
    state.epoch += 1
    metrics = stats.reduced(reduce).metrics()
    metrics.update(
        loss=float(loss_sum) / n_steps,
        aux_loss=float(aux_sum) / n_steps,
        auxk_dead_pct=100.0 * float(state.dead_mask().double().mean()),
        steps=n_steps,
    )
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Tensor], reduce: Reduce | None = None) -> dict[str, Any]:
    """Corpus-level FVU, L0, dead %, density histogram and per-latent activation counts."""
    core = unwrap_sae(model)
    device = core.b_pre.device
    model.eval()
    stats = ReconstructionStats.zeros(core.d_in, core.n_latents, device)
    for batch in batches:
        x = batch.to(device, torch.float32, non_blocking=True)
        stats.add(x, core(x))
    stats = stats.reduced(reduce)
    metrics = stats.metrics()
    metrics["activation_counts"] = stats.counts.cpu().round().long()
    return metrics


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> dict[str, Any]:
    """Everything a resumed run needs, as plain (torch.save-able) objects."""
    core = unwrap_sae(model)
    return {
        "config": core.config.to_dict(),
        "model": {name: t.detach().cpu().clone() for name, t in core.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "train_state": state.state_dict(),
    }


def load_checkpoint_state(
    checkpoint: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    """Restore ``checkpoint_state`` output into freshly built objects (in place)."""
    core = unwrap_sae(model)
    if checkpoint["config"] != core.config.to_dict():
        raise ValueError(f"checkpoint SAE config {checkpoint['config']} does not match model {core.config.to_dict()}")
    core.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    state.load_state_dict(checkpoint["train_state"])
