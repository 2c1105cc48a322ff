"""Stage ``report``: one self-contained HTML file and the same in Markdown, from published outputs only.

It reads the manifests and outputs of every earlier stage (never in-memory state), so the
report of any finished run can be rebuilt anywhere the storage is reachable. It reads top-down: a
one-paragraph answer (the model chosen on valid against the baseline, valid and test), the main results,
by item popularity, intents with examples, their category purity, steering, explanations naming items by
their text, the sweeps, and last an appendix with versions, wall times and every stage's metrics under
readable labels.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from saerec import artifacts
from saerec import render
from saerec.config import ReportSection
from saerec.pipeline import Stage, StageContext, StageError
from saerec.rec.runs import SELECT_METRIC
from saerec.rec.variants import BASELINE, VARIANTS, label

INPUTS = ("prepare", "embed", "train_sae", "explain", "judge", "profile", "train_rec", "evaluate", "sweep")
WORDS_SHOWN = 8
EXPLAINED_USERS = 5
APPENDIX = "Appendix: stage metrics and run details"
ANSWER_METRICS = (SELECT_METRIC, "hr@20")


PROTOCOL_STAGES = ("train_rec", "evaluate", "sweep")
PAPER_BANNER = ("PAPER PROTOCOL (evaluate.protocol=paper): the models were trained on the validation item and "
                "their epochs selected on the test item, as the public SAERec code does; every test number in "
                "this report is therefore optimistic and must not be compared with strict-protocol results.")


def run_protocol(ctx: StageContext) -> str:
    """The evaluation protocol of the run's results; refuses a run whose stages disagree, so strict
    and paper numbers can never share a table."""
    found = {name: ctx.input(name).metrics["protocol"] for name in PROTOCOL_STAGES}
    if len(set(found.values())) > 1:
        listed = ", ".join(f"{name}: {p}" for name, p in found.items())
        raise StageError(f"report: the run's results mix evaluation protocols ({listed}); re-run them under one "
                         "evaluate.protocol")
    return next(iter(found.values()))


def _answer(doc: render.Document, ctx: StageContext, protocol: str) -> None:
    """The report's first section: the model chosen on valid, its valid and test numbers, its ties and
    the paired interval against the baseline, so a reader has the result before any detail."""
    section = doc.section("Summary")
    if protocol == "paper":
        section.blocks.append(PAPER_BANNER)
    section.blocks.append(answer_text(artifacts.read_json(ctx.input("evaluate"), artifacts.TEST_METRICS)))


def _cell(value: dict[str, Any]) -> str:
    return render.format_mean_std(value["mean"], value["std"], value.get("n", 1))


def answer_text(evaluated: dict[str, Any]) -> str:
    """One paragraph: the selected model against the baseline, valid and test (evaluate's ``selection``
    and ``comparisons``)."""
    chosen = evaluated["selection"]
    name, metric = chosen["selected"], chosen["metric"]
    test = evaluated["summary"][name]["test"]
    shown = [f"test {m.upper()} {_cell(test[m])}" for m in ANSWER_METRICS if m in test]
    text = (f"The model chosen on mean valid {metric.upper()} is {name}: valid {metric.upper()} "
            f"{_cell(chosen['valid'][name])}, {', '.join(shown)}.")
    ties = [t["model"] for t in chosen["ties"]]
    text += (f" It ties on valid with {', '.join(ties)} (valid cannot tell them apart)." if ties else
             " No other variant is within valid noise of it.")
    base = evaluated["summary"].get(BASELINE)
    if name == BASELINE:
        return text + " It is the baseline itself: no intent variant beat it on valid."
    if base and metric in base["test"]:
        text += f" The baseline {BASELINE}: valid {metric.upper()} {_cell(base['valid'])}, test {metric.upper()} {_cell(base['test'][metric])}."
    paired = next((c for c in evaluated["comparisons"] if c["a"] == name and c["b"] == BASELINE), None)
    if paired:
        found = paired["test"]
        text += (f" Paired over {found['users']:,} test users, {name} − {BASELINE} on test "
                 f"{paired['metric'].upper()} is {render.format_interval(found)} (95 % bootstrap interval), which "
                 f"{'excludes 0' if found['excludes_zero'] else 'contains 0: no significant difference'}.")
    return text


def _appendix(doc: render.Document, ctx: StageContext, protocol: str) -> None:
    """Run details and every stage's metrics, labelled for a reader, after the results."""
    section = doc.section(APPENDIX)
    section.blocks.append(f"Run {ctx.run_name!r}, seed {ctx.seed}, stored under "
                          f"{ctx.store.uri(ctx.store.join(ctx.run_name))}, evaluation protocol {protocol!r}. "
                          "Every number in this report is read from the stages' published manifests and outputs.")
    section.blocks.append(render.Table(["package", "version"],
                                       [[k, v] for k, v in ctx.input("prepare").manifest.get("versions", {}).items()],
                                       "Software versions of the run"))
    _wall_times(section, ctx)
    for stage, caption in (
            ("prepare", "Interactions, users, items and the training-only text corpus (prepare)"),
            ("embed", "Text embeddings (embed)"),
            ("train_sae", "SAE quality on the whole corpus (train_sae)"),
            ("judge", "The LLM judge: latents summarised and kept as intents (judge)")):
        rows = render.metric_rows(ctx.input(stage).metrics)
        section.blocks.append(render.Table(["statistic", "value"], rows, caption))
    histogram = ctx.input("train_sae").metrics.get("density_histogram")
    if histogram:
        section.blocks.append(render.Figure(render.bar_chart([str(i) for i in range(len(histogram))], histogram,
                                                             [0.0] * len(histogram), "Latent activation density",
                                                             "latents"),
                                            "Latents per log-spaced bin of activation frequency (left: rarest)"))


def _intents(doc: render.Document, ctx: StageContext, cfg: ReportSection) -> None:
    judge = ctx.input("judge")
    features = artifacts.read_table(judge, artifacts.FEATURES,
                                    ["latent", "words", "summary", "kept", "frequency", "detection"]).to_pandas()
    kept = features[features["kept"]].sort_values(["frequency", "latent"], ascending=[False, True])
    section = doc.section("Intents")
    rows = [[int(r.latent), ", ".join(list(r.words)[:WORDS_SHOWN]), r.summary, r.frequency, r.detection]
            for r in kept.head(cfg.example_intents).itertuples()]
    section.blocks.append(render.Table(["latent", "top words", "summary", "activation frequency", "detection"], rows,
                                       f"The {len(rows)} most frequently active kept intents; detection = the held-out "
                                       "balanced accuracy at telling the latent's top texts from random ones given only the "
                                       f"summary ({_detection_by(judge.metrics)})"))


PURITY_GROUPS = {"kept": "kept intents", "rejected": "rejected latents", "clusters": "k-means clusters",
                 "chance": "random item sets"}


def _purity(doc: render.Document, ctx: StageContext) -> None:
    """Category purity of the kept intents against the controls, when the run has category labels."""
    profile = ctx.input("profile")
    if not artifacts.INTENT_PURITY.exists(profile):
        return
    metrics = profile.metrics
    scored = artifacts.read_table(profile, artifacts.INTENT_PURITY, ["group", "purity"]).to_pandas()
    n = metrics.get("purity_top_n")
    skipped = ", ".join(metrics.get("purity_skipped_categories") or []) or "none"
    section = doc.section("Category purity of intents")
    section.blocks.append(
        f"Purity of an item set: the share of its items in their most common category. Each intent's set is its "
        f"top-{n} labelled items by profile weight; categories on more than a fixed share of items are skipped as "
        f"too broad (skipped: {skipped}). The labels are evaluation data that no model read.")
    if scored.empty:
        section.blocks.append(f"Not scored: fewer than {n} labelled items, or no category left after skipping the "
                              "broad ones (profile.purity_max_share).")
        return
    rows = [[label_, metrics.get(f"purity_{group}"), metrics.get(f"purity_{group}_sets"),
             metrics.get(f"purity_ratio_vs_{group}") if group != "kept" else None]
            for group, label_ in PURITY_GROUPS.items()]
    section.blocks.append(render.Table(["item sets", "mean purity", "sets", "kept intents / this"], rows,
                                       f"Mean purity of top-{n} item sets: kept intents against the controls"))
    series = {label_: scored.loc[scored["group"] == group, "purity"].tolist()
              for group, label_ in PURITY_GROUPS.items()}
    section.blocks.append(render.Figure(render.histograms(series, [i / 20 for i in range(21)], "Category purity",
                                                          f"purity of top-{n} items"),
                                        "Purity of each kept intent, rejected latent, k-means cluster and random item "
                                        "set (each group's histogram sums to 1)"))


def _detection_by(metrics: dict) -> str:
    scoring = metrics["detection_scoring"]
    if scoring == "embedding":
        return "by the cosine of sentence embeddings, judge.detection_scoring=embedding"
    return "by the judge LM itself" if scoring == "judge" else "not scored: judge.detection=false"


def _main_results(doc: render.Document, ctx: StageContext) -> None:
    evaluated = artifacts.read_json(ctx.input("evaluate"), artifacts.TEST_METRICS)
    ours: dict[str, dict[str, Any]] = {}
    valid_column = f"valid {SELECT_METRIC}"
    for variant, info in evaluated["summary"].items():
        seeds = len(info["seeds"])
        shown = {valid_column: info["valid"], **info["test"]}
        ours[variant] = {m: (render.format_mean_std(v["mean"], v["std"], seeds) if seeds > 1 else v["mean"])
                         for m, v in shown.items()}
    metrics = [m for m in (valid_column, *render.MAIN_METRICS) if any(m in v for v in ours.values())]
    section = doc.section("Main results")
    demo = ctx.input("prepare").manifest["config"]["data"]["source"] == "demo"
    paper_rows = {v: VARIANTS[v].paper_row for v in ours if v in VARIANTS}
    section.blocks.append(render.main_results_table(ours, metrics, with_paper=not demo, paper_rows=paper_rows))
    selection = ("selected on the validation item only (strict protocol)"
                 if evaluated["protocol"] == "strict" else
                 "trained on the validation item and selected on the test item (paper protocol)")
    section.blocks.append(f"Our rows are this run's test metrics beside the valid {SELECT_METRIC} that selects "
                          "(mean ± sample std over n seeds when several), each model's epochs "
                          f"{selection}. The paper's SASRec row is a SASRec trained with one sampled negative; ours "
                          "uses cross-entropy over all items, a much stronger baseline.")
    _selection(section, evaluated)
    evaluated_metrics = ctx.input("evaluate").metrics
    fusion = [[b, round(evaluated_metrics[f"fusion_weight_{b}"], 4)] for b in ("self", "personal", "public")
              if f"fusion_weight_{b}" in evaluated_metrics]
    if fusion:
        section.blocks.append(render.Table(["branch", "mean fusion weight"], fusion,
                                           "How much the explained model uses each branch: its adaptive fusion weights "
                                           "(eq. 6) averaged over test users; intent branches near 0 mean the intents "
                                           "are ignored"))


def _by_popularity(doc: render.Document, ctx: StageContext) -> None:
    """Where the models differ: head, tail and cold held-out items."""
    found = artifacts.read_json(ctx.input("evaluate"), artifacts.TEST_METRICS)["by_popularity"]
    doc.section("By item popularity").blocks.extend(render.popularity_tables(found))


def _selection(section: render.Section, evaluated: dict[str, Any]) -> None:
    """The model chosen on valid, its ties, and the paired comparisons over users."""
    chosen = evaluated["selection"]
    name, valid, test = chosen["selected"], chosen["valid"][chosen["selected"]], chosen["test"]
    ties = ", ".join(t["model"] for t in chosen["ties"])
    section.blocks.append(
        f"The model, chosen on mean valid {chosen['metric']} over seeds: {name} (valid "
        f"{render.format_mean_std(valid['mean'], valid['std'], valid['n'])}, test "
        f"{render.format_mean_std(test['mean'], test['std'], test['n'])}, {test['n']} seed(s)). " +
        (f"It ties on valid with {ties}: their gap is within the larger seed std or the paired bootstrap interval "
         "of the per-user valid difference contains 0, so valid cannot tell them apart." if ties else
         "No other variant is within valid noise of it."))
    rows = [[f"{c['a']} − {c['b']}", render.format_interval(c["valid"]), render.format_interval(c["test"]),
             c["test"]["users"], c["test"]["excludes_zero"]] for c in evaluated["comparisons"]]
    if rows:
        section.blocks.append(render.Table(
            ["pair", f"valid {chosen['metric']} difference [95 % interval]",
             f"test {chosen['metric']} difference [95 % interval]", "users", "test interval excludes 0"], rows,
            "Paired bootstrap over users (seeds pooled per user by mean): the model chosen on valid against SASRec, "
            "each model built from text against its backbone on ids, and each intent variant against its "
            "random-intent control"))


def _study(summary: list[dict[str, Any]], study: str) -> list[dict[str, Any]]:
    return [r for r in summary if r["study"] == study]


def _error_bar(row: dict[str, Any], metric: str) -> float:
    """The std over seeds as an error bar; none drawn for one seed, which has no std."""
    std = row[f"{metric}_std"]
    return 0.0 if std is None else std


def _mean_std_cells(row: dict[str, Any], metrics: list[str]) -> list[Any]:
    return [render.format_mean_std(row[f"test_{m}_mean"], row[f"test_{m}_std"], row["seeds"]) for m in metrics]


def _sweeps(doc: render.Document, ctx: StageContext) -> None:
    sweep = ctx.input("sweep")
    summary = artifacts.read_table(sweep, artifacts.SWEEP_SUMMARY).to_pylist()
    doc.section("Sweeps").blocks.append(
        f"Ray Tune ran {sweep.metrics.get('trials')} trials ({sweep.metrics.get('seeds')} seed(s) each) in "
        f"{sweep.metrics.get('tune_seconds')} s, after {sweep.metrics.get('upstream_seconds')} s preparing the "
        "upstream outputs of the study points that change them. Every trial uses the same split, selection on "
        "valid and full ranking as the main results.")
    metrics = [m for m in render.MAIN_METRICS if summary and f"test_{m}_mean" in summary[0]]
    chart_metric = SELECT_METRIC if f"test_{SELECT_METRIC}_mean" in (summary[0] if summary else {}) else metrics[-1]

    ablation = _study(summary, "ablation")
    if ablation:
        section = doc.section("Ablations")
        labels = [label(r["variant"]) for r in ablation]
        section.blocks.append(render.Table(["variant", *metrics],
                                           [[label, *_mean_std_cells(r, metrics)] for label, r in zip(labels, ablation)],
                                           "Each SAERec part removed in turn, and the two baselines, same harness"))
        section.blocks.append(render.Figure(render.horizontal_bar_chart(
                                            labels, [r[f"test_{chart_metric}_mean"] for r in ablation],
                                            [_error_bar(r, f"test_{chart_metric}") for r in ablation],
                                            "Ablations", f"test {chart_metric}"),
                                            f"Test {chart_metric} per variant (error bars: std over seeds)"))
    for study, title, key, scale, xlabel in (
            ("sensitivity", "Sensitivity to k", "k", 1, "k (intents retrieved)"),
            ("robustness", "Robustness to review removal", "review_drop", 100, "% of corpus texts removed")):
        rows = sorted(_study(summary, study), key=lambda r: r[key])
        if not rows:
            continue
        x = [round(r[key] * scale) for r in rows]
        section = doc.section(title)
        section.blocks.append(render.Table([xlabel, *metrics],
                                           [[v, *_mean_std_cells(r, metrics)] for v, r in zip(x, rows)]))
        series = {m: ([r[f"test_{m}_mean"] for r in rows], [_error_bar(r, f"test_{m}") for r in rows])
                  for m in metrics if m.endswith("@20")}
        section.blocks.append(render.Figure(render.line_chart(x, series, title, xlabel, "test metric"),
                                            f"{title}: SAERec test metrics (error bars: std over seeds)"))
    judges = _study(summary, "judge")
    if judges:
        section = doc.section("Judge LLM choice")
        section.blocks.append(render.Table(["judge", *metrics],
                                           [[r["judge"] or "configured", *_mean_std_cells(r, metrics)] for r in judges]))


def _steering(doc: render.Document, ctx: StageContext) -> None:
    evaluate = ctx.input("evaluate")
    study = artifacts.read_json(evaluate, artifacts.STEERING)
    section = doc.section("Steering study")
    if "skipped" in study:
        section.blocks.append(f"Skipped: {study['skipped']}.")
    elif "dose_response" in study:
        _dose_response(section, study)
    else:
        section.blocks.append(render.Table(["quantity", "value"],
                                           [[render.metric_label(k), ", ".join(map(str, v)) if isinstance(v, list) else v]
                                        for k, v in study.items()],
                                           "Counterfactual steering: intents whose summary matches the query are "
                                           "boosted; flagged = items matching the query in all users' top lists"))


def _item_names(ctx: StageContext, recs: list[dict[str, Any]]) -> dict[int, str]:
    """The shown items' names from prepare's item texts (title first), for explanations a person reads."""
    wanted = {int(i) for r in recs for i in (r["target"], *r["items"][:5])}
    items = artifacts.read_table(ctx.input("prepare"), artifacts.ITEMS, ["item", "text"])
    texts = {int(i): t for i, t in zip(items.column("item").to_pylist(), items.column("text").to_pylist())
             if int(i) in wanted}
    return {i: render.item_label(i, texts.get(i)) for i in wanted}


def _explanations(doc: render.Document, ctx: StageContext) -> None:
    """The first test users' recommendations with their intents, items named by their text."""
    evaluate = ctx.input("evaluate")
    section = doc.section("Explanations")
    recs = artifacts.read_table(evaluate, artifacts.RECOMMENDATIONS).slice(0, EXPLAINED_USERS).to_pylist()
    titles = _item_names(ctx, recs)
    rows = [[r["user"], titles[r["target"]], "; ".join(titles[i] for i in r["items"][:5]),
             "; ".join(s for s in r["personal_summaries"] if s) or "—",
             "; ".join(s for s in r["public_summaries"] if s) or "—"] for r in recs]
    explained = evaluate.metrics.get("explained_model")
    if any(r["item_intents"] for r in recs):
        rows = [[r["user"], titles[item], f"{share:.0%}",
                 "; ".join(f"{s or f'intent {i}'} ({c:+.3f})" for i, s, c in zip(ids, names, parts) if i >= 0) or "—"]
                for r in recs[:2] for item, ids, names, parts, share in
                zip(r["items"][:5], r["item_intents"], r["item_intent_summaries"], r["item_contributions"],
                    r["item_intent_share"])]
        section.blocks.append(render.Table(["user", "recommended item", "intent share of score", "strongest intents "
                                            "(contribution to the score)"], rows,
                                           f"Exact explanations of {explained}: each item's score is its ID part plus the "
                                           "listed and remaining intents' contributions a_ji (h . E_i)"))
        return
    section.blocks.append(render.Table(["user", "held-out item", "top 5", "personal intents", "public intents"], rows,
                                       f"Explanations of the first {len(rows)} test users' recommendations ({explained})"))


def _dose_response(section: render.Section, study: dict[str, Any]) -> None:
    """A grounded model steered toward the query's intents: how lists and quality move with strength."""
    n = study["top_n"]
    levels = study["dose_response"]
    section.blocks.append(
        f"Steering {study['model']} toward the {study['boosted_intents']} intents whose summary mentions "
        f"{study['query']!r} ({'; '.join(s or '?' for s in study['matched_summaries'])}); {study['items_carrying']} "
        f"items carry one of them. Each item's score is raised by strength x the user's score spread x its weight "
        "on those intents, so strength 0 is the model's own ranking.")
    valid = {r["strength"]: r for r in study["valid_dose_response"]}
    section.blocks.append(render.Table(
        ["strength", f"share of top-{n} items carrying them", f"valid NDCG@{n}", f"NDCG@{n}", f"HR@{n}",
         "users whose list changed"],
        [[r["strength"], round(r["carrying_share"], 4), valid.get(r["strength"], {}).get(f"ndcg@{n}"),
          round(r[f"ndcg@{n}"], 4), round(r[f"hr@{n}"], 4), round(r["users_changed"], 4)] for r in levels],
        "Steering dose-response on the test users, with the valid NDCG that chooses the strength"))
    cheap = study.get("within_1pct_cost")
    section.blocks.append(
        f"The strongest level costing at most 1 % valid NDCG@{n} is strength {cheap['strength']} (chosen on valid); "
        f"on test it costs {cheap[f'test_ndcg@{n}_cost']:.1%} NDCG@{n} and the carrying share rises "
        f"{cheap['carrying_share_rise']:+.1%} relative." if cheap else
        f"Every steering level costs more than 1 % valid NDCG@{n}.")
    _category_response(section, study, cheap)
    base = levels[0]

    def relative(key: str) -> list[float]:
        return [r[key] / base[key] if base[key] else 0.0 for r in levels]

    section.blocks.append(render.Figure(render.line_chart(
        [r["strength"] for r in levels],
        {"carrying share": (relative("carrying_share"), [0.0] * len(levels)),
         f"NDCG@{n}": (relative(f"ndcg@{n}"), [0.0] * len(levels))},
        "Steering dose-response", "strength (x the user's score spread)", "relative to strength 0"),
        f"Share of top-{n} items carrying the boosted intents, and NDCG@{n}, relative to the unsteered lists"))


def _category_response(section: render.Section, study: dict[str, Any], cheap: dict[str, Any] | None) -> None:
    """Steering scored against an outside label: the share of top-N items in the query's category."""
    if "category" not in study:
        section.blocks.append(f"Not scored against item categories: {study['category_skipped']}.")
        return
    n, category = study["top_n"], study["category"]
    if cheap:
        rise = cheap["category_share_rise"]
        section.blocks.append(
            f"Against the outside label {category!r} ({study['category_items']} items): at strength "
            f"{cheap['strength']} the share of test top-{n} items in it goes from {cheap['category_share_before']:.2%} "
            f"to {cheap['category_share_after']:.2%} ({'undefined' if rise is None else f'{rise:+.1%}'} relative; "
            "the paper reports +2.8 % for Skin Care, 6,819 to 7,011 items).")
    curves = {name: [r["category_share"] for r in rows]
              for name, rows in (("valid", study["valid_dose_response"]), ("test", study["dose_response"]))}
    section.blocks.append(render.Figure(render.line_chart(
        [r["strength"] for r in study["dose_response"]], {k: (v, [0.0] * len(v)) for k, v in curves.items()},
        f"Share of top-{n} items in {category!r}", "strength (x the user's score spread)", "share of listed items"),
        f"Category dose-response: the share of top-{n} items labelled {category!r}, valid and test users"))


def _wall_times(section: render.Section, ctx: StageContext) -> None:
    rows = []
    for name in INPUTS:
        manifest = ctx.input(name).manifest
        rows.append([name, manifest.get("wall_time_s"), manifest.get("finished_at")])
    total = float(np.sum([r[1] or 0.0 for r in rows]))
    section.blocks.append(
        render.Table(["stage", "seconds", "finished (UTC)"], [*rows, ["total", total, ""]],
                     "Wall time of each stage's published run (a stage skipped on re-run keeps its first time)"))


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: ReportSection = ctx.sections["report"]
    protocol = run_protocol(ctx)
    doc = render.Document(f"SAERec run report: {ctx.run_name}" + (" (PAPER PROTOCOL)" if protocol == "paper" else ""))
    _answer(doc, ctx, protocol)
    _main_results(doc, ctx)
    _by_popularity(doc, ctx)
    _intents(doc, ctx, cfg)
    _purity(doc, ctx)
    _steering(doc, ctx)
    _explanations(doc, ctx)
    _sweeps(doc, ctx)
    _appendix(doc, ctx, protocol)
    html = render.to_html(doc)
    markdown = render.to_markdown(doc)
    artifacts.write_text(ctx.output, artifacts.REPORT_HTML, html)
    artifacts.write_text(ctx.output, artifacts.REPORT_MARKDOWN, markdown)
    figures = sum(isinstance(b, render.Figure) for s in doc.sections for b in s.blocks)
    return {"protocol": protocol, "sections": len(doc.sections), "figures": figures, "html_bytes": len(html),
            "markdown_bytes": len(markdown), "report": artifacts.REPORT_HTML.uri(ctx.output)}


STAGE = Stage(name="report", run=run, inputs=INPUTS, sections=("report",))
