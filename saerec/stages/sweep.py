"""Stage ``sweep``: the ablation, sensitivity (k), robustness (review removal) and judge studies on Ray Tune.

Every trial reads published upstream outputs only. A study point that changes an upstream
input (another review-removal rate changes the corpus; another judge changes the intent set)
gets its upstream stages through the normal ``Runner`` under a derived run name such as
``{run}-drop10`` or ``{run}-judge-<name>``, reusing any stage whose fingerprint equals the base
run's (so another judge re-runs the judge only) and any derived output an earlier sweep
published. Tune's experiment state and each trial's training state live in ``ctx.train_storage()``,
so a killed sweep re-run with the same inputs keeps its finished trials and continues the others.

Outputs: ``results.parquet`` (one row per trial, ``schemas.sweep_results_schema``),
``summary.parquet`` (mean, sample std and n over seeds per study point, valid and test) and ``results.json`` (both, plus
where each study point's upstream outputs came from).
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
import time
from typing import Any

import numpy as np
import torch

from ray import tune

from saerec import artifacts, restore, tuning
from saerec.config import Config, RunSection, SweepSection, parse_judge
from saerec.pipeline import Runner, Stage, StageContext, StageError, StageInput, fingerprint
from saerec.rec.grounded import ItemProfiles
from saerec.rec.runs import SELECT_METRIC, run_settings
from saerec.rec.variants import build_inputs, variant
from saerec.stages import load_stage

log = logging.getLogger(__name__)
UPSTREAM = ("prepare", "embed", "train_sae", "explain", "judge", "profile")
SECTIONS = ("sweep", "rec", "evaluate", "data", "embed", "sae", "explain", "judge", "profile")
# The keys of rec and evaluate that trials read: rec.models, rec.seeds or the steering settings
# do not re-run the sweep.
REC_KEYS = ("d", "blocks", "heads", "max_len", "dropout", "ema_beta", "lr", "weight_decay", "batch_size",
            "max_epochs", "patience", "k", "kmeans_clusters", "prefix_augment", "bsarec_alpha", "bsarec_c")
EVALUATE_KEYS = ("protocol", "ks", "mask_history")


class DerivedRunner(Runner):
    """A Runner for a derived config that takes the base run's published stage whenever its
    fingerprint is the one this config would produce, and runs (and publishes) only the rest."""

    def __init__(self, cfg: Config, store: Any, base: Runner):
        super().__init__(cfg, store)
        self.base = base
        self.reused: dict[str, dict[str, Any]] = {}

    def manifest(self, stage: str) -> dict[str, Any] | None:
        return self.reused.get(stage) or super().manifest(stage)

    def run_stage(self, stage: Stage, force: bool = False) -> dict[str, Any]:
        wanted = fingerprint(stage, self.cfg, self._upstream(stage))
        base = self.base.manifest(stage.name)
        if base is not None and base.get("fingerprint") == wanted:
            self.reused[stage.name] = base
            return {**base, "skipped": True, "reused_from": self.base.cfg.run.name}
        return super().run_stage(stage, force)


def _config(ctx: StageContext, run_name: str, **sections: Any) -> Config:
    """A full Config for the Runner from this stage's sections, with some sections replaced."""
    own = {name: ctx.sections[name] for name in SECTIONS if name != "sweep"}
    return Config(run=RunSection(name=run_name), seed=ctx.seed, **{**own, **sections})


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "judge"


def _publish_upstream(ctx: StageContext, run_name: str, notes: list[str], **sections: Any) -> dict[str, StageInput]:
    """Make sure a derived run's upstream stages are published; returns them as stage inputs."""
    base = Runner(_config(ctx, ctx.run_name), ctx.store)
    runner = DerivedRunner(_config(ctx, run_name, **sections), ctx.store, base)
    found = {}
    for name in UPSTREAM:
        start = time.time()
        manifest = runner.run_stage(load_stage(name))
        how = (f"reused from {manifest['reused_from']}" if "reused_from" in manifest
               else "already published" if manifest.get("skipped") else f"ran in {time.time() - start:.1f}s")
        notes.append(f"[sweep] {run_name}/{name}: {how}")
        log.info(notes[-1])
        found[name] = StageInput(ctx.store, manifest)
    return found


def _intent_sets(ctx: StageContext, specs: list[tuning.TrialSpec], n_items: int, notes: list[str]
                 ) -> tuple[dict[str, torch.Tensor], dict[str, ItemProfiles]]:
    """Every intent matrix (and, for the grounded variants, item profiles) the grid needs, each built
    from the upstream outputs of its study point."""
    cfg: SweepSection = ctx.sections["sweep"]
    base_drop = ctx.sections["data"].review_drop
    judges = dict({"": ctx.sections["judge"]},
                  **{choice: parse_judge(choice, ctx.sections["judge"], i) for i, choice in enumerate(cfg.judges)})
    points = sorted({(s.review_drop, s.judge) for s in specs if s.intents_key is not None})
    intents: dict[str, torch.Tensor] = {}
    profiles: dict[str, ItemProfiles] = {}
    for drop, judge in points:
        if drop == base_drop and judge == "":
            inputs = ctx.inputs
        elif drop == base_drop:
            inputs = _publish_upstream(ctx, f"{ctx.run_name}-judge-{_slug(judge)}", notes, judge=judges[judge])
        else:
            data = dataclasses.replace(ctx.sections["data"], review_drop=drop)
            inputs = _publish_upstream(ctx, f"{ctx.run_name}-drop{round(drop * 100)}", notes, data=data)
        names = sorted({s.variant for s in specs if (s.review_drop, s.judge) == (drop, judge)})
        try:
            sets, point_profiles = build_inputs(names, n_items, ctx.seed, restore.sources(inputs, n_items),
                                                ctx.sections["rec"].kmeans_clusters)
        except ValueError as exc:
            raise StageError(f"sweep: {exc}") from exc
        for spec in specs:
            if (spec.review_drop, spec.judge) == (drop, judge) and spec.intents_key is not None:
                found = variant(spec.variant)
                intents[spec.intents_key] = sets[found.intent_set]
                if found.grounded:
                    profiles[spec.intents_key] = point_profiles[found.intent_set]
    return intents, profiles


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: SweepSection = ctx.sections["sweep"]
    rec = ctx.sections["rec"]
    specs = tuning.build_grid(cfg.ablations, cfg.ks, cfg.review_drops, cfg.judges, cfg.seeds,
                              default_k=rec.k, default_drop=ctx.sections["data"].review_drop)
    notes: list[str] = []
    start = time.time()
    sequences = artifacts.read_sequences(ctx.input("prepare"))
    intents, profiles = _intent_sets(ctx, specs, sequences.n_items, notes)
    for spec in specs:
        if variant(spec.variant).attends and spec.k > len(intents[spec.intents_key]):
            raise StageError(f"sweep trial {spec.trial_id}: k={spec.k} exceeds its {len(intents[spec.intents_key])} "
                             "intents; lower sweep.ks / rec.k or keep more verdicts (judge.keep)")
    upstream_seconds = time.time() - start
    tune_start = time.time()

    settings = run_settings(rec, ctx.sections["evaluate"], cfg.max_epochs, cfg.patience)
    data = tuning.SweepData(sequences=sequences.sequences, n_items=sequences.n_items, intents=intents,
                            profiles=profiles)
    resources = {"cpu": cfg.cpus_per_trial, **({"gpu": cfg.gpus_per_trial} if cfg.gpus_per_trial else {})}
    storage_path, filesystem = ctx.train_storage()
    states = tuning.TrialStates(filesystem, posixpath.join(storage_path, "trial_states"))
    trainable = tune.with_parameters(tuning.train_trial, data=data, settings=settings, states=states,
                                     resources=tuning.TrialResources(threads=max(1, int(cfg.cpus_per_trial)),
                                                                     use_gpu=cfg.gpus_per_trial > 0))
    outcome = tuning.run_sweep(trainable, specs, storage_path=storage_path, storage_filesystem=filesystem,
                               name="sweep", concurrency=cfg.concurrency, resources=resources,
                               max_failures=cfg.max_failures)
    if outcome.failed:
        listed = "; ".join(f"{trial}: {error.splitlines()[0] if error else 'failed'}"
                           for trial, error in outcome.failed[:5])
        raise StageError(f"sweep: {len(outcome.failed)} of {len(specs)} trials failed after "
                         f"{cfg.max_failures} retries ({listed}); re-run the job to retry them from their saved state")
    results = tuning.results_table(outcome.rows, settings.ks)
    summary = tuning.summary_table(results, settings.ks)
    artifacts.write_table(ctx.output, artifacts.SWEEP_RESULTS, results)
    artifacts.write_table(ctx.output, artifacts.SWEEP_SUMMARY, summary)
    artifacts.write_json(ctx.output, artifacts.SWEEP_JSON, {"protocol": settings.protocol,"trials": results.to_pylist(), "summary": summary.to_pylist(),
                                           "upstream": notes, "intent_sets": {k: list(v.shape) for k, v in intents.items()}})
    best = tuning.best_point(summary.to_pylist(), SELECT_METRIC)
    return {"protocol": settings.protocol, "trials": len(specs), "restored": outcome.restored, "seeds": len(cfg.seeds),
            "upstream_seconds": round(upstream_seconds, 3), "tune_seconds": round(time.time() - tune_start, 3),
            "trial_train_seconds": float(np.sum(results.column("train_seconds").to_numpy())),
            "trials_resumed_mid_training": int(np.sum(results.column("resumed_from_epoch").to_numpy() > 0)),
            "best_study_point": f"{best['study']}:{best['variant']}:k{best['k']}:drop{best['review_drop']}",
            f"best_valid_{SELECT_METRIC}": best[f"valid_{SELECT_METRIC}_mean"],
            f"best_test_{SELECT_METRIC}": best[f"test_{SELECT_METRIC}_mean"], "best_seeds": best["seeds"]}


STAGE = Stage(name="sweep", run=run, inputs=("prepare", "embed", "train_sae", "judge", "profile"), sections=SECTIONS,
              only_keys={"rec": REC_KEYS, "evaluate": EVALUATE_KEYS})
