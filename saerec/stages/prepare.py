"""Stage ``prepare``: raw inputs -> interactions, id maps, leave-one-out split, train-only corpus.

Metrics: the counts of ``collect`` and ``write_corpus`` (``duplicates_dropped``,
``corpus_repeats_dropped`` among them), ``bad_records_skipped`` with ``bad_record_lines`` (file ->
first line numbers) and ``bad_record_examples`` when any were skipped, one ``{kind}_skipped`` per
kind counted on its own (``bad_time``, ``not_utf8``, ``repeated_user``, ``repeated_item``,
``tab_in_text``), and the texts kept after a repair: ``surrogates_replaced`` and ``texts_truncated``.

With category labels (``data.item_categories``; the demo labels each item with its planted
intents) it also publishes ``ITEM_CATEGORIES``, evaluation labels that no model reads, and counts
``items_with_categories`` and ``category_names``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from saerec import artifacts, schemas
from saerec.config import DataSection
from saerec.data import amazon, demo, sequences, template
from saerec.data.categories import read_item_categories
from saerec.data.dataset import CorpusOptions, Tables, collect, with_item_texts, workdir, write_corpus
from saerec.data.inputs import check_inputs, input_path, item_categories_path, item_meta_path
from saerec.data.records import BadRecords, Interaction
from saerec.pipeline import Stage, StageContext


def _amazon(reviews: Path, meta: Path | None, cfg: DataSection, bad: BadRecords, scratch: Path) -> Tables:
    tables = collect(amazon.read_reviews(reviews, bad), cfg.k_core, scratch, cfg.duplicates == "drop")
    if meta is None:
        return with_item_texts(tables, {})
    wanted = set(tables.items.column("raw_id").to_pylist())
    return with_item_texts(tables, amazon.read_item_texts(meta, bad, wanted, template.choose(cfg.text_template, None)))


def _sequences(folder: Path, cfg: DataSection, bad: BadRecords, scratch: Path) -> Tables:
    items = sequences.item_texts(folder, item_meta_path(cfg), template.choose(cfg.text_template, cfg.item_meta), bad)
    records: Iterator[Interaction] = sequences.read_interactions(folder / "sequences.txt", items, bad)
    tables = with_item_texts(collect(records, cfg.k_core, scratch, cfg.duplicates == "drop"), items)
    reviewers = sequences.read_user_ids(folder / "users.tsv")
    if reviewers:
        tables.stats["users_with_reviewer_id"] = sum(
            1 for u in tables.users.column("raw_id").to_pylist() if u in reviewers)
    return tables


def _categories(tables: Tables, path: Path, bad: BadRecords) -> tuple[pa.Table, dict[str, int]]:
    """The kept items' category labels (evaluation data), by item id; raw ids the run does not keep are ignored."""
    labels = read_item_categories(path, bad)
    pairs = [(item, labels[raw]) for item, raw in zip(tables.items.column("item").to_pylist(),
                                                      tables.items.column("raw_id").to_pylist()) if labels.get(raw)]
    table = pa.table({"item": pa.array([p[0] for p in pairs], pa.int32()),
                      "categories": pa.array([p[1] for p in pairs], pa.list_(pa.string()))},
                     schema=schemas.ITEM_CATEGORIES)
    return table, {"items_with_categories": len(pairs),
                   "category_names": len({name for _, names in pairs for name in names})}


def empty_corpus_hint(cfg: DataSection) -> str:
    """What to change when no text is left: which file had none, and which key brings texts in."""
    if cfg.source == "sequences":
        folder = input_path(cfg)
        if cfg.text == "reviews":
            return "the sequences source has no reviews; use data.text=items for the texts in items.tsv"
        if cfg.item_meta or cfg.text_template:
            return (f"no item of {folder / 'items.tsv'} has a text under data.text_template "
                    f"{template.choose(cfg.text_template, cfg.item_meta)!r}")
        return f"no item in {folder / 'items.tsv'} has a text"
    reviews = "the demo's reviews" if cfg.source == "demo" else str(input_path(cfg))
    if cfg.text == "reviews":
        return (f"no training review in {reviews} has reviewText or summary; set data.meta_path to a meta_*.json.gz "
                "file and data.text=items (or both) to use item descriptions")
    if not cfg.meta_path and cfg.text == "items":
        return "data.text=items needs data.meta_path (a meta_*.json.gz file with titles and descriptions)"
    if not cfg.meta_path:
        return (f"no training review in {reviews} has a text and there is no data.meta_path for item descriptions; "
                "set data.meta_path to a meta_*.json.gz file")
    return f"neither {reviews} nor {cfg.meta_path} (data.meta_path) has a text for the kept users and items"


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: DataSection = ctx.sections["data"]
    check_inputs(cfg)
    bad = BadRecords(cfg.on_bad_record)
    with workdir() as scratch:
        if cfg.source == "demo":
            d = cfg.demo
            files = demo.generate(demo.DemoSpec(d.users, d.items, d.intents, d.min_length, d.max_length,
                                                ctx.seed, d.new_items), scratch / "demo")
            tables = _amazon(files["reviews"], files["meta"], cfg, bad, scratch)
            artifacts.write_json(ctx.output, artifacts.PLANTED, json.loads(files["planted_intents"].read_text()))
            categories: Path | None = files["item_categories"]
        elif cfg.source == "amazon":
            meta = Path(cfg.meta_path).expanduser() if cfg.meta_path else None
            tables = _amazon(input_path(cfg), meta, cfg, bad, scratch)
            categories = item_categories_path(cfg)
        else:
            tables = _sequences(input_path(cfg), cfg, bad, scratch)
            categories = item_categories_path(cfg)
        labelled: dict[str, int] = {}
        if categories is not None:
            table, labelled = _categories(tables, categories, bad)
            artifacts.write_table(ctx.output, artifacts.ITEM_CATEGORIES, table)

        artifacts.write_table(ctx.output, artifacts.INTERACTIONS, tables.interactions)
        artifacts.write_table(ctx.output, artifacts.USERS, tables.users)
        artifacts.write_table(ctx.output, artifacts.ITEMS, tables.items)
        options = CorpusOptions(cfg.text, cfg.review_drop, ctx.seed, drop_repeats=cfg.duplicates == "drop",
                                empty_hint=empty_corpus_hint(cfg))
        corpus = write_corpus(tables, options,
                              lambda part, t: artifacts.write_table(ctx.output, artifacts.CORPUS, t, part))
    return {**tables.stats, **corpus, **labelled, **bad.metrics()}


STAGE = Stage(name="prepare", run=run, sections=("data",))
