"""The judge's results as a table: every explained latent once, kept only when its verdict is kept
and the prescreen let it through, and metrics that count what the table holds."""
from __future__ import annotations

import pyarrow as pa
import pytest

from saerec import schemas
from saerec.intents.features import features_table, judge_metrics

EXPLAINED = pa.table({"latent": pa.array([0, 1, 2, 3], pa.int32()),
                      "words": [["nail", "polish"], ["dry", "skin"], ["price"], ["red", "lipstick"]],
                      "scores": pa.array([[0.5, 0.4], [0.3, 0.2], [0.1], [0.6, 0.5]], pa.list_(pa.float32())),
                      "frequency": [0.4, 0.3, 0.0, 0.2]})
RESULTS = {
    0: {"summary": "nail polish", "verdict": "Yes", "detection": 0.9, "detection_words": 0.8,
        "prescreen_score": 3.0, "screened_out": False},
    1: {"summary": "dry skin care", "verdict": "Maybe", "detection": 0.6, "detection_words": float("nan"),
        "prescreen_score": 1.0, "screened_out": False},
    2: {"summary": None, "verdict": "No", "detection": float("nan"), "detection_words": float("nan"),
        "prescreen_score": float("nan"), "screened_out": True},
}  # latent 3 was not judged (judge.max_latents)


def test_features_table_marks_kept_screened_and_unjudged_latents():
    table = features_table(EXPLAINED, RESULTS, keep=("Yes", "Maybe", "No"))
    assert table.schema.equals(schemas.JUDGED_FEATURES)
    rows = table.to_pylist()
    assert [r["latent"] for r in rows] == [0, 1, 2, 3]
    assert [r["kept"] for r in rows] == [True, True, False, False], "screened out or not judged: never kept"
    assert [r["verdict"] for r in rows] == ["Yes", "Maybe", "No", None]
    assert rows[3]["summary"] is None and rows[3]["prescreen_score"] is None
    assert rows[1]["detection_words"] is None and rows[2]["prescreen_score"] is None, "NaN is stored as null"
    assert [r["screened_out"] for r in rows] == [False, False, True, False]
    assert rows[0]["words"] == ["nail", "polish"] and rows[0]["scores"] == pytest.approx([0.5, 0.4])


def test_judge_metrics_count_the_table():
    table = features_table(EXPLAINED, RESULTS, keep=("Yes", "Maybe"))
    metrics = judge_metrics(table, ("Yes", "Maybe"), {"nails": ["nail", "polish"], "lips": ["lipstick"]})
    assert (metrics["kept"], metrics["keep"], metrics["screened_out"]) == (2, ["Yes", "Maybe"], 1)
    assert (metrics["verdict_yes"], metrics["verdict_maybe"], metrics["verdict_no"], metrics["verdict_cannot_tell"]) \
        == (1, 1, 1, 0)
    assert metrics["detection_latents"] == 2
    assert metrics["detection_balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["detection_words_balanced_accuracy"] == pytest.approx(0.8)
    assert metrics["detection_share_above_075"] == 0.5 and metrics["detection_words_share_above_075"] == 1.0
    assert set(metrics["planted_best_purity"]) == {"nails", "lips"}
    assert "planted_recovery" not in judge_metrics(table, ("Yes", "Maybe"))
