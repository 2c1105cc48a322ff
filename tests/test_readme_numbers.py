"""The README's Beauty results tables say what the committed benchmark JSON says, cell by cell, so
the two cannot drift apart (a number in the README with no committed result behind it fails here)."""
from __future__ import annotations

import json
import re
import statistics

import pytest

from tests.conftest import REPO

RESULTS = REPO / "bench" / "results"
METRICS = ("hr@10", "hr@20", "ndcg@10", "ndcg@20")


def table_after(heading: str, first_column: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``heading`` whose header starts
    with ``first_column``."""
    text = (REPO / "README.md").read_text()
    start = text.index(heading)
    lines = text[start:].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def four(value: float) -> str:
    return f"{value:.4f}"


def mean_and_std(cell: str) -> tuple[str, str | None]:
    mean, _, std = cell.partition(" ± ")
    return mean, std or None


def variant_of(label: str) -> str | None:
    named = re.match(r"`([a-z0-9-]+)`", label)
    return named.group(1) if named else ("sasrec" if label == "SASRec" else None)


@pytest.fixture(scope="module")
def beauty() -> dict:
    return json.loads((RESULTS / "rec_beauty.json").read_text())


def test_the_beauty_table_is_the_committed_summary(beauty):
    rows = table_after("### Intents that reach the items (Beauty)", "model")
    summary = beauty["summary"]
    seen = set()
    for label, seeds, intents, *metrics, valid, epochs, seconds in rows:
        name = variant_of(label)
        if label.startswith("SAERec, paper eqs"):
            cell = json.loads((RESULTS / "protocol_beauty.json").read_text())["cells"]["saerec/strict"]
            assert [m.partition(" ± ")[0] for m in metrics] == [four(cell["test"][m]) for m in METRICS], label
            assert valid == four(cell["selection"]["ndcg@20"]) and epochs == str(cell["best_epoch"]), label
            assert seeds == "1" and intents == str(cell["n_intents"]), label
            continue
        if label.startswith("BSARec"):
            assert metrics == [four(beauty["bsarec"][m]) for m in METRICS], label
            continue
        assert name in summary, f"README row {label!r} has no cell in rec_beauty.json"
        cell = summary[name]
        seen.add(name)
        for shown, metric in zip(metrics, METRICS):
            mean, std = mean_and_std(shown)
            assert mean == four(cell[metric]["mean"]), (label, metric)
            assert (std is None) == (cell[metric]["n"] < 2), (label, metric, "a std only with 2+ seeds")
            if std is not None:
                assert std == four(cell[metric]["std"]), (label, metric)
        assert seeds == str(len(cell["seeds"])) and valid == four(cell["valid_ndcg@20"]), label
        assert epochs == ", ".join(map(str, cell["best_epochs"])), label
        assert seconds == str(round(cell["epoch_seconds"])), label
        assert intents == ("" if cell["n_intents"] == [0] else ", ".join(map(str, cell["n_intents"]))), label
    assert seen == set(summary), "every committed cell is in the README's table"


def test_the_sae_size_table_is_the_committed_size_study(beauty):
    rows = table_after("SAE size (`python bench/rec.py", "SAE latents")
    assert len(rows) == len(beauty["sae_sizes"])
    for size_cell, seeds, valid, test, hr, epochs in rows:
        runs = beauty["sae_sizes"][size_cell.split()[0].replace(",", "")]
        assert seeds == str(len(runs)), size_cell
        cells = list(runs.values())
        assert valid == four(statistics.mean(c["selection"]["ndcg@20"] for c in cells)), size_cell
        assert test == four(statistics.mean(c["test"]["ndcg@20"] for c in cells)), size_cell
        assert hr == four(statistics.mean(c["test"]["hr@20"] for c in cells)), size_cell
        assert epochs == ", ".join(str(c["best_epoch"]) for c in cells), size_cell


def test_the_valid_pick_the_readme_names_is_the_jsons(beauty):
    text = (REPO / "README.md").read_text()
    picked = beauty["targets"]["best_grounded_on_valid"]
    assert f"Among the grounded variants valid picks `{picked}`" in text
    cell = beauty["summary"][picked]
    assert f"valid NDCG@20 {four(cell['valid_ndcg@20'])}, test {four(cell['ndcg@20']['mean'])}" in text


def test_the_steering_table_is_the_committed_steering_study(beauty):
    rows = table_after("Steering (`python bench/rec.py --step steer", "model")
    assert len(rows) == len(beauty["steering"])
    for (label, query, intents, carrying, strength, shares, cost), study in zip(rows, beauty["steering"]):
        chosen = study["within_1pct_cost"]
        assert (variant_of(label), query) == (study["cell"].split("/")[0], study["query"])
        assert intents == str(study["boosted_intents"]) and carrying == str(study["items_carrying"]), query
        assert strength == str(chosen["strength"]), query
        assert shares == (f"{chosen['carrying_share_before']:.3f} → {chosen['carrying_share_after']:.3f} "
                          f"(+{chosen['carrying_share_rise']:.0%})"), query
        assert cost == f"{chosen['ndcg@20_cost']:.1%}", query


def test_the_quick_start_timing_is_the_committed_demo_run():
    run = json.loads((RESULTS / "demo_run.json").read_text())
    text = (REPO / "README.md").read_text()
    assert run["job"] == "python jobs/full_pipeline.py", "the quick start's command, every stage"
    assert f"{round(run['job_wall_s'] / 60)} minutes on a {run['cpus']}-core machine" in text
    for stage in ("judge", "train_rec", "sweep"):
        assert f"{stage} {round(run['stages'][stage]['wall_s'] / 60)} min" in text, stage
    evaluated = run["stages"]["evaluate"]
    popularity = evaluated["by_popularity"]
    paired = next(p for p in popularity["paired"] if (p["a"], p["b"]) == ("grounded", "sasrec"))
    said = text[text.index("What the demo shows"):].split("\n\n")[0]
    assert f"{popularity['test_users']['cold']} test users" in said
    assert f"NDCG@20 {popularity['ndcg@20']['grounded']['cold']:.4f} where SASRec" in said
    for bucket in ("cold", "head"):
        found = paired[bucket]
        shown = f"{found['difference']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}]".replace("-", "−")
        assert shown in said, bucket
    assert f"valid chooses `{evaluated['selected_model']}` ({evaluated['selected_valid_ndcg@20']:.4f})" in said
    assert all(f"{evaluated[f'{m}_test_ndcg@20']:.4f}" in said for m in ("grounded", "sasrec", "saerec"))



def test_the_suite_time_is_the_committed_measurement():
    suite = json.loads((RESULTS / "suite_time.json").read_text())
    text = (REPO / "README.md").read_text()
    assert suite["exit_code"] == 0 and suite["tests"] == "python -m pytest -q"
    assert f"took {suite['wall_s']:,.0f} s ({suite['wall_s'] / 60:.1f} minutes) for {suite['outcomes']['passed']} tests" in text


def test_every_result_the_readme_cites_records_its_command_and_commit():
    cited = sorted(set(re.findall(r"bench/results/([a-z0-9_]+\.json)", (REPO / "README.md").read_text())))
    assert cited, "the README cites its results"
    for name in cited:
        found = json.loads((RESULTS / name).read_text())
        assert found.get("command") or found.get("commands"), f"{name} records no command"
        assert re.fullmatch(r"[0-9a-f]{40}", found.get("commit", "")), f"{name} records no git commit"


def spread(found: dict) -> str:
    """A mean over seeds as the README shows it: with its sample std, or alone for one seed."""
    return four(found["mean"]) + (f" ± {four(found['std'])}" if found["std"] is not None else "")


def interval(found: dict) -> str:
    return f"{found['difference']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}]"


def check_assessed_section(result: str, heading: str) -> None:
    """A README section written from ``bench/rec.py --step assess``'s JSON: its models' table (published
    anchors as rows named after them), the valid choice and its ties, the paired intervals, and the
    popularity table."""
    assessed = json.loads((RESULTS / result).read_text())
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    section = section[:section.find("\n### ", 1)] if "\n### " in section[1:] else section
    rows = table_after(heading, "model")
    summary = assessed["summary"]
    shown_anchors = {row[0].split(" (")[0].lower(): row[3:7] for row in rows if "published" in row[0]}
    checked = [name for name in shown_anchors if name in assessed["anchors"]]
    assert checked, "the published anchors the JSON records are rows of the table"
    for name in checked:
        assert shown_anchors[name] == [four(assessed["anchors"][name][m]) for m in METRICS], name
    rows = [row for row in rows if "published" not in row[0]]
    assert [variant_of(label) for label, *_ in rows] == list(summary), "one row per assessed model"
    for label, seeds, valid, *metrics, epochs in rows:
        cell = summary[variant_of(label)]
        assert seeds == str(len(cell["seeds"])), label
        assert valid == spread(cell["valid"]), label
        for shown, metric in zip(metrics, METRICS):
            assert shown == spread(cell["test"][metric]), (label, metric)
        runs = sorted((r for r in assessed["runs"] if r["variant"] == variant_of(label)), key=lambda r: r["seed"])
        assert epochs == ", ".join(str(r["best_epoch"]) for r in runs), label
    selection = assessed["selection"]
    assert f"valid chooses `{selection['selected']}`" in section
    ties = [t["model"] for t in selection["ties"]]
    assert (f"ties on valid: {', '.join(f'`{t}`' for t in ties)}" if ties else "no model ties it on valid") in section
    for compared in assessed["comparisons"]:
        for split in ("valid", "test"):
            assert f"`{compared['a']}` − `{compared['b']}` {split} NDCG@20 {interval(compared[split])}" in section
    buckets = table_after(heading, "bucket")
    models = assessed["by_popularity"]["models"]
    [pair] = assessed["by_popularity"]["comparisons"] or [None]
    for name, users, *cells in buckets:
        shown = [models[m][name]["ndcg@20"]["mean"] for m in summary]
        assert users == f"{models[next(iter(summary))][name]['users']:,}", name
        assert cells[:len(shown)] == [four(v) for v in shown], name
        if pair is not None:
            assert cells[len(shown)] == interval(pair["buckets"][name]), name


def test_the_headline_is_the_committed_valid_choice_with_paired_intervals():
    check_assessed_section("headline_beauty.json", "### The headline (Beauty)")


def test_the_bsarec_section_is_the_committed_assessment():
    check_assessed_section("bsarec_beauty.json", "### Grounding on a frequency backbone: BSARec on Beauty")


def test_the_title_text_bsarec_section_is_the_committed_assessment():
    check_assessed_section("bsarec_titles_beauty.json", "### Title and brand text on BSARec (Beauty)")


def test_the_sports_section_is_the_committed_assessment():
    check_assessed_section("bsarec_sports.json", "### Sports: a first measurement")
