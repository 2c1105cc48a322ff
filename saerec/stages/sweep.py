"""Stage ``sweep``: the ablation, sensitivity (k), robustness (review removal) and judge studies on Ray Tune.

Every trial reads published upstream outputs only. A study point that changes an upstream
input (another review-removal rate changes the corpus; another judge changes the intent set)
gets its upstream stages through the runner running this stage (``Runner.derived`` and
``run_upstream``) under a derived run name such as ``{run}-drop10`` or ``{run}-judge-<name>``,
reusing any stage whose fingerprint equals the base run's (so another judge re-runs the judge only)
and any derived output an earlier sweep published. The trials are ``saerec.workers.tune_trials``'s. Tune's experiment state and each trial's training state live in ``ctx.train_storage()``,
so a killed sweep re-run with the same inputs keeps its finished trials and continues the others.

Outputs: ``results.parquet`` (one row per trial, ``schemas.sweep_results_schema``),
``summary.parquet`` (mean, sample std and n over seeds per study point, valid and test) and ``results.json`` (both, plus
where each study point's upstream outputs came from). With ``sweep.search_models``, also the search study
(``saerec.tuning.search_grid``; one Tune experiment with its own ASHA per model, valid only):
``search.json`` (the spaces, every trial, each model's chosen settings, which ``rec.from_study`` reads)
and ``search.parquet`` (the trials); without it ``search.json`` holds no choice.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import re
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from saerec import artifacts, restore, tuning
from saerec.config import TUNABLE_KEYS, RecSection, SweepSection, parse_judge
from saerec.pipeline import Stage, StageContext, StageError, StageInput
from saerec.rec.grounded import ItemProfiles
from saerec.rec.runs import SELECT_METRIC, selection_ks
from saerec.rec.variants import build_inputs, variant
from saerec.workers import tune_trials

log = logging.getLogger(__name__)
SECTIONS = ("sweep", "rec", "evaluate", "data", "embed", "sae", "explain", "judge", "profile")
# Trials read every rec key but these (which models and seeds train_rec trains, its workers, and the
# per-model settings it trains with), so changing one of these does not re-run the sweep, and a new rec
# key re-runs it. The sweep's studies run at the section's own settings.
TRAIN_REC_ONLY = ("models", "seeds", "num_workers", "use_gpu", "tuned", "from_study")
REC_KEYS = tuple(f.name for f in dataclasses.fields(RecSection)
                 if not f.metadata.get("resource") and f.name not in TRAIN_REC_ONLY)
EVALUATE_KEYS = ("protocol", "ks", "mask_history")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "judge"


def _publish_upstream(ctx: StageContext, run_name: str, notes: list[str], **sections: Any) -> dict[str, StageInput]:
    """Make sure a derived run's upstream stages are published; returns this stage's inputs from it."""
    if ctx.runner is None:
        raise StageError("sweep: a study point with another review drop or judge runs its upstream stages, "
                         "which needs the stage to run inside a Runner")
    found = ctx.runner.derived(run_name, **sections).run_upstream(ctx.stage)
    for name, manifest in found.items():
        how = (f"reused from {manifest['reused_from']}" if "reused_from" in manifest
               else "already published" if manifest.get("skipped") else f"ran in {manifest['wall_time_s']:.1f}s")
        notes.append(f"[sweep] {run_name}/{name}: {how}")
        log.info(notes[-1])
    return {name: StageInput(ctx.store, found[name]) for name in ctx.inputs}


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
    base_drop = ctx.sections["data"].review_drop
    searched = tuning.search_grid(cfg.search_models, cfg.search_trials, {k: getattr(rec, k) for k in TUNABLE_KEYS},
                                  ctx.seed, base_drop)
    notes: list[str] = []
    start = time.time()
    sequences = artifacts.read_sequences(ctx.input("prepare"))
    needed = specs + [tuning.TrialSpec(m, rec.k, base_drop, "", ctx.seed) for m in cfg.search_models]
    intents, profiles = _intent_sets(ctx, needed, sequences.n_items, notes)
    for spec in needed:
        if variant(spec.variant).attends and spec.k > len(intents[spec.intents_key]):
            raise StageError(f"sweep trial {spec.trial_id}: k={spec.k} exceeds its {len(intents[spec.intents_key])} "
                             "intents; lower sweep.ks / rec.k or keep more verdicts (judge.keep)")
    upstream_seconds = time.time() - start
    tune_start = time.time()

    evaluate = ctx.sections["evaluate"]
    trial_rec = dataclasses.replace(rec, tuned={}, from_study=None, max_epochs=cfg.max_epochs or rec.max_epochs,
                                    patience=cfg.patience or rec.patience)
    data = tune_trials.SweepData(sequences=sequences.sequences, n_items=sequences.n_items, intents=intents,
                                 profiles=profiles)
    resources = {"cpu": cfg.cpus_per_trial, **({"gpu": cfg.gpus_per_trial} if cfg.gpus_per_trial else {})}
    storage_path, filesystem = ctx.train_storage()
    states = tune_trials.TrialStates(filesystem, posixpath.join(storage_path, "trial_states"))
    trainable = tune_trials.trainable(
        data, trial_rec, evaluate, states,
        tune_trials.TrialResources(threads=max(1, int(cfg.cpus_per_trial)), use_gpu=cfg.gpus_per_trial > 0))
    outcome = tune_trials.run_sweep(trainable, specs, storage_path=storage_path, storage_filesystem=filesystem,
                                    name="sweep", concurrency=cfg.concurrency, resources=resources,
                                    max_failures=cfg.max_failures)
    _check_failed(outcome, len(specs), cfg.max_failures)
    search = _search(ctx, searched, data, trial_rec, evaluate, states, resources) if searched else None
    ks = selection_ks(evaluate.ks)
    results = tuning.results_table(outcome.rows, ks)
    summary = tuning.summary_table(results, ks)
    artifacts.write_table(ctx.output, artifacts.SWEEP_RESULTS, results)
    artifacts.write_table(ctx.output, artifacts.SWEEP_SUMMARY, summary)
    artifacts.write_json(ctx.output, artifacts.SWEEP_JSON, {"protocol": evaluate.protocol, "trials": results.to_pylist(), "summary": summary.to_pylist(),
                                           "upstream": notes, "intent_sets": {k: list(v.shape) for k, v in intents.items()}})
    best = tuning.best_point(summary.to_pylist(), SELECT_METRIC)
    artifacts.write_json(ctx.output, artifacts.SEARCH_STUDY, search or {"chosen": {}, "trials": []})
    if search is not None:
        artifacts.write_table(ctx.output, artifacts.SEARCH_RESULTS, pa.Table.from_pylist(search["trials"]))
    searched_metrics = {} if search is None else {
        "search_trials": len(searched), "search_stopped_early": sum(t["stopped_early"] for t in search["trials"]),
        **{f"search_{model}_valid_{SELECT_METRIC}": found[f"valid_{SELECT_METRIC}"]
           for model, found in search["chosen"].items()}}
    return {**searched_metrics, "protocol": evaluate.protocol, "trials": len(specs), "restored": outcome.restored,
            "seeds": len(cfg.seeds),
            "upstream_seconds": round(upstream_seconds, 3), "tune_seconds": round(time.time() - tune_start, 3),
            "trial_train_seconds": float(np.sum(results.column("train_seconds").to_numpy())),
            "trials_resumed_mid_training": int(np.sum(results.column("resumed_from_epoch").to_numpy() > 0)),
            "best_study_point": f"{best['study']}:{best['variant']}:k{best['k']}:drop{best['review_drop']}",
            f"best_valid_{SELECT_METRIC}": best[f"valid_{SELECT_METRIC}_mean"],
            f"best_test_{SELECT_METRIC}": best[f"test_{SELECT_METRIC}_mean"], "best_seeds": best["seeds"]}


def _check_failed(outcome: tune_trials.SweepOutcome, total: int, retries: int) -> None:
    if outcome.failed:
        listed = "; ".join(f"{trial}: {error.splitlines()[0] if error else 'failed'}"
                           for trial, error in outcome.failed[:5])
        raise StageError(f"sweep: {len(outcome.failed)} of {total} trials failed after "
                         f"{retries} retries ({listed}); re-run the job to retry them from their saved state")


def _search(ctx: StageContext, searched: list[tuning.SearchSpec], data: tune_trials.SweepData, rec: RecSection,
            evaluate: Any, states: tune_trials.TrialStates, resources: dict[str, float]) -> dict[str, Any]:
    """Run the search study on Tune, one experiment per model with its own ASHA (a trial is only ever
    stopped for doing worse than the same model's other trials); returns each model's chosen settings and
    every trial's row (valid only: a trial's score is its best epoch's valid NDCG@20, stopped early or not)."""
    cfg: SweepSection = ctx.sections["sweep"]
    storage_path, filesystem = ctx.train_storage()
    threads = tune_trials.TrialResources(threads=max(1, int(cfg.cpus_per_trial)), use_gpu=cfg.gpus_per_trial > 0)
    finished = []
    for model in cfg.search_models:
        mine = [s for s in searched if s.model == model]
        outcome = tune_trials.run_sweep(
            tune_trials.trainable(data, rec, evaluate, states, threads, search=True), mine,
            storage_path=storage_path, storage_filesystem=filesystem, name=f"search-{model}",
            concurrency=cfg.concurrency, resources=resources, max_failures=cfg.max_failures,
            scheduler=tune_trials.asha(cfg.search_grace_epochs, rec.max_epochs))
        _check_failed(outcome, len(mine), cfg.max_failures)
        finished += outcome.rows
    trials = [{"trial_id": r["trial_id"], "model": r["model"], "trial": int(r["trial"]), "seed": int(r["seed"]),
               "params": {str(k): v for k, v in r["params"]}, "stopped_early": bool(r["stopped_early"]),
               "epochs": int(r.get("epochs", r.get("epoch", 0))), "best_epoch": int(r["best_epoch"]),
               f"valid_{SELECT_METRIC}": float(r[f"best_{SELECT_METRIC}"])}
              for r in sorted(finished, key=lambda r: (r["model"], r["trial"]))]
    return {"metric": f"valid_{SELECT_METRIC}", "space": {m: tuning.search_space(m) for m in cfg.search_models},
            "chosen": tuning.chosen_configurations(trials, SELECT_METRIC),
            "trials": [{**t, "params": json.dumps(t["params"], sort_keys=True)} for t in trials]}


STAGE = Stage(name="sweep", run=run, inputs=("prepare", "embed", "train_sae", "judge", "profile"), sections=SECTIONS,
              only_keys={"rec": REC_KEYS, "evaluate": EVALUATE_KEYS})
