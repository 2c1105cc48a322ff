"""Stage ``train_rec``: train every configured recommender variant over every seed on Ray Train.

One ``TorchTrainer`` run trains the (variant, seed) runs one after another, so workers start once.
Its checkpoint holds the finished runs' selected weights plus the live run's full training state;
the run folder is keyed by the stage fingerprint (``ctx.train_storage()``), so a killed stage
re-run with the same inputs resumes mid-run instead of starting over.

Reads: prepare (interactions, items), judge (the kept intents' vectors), embed (corpus text
embeddings, for KMeans-Intent). Writes: ``models/<variant>-seed<seed>.safetensors`` (the weights
selected on valid), ``intent_sets.safetensors`` and ``runs.json`` (per run: model spec, best
epoch, valid metrics, epoch times). The test set is not read here: the evaluate stage reads it once.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saerec.config import RecSection
from saerec.pipeline import Stage, StageContext, StageError, StageInput

VARIANTS = ("sasrec", "saerec", "kmeans", "noPer", "noPub", "noFus", "noEMA")
SELECTION_KS = (5, 10, 20)
SELECT_METRIC = "ndcg@20"
CHECKPOINT_FILE = "train_rec_state.pt"
CHECKPOINT_SECONDS = 30.0
JUDGE_INTENTS = "intents.safetensors"
JUDGE_FEATURES = "features.parquet"


def variant_ablation(variant: str) -> str:
    """The IntentConfig ablation name of a variant (``saerec`` and ``kmeans`` are the full model)."""
    return "full" if variant in ("saerec", "kmeans") else variant


def intent_set_of(variant: str) -> str | None:
    """Which intent matrix a variant uses: none, the judged SAE latents, or k-means centroids."""
    if variant == "sasrec":
        return None
    return "kmeans" if variant == "kmeans" else "judged"


def read_sequences(prepare: StageInput) -> tuple[np.ndarray, list[np.ndarray], int]:
    """(user ids, chronological item sequences, n_items) from the prepare stage's tables.

    The rebuilt leave-one-out split must agree with prepare's ``split`` column; a disagreement
    would mean the two stages hold different protocols, so it stops the stage.
    """
    table = prepare.read_table("interactions.parquet", ["user", "item", "position", "split"]).to_pandas()
    n_items = int(prepare.read_table("items.parquet", ["item"]).column("item").to_numpy().max())
    table = table.sort_values(["user", "position"], kind="stable")
    users, starts = np.unique(table["user"].to_numpy(), return_index=True)
    items = np.split(table["item"].to_numpy().astype(np.int64), starts[1:])
    splits = np.split(table["split"].to_numpy(), starts[1:])
    for user, labels in zip(users, splits):
        expected = ["train"] * max(len(labels) - 2, 0) + ["valid", "test"][-min(len(labels), 2):]
        if len(labels) >= 3 and list(labels) != expected:
            raise StageError(f"prepare's split for user {user} is {list(labels)}; train_rec expects "
                             "valid = second-to-last and test = last interaction")
    return users, items, n_items


def read_intent_set(judge: StageInput) -> tuple[torch.Tensor, np.ndarray]:
    """The kept intents' vectors (n, D) float32 and their SAE latent ids, from the judge stage."""
    try:
        tensors = judge.read_tensors(JUDGE_INTENTS)
    except Exception as exc:
        raise StageError(f"cannot read the intent set {judge.uri(JUDGE_INTENTS)}: {exc}") from exc
    for key in ("vectors", "latents"):
        if key not in tensors:
            raise StageError(f"{judge.uri(JUDGE_INTENTS)} has no tensor {key!r} (has: {sorted(tensors)})")
    vectors, latents = tensors["vectors"].float(), tensors["latents"].long().numpy()
    if vectors.dim() != 2 or len(vectors) != len(latents) or len(vectors) == 0:
        raise StageError(f"{judge.uri(JUDGE_INTENTS)}: expected vectors (n>0, D) and n latent ids, "
                         f"got {tuple(vectors.shape)} and {len(latents)}")
    return vectors, latents


def read_text_embeddings(embed: StageInput) -> torch.Tensor:
    """Every non-empty corpus text's embedding (empty texts are all-zero and carry no intent)."""
    table = embed.read_table("embeddings", ["vector", "tokens"])
    vectors = table.column("vector").combine_chunks()
    matrix = vectors.flatten().to_numpy().reshape(len(vectors), -1)
    return torch.from_numpy(np.ascontiguousarray(matrix[table.column("tokens").to_numpy() > 0], dtype=np.float32))


def check_config(cfg: RecSection) -> list[str]:
    if not cfg.models:
        raise StageError("rec.models is empty; allowed: " + ", ".join(VARIANTS))
    unknown = [m for m in cfg.models if m not in VARIANTS]
    if unknown:
        raise StageError(f"rec.models: unknown model {unknown[0]!r}; allowed: {', '.join(VARIANTS)}")
    if not cfg.seeds:
        raise StageError("rec.seeds must list at least one seed")
    if cfg.d % cfg.heads:
        raise StageError(f"rec.d={cfg.d} must be divisible by rec.heads={cfg.heads}")
    return list(dict.fromkeys(cfg.models))


def model_spec(variant: str, cfg: RecSection, n_items: int) -> dict[str, Any]:
    """Everything needed to rebuild a variant's model (its intent vectors travel in the weights)."""
    from saerec.rec import EncoderConfig, intent_config_for

    enc = EncoderConfig(n_items=n_items, d=cfg.d, blocks=cfg.blocks, heads=cfg.heads, max_len=cfg.max_len,
                        dropout=cfg.dropout)
    spec = {"variant": variant, "encoder": dataclasses.asdict(enc), "intent_set": intent_set_of(variant)}
    if spec["intent_set"] is not None:
        spec["intent"] = dataclasses.asdict(intent_config_for(variant_ablation(variant), cfg.k, cfg.ema_beta))
    return spec


def build_model(spec: dict[str, Any], intents: torch.Tensor | None) -> torch.nn.Module:
    """A fresh SASRec or SAERec from a ``model_spec``; ``intents`` (n, D) for SAERec only."""
    from saerec.rec import EncoderConfig, IntentConfig, SAERec, SASRec

    enc = EncoderConfig(**spec["encoder"])
    if spec["intent_set"] is None:
        return SASRec(enc)
    if intents is None:
        raise StageError(f"model {spec['variant']} needs the {spec['intent_set']} intent set")
    return SAERec(enc, intents, IntentConfig(**spec["intent"]))


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: fit each (variant, seed) run in turn, checkpointing as it goes."""
    import ray.train
    import ray.train.torch

    from saerec.rec import FitConfig, fit, leave_one_out
    from saerec.rec.training import seed_everything

    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    split = leave_one_out(config["sequences"], config["n_items"], config["max_len"])

    state: dict[str, Any] = {"done": {}, "current": None, "snapshot": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        state["restores"] = state.get("restores", 0) + 1
    last_saved = time.monotonic()

    def report(metrics: dict[str, Any], force: bool) -> None:
        nonlocal last_saved
        if not force and time.monotonic() - last_saved < CHECKPOINT_SECONDS:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                torch.save(state, Path(folder) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)
        last_saved = time.monotonic()

    for run in config["runs"]:
        name = run["name"]
        if name in state["done"]:
            continue
        fit_cfg = FitConfig(**run["fit"])
        resume = state["snapshot"] if state["current"] == name else None
        start_epoch = resume["epoch"] if resume else 0
        seed_everything(fit_cfg.seed)
        model = build_model(run["spec"], config["intents"].get(run["spec"]["intent_set"])).to(device)
        if world > 1:
            model = ray.train.torch.prepare_model(
                model, parallel_strategy_kwargs={"find_unused_parameters": run["spec"]["variant"] != "sasrec"})

        def on_epoch(fit_state: Any, snapshot: dict[str, Any], name: str = name, fit_cfg: FitConfig = fit_cfg) -> None:
            state["current"], state["snapshot"] = name, snapshot
            final = fit_state.stopper.should_stop or fit_state.epoch >= fit_cfg.max_epochs
            report({"run": name, **fit_state.history[-1]}, force=final)

        result = fit(model, split, fit_cfg, config["max_len"], device=device, resume=resume,
                     on_epoch=on_epoch, shard=(rank, world))
        state["done"][name] = {"best_epoch": result.best_epoch, "best_valid": result.best_valid,
                               "best_model": result.best_model, "history": result.history,
                               "start_epoch": start_epoch}
        state["current"], state["snapshot"] = None, None
    report({"run": "all", "done": len(state["done"])}, force=True)


def train_all(ctx: StageContext, runs: list[dict[str, Any]], sequences: list[np.ndarray], n_items: int,
              intents: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Launch (or resume) the TorchTrainer run and return the finished runs from its last checkpoint.

    A dead worker restarts the worker group (up to ``rec.max_failures`` times) from the last
    checkpoint: finished runs are kept, the run in progress goes on from its last saved epoch.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg: RecSection = ctx.cfg
    storage_path, filesystem = ctx.train_storage()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"runs": runs, "sequences": sequences, "n_items": n_items, "max_len": cfg.max_len,
                           "intents": intents, "use_gpu": cfg.use_gpu,
                           "threads": 1 if cfg.use_gpu else max(1, torch.get_num_threads() // cfg.num_workers)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=ray.train.RunConfig(name="train_rec", storage_path=storage_path, storage_filesystem=filesystem,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)))
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
    from saerec.rec.kmeans import kmeans

    cfg: RecSection = ctx.cfg
    variants = check_config(cfg)
    users, sequences, n_items = read_sequences(ctx.input("prepare"))
    intents: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    if any(intent_set_of(v) is not None for v in variants):
        judged, latents = read_intent_set(ctx.input("judge"))
        if cfg.k > len(judged):
            raise StageError(f"rec.k={cfg.k} exceeds the {len(judged)} intents the judge kept "
                             f"({ctx.input('judge').uri(JUDGE_INTENTS)}); lower rec.k or keep more verdicts (judge.keep)")
        intents["judged"] = judged
        tensors.update(judged=judged, judged_latents=torch.from_numpy(latents))
    if "kmeans" in variants:
        texts = read_text_embeddings(ctx.input("embed"))
        clusters = cfg.kmeans_clusters or len(intents["judged"])
        if clusters > len(texts):
            raise StageError(f"rec.kmeans_clusters={clusters} exceeds the {len(texts)} non-empty corpus texts")
        intents["kmeans"] = kmeans(texts, clusters, seed=ctx.seed)[0]
        tensors["kmeans"] = intents["kmeans"]
    if tensors:
        ctx.output.write_tensors("intent_sets.safetensors", tensors)

    runs = []
    for variant in variants:
        spec = model_spec(variant, cfg, n_items)
        for seed in cfg.seeds:
            fit_cfg = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size,
                       "max_epochs": cfg.max_epochs, "patience": cfg.patience, "select_metric": SELECT_METRIC,
                       "ks": SELECTION_KS, "mask_history": True, "seed": seed}
            runs.append({"name": f"{variant}-seed{seed}", "variant": variant, "seed": seed, "spec": spec,
                         "fit": fit_cfg})
    done = train_all(ctx, runs, sequences, n_items, intents)

    summary = []
    for run_info in runs:
        out = done[run_info["name"]]
        model_file = f"models/{run_info['name']}.safetensors"
        ctx.output.write_tensors(model_file, out["best_model"], metadata={"spec": json.dumps(run_info["spec"])})
        history = out["history"]
        summary.append({"name": run_info["name"], "variant": run_info["variant"], "seed": run_info["seed"],
                        "spec": run_info["spec"], "model_file": model_file, "best_epoch": out["best_epoch"],
                        "epochs": len(history), "start_epoch": out["start_epoch"],
                        "trainer_restores": out["trainer_restores"],
                        "valid": out["best_valid"],
                        "mean_epoch_seconds": float(np.mean([h["train_seconds"] for h in history])),
                        "history": history})
    ctx.output.write_json("runs.json", {"users": users.tolist(), "runs": summary})
    metrics: dict[str, Any] = {"runs": len(summary), "n_items": n_items, "users": len(users)}
    if "judged" in intents:
        metrics["n_intents"] = len(intents["judged"])
    for variant in variants:
        rows = [s for s in summary if s["variant"] == variant]
        metrics[f"{variant}_valid_{SELECT_METRIC}"] = float(np.mean([r["valid"][SELECT_METRIC] for r in rows]))
        metrics[f"{variant}_epoch_seconds"] = float(np.mean([r["mean_epoch_seconds"] for r in rows]))
    return metrics


STAGE = Stage(name="train_rec", run=run, inputs=("prepare", "embed", "judge"), sections=("rec",))
