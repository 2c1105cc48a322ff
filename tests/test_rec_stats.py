"""The statistics behind every comparison, and selection on valid: a poisoned test set (test ranks
the candidates in the opposite order to valid) must never change what is chosen."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from saerec import tuning
from saerec.rec import comparisons
from saerec.rec.attribution import cheapest_effect, steering_category
from saerec.rec.stats import mean_std, paired_bootstrap, select_on_valid


def test_mean_std_is_the_sample_std_with_n_and_none_for_one_seed():
    assert mean_std([0.1, 0.3]) == {"mean": pytest.approx(0.2), "std": pytest.approx(np.std([0.1, 0.3], ddof=1)),
                                    "n": 2}
    assert mean_std([0.25]) == {"mean": 0.25, "std": None, "n": 1}, "one seed has no spread, not a spread of 0"
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_paired_bootstrap_identical_models_differ_by_zero_and_the_interval_holds_zero():
    scores = np.random.default_rng(1).random(300)
    same = paired_bootstrap(scores, scores.copy())
    assert same["difference"] == 0.0 and same["low"] <= 0.0 <= same["high"] and not same["excludes_zero"]


def test_paired_bootstrap_sees_a_shift_that_per_model_spreads_would_hide():
    rng = np.random.default_rng(2)
    base = rng.random(400)  # users differ a lot (std ~0.29); the second model is 0.02 better for every user
    shifted = paired_bootstrap(base + 0.02, base)
    assert shifted["difference"] == pytest.approx(0.02)
    assert shifted["low"] > 0 and shifted["excludes_zero"]
    noisy = paired_bootstrap(base + rng.normal(0.0, 0.3, size=400), base)
    assert noisy["low"] < 0 < noisy["high"], "a difference of pure noise is not beyond noise"


def test_paired_bootstrap_is_deterministic_for_a_seed_and_checks_its_input():
    rng = np.random.default_rng(3)
    a, b = rng.random(200), rng.random(200)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7)["low"] != paired_bootstrap(a, b, seed=8)["low"]
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap(a, b[:-1])


def test_select_on_valid_reports_ties_within_valid_noise():
    rng = np.random.default_rng(4)
    users = rng.random(500)
    per_user = {"a": users + 0.05, "b": users + 0.05 + rng.normal(0, 0.2, 500), "c": users}
    # a and b: apart by less than the seeds' std; a and c: far apart on every user
    choice = select_on_valid({"a": [0.30, 0.32], "b": [0.29, 0.31], "c": [0.20, 0.21]}, per_user)
    assert choice["selected"] == "a"
    assert [t["model"] for t in choice["ties"]] == ["b"] and choice["ties"][0]["within_seed_std"]
    assert choice["valid"]["a"] == mean_std([0.30, 0.32])
    # one seed each: only the paired interval can call a tie
    single = select_on_valid({"a": [0.31], "b": [0.30], "c": [0.20]}, per_user)
    assert [t["model"] for t in single["ties"]] == ["b"] and not single["ties"][0]["within_seed_std"]


def _poisoned_runs() -> tuple[list[dict], pa.Table]:
    """Two variants, two seeds, 200 users: on valid ``grounded`` is clearly better, on test ``dense``."""
    rng = np.random.default_rng(5)
    users = np.arange(200)
    good, bad = rng.integers(0, 5, size=200), rng.integers(30, 60, size=200)  # 0-based ranks
    per_run, tables = [], []
    for name, valid_ranks, test_ranks in (("grounded", good, bad), ("dense", bad, good)):
        for seed in (0, 1):
            tables.append(comparisons.per_user_table(name, seed, users, valid_ranks, test_ranks))
            valid = float(tables[-1].column("valid_ndcg@20").to_numpy().mean())
            test = float(tables[-1].column("test_ndcg@20").to_numpy().mean())
            per_run.append({"variant": name, "seed": seed, "valid": {"ndcg@20": valid + seed * 1e-4},
                            "test": {"ndcg@20": test + seed * 1e-4}})
    return per_run, pa.concat_tables(tables)


def test_evaluate_chooses_the_model_on_valid_and_reads_test_only_to_report_it():
    per_run, per_user = _poisoned_runs()
    choice = comparisons.select_model(per_run, comparisons.pooled(per_user, "valid"))
    assert choice["selected"] == "grounded", "test ranks dense first; valid must decide"
    assert choice["ties"] == []
    assert choice["test"]["mean"] == pytest.approx(np.mean([r["test"]["ndcg@20"] for r in per_run[:2]]))
    [compared] = comparisons.paired_comparisons([("grounded", "dense")], per_user)
    assert compared["valid"]["low"] > 0 and compared["test"]["high"] < 0, "both splits are reported as they are"


def test_pairs_compared_are_the_selected_model_vs_sasrec_each_text_model_vs_its_backbone_and_random_controls():
    variants = ["sasrec", "saerec", "random", "grounded", "grounded-all", "grounded-random", "dense"]
    assert comparisons.compared_pairs(variants, "dense") == [
        ("dense", "sasrec"), ("grounded", "sasrec"), ("grounded-all", "sasrec"), ("grounded-random", "sasrec"),
        ("saerec", "random"), ("grounded", "grounded-random"), ("grounded-all", "grounded-random")]
    assert comparisons.compared_pairs(["sasrec", "dense"], "sasrec") == [("dense", "sasrec")]
    assert comparisons.compared_pairs(["sasrec", "saerec"], "sasrec") == [], "intent attention is not a text item model"
    # On another backbone, a text model is compared with that backbone on ids, not with SASRec.
    assert comparisons.compared_pairs(["sasrec", "bsarec", "bsarec-grounded", "grounded"], "bsarec-grounded") == [
        ("bsarec-grounded", "sasrec"), ("bsarec-grounded", "bsarec"), ("grounded", "sasrec")]


def _trial(variant: str, seed: int, valid: float, test: float) -> dict:
    return {"trial_id": f"{variant}-{seed}", "variant": variant, "k": 5, "review_drop": 0.0, "judge": "", "seed": seed,
            "studies": ["ablation"], "n_intents": 4, "best_epoch": 1, "epochs": 1, "resumed_from_epoch": 0,
            "train_seconds": 1.0, **{f"valid_{m}@{k}": valid for m in ("hr", "ndcg") for k in (5, 10, 20)},
            **{f"test_{m}@{k}": test for m in ("hr", "ndcg") for k in (5, 10, 20)}}


def test_the_sweeps_best_study_point_is_chosen_on_valid():
    rows = [_trial("saerec", 0, valid=0.30, test=0.10), _trial("sasrec", 0, valid=0.20, test=0.40)]
    summary = tuning.summary_table(tuning.results_table(rows, (5, 10, 20)), (5, 10, 20)).to_pylist()
    best = tuning.best_point(summary, "ndcg@20")
    assert best["variant"] == "saerec", "test prefers sasrec; valid must decide"
    assert best["test_ndcg@20_mean"] == pytest.approx(0.10) and best["seeds"] == 1
    assert best["valid_ndcg@20_std"] is None, "one seed: no std"


def _levels(ndcg: list[float], share: list[float]) -> list[dict]:
    return [{"strength": s, "ndcg@20": n, "carrying_share": c} for s, n, c in zip((0.0, 0.5, 1.0), ndcg, share)]


def test_the_steering_strength_is_chosen_by_its_valid_cost_and_reported_on_test():
    valid = _levels([0.100, 0.0995, 0.090], [0.1, 0.2, 0.5])  # 0.5 costs 0.5 % on valid, 1.0 costs 10 %
    test = _levels([0.100, 0.080, 0.0999], [0.1, 0.3, 0.6])  # on test the order is reversed
    cheap = cheapest_effect(valid, test, "ndcg@20")
    assert cheap["strength"] == 0.5 and cheap["chosen_on"] == "valid"
    assert cheap["valid_ndcg@20_cost"] == pytest.approx(0.005)
    assert cheap["test_ndcg@20_cost"] == pytest.approx(0.2), "the test cost of the chosen strength is reported"
    assert cheap["carrying_share_rise"] == pytest.approx(2.0)
    assert cheapest_effect(_levels([0.1, 0.05, 0.01], [0.1, 0.2, 0.3]), test, "ndcg@20") is None
    assert "category_share_rise" not in cheap, "no category labels, no category score"


def test_the_category_share_is_reported_at_the_strength_valid_cost_chose():
    valid = [{**r, "category_share": c} for r, c in zip(_levels([0.100, 0.0995, 0.090], [0.1, 0.2, 0.5]),
                                                         (0.10, 0.50, 0.90))]
    test = [{**r, "category_share": c} for r, c in zip(_levels([0.100, 0.080, 0.0999], [0.1, 0.3, 0.6]),
                                                        (0.08, 0.10, 0.40))]
    cheap = cheapest_effect(valid, test, "ndcg@20")
    assert cheap["strength"] == 0.5, "a bigger category rise at 1.0 does not sway the choice"
    assert (cheap["category_share_before"], cheap["category_share_after"]) == (0.08, 0.10)
    assert cheap["category_share_rise"] == pytest.approx(0.25)
    zero = [{**r, "category_share": 0.0 if r["strength"] == 0.0 else 0.1} for r in test]
    assert cheapest_effect(valid, zero, "ndcg@20")["category_share_rise"] is None


def test_the_steering_category_is_the_configured_one_or_the_one_name_the_query_matches():
    labels = {1: ["Sun", "Skin Care"], 2: ["Nail Polish"], 3: ["Nail Polish Remover"], 4: ["Shampoos"]}
    target = steering_category
    assert target(labels, "NAIL POLISH") == {"category": "Nail Polish"}
    assert target(labels, "sunscreen", "sun") == {"category": "Sun"}
    assert target(labels, "x", "Hair") == {
        "category_skipped": "no item is labelled evaluate.steering_category='Hair'"}
    assert target(labels, "shampoo") == {
        "category_skipped": "no category names match 'shampoo'; set evaluate.steering_category"}
    assert target(labels, "polish") == {
        "category_skipped": "2 category names match 'polish' (Nail Polish, Nail Polish Remover); "
                            "set evaluate.steering_category"}
    assert "no item categories" in target(None, "sun")["category_skipped"]
