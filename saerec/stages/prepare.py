"""Stage ``prepare``: raw inputs -> interactions, id maps, leave-one-out split, train-only corpus."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from saerec.config import DataSection
from saerec.data import amazon, demo, sequences
from saerec.data.dataset import CorpusOptions, Tables, collect, with_item_texts, workdir, write_corpus
from saerec.data.records import BadRecords, DataError, Interaction
from saerec.pipeline import Stage, StageContext


def _require_path(cfg: DataSection, what: str) -> Path:
    if not cfg.path:
        raise DataError(f"data.path is required for data.source={cfg.source!r} ({what})")
    return Path(cfg.path).expanduser()


def _amazon(reviews: Path, meta: Path | None, cfg: DataSection, bad: BadRecords, scratch: Path) -> Tables:
    tables = collect(amazon.read_reviews(reviews, bad), cfg.k_core, scratch)
    if meta is None:
        return with_item_texts(tables, {})
    wanted = set(tables.items.column("raw_id").to_pylist())
    return with_item_texts(tables, amazon.read_item_texts(meta, bad, wanted))


def _sequences(folder: Path, cfg: DataSection, bad: BadRecords, scratch: Path) -> Tables:
    items = sequences.read_items_tsv(folder / "items.tsv")
    records: Iterator[Interaction] = sequences.read_sequences(folder / "sequences.txt", items, bad)
    tables = with_item_texts(collect(records, cfg.k_core, scratch), items)
    reviewers = sequences.read_user_ids(folder / "users.tsv")
    if reviewers:
        tables.stats["users_with_reviewer_id"] = sum(
            1 for u in tables.users.column("raw_id").to_pylist() if u in reviewers)
    return tables


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: DataSection = ctx.cfg
    bad = BadRecords(cfg.on_bad_record)
    with workdir() as tmp:
        scratch = Path(tmp)
        if cfg.source == "demo":
            d = cfg.demo
            files = demo.generate(demo.DemoSpec(d.users, d.items, d.intents, d.min_length, d.max_length,
                                                ctx.seed), scratch / "demo")
            tables = _amazon(files["reviews"], files["meta"], cfg, bad, scratch)
            ctx.output.write_json("planted_intents.json", json.loads(files["planted_intents"].read_text()))
        elif cfg.source == "amazon":
            reviews = _require_path(cfg, "a reviews_*.json.gz file")
            meta = Path(cfg.meta_path).expanduser() if cfg.meta_path else None
            tables = _amazon(reviews, meta, cfg, bad, scratch)
        else:
            tables = _sequences(_require_path(cfg, "a folder with sequences.txt and items.tsv"), cfg, bad, scratch)

        ctx.output.write_table("interactions.parquet", tables.interactions)
        ctx.output.write_table("users.parquet", tables.users)
        ctx.output.write_table("items.parquet", tables.items)
        corpus = write_corpus(tables, CorpusOptions(cfg.text, cfg.review_drop, ctx.seed),
                              lambda part, t: ctx.output.write_table(f"corpus/part-{part:05d}.parquet", t))
    return {**tables.stats, **corpus, "bad_records_skipped": bad.skipped,
            **({"bad_record_examples": bad.examples} if bad.examples else {})}


STAGE = Stage(name="prepare", run=run, sections=("data",))
