"""The sweep's study design: the grid of trials and the tables of their results (no Ray here).

The four studies (ablation, sensitivity in k, robustness to review removal, judge choice) are
one-factor sweeps around the full model's defaults; ``build_grid`` merges them so that a trial
serving several studies runs once. The Tune trials that run the grid are
``saerec.workers.tune_trials``'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from saerec.rec.stats import mean_std
from saerec.rec.variants import FULL_MODEL, NAMES, variant
from saerec.schemas import sweep_results_schema

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

