"""Stage ``train_sae``: the embed stage's text embeddings -> a TopK SAE, on Ray Train.

Orchestration only: the run's settings are resolved from the config and the corpus size, the
training itself runs in ``saerec.workers.sae_train`` (data feed, train loop, checkpoints) with the
stage's Train storage, keyed by the stage fingerprint, so running the stage again after a crash
resumes from the latest checkpoint.

Outputs (see ``saerec.artifacts``): ``SAE_WEIGHTS`` and ``SAE_CONFIG`` (what
``TopKSAE.from_bytes`` loads), ``LATENT_FREQUENCY`` and ``SAE_METRICS`` (the training settings,
per-epoch history and final metrics).
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pyarrow as pa

from saerec import artifacts, schemas
from saerec.config import SaeSection
from saerec.pipeline import Stage, StageContext, StageError
from saerec.workers.sae_train import embedding_dataset, pre_bias_from_sample, read_final, resolve_run, train_on_ray


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: SaeSection = ctx.sections["sae"]
    embed = ctx.input("embed")
    texts = int(embed.metrics.get("texts", 0)) - int(embed.metrics.get("empty_texts", 0))
    d_in = int(embed.metrics.get("dim", 0))
    if texts <= 0 or d_in <= 0:
        raise StageError(f"train_sae: the embed output at {embed.uri()} reports {texts} non-empty texts of "
                         f"dimension {d_in}; nothing to train on")
    spec = resolve_run(cfg, d_in, texts, ctx.seed)
    ds = embedding_dataset(artifacts.EMBEDDINGS.path(embed), ctx.store.fs)
    spec = replace(spec, pre_bias=pre_bias_from_sample(ds, cfg.pre_bias))

    storage_path, storage_fs = ctx.train_storage()
    start = time.perf_counter()
    result = train_on_ray(ds, spec, storage_path, storage_fs, ctx.stage, cfg.num_workers, cfg.use_gpu, cfg.max_failures)
    wall = time.perf_counter() - start
    progress, (config, weights), counts = read_final(result.checkpoint)

    artifacts.write_sae(ctx.output, config, weights)
    n = int(progress["final"]["n_samples"])
    artifacts.write_table(ctx.output, artifacts.LATENT_FREQUENCY, pa.table({
        "latent": pa.array(np.arange(len(counts), dtype=np.int32)),
        "count": pa.array(counts.numpy().astype(np.int64)),
        "frequency": pa.array(counts.numpy() / n, pa.float64()),
    }, schema=schemas.LATENT_FREQUENCY))
    settings = {k: v for k, v in asdict(spec).items() if k not in ("model", "pre_bias")} | {
        "variant": cfg.variant, "pre_bias": cfg.pre_bias, "texts": texts, "num_workers": cfg.num_workers}
    artifacts.write_json(ctx.output, artifacts.SAE_METRICS, {"settings": settings, **progress})

    final, history = progress["final"], progress["history"]
    trained = sum(epoch["n_samples"] for epoch in history if epoch["epoch"] > progress["resumed_from_epoch"])
    return {
        "fvu": final["fvu"],
        "l0": final["l0"],
        "dead_pct": final["dead_pct"],
        "density_histogram": final["density_histogram"]["counts"],
        "n_latents": spec.model.n_latents,
        "k": spec.model.k,
        "variant": cfg.variant,
        "texts": n,
        "epochs": spec.epochs,
        "lr": spec.lr,
        "resumed_from_epoch": progress["resumed_from_epoch"],
        "samples_per_s": round(trained / final["train_loop_seconds"], 1) if trained else None,
        "peak_memory_mb": final["peak_memory_mb"],
        "peak_memory_of": final["peak_memory_of"],
        "fit_wall_s": round(wall, 2),
    }


STAGE = Stage(name="train_sae", run=run, inputs=("embed",), sections=("sae",))
