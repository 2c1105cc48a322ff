"""Stage ``evaluate``: test every selected model once, choose "the model" on valid, explain its
lists, and run the steering study.

Reads: train_rec (selected models), prepare (sequences, item texts), judge (intent summaries).
Writes the artifacts ``TEST_METRICS`` (per run; mean, sample std and n per variant over seeds; the
model chosen on valid with its ties; paired bootstrap intervals of the comparisons), ``PER_USER``
(every run's valid and test rank per user), ``RECOMMENDATIONS`` (per test user: top-N items, the
held-out item, the personal and public intents with their summaries, the branch weights; for a
grounded model each item's intents by contribution) and ``STEERING`` (for a grounded model a
dose-response over steering strengths, on valid and on test; the strength is chosen on valid; with
prepare's item categories, also the share of listed items in the query's category, an outside label).

Selection: "the model" is the variant with the highest mean valid NDCG@20 over seeds (each run's
selected-epoch valid score from train_rec); its test is reported once. A variant within valid noise
of it ties (``saerec.rec.stats.select_on_valid``). Comparisons (the selected model vs SASRec, each
variant reading judged or every SAE intent vs its random-intent control of the same model kind)
are paired bootstraps over users on per-user NDCG@20, seeds pooled per user by mean, on test and
on valid. The computations live in ``saerec.rec.comparisons``, ``saerec.rec.metrics`` and
``saerec.rec.attribution``; this stage reads, calls them and writes.

Popularity (``by_popularity`` in ``TEST_METRICS``): every model's test metrics per bucket of the
held-out item's training frequency (head, tail, cold; ``saerec.rec.metrics`` defines them), mean,
sample std and n over seeds, and the same paired comparisons within each bucket, on test.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from saerec import artifacts, restore, schemas
from saerec.config import EvaluateSection
from saerec.pipeline import Stage, StageContext, StageError
from saerec.rec import leave_one_out
from saerec.rec.attribution import (category_flags, cheapest_effect, explain_grounded, explain_users,
                                    grounded_steering_study, match_texts, match_words, steering_category,
                                    steering_study, top_items)
from saerec.rec.comparisons import assess
from saerec.rec.runs import SELECT_METRIC
from saerec.rec.variants import EXPLAIN_ORDER, attends, is_grounded

EXPLAINED_INTENTS_PER_ITEM = 3


def pick_explained(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run whose lists get explained: the full SAERec if trained, else the closest variant."""
    for variant in EXPLAIN_ORDER:
        found = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
        if found:
            return found[0]
    return None


def fusion_weights(run: dict[str, Any] | None, weights: list[list[float]]) -> dict[str, float]:
    """Each branch's adaptive-fusion weight, averaged over test users: how much the model uses its
    intents (weights near 0 on both intent branches mean it has learned to ignore them)."""
    intent = (run or {}).get("spec", {}).get("intent") or {}
    rows = [w for w in weights if w]
    if not intent.get("fusion") or not rows:
        return {}
    names = ["self"] + [branch for branch in ("personal", "public") if intent.get(branch)]
    mean = np.asarray(rows, dtype=np.float64).mean(axis=0)
    return {f"fusion_weight_{name}": float(w) for name, w in zip(names, mean)}


def recommendations_table(model: torch.nn.Module, run: dict[str, Any] | None, users: np.ndarray,
                          test: Any, latents: np.ndarray | None, summaries: dict[int, str],
                          cfg: EvaluateSection) -> pa.Table:
    """One row per test user: top-N, the held-out item, and the intents behind the list: SAERec's
    personal and public intents, or a grounded model's intents of each recommended item."""
    empty = [[]] * len(test)
    personal, public, weights = empty, empty, empty
    item_intents, item_contributions, item_share = empty, empty, empty
    if run is not None and is_grounded(run["spec"]):
        out = explain_grounded(model, test.inputs, test.lengths, cfg.top_n, EXPLAINED_INTENTS_PER_ITEM,
                               cfg.mask_history)
        ids = np.append(np.arange(model.n_intents) if latents is None else latents, -1)  # -1: an empty slot
        item_intents = ids[out["intents"]].tolist()
        item_contributions = out["contributions"].tolist()
        item_share = out["intent_share"].tolist()
        items = out["items"]
    elif run is not None and attends(run["spec"]):
        out = explain_users(model, test.inputs, test.lengths, cfg.top_n, cfg.mask_history)
        ids = latents if run["spec"]["intent_set"] == "judged" else np.arange(model.n_intents)
        personal = ids[out["personal"]].tolist()
        public = [ids[out["public"]].tolist()] * len(test)
        weights = out["weights"].tolist()
        items = out["items"]
    else:
        items = top_items(model, test.inputs, test.lengths, cfg.top_n, cfg.mask_history)

    def names(rows: list[list[int]]) -> list[list[str | None]]:
        return [[summaries.get(i) for i in row] for row in rows]

    return pa.table({
        "user": pa.array(users[test.users], pa.int32()),
        "target": pa.array(test.targets, pa.int32()),
        "items": pa.array(items.tolist(), pa.list_(pa.int32())),
        "hit": pa.array((items == test.targets[:, None]).any(axis=1)),
        "personal_intents": pa.array(personal, pa.list_(pa.int64())),
        "personal_summaries": pa.array(names(personal), pa.list_(pa.string())),
        "public_intents": pa.array(public, pa.list_(pa.int64())),
        "public_summaries": pa.array(names(public), pa.list_(pa.string())),
        "branch_weights": pa.array(weights, pa.list_(pa.float32())),
        "item_intents": pa.array(item_intents, pa.list_(pa.list_(pa.int64()))),
        "item_intent_summaries": pa.array([names(row) for row in item_intents], pa.list_(pa.list_(pa.string()))),
        "item_contributions": pa.array(item_contributions, pa.list_(pa.list_(pa.float32()))),
        "item_intent_share": pa.array(item_share, pa.list_(pa.float32())),
    }, schema=schemas.RECOMMENDATIONS)


def steering(model: torch.nn.Module, run: dict[str, Any] | None, valid: Any, test: Any, latents: np.ndarray | None,
             summaries: dict[int, str], item_texts: list[str | None], cfg: EvaluateSection,
             labels: dict[int, list[str]] | None = None, words: dict[int, list[str]] | None = None) -> dict[str, Any]:
    """Boost the intents that match ``evaluate.steering_query`` (by summary, by top ``words`` or
    either, ``evaluate.steering_match``): for SAERec, count the
    items whose text matches in the lists; for a grounded model, the dose-response over
    ``evaluate.steering_strengths`` of the share of listed items carrying the boosted intents, on
    ``valid`` (which picks the strongest level costing at most 1 % NDCG) and on ``test`` (reported),
    and, with item category ``labels``, of the share of listed items in the query's category."""
    query = cfg.steering_query
    if not query:
        return {"skipped": "evaluate.steering_query is not set"}
    if run is None or latents is None:
        return {"query": query, "skipped": "the explained model reads no judged or SAE intents"}
    hits = np.zeros(len(latents), dtype=bool)
    if cfg.steering_match in ("summaries", "both"):
        hits |= match_texts([summaries.get(int(l)) for l in latents], query)
    if cfg.steering_match in ("words", "both"):
        hits |= match_words([(words or {}).get(int(l), [])[:cfg.steering_top_words] for l in latents], query)
    matched = np.flatnonzero(hits)
    base = {"query": query, "model": run["name"], "matched_by": cfg.steering_match,
            "matched_intents": [int(latents[i]) for i in matched],
            "matched_summaries": [summaries.get(int(latents[i])) for i in matched]}
    if len(matched) == 0:
        where = {"summaries": "intent summary", "words": "intent's top words", "both": "intent summary or top words"}
        return {**base, "skipped": f"no {where[cfg.steering_match]} mentions {query!r}"}
    if is_grounded(run["spec"]):
        target = steering_category(labels, query, cfg.steering_category)
        flags = (category_flags(labels, target["category"], model.profile_ids.shape[0] - 1)
                 if "category" in target else None)
        study = grounded_steering_study(model, test, matched.tolist(), cfg.steering_strengths, cfg.top_n,
                                        cfg.mask_history, category=flags)
        on_valid = grounded_steering_study(model, valid, matched.tolist(), cfg.steering_strengths, cfg.top_n,
                                           cfg.mask_history, category=flags)
        metric = f"ndcg@{cfg.top_n}"
        if flags is not None:
            target["category_items"] = int(flags.sum())
        return {**base, **target, **study, "valid_dose_response": on_valid["dose_response"],
                "kind": "grounded dose-response",
                "within_1pct_cost": cheapest_effect(on_valid["dose_response"], study["dose_response"], metric)}
    flags = np.concatenate([[False], match_texts(item_texts, query)])
    study = steering_study(model, test.inputs, test.lengths, matched.tolist(), cfg.steering_boost, flags,
                           cfg.top_n, cfg.mask_history)
    return {**base, "kind": "SAERec boost", "matching_items": int(flags.sum()), **study}


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: EvaluateSection = ctx.sections["evaluate"]
    train_rec = ctx.input("train_rec")
    trained_under = train_rec.metrics["protocol"]
    if trained_under != cfg.protocol:
        raise StageError(f"evaluate.protocol={cfg.protocol} but train_rec selected its models under {trained_under!r}; "
                         "re-run train_rec under the same protocol")
    runs = artifacts.read_runs(train_rec)
    data = artifacts.read_sequences(ctx.input("prepare"))
    max_len = runs[0]["spec"]["encoder"]["max_len"]
    split = leave_one_out(data.sequences, data.n_items, max_len, cfg.protocol)

    users = np.asarray(data.users)[split.test.users]
    restored = ((r, restore.rec_model(train_rec, r)) for r in ctx.progress(runs, total=len(runs), desc="evaluate"))
    per_user, assessed = assess(restored, split, users, data.n_items, cfg.ks, cfg.mask_history)
    artifacts.write_table(ctx.output, artifacts.PER_USER, per_user)
    artifacts.write_json(ctx.output, artifacts.TEST_METRICS, {"protocol": cfg.protocol, "ks": cfg.ks,
                                                              "mask_history": cfg.mask_history, **assessed})
    selection, summary, popularity = assessed["selection"], assessed["summary"], assessed["by_popularity"]

    explained = pick_explained(runs) or sorted(runs, key=lambda r: (r["variant"], r["seed"]))[0]
    model = restore.rec_model(train_rec, explained)
    latents, summaries = None, {}
    if explained["spec"]["intent_set"] == "judged":
        latents = artifacts.read_judged_latents(train_rec)
        summaries = artifacts.read_summaries(ctx.input("judge"))
    elif explained["spec"]["intent_set"] == "all":  # intent i is SAE latent i
        latents = np.arange(explained["spec"]["intent_shape"][0])
        summaries = artifacts.read_summaries(ctx.input("judge"))
    table = recommendations_table(model, explained, np.asarray(data.users), split.test, latents, summaries, cfg)
    artifacts.write_table(ctx.output, artifacts.RECOMMENDATIONS, table)

    texts = artifacts.read_item_texts(ctx.input("prepare"), data.n_items)
    words = (artifacts.read_latent_words(ctx.input("judge"))
             if latents is not None and cfg.steering_query and cfg.steering_match != "summaries" else None)
    study = steering(model, explained, split.valid, split.test, latents, summaries, texts, cfg,
                     artifacts.read_item_categories(ctx.input("prepare")), words)
    artifacts.write_json(ctx.output, artifacts.STEERING, study)

    metrics: dict[str, Any] = {"protocol": cfg.protocol, "explained_model": explained["name"],
                               "users": len(split.test), "selected_model": selection["selected"],
                               "selected_seeds": selection["test"]["n"],
                               f"selected_valid_{SELECT_METRIC}": selection["valid"][selection["selected"]]["mean"],
                               f"selected_test_{SELECT_METRIC}": selection["test"]["mean"],
                               "selected_ties": ", ".join(t["model"] for t in selection["ties"]) or "none"}
    for c in assessed["comparisons"]:
        name = f"{c['a']}_minus_{c['b']}_test_{c['metric']}"
        metrics.update({name: c["test"]["difference"], f"{name}_low": c["test"]["low"],
                        f"{name}_high": c["test"]["high"]})
    for name, bucket in popularity["buckets"].items():
        metrics[f"test_users_{name}"] = bucket["test_users"]
        found = popularity["models"][selection["selected"]][name].get(SELECT_METRIC)
        if found is not None:
            metrics[f"selected_test_{SELECT_METRIC}_{name}"] = found["mean"]
    for v in summary:
        for k in cfg.ks:
            for m in ("hr", "ndcg"):
                metrics[f"{v}_test_{m}@{k}"] = summary[v]["test"][f"{m}@{k}"]["mean"]
    if study.get("within_1pct_cost"):
        metrics["steering_strength_within_1pct"] = study["within_1pct_cost"]["strength"]
        metrics["steering_carrying_share_rise"] = study["within_1pct_cost"]["carrying_share_rise"]
        metrics["steering_test_cost"] = study["within_1pct_cost"][f"test_ndcg@{cfg.top_n}_cost"]
        for key in ("category_share_before", "category_share_after", "category_share_rise"):
            if study["within_1pct_cost"].get(key) is not None:
                metrics[f"steering_{key}"] = study["within_1pct_cost"][key]
    if "flagged_before" in study:
        metrics["steering_flagged_before"] = study["flagged_before"]
        metrics["steering_flagged_after"] = study["flagged_after"]
    metrics["hit_rate_top_n"] = float(np.mean(table.column("hit").to_numpy(zero_copy_only=False)))
    metrics.update(fusion_weights(explained, table.column("branch_weights").to_pylist()))
    return metrics


STAGE = Stage(name="evaluate", run=run, inputs=("prepare", "judge", "train_rec"), sections=("evaluate",))
