"""The report: rendering to self-contained HTML/Markdown, charts, and the stage on stand-in upstream outputs."""
from __future__ import annotations

import base64
import dataclasses
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saerec import render
from saerec import artifacts, schemas, tuning
from saerec.config import load_config
from saerec.pipeline import Runner, Stage, StageContext, StageError
from saerec.stages import prepare
from saerec.stages import report as report_stage
from saerec.storage import Store
from tests.conftest import TINY_DEMO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def test_document_renders_to_self_contained_html_and_markdown():
    doc = render.Document("A <title>")
    section = doc.section("Numbers & charts")
    section.blocks.append("Plain text with a | pipe and <b>markup</b>.")
    section.blocks.append(render.Table(["name", "value"], [["a|b", 0.123456], ["none", None], ["big", 12345.678]],
                                       "a caption"))
    section.blocks.append(render.Figure(render.bar_chart(["x", "y"], [0.1, 0.2], [0.01, 0.0], "t", "v"), "bars"))
    section.blocks.append(render.Figure(render.line_chart([1, 2, 3], {"s": ([0.1, 0.2, 0.3], [0, 0, 0])}, "t", "x", "y"),
                                        "lines"))
    html = render.to_html(doc)
    markdown = render.to_markdown(doc)
    assert "&lt;b&gt;markup&lt;/b&gt;" in html and "<b>markup" not in html
    assert "<td>0.1235</td>" in html and "<td>—</td>" in html and "<td>12,345.7</td>" in html
    long = "a long item name that a narrow table must wrap"
    wrapped = render.to_html(render.Document("t", [render.Section("s", [render.Table(["item", "n"], [[long, 0.5]])])]))
    assert f"<td class='text'>{long}</td><td>0.5000</td>" in wrapped, "long text wraps, numbers stay on one line"
    assert "| a\\|b | 0.1235 |" in markdown
    assert "src='http" not in html and "](http" not in markdown, "nothing is fetched from elsewhere"
    for text in (html, markdown):
        images = _images(text)
        assert len(images) == 2 and all(img.startswith(PNG_MAGIC) for img in images)


def test_main_table_puts_the_papers_numbers_beside_ours():
    table = render.main_results_table({"sasrec": {"hr@10": 0.09, "ndcg@20": 0.06}, "saerec": {"hr@10": "0.1 ± 0.01"}})
    rows = {(r[0], r[1]): r[2:] for r in table.rows}
    assert rows[("sasrec", "this run")] == [0.09, None, None, 0.06]
    assert rows[("SASRec", "paper (Beauty)")] == [0.0624, 0.0894, 0.0342, 0.0386]
    assert rows[("SAERec", "paper (Beauty)")][0] == 0.1055
    assert rows[("ICSRec", "paper (Beauty)")][3] == 0.0663
    assert rows[("KMeans-Intent", "paper (Beauty)")] == [None, 0.1349, None, 0.0671]
    assert [r[0] for r in table.rows].count("SASRec") == 1
    demo = render.main_results_table({"sasrec": {"hr@10": 0.5}}, with_paper=False)
    assert [r[1] for r in demo.rows] == ["this run"], "the demo's numbers are not set beside Beauty's"


def test_mean_std_format():
    assert render.format_mean_std(0.12345, 0.01, 1) == "0.1235"
    assert render.format_mean_std(0.12345, 0.01, 3) == "0.1235 ± 0.0100 (n=3)"
    assert render.format_mean_std(0.12345, None, 1) == "0.1235", "one seed: no spread shown"
    assert render.format_interval({"difference": 0.0012, "low": -0.0003, "high": 0.0027}) == "+0.0012 [-0.0003, +0.0027]"


LATENTS = [2, 5, 7]


def _published(name: str, inputs: tuple[str, ...], write) -> Stage:
    return Stage(name=name, run=write, inputs=inputs, sections=("report",))


def _embed(ctx: StageContext) -> dict:
    return {"texts": 100, "dim": 8, "count_words_s": 1.25, "vocabulary_words": 40}


def _train_sae(ctx: StageContext) -> dict:
    return {"fvu": 0.2, "l0": 4.0, "dead_pct": 10.0, "density_histogram": [1, 3, 5, 1]}


def _judge(ctx: StageContext) -> dict:
    ctx.output.write_table(artifacts.FEATURES.name, pa.table({
        "latent": list(range(10)), "summary": [f"theme {i}" for i in range(10)],
        "words": [[f"w{i}a", f"w{i}b"] for i in range(10)], "kept": [i in LATENTS for i in range(10)],
        "frequency": np.arange(10) / 10.0, "detection": [0.75] * 10}))
    return {"kept": len(LATENTS), "judged": 10, "detection_scoring": "judge"}


def _evaluate(ctx: StageContext) -> dict:
    test = {f"{m}@{k}": {"mean": 0.05 * k / 10, "std": 0.001, "n": 2} for m in ("hr", "ndcg") for k in (5, 10, 20)}
    one_seed = {m: {**v, "std": None, "n": 1} for m, v in test.items()}
    valid = {"mean": 0.06, "std": 0.002, "n": 2}
    interval = {"difference": 0.02, "low": 0.01, "high": 0.03, "users": 50, "excludes_zero": True}
    ctx.output.write_json("metrics.json", {
        "protocol": "strict",
        "summary": {"sasrec": {"seeds": [0, 1], "valid": {**valid, "mean": 0.04}, "test": test},
                    "saerec": {"seeds": [0, 1], "valid": valid, "test": test},
                    "dense": {"seeds": [0], "valid": {"mean": 0.059, "std": None, "n": 1}, "test": one_seed}},
        "selection": {"selected": "saerec", "metric": "ndcg@20", "valid": {"saerec": valid},
                      "ties": [{"model": "dense"}], "test": test["ndcg@20"]},
        "comparisons": [{"a": "saerec", "b": "sasrec", "metric": "ndcg@20", "valid": interval,
                         "test": {**interval, "difference": 0.001, "low": -0.002, "excludes_zero": False}}],
        "by_popularity": {
            "cold_max_train": 2, "head_item_share": 0.2, "head_min_train": 15,
            "buckets": {"head": {"items": 20, "train_share": 0.6, "test_users": 30},
                        "tail": {"items": 70, "train_share": 0.39, "test_users": 15},
                        "cold": {"items": 10, "train_share": 0.01, "test_users": 5}},
            "models": {"saerec": {"head": {"users": 30, **test}, "tail": {"users": 15, **test},
                                  "cold": {"users": 5, **test, "ndcg@20": {"mean": 0.25, "std": 0.05, "n": 2}}},
                       "dense": {"head": {"users": 30, **one_seed}, "tail": {"users": 15, **one_seed},
                                 "cold": {"users": 0}}},
            "comparisons": [{"a": "saerec", "b": "sasrec", "metric": "ndcg@20", "split": "test",
                             "buckets": {"cold": {**interval, "users": 5}}}]}})
    ctx.output.write_json("steering.json", {"query": "acne", "matched_intents": [5], "flagged_before": 10,
                                            "flagged_after": 14})
    ctx.output.write_table("recommendations.parquet", pa.table({
        "user": pa.array([1, 2], pa.int32()), "target": pa.array([3, 4], pa.int32()),
        "items": pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int32())), "hit": [True, False],
        "personal_intents": pa.array([[5], [7]], pa.list_(pa.int64())),
        "personal_summaries": [["theme 5"], [None]], "public_intents": pa.array([[2], [2]], pa.list_(pa.int64())),
        "public_summaries": [["theme 2"], ["theme 2"]], "branch_weights": pa.array([[0.5], [0.5]],
                                                                                    pa.list_(pa.float32())),
        "item_intents": pa.array([[], []], pa.list_(pa.list_(pa.int64()))),
        "item_intent_summaries": pa.array([[], []], pa.list_(pa.list_(pa.string()))),
        "item_contributions": pa.array([[], []], pa.list_(pa.list_(pa.float32()))),
        "item_intent_share": pa.array([[], []], pa.list_(pa.float32()))},
        schema=schemas.RECOMMENDATIONS))
    return {"protocol": "strict", "explained_model": "saerec-seed0", "fusion_weight_self": 0.9, "fusion_weight_personal": 0.06,
            "fusion_weight_public": 0.04}


def _sweep(ctx: StageContext) -> dict:
    specs = tuning.build_grid(["saerec", "noPer", "sasrec"], [3, 5], [0.0, 0.2], [], [0, 1], default_k=5,
                              default_drop=0.0)
    rows = []
    for i, s in enumerate(specs):
        value = 0.01 * (i + 1)
        rows.append({**vars(s), "studies": list(s.studies), "trial_id": s.trial_id, "n_intents": 3, "best_epoch": 1,
                     "epochs": 2, "resumed_from_epoch": 0, "train_seconds": 1.0, **{f"{p}_{m}@{k}": value for p in ("valid", "test")
                                                           for m in ("hr", "ndcg") for k in (5, 10, 20)}})
    results = tuning.results_table(rows, (5, 10, 20))
    ctx.output.write_table("summary.parquet", tuning.summary_table(results, (5, 10, 20)))
    return {"protocol": "strict", "trials": len(specs), "seeds": 2, "tune_seconds": 12.5, "upstream_seconds": 3.0}


def _profile(ctx: StageContext) -> dict:
    groups = ["kept"] * 3 + ["rejected"] * 4 + ["clusters"] * 3 + ["chance"] * 5
    purity = [0.9, 0.8, 0.85, 0.3, 0.5, 0.2, 0.9, 0.6, 0.5, 0.4, 0.1, 0.15, 0.1, 0.2, 0.1]
    artifacts.write_table(ctx.output, artifacts.INTENT_PURITY, pa.table({
        "group": groups, "id": pa.array(range(len(groups)), pa.int32()), "purity": pa.array(purity, pa.float32()),
        "category": ["Nails"] * len(groups)}, schema=schemas.INTENT_PURITY))
    return {"purity_top_n": 20, "purity_skipped_categories": ["Skin Care"], "purity_kept": 0.85,
            "purity_kept_sets": 3, "purity_rejected": 0.475, "purity_rejected_sets": 4, "purity_clusters": 0.5,
            "purity_clusters_sets": 3, "purity_chance": 0.13, "purity_chance_sets": 5,
            "purity_ratio_vs_chance": 6.538, "purity_ratio_vs_clusters": 1.7, "purity_ratio_vs_rejected": 1.789}


STAND_INS = {
    "embed": _published("embed", ("prepare",), _embed),
    "train_sae": _published("train_sae", ("embed",), _train_sae),
    "explain": _published("explain", ("train_sae",), lambda ctx: {"latents": 10}),
    "judge": _published("judge", ("explain",), _judge),
    "profile": _published("profile", ("judge",), _profile),
    "train_rec": _published("train_rec", ("judge",), lambda ctx: {"protocol": "strict", "runs": 4}),
    "evaluate": _published("evaluate", ("train_rec",), _evaluate),
    "sweep": _published("sweep", ("evaluate",), _sweep),
}


@pytest.fixture(scope="module")
def published_report(tmp_path_factory) -> tuple[dict, str, str, dict]:
    """The report stage run once on prepare's real demo output and the stand-ins: (published, html, markdown,
    every upstream stage's published record)."""
    cfg = load_config(None, [f"storage.uri={tmp_path_factory.mktemp('report')}", *TINY_DEMO,
                             "report.example_intents=2"])
    runner = Runner(cfg, Store(cfg.storage.uri))
    upstream = {"prepare": runner.run_stage(prepare.STAGE)}
    for name, stage in STAND_INS.items():
        upstream[name] = runner.run_stage(stage)
    published = runner.run_stage(report_stage.STAGE)
    html = runner.store.read_bytes(f"{published['output_dir']}/report.html").decode()
    markdown = runner.store.read_bytes(f"{published['output_dir']}/report.md").decode()
    upstream["items"] = pq.read_table(io.BytesIO(runner.store.read_bytes(
        f"{upstream['prepare']['output_dir']}/{artifacts.ITEMS.name}"))).to_pylist()
    return published, html, markdown, upstream


def test_report_stage_reads_every_published_output(published_report):
    published, html, markdown, _ = published_report
    assert sorted(published["outputs"]) == ["report.html", "report.md"]
    assert published["metrics"]["figures"] == 5
    for text in (html, markdown):
        assert len(_images(text)) == 5
        assert "Software versions of the run" in text and "Wall time of each stage" in text
    assert "| 7 | w7a, w7b | theme 7 | 0.7000 | 0.7500 |" in markdown and "| 5 | w5a, w5b | theme 5 |" in markdown
    assert "| 2 | w2a, w2b |" not in markdown, "only the example_intents most active kept intents"
    purity = markdown.split("## Category purity of intents")[1].split("\n## ")[0]
    assert "| kept intents | 0.8500 | 3 | — |" in purity and "| random item sets | 0.1300 | 5 | 6.5380 |" in purity
    assert "(skipped: Skin Care)" in purity and len(_images(purity)) == 1
    assert "paper (Beauty)" not in markdown, "a demo run is not compared with the paper's Beauty numbers"
    assert "0.1000 ± 0.0010 (n=2)" in markdown, "two seeds give mean ± std and n"
    main = markdown.split("## Main results")[1].split("\n## ")[0]
    assert "| model | source | valid ndcg@20 | hr@10 |" in main, "valid beside test"
    assert "| dense | this run | 0.0590 | 0.0500 |" in main, "one seed: no spread"
    assert ("The model, chosen on mean valid ndcg@20 over seeds: saerec (valid 0.0600 ± 0.0020 (n=2), test "
            "0.1000 ± 0.0010 (n=2), 2 seed(s)). It ties on valid with dense") in main
    assert "| saerec − sasrec | +0.0200 [+0.0100, +0.0300] | +0.0010 [-0.0020, +0.0300] | 50 | no |" in main
    popular = markdown.split("## By item popularity")[1].split("\n## ")[0]
    assert "| model | bucket (training interactions of the held-out item) | test users | hr@10 |" in popular
    assert "| saerec | cold (≤ 2) | 5 | 0.0500 ± 0.0010 (n=2) |" in popular
    assert "| 0.2500 ± 0.0500 (n=2) |" in popular and "| saerec | tail (3–14) | 15 |" in popular
    assert "| dense | head (≥ 15) | 30 | 0.0500 | 0.1000 |" in popular, "one seed: no spread"
    assert "| dense | cold (≤ 2) | 0 | — | — | — | — |" in popular, "an empty bucket has no metrics"
    assert "cold: 10 items, 1.0% of training interactions, 5 test users" in popular
    assert "| saerec − sasrec | cold | 5 | +0.0200 [+0.0100, +0.0300] | yes |" in popular
    fusion = markdown.split("| branch | mean fusion weight |")[1].split("\n\n")[0]
    assert [line.split("|")[1].strip() for line in fusion.strip().splitlines()[1:]] == ["self", "personal", "public"]
    assert "| personal | 0.0600 |" in fusion
    for stage in (*STAND_INS, "prepare"):
        assert f"| {stage} |" in markdown.split("Wall time of each stage")[1]


SECTION_ORDER = ["Summary", "Main results", "By item popularity", "Intents", "Category purity of intents",
                 "Steering study", "Explanations", "Sweeps", "Ablations", "Sensitivity to k",
                 "Robustness to review removal", "Judge LLM choice", report_stage.APPENDIX]


def test_report_reads_top_down(published_report):
    """The answer first, results and intents next, stage metrics last under readable labels, items by name."""
    _, html, markdown, upstream = published_report
    assert re.findall(r"<h2>(.*?)</h2>", html) == SECTION_ORDER
    assert re.findall(r"^## (.*)$", markdown, re.M) == SECTION_ORDER
    summary = html.split("<h2>Summary</h2>")[1].split("<h2>")[0]
    assert summary.count("<p>") == 1, "one paragraph"
    assert ("The model chosen on mean valid NDCG@20 is saerec: valid NDCG@20 0.0600 ± 0.0020 (n=2), test NDCG@20 "
            "0.1000 ± 0.0010 (n=2), test HR@20 0.1000 ± 0.0010 (n=2). It ties on valid with dense") in summary
    assert "The baseline sasrec: valid NDCG@20 0.0400 ± 0.0020 (n=2), test NDCG@20" in summary
    assert "saerec − sasrec on test NDCG@20 is +0.0010 [-0.0020, +0.0300]" in summary and "contains 0" in summary

    body, appendix = markdown.split(f"## {report_stage.APPENDIX}")
    raw_keys = {k for name, found in upstream.items() if name != "items" for k in found["metrics"] if "_" in k}
    assert {"count_words_s", "corpus_repeats_dropped", "density_histogram"} <= raw_keys
    assert [k for k in raw_keys if k in markdown] == [], "metric keys are shown as labels, in the appendix too"
    assert "| counting corpus words (s) | 1.2500 |" in appendix and "| repeated corpus texts dropped | 0 |" in appendix
    assert "| vocabulary words | 40 |" in appendix, "an unlisted key: underscores become spaces"
    assert "Software versions" not in body and "| dead latents (%) |" in appendix

    explained = markdown.split("## Explanations")[1].split("\n## ")[0]
    texts = {r["item"]: r["text"] for r in upstream["items"]}
    rows = [line.split(" | ") for line in explained.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert len(rows) == 2
    held_out, top = rows[0][1:3]
    assert held_out == render.item_label(3, texts[3]) and held_out.startswith(texts[3][:20])
    assert top.split("; ") == [render.item_label(i, texts[i]) for i in (1, 2, 3)]
    for row in rows:
        assert all(re.fullmatch(r"\S.* \(id \d+\)", item) for item in [row[1], *row[2].split("; ")]), row


def test_metric_labels_and_item_names_read_as_words():
    assert render.metric_label("count_words_s") == "counting corpus words (s)"
    assert render.metric_label("upstream_seconds") == "upstream (s)"
    assert render.metric_label("dead_pct") == "dead latents (%)"
    assert render.metric_label("tokens_per_s") == "tokens per second"
    assert render.metric_label("users_dropped_short") == "users dropped short"
    assert render.item_label(181, "Sally Hansen Hard as Nails") == "Sally Hansen Hard as Nails (id 181)"
    long = "Maybelline New York Instant Age Rewind Eraser Dark Circles Treatment Concealer, Light, 0.2 fl oz"
    shown = render.item_label(225, long)
    assert shown == "Maybelline New York Instant Age Rewind Eraser Dark Circles… (id 225)"
    assert len(shown.split(" (id")[0]) <= render.ITEM_TEXT_SHOWN + 1
    assert render.item_label(7, None) == render.item_label(7, "  ") == "item 7"


def test_ablation_chart_is_horizontal_and_grows_with_its_labels():
    from PIL import Image

    labels = ["SAERec without personal intents", "SAERec (paper eqs. 3-8)", "SASRec", "SAERec, random intent set"]
    few = Image.open(io.BytesIO(render.horizontal_bar_chart(labels[:2], [0.1, 0.2], [0.0, 0.01], "t", "x")))
    many = Image.open(io.BytesIO(render.horizontal_bar_chart(labels * 3, [0.1] * 12, [0.0] * 12, "t", "x")))
    assert few.width == many.width and many.height > few.height, "one readable row per label"


def test_report_names_a_missing_column(tmp_path):
    cfg = load_config(None, [f"storage.uri={tmp_path}", *TINY_DEMO])
    runner = Runner(cfg, Store(cfg.storage.uri))
    runner.run_stage(prepare.STAGE)
    broken = {**STAND_INS, "judge": _published("judge", ("explain",), lambda ctx: ctx.output.write_table(
        artifacts.FEATURES.name, pa.table({"latent": [1], "summary": ["x"], "kept": [True], "frequency": [0.1]})) or {})}
    for stage in broken.values():
        runner.run_stage(stage)
    with pytest.raises(Exception, match=r"features.parquet has no column 'words'"):
        runner.run_stage(report_stage.STAGE)


def _with_protocol(stage: Stage, protocol: str) -> Stage:
    def run(ctx: StageContext) -> dict:
        return {**(stage.run(ctx) or {}), "protocol": protocol}
    return dataclasses.replace(stage, run=run)


def test_a_paper_protocol_run_says_so_and_protocols_are_never_mixed(tmp_path):
    cfg = load_config(None, [f"storage.uri={tmp_path}", *TINY_DEMO, "report.example_intents=2"])
    runner = Runner(cfg, Store(cfg.storage.uri))
    runner.run_stage(prepare.STAGE)
    paper = {name: _with_protocol(s, "paper") if name in report_stage.PROTOCOL_STAGES else s
             for name, s in STAND_INS.items()}
    for stage in paper.values():
        runner.run_stage(stage)
    published = runner.run_stage(report_stage.STAGE)
    assert published["metrics"]["protocol"] == "paper"
    markdown = runner.store.read_bytes(f"{published['output_dir']}/report.md").decode()
    assert "PAPER PROTOCOL" in markdown.splitlines()[0] and report_stage.PAPER_BANNER in markdown
    runner.run_stage(_with_protocol(STAND_INS["sweep"], "strict"), force=True)
    with pytest.raises(StageError, match=r"mix evaluation protocols \(train_rec: paper, evaluate: paper, sweep: strict\)"):
        runner.run_stage(report_stage.STAGE, force=True)
