"""The judge's results as tables and numbers: which latents it judges, the judged features table
(``schemas.JUDGED_FEATURES``) and the metrics of that table. Pure: no Ray, no storage."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from saerec import schemas
from saerec.intents.quality import planted_intent_recovery
from saerec.intents.verdicts import ALL_VERDICTS

DETECTION_GOOD = 0.75  # issue 31's target: this balanced accuracy for 80 % of kept intents


def judging_order(frequency: np.ndarray, max_latents: int | None) -> np.ndarray:
    """Latent positions to judge: most frequently firing first, at most ``max_latents``."""
    order = np.lexsort((np.arange(len(frequency)), -frequency))
    return order if max_latents is None else order[:max_latents]


def features_table(explained: pa.Table, results: dict[int, dict[str, Any]], keep: Sequence[str]) -> pa.Table:
    """Every explained latent with the judge's result (``results``: latent id -> the worker's
    columns); a latent not judged (``judge.max_latents``) has a null summary and verdict. A latent
    is kept when its verdict is in ``keep`` and the prescreen did not screen it out (a
    screened-out latent has no summary to show, so it is never an intent, even with "No" kept)."""
    found = [results.get(int(latent), {}) for latent in explained.column("latent").to_numpy()]
    verdict = [_text(r.get("verdict")) for r in found]
    screened = [bool(r.get("screened_out") or False) for r in found]
    kept = [v in keep and not out for v, out in zip(verdict, screened)]
    return pa.table({
        "latent": explained.column("latent"), "words": explained.column("words"),
        "scores": explained.column("scores"), "frequency": explained.column("frequency"),
        "summary": pa.array([_text(r.get("summary")) for r in found], pa.string()),
        "verdict": pa.array(verdict, pa.string()), "kept": pa.array(kept, pa.bool_()),
        "detection": pa.array([_number(r.get("detection")) for r in found], pa.float64()),
        "detection_words": pa.array([_number(r.get("detection_words")) for r in found], pa.float64()),
        "prescreen_score": pa.array([_number(r.get("prescreen_score")) for r in found], pa.float64()),
        "screened_out": pa.array(screened, pa.bool_()),
    }, schema=schemas.JUDGED_FEATURES)


def judge_metrics(features: pa.Table, keep: Sequence[str],
                  planted: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Counts per verdict, kept and screened out; mean detection and the share of kept latents at
    ``DETECTION_GOOD`` or above, for the summaries and the bare-words baseline; with the demo's
    planted intents (name -> words), their recovery by the kept latents' words."""
    kept = features.column("kept").to_numpy(zero_copy_only=False)
    counts = Counter(v for v in features.column("verdict").to_pylist() if v is not None)
    scored = [d for d in features.column("detection").to_pylist() if d is not None]
    scored_words = [d for d in features.column("detection_words").to_pylist() if d is not None]
    metrics: dict[str, Any] = {
        "kept": int(kept.sum()), "keep": list(keep),
        **{f"verdict_{v.lower().replace(' ', '_')}": counts.get(v, 0) for v in ALL_VERDICTS},
        "screened_out": int(sum(features.column("screened_out").to_pylist())),
        "detection_latents": len(scored),
        "detection_balanced_accuracy": _mean(scored), "detection_words_balanced_accuracy": _mean(scored_words),
        "detection_share_above_075": _share(scored, DETECTION_GOOD),
        "detection_words_share_above_075": _share(scored_words, DETECTION_GOOD),
    }
    if planted is not None:
        kept_words = features.filter(features.column("kept")).column("words").to_pylist()
        recovery = planted_intent_recovery(kept_words, planted)
        metrics["planted_recovery"] = recovery["recovery"]
        metrics["planted_best_purity"] = recovery["best_purity"]
    return metrics


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _share(values: list[float], at_least: float) -> float | None:
    return round(float(np.mean(np.asarray(values) >= at_least)), 4) if values else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value
