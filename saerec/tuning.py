"""The sweep's study design: the grid of trials and the tables of their results (no Ray here).

The four studies (ablation, sensitivity in k, robustness to review removal, judge choice) are
one-factor sweeps around the full model's defaults; ``build_grid`` merges them so that a trial
serving several studies runs once. The search study (``search_grid``) draws configurations per model
from a per-backbone space around the configured settings, the same number for each model, and
``chosen_configurations`` picks each model's on valid. The Tune trials that run both are
``saerec.workers.tune_trials``'s.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from saerec.artifacts import read_search_study
from saerec.config import Config, ConfigError
from saerec.pipeline import Runner, StageInput
from saerec.rec.stats import mean_std
from saerec.rec.variants import FULL_MODEL, NAMES, variant
from saerec.schemas import sweep_results_schema
from saerec.storage import Store

STUDIES = ("ablation", "sensitivity", "robustness", "judge")


@dataclass(frozen=True)
class TrialSpec:
    """One point of the grid; ``judge`` is ``""`` for the configured judge."""

    variant: str
    k: int
    review_drop: float
    judge: str
    seed: int
    studies: tuple[str, ...] = ()

    @property
    def trial_id(self) -> str:
        judge = self.judge.replace("/", "_") if self.judge else "judge"
        return f"{self.variant}-k{self.k}-drop{round(self.review_drop * 100)}-{judge}-seed{self.seed}"

    @property
    def intents_key(self) -> str | None:
        """Which intent matrix the trial needs (None: plain SASRec needs none)."""
        return intents_key(self.variant, self.review_drop, self.judge)


def intents_key(name: str, review_drop: float, judge: str) -> str | None:
    """The key of the intent matrix a variant reads at a study point (None: it reads none)."""
    intent_set = variant(name).intent_set
    if intent_set is None:
        return None
    return f"{intent_set}@drop{round(review_drop * 100)}@{judge or 'configured'}"


def build_grid(variants: Sequence[str], ks: Sequence[int], review_drops: Sequence[float],
               judges: Sequence[str], seeds: Sequence[int], *, default_k: int,
               default_drop: float) -> list[TrialSpec]:
    """The union of the four studies, each a one-factor sweep around the full model's defaults.

    A trial that belongs to several studies (the full model at the default k, drop and judge
    is in all four) runs once and lists every study it serves. A non-empty ``ks`` or
    ``review_drops`` also gets the default point, so each curve passes through the main model;
    an empty one turns that study off. The judge study always holds the configured judge
    (``""``) beside the listed alternatives.
    """
    points: dict[tuple, list[str]] = {}

    def add(study: str, variant: str, k: int, drop: float, judge: str) -> None:
        for seed in seeds:
            studies = points.setdefault((variant, k, float(drop), judge, seed), [])
            if study not in studies:
                studies.append(study)

    for variant in variants:
        add("ablation", variant, default_k, default_drop, "")
    for k in sorted(set(ks) | {default_k}) if ks else []:
        add("sensitivity", FULL_MODEL, k, default_drop, "")
    for drop in sorted(set(review_drops) | {default_drop}) if review_drops else []:
        add("robustness", FULL_MODEL, default_k, drop, "")
    for judge in ["", *judges]:
        add("judge", FULL_MODEL, default_k, default_drop, judge)
    return [TrialSpec(*key, studies=tuple(studies)) for key, studies in points.items()]


def results_table(rows: Sequence[dict[str, Any]], ks: Sequence[int]) -> pa.Table:
    """One row per trial, sorted by trial id, with the valid score used for selection and every test metric."""
    schema = sweep_results_schema(ks)
    ordered = sorted(rows, key=lambda r: r["trial_id"])
    return pa.table({name: [r[name] for r in ordered] for name in schema.names}, schema=schema)


def summary_table(results: pa.Table, ks: Sequence[int]) -> pa.Table:
    """Mean and sample standard deviation over seeds (null for one seed) of every valid and test
    metric, per study and setting; ``seeds`` is the n of every mean."""
    metrics = [f"{split}_{m}@{k}" for split in ("valid", "test") for k in ks for m in ("hr", "ndcg")]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in results.to_pylist():
        for study in row["studies"]:
            key = (study, row["variant"], row["k"], row["review_drop"], row["judge"])
            groups.setdefault(key, []).append(row)
    out: list[dict[str, Any]] = []
    for (study, variant, k, drop, judge), members in sorted(groups.items(), key=lambda kv: _study_order(kv[0])):
        entry: dict[str, Any] = {"study": study, "variant": variant, "k": k, "review_drop": drop,
                                 "judge": judge, "seeds": len(members)}
        for metric in metrics:
            spread = mean_std([m[metric] for m in members])
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = spread["mean"], spread["std"]
        out.append(entry)
    return pa.Table.from_pylist(out, schema=pa.schema([
        ("study", pa.string()), ("variant", pa.string()), ("k", pa.int32()), ("review_drop", pa.float64()),
        ("judge", pa.string()), ("seeds", pa.int64()),
        *[(f"{metric}_{stat}", pa.float64()) for metric in metrics for stat in ("mean", "std")]]))


def best_point(summary: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The study point with the highest mean *valid* ``metric`` over seeds (ties: the first in the
    table's order); its test mean is reported beside, never used to choose."""
    if not summary:
        raise ValueError("no study points to choose from")
    return max(summary, key=lambda r: r[f"valid_{metric}_mean"])


def _study_order(key: tuple) -> tuple:
    study, variant, k, drop, judge = key
    order = NAMES.index(variant) if variant in NAMES else len(NAMES)
    return (STUDIES.index(study), order, k, drop, judge)



# The search study: per-backbone spaces around the configured settings. Each entry is (kind, *args):
# ("loguniform", lo, hi), ("uniform", lo, hi) or ("choice", [values]). Every backbone searches the
# common space plus its own knobs, the rec keys named after it (``bsarec_alpha`` for ``bsarec``).
COMMON_SPACE: dict[str, tuple] = {
    "lr": ("loguniform", 1e-4, 3e-3),
    "d": ("choice", [32, 64, 128]),
    "dropout": ("uniform", 0.1, 0.6),
    "blocks": ("choice", [1, 2, 3]),
    "heads": ("choice", [1, 2, 4]),
    "weight_decay": ("choice", [0.0, 1e-6, 1e-5, 1e-4]),
}
KNOB_SPACE: dict[str, tuple] = {
    "bsarec_alpha": ("uniform", 0.1, 0.9),
    "bsarec_c": ("choice", [1, 3, 5, 7, 9]),
}


@dataclass(frozen=True)
class SearchSpec:
    """One configuration of the search study: a model, its index among the model's trials (0 is the
    configured settings, the rest are sampled) and its settings as sorted (key, value) pairs."""

    model: str
    trial: int
    seed: int
    params: tuple[tuple[str, Any], ...]
    review_drop: float = 0.0

    @property
    def trial_id(self) -> str:
        return f"search-{self.model}-t{self.trial:02d}-seed{self.seed}"

    @property
    def intents_key(self) -> str | None:
        return intents_key(self.model, self.review_drop, "")


def search_space(model: str) -> dict[str, tuple]:
    """The space a model's trials are drawn from: the common one plus its backbone's knobs."""
    backbone = variant(model).backbone
    return {**COMMON_SPACE, **{key: dim for key, dim in KNOB_SPACE.items() if key.startswith(f"{backbone}_")}}


def _draw(rng: Any, dimension: tuple) -> Any:
    kind, *args = dimension
    if kind == "loguniform":
        return float(round(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))), 8))
    if kind == "uniform":
        return float(round(rng.uniform(args[0], args[1]), 4))
    values = args[0]
    return values[int(rng.integers(len(values)))]


def search_grid(models: Sequence[str], trials: int, configured: dict[str, Any], seed: int,
                review_drop: float = 0.0) -> list[SearchSpec]:
    """``trials`` configurations per model, the same budget for each: the configured settings first
    (the anchors' published best, where the config holds them), then draws from the model's space.

    The draws are seeded by ``seed`` and the model's name, so a re-run (or a resumed study) has the
    same trials, and adding a model does not change another model's draws.
    """
    specs = []
    for model in models:
        space = search_space(model)
        rng = np.random.default_rng([seed, *model.encode()])
        seen: set[tuple] = set()
        points = [tuple(sorted((key, configured[key]) for key in space))]
        while len(points) < trials and len(seen) < 100 * trials:
            point = tuple(sorted((key, _draw(rng, dim)) for key, dim in space.items()))
            seen.add(point)
            if point not in points:
                points.append(point)
        specs += [SearchSpec(model, i, seed, point, float(review_drop)) for i, point in enumerate(points)]
    return specs


def chosen_configurations(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """Per model, the trial with the best *valid* ``metric`` (its best epoch's; ties: the lower trial
    index, so the configured settings win a tie). The search reads no test data."""
    chosen: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["model"], r["trial"])):
        best = chosen.get(row["model"])
        if best is None or row[f"valid_{metric}"] > best[f"valid_{metric}"]:
            chosen[row["model"]] = row
    return {model: {"params": dict(row["params"]), "trial_id": row["trial_id"], f"valid_{metric}": row[f"valid_{metric}"],
                    "best_epoch": row["best_epoch"], "epochs": row["epochs"]}
            for model, row in chosen.items()}


def with_study(cfg: Config, store: Store) -> Config:
    """``cfg`` with ``rec.tuned`` filled from the search study that run ``rec.from_study`` published in
    ``store`` (its sweep's chosen settings per model; entries already in ``rec.tuned`` win). Unchanged
    when ``rec.from_study`` is not set. The settings become part of the config, so train_rec's
    fingerprint holds them and a new study re-runs it."""
    name = cfg.rec.from_study
    if name is None:
        return cfg
    runner = Runner(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name)), store)
    manifest = runner.manifest("sweep")
    if manifest is None:
        raise ConfigError(f"rec.from_study={name}: run {name!r} has no published sweep in "
                          f"{store.uri(store.join(name))}; run its sweep with sweep.search_models first")
    chosen = read_search_study(StageInput(store, manifest))
    if not chosen:
        raise ConfigError(f"rec.from_study={name}: the sweep of run {name!r} ran no search study "
                          "(its sweep.search_models was empty)")
    tuned = {model: {**params, **cfg.rec.tuned.get(model, {})} for model, params in chosen.items()}
    tuned.update({m: s for m, s in cfg.rec.tuned.items() if m not in tuned})
    return dataclasses.replace(cfg, rec=dataclasses.replace(cfg.rec, tuned=tuned))
