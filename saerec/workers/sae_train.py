"""The SAE's Ray Train execution: the data feed, the per-worker train loop and the checkpoint format.

Ray Data streams the embedding shards from storage into the Train workers
(``get_dataset_shard``), which keep their shard on the training device after the first pass
unless ``sae.cache_shard`` is false (see ``ShardFeed``); the driver only ever holds a small
sample for the pre-bias. Every ``sae.checkpoint_every`` epochs (default: each) rank 0 reports
a checkpoint (model, optimizer, dead-latent counters, metric history) to the Train storage it
is given: training again under the same storage finds those checkpoints and resumes from the
latest one. A last pass over the corpus with the final model gives the corpus-level FVU, L0,
dead % and each latent's activation frequency; the final checkpoint holds the model as its own
``TopKSAE.to_bytes`` gives it, which ``read_final`` hands back.
"""
from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data import ExecutionOptions
from ray.train.torch import TorchTrainer
from safetensors.torch import load, save_file

from saerec import artifacts
from saerec.config import SaeSection
from saerec.pipeline import StageError
from saerec.sae import (SAEConfig, TopKSAE, TrainState, build_optimizer, checkpoint_state, data_centre, default_lr,
                        evaluate, load_checkpoint_state, num_latents, train_epoch)
from saerec.sae.training import unwrap_sae
from saerec.train_progress import epoch_lines, quiet_reports

PRE_BIAS_SAMPLE = 8192
SHUFFLE_BUFFER_BATCHES = 4
TRAINING_FILE = "training.pt"
PROGRESS_FILE = "progress.json"
MODEL_CONFIG_FILE = "model_config.json"  # the final model's TopKSAE.to_bytes(), inside the checkpoint
MODEL_WEIGHTS_FILE = "model.safetensors"
COUNTS_FILE = "activation_counts.safetensors"


@dataclass(frozen=True)
class SaeRun:
    """Everything the Train workers need, resolved on the driver; ``asdict`` of it is JSON-able."""

    model: SAEConfig
    lr: float
    epochs: int
    batch_size: int
    dead_after: int
    seed: int
    cache_shard: bool
    checkpoint_every: int
    pre_bias: list[float] | None


def resolve_run(cfg: SaeSection, d_in: int, n_texts: int, seed: int) -> SaeRun:
    """Turn the config section and the corpus size into concrete SAE settings."""
    n_latents = cfg.n_latents or num_latents(n_texts)
    if cfg.k > n_latents:
        raise StageError(f"sae.k={cfg.k} exceeds the number of latents {n_latents} (sae.n_latents)")
    model = SAEConfig(d_in=d_in, n_latents=n_latents, k=cfg.k, tied=cfg.variant == "tied",
                      aux_k=min(cfg.aux_k, n_latents) if cfg.aux_k > 0 else None, aux_coef=cfg.aux_coef)
    return SaeRun(
        model=model,
        lr=cfg.lr or default_lr(n_latents),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        dead_after=cfg.dead_after or n_texts,
        seed=seed,
        cache_shard=cfg.cache_shard,
        checkpoint_every=cfg.checkpoint_every,
        pre_bias=None,
    )


def vector_matrix(batch: pa.Table) -> dict[str, np.ndarray]:
    """Non-empty texts' vectors as one (rows, dim) float32 tensor column, which Ray hands to Torch
    without per-row Python objects."""
    return {"vector": artifacts.nonempty_vectors(batch)[1]}


def embedding_dataset(path: str, filesystem: Any):
    """The non-empty text embeddings as a Ray Dataset with one (dim,) tensor column ``vector``.

    Block order is preserved so a resumed run sees the same batches as an uninterrupted one.
    """
    ds = ray.data.read_parquet(path, filesystem=filesystem, columns=["vector", "tokens"])
    ds = ds.map_batches(vector_matrix, batch_format="pyarrow", batch_size=None)
    ds.context.execution_options.preserve_order = True
    # Every epoch re-runs the dataset inside Ray Train's split coordinator, whose progress bars
    # would flood a job's log; the epochs are reported by Ray Train itself.
    ds.context.enable_progress_bars = False
    return ds


def pre_bias_from_sample(ds, method: str) -> list[float] | None:
    """b_pre from the first PRE_BIAS_SAMPLE embeddings (a bounded take, never the corpus)."""
    if method == "zero":
        return None
    sample = torch.tensor(ds.take_batch(PRE_BIAS_SAMPLE, batch_format="numpy")["vector"])
    return data_centre(sample, method).tolist()


# -- inside the Train workers ----------------------------------------------------------------------


def train_loop(config: dict[str, Any]) -> None:
    """Per-worker loop: resume if a checkpoint exists, train, checkpoint every epoch, evaluate."""
    quiet_reports()
    run = SaeRun(**{**config, "model": SAEConfig.from_dict(config["model"])})
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(run.seed)

    model = TopKSAE(run.model)
    if run.pre_bias is not None:
        model.set_pre_bias(torch.tensor(run.pre_bias))
    model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model, run.lr)
    state = TrainState(run.model.n_latents, dead_after=run.dead_after)
    history: list[dict[str, Any]] = []
    resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, TRAINING_FILE), map_location="cpu", weights_only=True)
            with open(os.path.join(folder, PROGRESS_FILE)) as handle:
                history = json.load(handle)["history"]
        load_checkpoint_state(saved, model, optimizer, state)
        resumed_from = state.epoch

    reduce = _all_reduce if world > 1 else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    feed = ShardFeed(ray.train.get_dataset_shard("train"), run, device)
    load_seconds = time.perf_counter() - start

    loop_start = time.perf_counter()
    for epoch in range(state.epoch, run.epochs):
        start = time.perf_counter()
        metrics = train_epoch(model, optimizer, feed.epoch(epoch), state, reduce)
        seconds = time.perf_counter() - start
        metrics.update(epoch=epoch + 1, seconds=round(seconds, 3),
                       samples_per_s=round(metrics["n_samples"] / seconds, 1))
        history.append(metrics)
        save = (epoch + 1) % run.checkpoint_every == 0 and epoch + 1 < run.epochs
        _report(rank, metrics, model, optimizer, state, history, resumed_from, with_checkpoint=save)

    loop_seconds = time.perf_counter() - loop_start
    final = evaluate(model, feed.once(), reduce)
    counts = final.pop("activation_counts")
    final.update(peak_memory_mb=_peak_memory_mb(device), peak_memory_of=device.type,
                 resumed_from_epoch=resumed_from, load_seconds=round(load_seconds, 3),
                 train_loop_seconds=round(loop_seconds, 3))
    _report(rank, {"final": True, **final}, model, optimizer, state, history, resumed_from, with_checkpoint=True,
            final={"metrics": final, "counts": counts})


def epoch_seed(seed: int, epoch: int) -> int:
    """One shuffle seed per (run seed, epoch), so any epoch's order can be replayed alone."""
    return seed * 100_003 + epoch


def epoch_order(n_rows: int, seed: int, epoch: int):
    """The row permutation of a cached shard in one epoch (CPU generator: the same on any device)."""
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


class ShardFeed:
    """This worker's batches, from ``get_dataset_shard``: cached or streamed every pass.

    Cached (the default): one streamed pass fills a tensor on the training device, then each
    epoch walks a permutation seeded by (seed, epoch). Re-running the Ray Data pipeline every
    epoch costs far more than an SAE epoch on a GPU, and a seeded permutation is a full shuffle
    that a resumed run replays exactly. Streamed (``sae.cache_shard=false``, for shards larger
    than the worker's memory): every epoch re-reads the shard with a seeded local shuffle buffer.
    """

    def __init__(self, shard, run: SaeRun, device) -> None:
        self.shard = shard
        self.run = run
        self.device = device
        self.cached = torch.cat(list(self._stream(None))) if run.cache_shard else None

    def _stream(self, epoch: int | None):
        shuffle = {} if epoch is None else {
            "local_shuffle_buffer_size": self.run.batch_size * SHUFFLE_BUFFER_BATCHES,
            "local_shuffle_seed": self._seed(epoch),
        }
        for batch in self.shard.iter_torch_batches(batch_size=self.run.batch_size, dtypes=torch.float32,
                                                   device=self.device, **shuffle):
            yield batch["vector"]

    def _seed(self, epoch: int) -> int:
        return epoch_seed(self.run.seed, epoch)

    def epoch(self, epoch: int):
        """The shuffled batches of one training epoch."""
        if self.cached is None:
            return self._stream(epoch)
        order = epoch_order(len(self.cached), self.run.seed, epoch).to(self.device)
        return (self.cached[order[i : i + self.run.batch_size]] for i in range(0, len(order), self.run.batch_size))

    def once(self):
        """Every row once, in order: the final evaluation pass."""
        if self.cached is None:
            return self._stream(None)
        return self.cached.split(self.run.batch_size)


def _all_reduce(tensor):
    dist.all_reduce(tensor)
    return tensor


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _report(rank: int, metrics: dict[str, Any], model, optimizer, state, history: list[dict[str, Any]],
            resumed_from: int, with_checkpoint: bool, final: dict[str, Any] | None = None) -> None:
    """Every worker reports; rank 0 attaches the checkpoint (and, with ``final``, the outputs).

    Uploads are synchronous: once an epoch's report returns, a crash can only lose later epochs.
    """
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool, str))}
    if rank != 0 or not with_checkpoint:
        ray.train.report(scalars)
        return
    folder = tempfile.mkdtemp(prefix="sae-checkpoint-")
    torch.save(checkpoint_state(model, optimizer, state), os.path.join(folder, TRAINING_FILE))
    progress: dict[str, Any] = {"history": history, "resumed_from_epoch": resumed_from}
    if final is not None:
        progress["final"] = final["metrics"]
        for name, data in zip((MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE), unwrap_sae(model).to_bytes()):
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(data)
        save_file({"counts": final["counts"]}, os.path.join(folder, COUNTS_FILE))
    with open(os.path.join(folder, PROGRESS_FILE), "w") as handle:
        json.dump(progress, handle)
    ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(folder),
                     delete_local_checkpoint_after_upload=True)


# -- on the driver ---------------------------------------------------------------------------------


def epoch_line(metrics: dict[str, Any], epochs: int) -> str | None:
    """The driver's line for one reported epoch (None for the final evaluation's report)."""
    if metrics.get("final"):
        return None
    return (f"[train_sae] epoch {metrics['epoch']}/{epochs}: loss {metrics['loss']:.4f}, fvu {metrics['fvu']:.4f}, "
            f"dead {metrics['dead_pct']:.1f}%, {metrics['seconds']:.2f} s/epoch")


def train_on_ray(ds, run: SaeRun, storage_path: str, storage_filesystem: Any, name: str, num_workers: int,
        use_gpu: bool, max_failures: int = 0):
    """Train on ``ds`` with Ray Train; resumes from the checkpoints under (storage_path, name).

    A worker that dies mid-run makes Ray Train restart the worker group up to ``max_failures``
    times, each restart resuming from the last checkpoint.
    """
    with epoch_lines(lambda metrics: epoch_line(metrics, run.epochs)) as callbacks:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=asdict(run),
            scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=ray.train.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_filesystem,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                failure_config=ray.train.FailureConfig(max_failures=max_failures),
                callbacks=callbacks,
            ),
            datasets={"train": ds},
            dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        )
        result = trainer.fit()
    if result.checkpoint is None:
        raise StageError(f"train_sae: Ray Train finished without a checkpoint under {storage_path}/{name}")
    return result


def read_final(checkpoint) -> tuple[dict[str, Any], tuple[bytes, bytes], torch.Tensor]:
    """(progress, the model's ``to_bytes()``, activation counts) from the final checkpoint, file by file."""
    fs, root = checkpoint.filesystem, checkpoint.path

    def read(name: str) -> bytes:
        with fs.open_input_stream(f"{root}/{name}") as src:
            return src.read()

    progress = json.loads(read(PROGRESS_FILE))
    if "final" not in progress:
        raise StageError(f"train_sae: the latest checkpoint {root} is not a final one")
    return progress, (read(MODEL_CONFIG_FILE), read(MODEL_WEIGHTS_FILE)), load(read(COUNTS_FILE))["counts"]
