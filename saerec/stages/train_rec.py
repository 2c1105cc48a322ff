"""Stage ``train_rec``: train every configured recommender variant over every seed on Ray Train.

The Ray Train run is ``saerec.workers.rec_trainer``'s; its checkpoints live in
``ctx.train_storage()``, a folder keyed by the stage fingerprint, so a killed stage re-run with the
same inputs resumes mid-run instead of starting over.

Reads: prepare (sequences), judge (the kept intents), train_sae (every latent, for ``noIde``),
embed (text embeddings, for KMeans-Intent), profile (the items' intent profiles, for the grounded
variants, and their mean text embeddings, for ``dense``). Writes the artifacts ``MODELS``, ``INTENT_SETS`` and
``RUNS``. Under the strict protocol the test set is not read here: the evaluate stage reads it
once. Under ``evaluate.protocol=paper`` epochs are selected on it, and every output says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from saerec import artifacts, restore
from saerec.config import RecSection
from saerec.pipeline import Stage, StageContext, StageError
from saerec.rec.runs import SELECT_METRIC
from saerec.rec.variants import build_inputs, variant
from saerec.workers.rec_trainer import train_all


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: RecSection = ctx.sections["rec"]
    evaluate = ctx.sections["evaluate"]
    variants = list(dict.fromkeys(cfg.models))
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
    done = train_all(ctx.train_storage(), cfg, evaluate, runs, data.sequences, data.n_items, intents, profiles)

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
    metrics: dict[str, Any] = {"protocol": evaluate.protocol, "runs": len(summary), "n_items": data.n_items,
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
