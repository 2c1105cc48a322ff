"""Stage ``train_rec``: train every configured recommender variant over every seed on Ray Train.

One ``TorchTrainer`` run trains the (variant, seed) runs one after another, so workers start once.
Each run is ``saerec.rec.runs.train_run``, the same path a sweep trial takes. The trainer's
checkpoint holds the finished runs' selected weights plus the live run's full training state;
the run folder is keyed by the stage fingerprint (``ctx.train_storage()``), so a killed stage
re-run with the same inputs resumes mid-run instead of starting over.

Reads: prepare (sequences), judge (the kept intents), train_sae (every latent, for ``noIde``),
embed (text embeddings, for KMeans-Intent), profile (the items' intent profiles, for the grounded
variants, and their mean text embeddings, for ``dense``). Writes the artifacts ``MODELS``, ``INTENT_SETS`` and
``RUNS``. Under the strict protocol the test set is not read here: the evaluate stage reads it
once. Under ``evaluate.protocol=paper`` epochs are selected on it, and every output says so.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer

from saerec import artifacts, restore
from saerec.config import RecSection
from saerec.pipeline import Stage, StageContext, StageError
from saerec.rec.grounded import ItemProfiles
from saerec.rec.runs import SELECT_METRIC, RunSettings, run_settings, train_run
from saerec.rec.variants import build_inputs, variant
from saerec.train_progress import epoch_lines, quiet_reports

CHECKPOINT_FILE = "train_rec_state.pt"


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: train each (variant, seed) run in turn, checkpointing as it goes."""
    quiet_reports()
    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    settings: RunSettings = config["settings"]
    split = settings.split(config["sequences"], config["n_items"])

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
        trained = train_run(name_variant, run["seed"], settings, split, config["intents"].get(found.intent_set),
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


def epoch_line(metrics: dict[str, Any], runs: list[str]) -> str | None:
    """The driver's line for one reported epoch (None for the closing report of all runs)."""
    if "epoch" not in metrics:
        return None
    run = metrics["run"]
    return (f"[train_rec] {run} (run {runs.index(run) + 1}/{len(runs)}) epoch {metrics['epoch']}/"
            f"{metrics['max_epochs']}: loss {metrics['loss']:.4f}, valid {SELECT_METRIC} "
            f"{metrics[f'valid_{SELECT_METRIC}']:.4f}, best {metrics[f'best_{SELECT_METRIC}']:.4f} (epoch "
            f"{metrics['best_epoch']}), patience {metrics['patience_left']} left, "
            f"{metrics['epoch_seconds']:.1f} s/epoch")


def train_all(ctx: StageContext, cfg: RecSection, settings: RunSettings, runs: list[dict[str, Any]],
              sequences: list[np.ndarray], n_items: int, intents: dict[str, torch.Tensor],
              profiles: dict[str, ItemProfiles]) -> dict[str, Any]:
    """Launch (or resume) the TorchTrainer run and return the finished runs from its last checkpoint.

    A dead worker restarts the worker group (up to ``rec.max_failures`` times) from the last
    checkpoint: finished runs are kept, the run in progress goes on from its last saved epoch.
    """
    storage_path, filesystem = ctx.train_storage()
    names = [r["name"] for r in runs]
    with epoch_lines(lambda metrics: epoch_line(metrics, names)) as callbacks:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"runs": runs, "sequences": sequences, "n_items": n_items, "settings": settings,
                               "intents": intents, "profiles": profiles, "use_gpu": cfg.use_gpu,
                               "threads": 1 if cfg.use_gpu else max(1, torch.get_num_threads() // cfg.num_workers)},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
            run_config=ray.train.RunConfig(name="train_rec", storage_path=storage_path, storage_filesystem=filesystem,
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                           failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                                           callbacks=callbacks))
        result = trainer.fit()
    if result.checkpoint is None:
        raise StageError("train_rec: Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    missing = [r["name"] for r in runs if r["name"] not in state["done"]]
    if missing:
        raise StageError(f"train_rec: runs {missing} did not finish")
    return {name: {**out, "trainer_restores": state.get("restores", 0)} for name, out in state["done"].items()}


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: RecSection = ctx.sections["rec"]
    variants = list(dict.fromkeys(cfg.models))
    settings = run_settings(cfg, ctx.sections["evaluate"])
    data = artifacts.read_sequences(ctx.input("prepare"))
    try:
        intents, profiles = build_inputs(variants, data.n_items, ctx.seed, restore.sources(ctx.inputs, data.n_items),
                                         cfg.kmeans_clusters)
    except ValueError as exc:
        raise StageError(f"train_rec: {exc}") from exc
    for name in sorted({variant(v).intent_set for v in variants if variant(v).attends}):
        if cfg.k > len(intents[name]):
            raise StageError(f"rec.k={cfg.k} exceeds the {len(intents[name])} intents of the {name} set "
                             f"({artifacts.INTENTS.uri(ctx.input('judge'))}); lower rec.k or keep more verdicts "
                             "(judge.keep)")
    judged_latents = artifacts.read_intent_set(ctx.input("judge")).latents if "judged" in intents else None
    artifacts.write_intent_sets(ctx.output, {k: v for k, v in intents.items() if k != "text"}, judged_latents)

    runs = [{"name": f"{v}-seed{seed}", "variant": v, "seed": seed} for v in variants for seed in cfg.seeds]
    done = train_all(ctx, cfg, settings, runs, data.sequences, data.n_items, intents, profiles)

    summary = []
    for run_info in runs:
        out = done[run_info["name"]]
        history = out["history"]
        summary.append({**run_info, "spec": out["spec"],
                        "model_file": artifacts.write_model(ctx.output, run_info["name"], out["spec"], out["best_model"]),
                        "best_epoch": out["best_epoch"], "epochs": len(history), "start_epoch": out["start_epoch"],
                        "trainer_restores": out["trainer_restores"], "valid": out["best_valid"],
                        "mean_epoch_seconds": float(np.mean([h["train_seconds"] for h in history])),
                        "history": history})
    artifacts.write_runs(ctx.output, data.users, summary)
    metrics: dict[str, Any] = {"protocol": settings.protocol, "runs": len(summary), "n_items": data.n_items,
                               "users": len(data.users)}
    if "judged" in intents:
        metrics["n_intents"] = len(intents["judged"])
    for name in variants:
        rows = [s for s in summary if s["variant"] == name]
        metrics[f"{name}_valid_{SELECT_METRIC}"] = float(np.mean([r["valid"][SELECT_METRIC] for r in rows]))
        metrics[f"{name}_epoch_seconds"] = float(np.mean([r["mean_epoch_seconds"] for r in rows]))
    return metrics


STAGE = Stage(name="train_rec", run=run, inputs=("prepare", "embed", "train_sae", "judge", "profile"),
              sections=("rec", "evaluate"), only_keys={"evaluate": ("protocol", "ks", "mask_history")})
