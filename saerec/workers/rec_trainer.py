"""The Ray Train run of train_rec: one ``TorchTrainer`` trains the (variant, seed) runs one after another.

Workers start once for all runs. Each run is ``saerec.rec.runs.train_run``, the same path a sweep
trial takes. The trainer's checkpoint holds the finished runs' selected weights plus the live run's
full training state; the caller keys the storage folder by the stage fingerprint, so a killed
stage re-run with the same inputs resumes mid-run instead of starting over.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from saerec.pipeline import StageError
from saerec.rec import runs
from saerec.rec.grounded import ItemProfiles
from saerec.rec.runs import SELECT_METRIC
from saerec.rec.variants import variant
from saerec.train_progress import epoch_lines, quiet_reports

if TYPE_CHECKING:
    from saerec.config import EvaluateSection, RecSection

CHECKPOINT_FILE = "train_rec_state.pt"


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: train each (variant, seed) run in turn, checkpointing as it goes."""
    quiet_reports()
    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    rec, evaluate = config["rec"], config["evaluate"]
    split = runs.split(config["sequences"], config["n_items"], rec, evaluate)

    state: dict[str, Any] = {"done": {}, "current": None, "snapshot": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        state["restores"] = state.get("restores", 0) + 1

    def report(metrics: dict[str, Any], save: bool) -> None:
        if not save:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                torch.save(state, Path(folder) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)

    for run in config["runs"]:
        name, name_variant = run["name"], run["variant"]
        if name in state["done"]:
            continue
        resume = state["snapshot"] if state["current"] == name else None

        def on_epoch(metrics: dict[str, Any], snapshot: dict[str, Any] | None, name: str = name) -> None:
            if snapshot is not None:
                state["current"], state["snapshot"] = name, snapshot
            report({"run": name, **metrics}, save=snapshot is not None)

        def wrap(model: torch.nn.Module, sparse: bool = variant(name_variant).intent_set is not None) -> Any:
            return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": sparse})

        found = variant(name_variant)
        trained = runs.train_run(name_variant, run["seed"], rec, evaluate, split,
                                 config["intents"].get(found.intent_set),
                                 n_items=config["n_items"],
                                 profiles=config["profiles"].get(found.intent_set) if found.grounded else None,
                                 device=device, resume=resume, on_epoch=on_epoch, wrap=wrap if world > 1 else None,
                                 shard=(rank, world))
        result = trained.result
        state["done"][name] = {"spec": trained.spec, "best_epoch": result.best_epoch, "best_valid": result.best_valid,
                               "best_model": result.best_model, "history": result.history,
                               "start_epoch": resume["epoch"] if resume else 0}
        state["current"], state["snapshot"] = None, None
    report({"run": "all", "done": len(state["done"])}, save=True)


def epoch_line(metrics: dict[str, Any], names: list[str]) -> str | None:
    """The driver's line for one reported epoch (None for the closing report of all runs)."""
    if "epoch" not in metrics:
        return None
    run = metrics["run"]
    return (f"[train_rec] {run} (run {names.index(run) + 1}/{len(names)}) epoch {metrics['epoch']}/"
            f"{metrics['max_epochs']}: loss {metrics['loss']:.4f}, valid {SELECT_METRIC} "
            f"{metrics[f'valid_{SELECT_METRIC}']:.4f}, best {metrics[f'best_{SELECT_METRIC}']:.4f} (epoch "
            f"{metrics['best_epoch']}), patience {metrics['patience_left']} left, "
            f"{metrics['epoch_seconds']:.1f} s/epoch")


def train_all(storage: tuple[str, Any], rec: RecSection, evaluate: EvaluateSection, planned: list[dict[str, Any]],
              sequences: list[np.ndarray], n_items: int, intents: dict[str, torch.Tensor],
              profiles: dict[str, ItemProfiles]) -> dict[str, Any]:
    """Launch (or resume) the TorchTrainer run of the ``planned`` runs (name, variant, seed) and return
    the finished runs from its last checkpoint; ``storage`` is ``(storage_path, pyarrow filesystem)``.

    A dead worker restarts the worker group (up to ``rec.max_failures`` times) from the last
    checkpoint: finished runs are kept, the run in progress goes on from its last saved epoch.
    """
    storage_path, filesystem = storage
    names = [r["name"] for r in planned]
    with epoch_lines(lambda metrics: epoch_line(metrics, names)) as callbacks:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"runs": planned, "sequences": sequences, "n_items": n_items, "rec": rec,
                               "evaluate": evaluate, "intents": intents, "profiles": profiles,
                               "use_gpu": rec.use_gpu,
                               "threads": 1 if rec.use_gpu else max(1, torch.get_num_threads() // rec.num_workers)},
            scaling_config=ray.train.ScalingConfig(num_workers=rec.num_workers, use_gpu=rec.use_gpu),
            run_config=ray.train.RunConfig(name="train_rec", storage_path=storage_path, storage_filesystem=filesystem,
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                           failure_config=ray.train.FailureConfig(max_failures=rec.max_failures),
                                           callbacks=callbacks))
        result = trainer.fit()
    if result.checkpoint is None:
        raise StageError("train_rec: Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    missing = [r["name"] for r in planned if r["name"] not in state["done"]]
    if missing:
        raise StageError(f"train_rec: runs {missing} did not finish")
    return {name: {**out, "trainer_restores": state.get("restores", 0)} for name, out in state["done"].items()}
