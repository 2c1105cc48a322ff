"""Which model is "the model" and how the models compare, from the per-user table (``PER_USER``: one row
per run and user with its valid and test rank and NDCG/HR at ``PAIRED_K``).

Selection: the variant with the highest mean valid NDCG@20 over seeds (``stats.select_on_valid``), its
test read after the choice. Comparisons: paired bootstraps over users on per-user NDCG@20, seeds pooled
per user by mean, on valid and test, and within each popularity bucket of the held-out item
(``saerec.rec.metrics`` defines the buckets) on test.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch

from saerec import schemas
from saerec.rec.batching import LeaveOneOut
from saerec.rec.metrics import (COLD_MAX_TRAIN, HEAD_ITEM_SHARE, POPULARITY_BUCKETS, bucket_metrics, hr_ndcg,
                                item_train_counts, popularity_buckets, rank_users, user_ndcg_hr)
from saerec.rec.runs import SELECT_METRIC
from saerec.rec.stats import mean_std, mean_std_of, paired_bootstrap, select_on_valid
from saerec.rec.variants import BASELINE, RANDOM_SET, VARIANTS

PAIRED_K = 20  # the cut-off of the per-user metrics (schemas.PER_USER) and of SELECT_METRIC


def pooled(per_user: pa.Table, split: str) -> dict[str, np.ndarray]:
    """Each variant's per-user NDCG@20 on ``split``, averaged over its seeds (rows in user order)."""
    frame = per_user.select(["variant", "user", f"{split}_ndcg@{PAIRED_K}"]).to_pandas()
    means = frame.groupby(["variant", "user"], sort=True)[f"{split}_ndcg@{PAIRED_K}"].mean()
    return {name: means.loc[name].to_numpy() for name in means.index.get_level_values(0).unique()}


def select_model(per_run: list[dict[str, Any]], valid_per_user: dict[str, np.ndarray]) -> dict[str, Any]:
    """The model: the variant with the best mean valid NDCG@20 over seeds, its ties, and its test
    (read after the choice, never for it)."""
    valid = {}
    for r in per_run:
        valid.setdefault(r["variant"], []).append(r["valid"][SELECT_METRIC])
    choice = select_on_valid(valid, valid_per_user)
    test = mean_std([r["test"][SELECT_METRIC] for r in per_run if r["variant"] == choice["selected"]])
    return {**choice, "metric": SELECT_METRIC, "chosen_on": "valid", "test": test}


def ids_counterpart(name: str, variants: list[str]) -> str | None:
    """The model among ``variants`` that ``name`` is judged against for its text: the same backbone
    on ids alone (None when ``name`` does not build items from text, or no such model ran)."""
    found = VARIANTS.get(name)
    if found is None or found.intent_set is None or found.attends:
        return None
    return next((c for c in variants if c in VARIANTS and VARIANTS[c].intent_set is None
                 and VARIANTS[c].backbone == found.backbone), None)


def compared_pairs(variants: list[str], selected: str) -> list[tuple[str, str]]:
    """The pairs evaluate compares: the selected model vs SASRec; each model whose items are built from
    text (grounded, dense) vs the same backbone on ids alone; and each variant that reads judged or every
    SAE intent vs the random-intent control of the same model kind and backbone."""
    pairs = [(selected, BASELINE)] if selected != BASELINE and BASELINE in variants else []
    for name in variants:
        ids = ids_counterpart(name, variants)
        if ids is not None and (name, ids) not in pairs:
            pairs.append((name, ids))
    for name in variants:
        found = VARIANTS.get(name)
        if found is None or found.intent_set not in ("judged", "all"):
            continue
        pairs += [(name, c) for c in variants if c in VARIANTS and VARIANTS[c].intent_set == RANDOM_SET
                  and VARIANTS[c].model == found.model and VARIANTS[c].backbone == found.backbone
                  and (name, c) not in pairs]
    return pairs


def paired_comparisons(pairs: list[tuple[str, str]], per_user: pa.Table) -> list[dict[str, Any]]:
    """Paired bootstrap of ``a - b`` on per-user NDCG@20 (seeds pooled), on test and on valid."""
    scores = {split: pooled(per_user, split) for split in ("valid", "test")}
    return [{"a": a, "b": b, "metric": f"ndcg@{PAIRED_K}",
             **{split: paired_bootstrap(scores[split][a], scores[split][b]) for split in ("valid", "test")}}
            for a, b in pairs]


def popularity_definition(counts: np.ndarray, item_buckets: np.ndarray, head_min: int,
                          user_buckets: np.ndarray) -> dict[str, Any]:
    """The buckets' thresholds and sizes: items, their share of training interactions, test users."""
    total = max(int(counts.sum()), 1)
    return {"counted_on": "training interactions (the training part of the split)",
            "cold_max_train": COLD_MAX_TRAIN, "head_item_share": HEAD_ITEM_SHARE, "head_min_train": head_min,
            "buckets": {name: {"items": int((item_buckets[1:] == i).sum()),
                               "train_share": float(counts[1:][item_buckets[1:] == i].sum() / total),
                               "test_users": int((user_buckets == i).sum())}
                        for i, name in enumerate(POPULARITY_BUCKETS)}}


def by_popularity(per_user: pa.Table, user_buckets: dict[int, int], variants: list[str], ks: list[int],
                  pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Per model and popularity bucket: users and test HR/NDCG (mean, sample std, n over seeds); per
    compared pair and bucket: the paired bootstrap of test NDCG@20 (seeds pooled per user)."""
    frame = per_user.select(["variant", "seed", "user", "test_rank"]).to_pandas()
    frame["bucket"] = frame["user"].map(user_buckets)
    models: dict[str, dict[str, Any]] = {}
    for variant in variants:
        mine = frame[frame["variant"] == variant]
        runs = [bucket_metrics(rows["test_rank"].to_numpy(), rows["bucket"].to_numpy(), ks)
                for _, rows in mine.groupby("seed", sort=True)]
        models[variant] = {name: {"users": runs[0][name]["users"],
                                  **({m: mean_std([r[name][m] for r in runs]) for m in runs[0][name] if m != "users"})}
                           for name in POPULARITY_BUCKETS}
    scores = pooled(per_user, "test")
    buckets = np.array([user_buckets[u] for u in np.unique(frame["user"].to_numpy())])
    comparisons = [{"a": a, "b": b, "metric": f"ndcg@{PAIRED_K}", "split": "test",
                    "buckets": {name: paired_bootstrap(scores[a][buckets == i], scores[b][buckets == i])
                                for i, name in enumerate(POPULARITY_BUCKETS) if (buckets == i).any()}}
                   for a, b in pairs]
    return {"models": models, "comparisons": comparisons}


def per_user_table(variant: str, seed: int, users: np.ndarray, valid_ranks: np.ndarray,
                   test_ranks: np.ndarray) -> pa.Table:
    """One run's rows of ``PER_USER``."""
    columns: dict[str, Any] = {"variant": [variant] * len(users), "seed": np.full(len(users), seed),
                               "user": users.astype(np.int32), "valid_rank": valid_ranks, "test_rank": test_ranks}
    for split, ranks in (("valid", valid_ranks), ("test", test_ranks)):
        ndcg, hit = user_ndcg_hr(ranks, PAIRED_K)
        columns[f"{split}_ndcg@{PAIRED_K}"] = ndcg
        columns[f"{split}_hr@{PAIRED_K}"] = hit
    return pa.table(columns, schema=schemas.PER_USER)


def assess(runs: Iterable[tuple[dict[str, Any], torch.nn.Module]], split: LeaveOneOut, users: np.ndarray,
           n_items: int, ks: Sequence[int], mask_history: bool = True,
           also_compare: Sequence[tuple[str, str]] = ()) -> tuple[pa.Table, dict[str, Any]]:
    """Test every trained run once and compare them as evaluate reports it (one home for the job and
    the benchmarks): ``runs`` yields each run's record (``variant``, ``seed``, ``valid`` metrics of its
    selected epoch, ``best_epoch``, ``epochs``, ``mean_epoch_seconds``, optional ``name``) with its model;
    ``users`` are the test users' ids in ``split.test`` order. Returns the ``PER_USER`` table and the
    metrics: per run, per variant (mean, sample std, n), the model chosen on valid, the paired
    comparisons (evaluate's pairs, plus ``also_compare``, e.g. a benchmark's headline pair whatever
    valid chooses) and the popularity breakdown."""
    per_run, user_rows = [], []
    counts = item_train_counts(split.train, n_items)
    item_buckets, head_min = popularity_buckets(counts)
    user_buckets = item_buckets[split.test.targets]
    for r, model in runs:
        test_ranks = rank_users(model, split.test, mask_history)
        valid_ranks = rank_users(model, split.valid, mask_history)
        per_run.append({"name": r.get("name", f"{r['variant']}-seed{r['seed']}"), "variant": r["variant"],
                        "seed": r["seed"], "best_epoch": r["best_epoch"], "epochs": r["epochs"],
                        "mean_epoch_seconds": r["mean_epoch_seconds"], "valid": r["valid"],
                        "test": hr_ndcg(test_ranks, ks)})
        user_rows.append(per_user_table(r["variant"], r["seed"], users, valid_ranks, test_ranks))
    per_user = pa.concat_tables(user_rows)
    variants = list(dict.fromkeys(r["variant"] for r in per_run))
    summary = {v: {"seeds": [r["seed"] for r in per_run if r["variant"] == v],
                   "valid": mean_std([r["valid"][SELECT_METRIC] for r in per_run if r["variant"] == v]),
                   "test": mean_std_of([r["test"] for r in per_run if r["variant"] == v]),
                   "epoch_seconds": mean_std([r["mean_epoch_seconds"] for r in per_run if r["variant"] == v])}
               for v in variants}
    selection = select_model(per_run, pooled(per_user, "valid"))
    pairs = compared_pairs(variants, selection["selected"])
    pairs += [pair for pair in also_compare if pair not in pairs and set(pair) <= set(variants)]
    popularity = {**popularity_definition(counts, item_buckets, head_min, user_buckets),
                  **by_popularity(per_user, dict(zip(users.tolist(), user_buckets.tolist())), variants, ks, pairs)}
    return per_user, {"runs": per_run, "summary": summary, "selection": selection,
                      "comparisons": paired_comparisons(pairs, per_user), "by_popularity": popularity}
