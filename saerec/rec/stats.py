"""Statistics behind every comparison the job reports: mean with sample std over seeds, the paired
bootstrap over users, and the choice of a model on valid with its ties.

Pure functions over numbers (no models, no storage), so the rules are testable in milliseconds.
A single value has no spread: its std is ``None`` (null in JSON), never 0, so nothing can be
"beyond noise" on one seed.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}``: the sample std (n - 1), ``None`` for fewer than two values."""
    found = np.asarray(values, dtype=np.float64)
    if found.size == 0:
        raise ValueError("mean_std needs at least one value")
    return {"mean": float(found.mean()), "std": float(found.std(ddof=1)) if found.size > 1 else None,
            "n": int(found.size)}


def mean_std_of(rows: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per key: mean, sample std (None for one row) and n."""
    return {k: mean_std([r[k] for r in rows]) for k in rows[0]}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> dict[str, Any]:
    """Mean per-user difference ``a - b`` with its percentile bootstrap interval.

    ``a[i]`` and ``b[i]`` are the same user's scores under two models; users are resampled with
    replacement, the pair kept together, so the interval reflects how the difference varies over
    users rather than each model's own spread. Seeded: the same inputs give the same interval.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired_bootstrap needs two equally long, non-empty score lists, got {x.shape} and {y.shape}")
    diff = x - y
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # in blocks: (256, users) indices at a time
        rows = min(256, resamples - start)
        means[start:start + rows] = diff[rng.integers(0, diff.size, size=(rows, diff.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high), "level": level,
            "users": int(diff.size), "resamples": resamples, "seed": seed,
            "excludes_zero": bool(low > 0 or high < 0)}


def select_on_valid(valid: Mapping[str, Sequence[float]], per_user: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The model with the highest mean valid score over seeds, and the models it ties with.

    ``valid`` maps each model to its runs' valid scores (one per seed); ``per_user`` maps it to its
    per-user valid scores (seeds pooled per user by mean), every model's in the same user order.
    Another model ties with the chosen one when the gap is within valid noise by either measure:
    the gap of the means is below the larger sample std over seeds (only when both have two or
    more seeds), or the paired bootstrap interval of the per-user valid difference contains 0.
    Only valid numbers enter; test never does.
    """
    if not valid:
        raise ValueError("select_on_valid needs at least one model")
    summary = {name: mean_std(scores) for name, scores in valid.items()}
    chosen = max(summary, key=lambda name: (summary[name]["mean"], name))
    ties = []
    for name, found in summary.items():
        if name == chosen:
            continue
        stds = [summary[chosen]["std"], found["std"]]
        within_std = None not in stds and summary[chosen]["mean"] - found["mean"] < max(stds)
        interval = paired_bootstrap(per_user[chosen], per_user[name])
        if within_std or not interval["excludes_zero"]:
            ties.append({"model": name, "valid_gap": summary[chosen]["mean"] - found["mean"],
                         "within_seed_std": bool(within_std),
                         "paired_interval": [interval["low"], interval["high"]]})
    return {"selected": chosen, "valid": summary, "ties": ties}
