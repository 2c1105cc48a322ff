"""The embed stage's Ray execution: the corpus and the vocabulary through an encoder actor pool.

Ray Data streams the corpus Parquet through ``EncodeBatches`` actors (each loads the encoder
once, on its GPU when it has one) and writes sharded Parquet back to storage; the words are
counted in parallel batches and merged on the driver, whose memory grows with the vocabulary,
never with the corpus.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
import ray
import torch

from saerec import artifacts, schemas
from saerec.config import EmbedSection
from saerec.pipeline import StageError
from saerec.text.encoders import load_encoder
from saerec.text.vocabulary import WordCounter
from saerec.text.encoders import EncoderSpec, inspect_encoder

log = logging.getLogger(__name__)
WORD_COUNT_BATCH = 4096
# Reading and writing Parquet reserve no CPU: an actor pool that holds every CPU of a small
# cluster (2 actors on 2 cores) would otherwise starve them and the dataset would never finish.
IO_TASK_CPUS = 0


class EncodeBatches:
    """Ray Data callable class: loads the encoder once per actor, then embeds one Arrow batch per call."""

    def __init__(self, cfg: EmbedSection, text_column: str, keep: list[str], with_stats: bool) -> None:
        if cfg.num_gpus_per_actor == 0:
            torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
        self.encoder = load_encoder(cfg.model, cfg.kind, cfg.layer, cfg.max_length, cfg.device, cfg.dtype,
                                    cfg.micro_batch_size)
        self.text_column = text_column
        self.keep = keep
        self.with_stats = with_stats

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column)
        if texts.null_count:
            first = texts.is_null().index(True).as_py()
            row = {name: batch.column(name)[first].as_py() for name in self.keep}
            raise StageError(f"embed: the {self.text_column!r} of row {row} is null")
        encoded = self.encoder.encode_detailed(texts.to_pylist())
        columns: dict[str, Any] = {name: batch.column(name) for name in self.keep}
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(encoded.vectors.reshape(-1)),
                                                              self.encoder.dim)
        if self.with_stats:
            columns["tokens"] = pa.array(encoded.tokens, pa.int32())
            columns["truncated"] = pa.array(encoded.truncated, pa.bool_())
        return pa.table(columns)


def count_words(batch: pa.Table) -> pa.Table:
    """One batch's word counts as rows; the driver adds them up."""
    counter = WordCounter()
    counter.update(text for text in batch.column("text").to_pylist() if text is not None)
    return pa.table({"word": pa.array(list(counter.counts), pa.string()),
                     "count": pa.array(list(counter.counts.values()), pa.int64())})


def read_corpus(corpus_path: str, filesystem):
    """The corpus as a Ray Dataset whose read tasks reserve no CPU.

    Ray Data's newer Parquet reader lists files in a task that always asks for a whole CPU, which
    an actor pool holding every CPU (2 actors on 2 cores) starves forever; the classic reader
    lists on the driver and honours ``num_cpus`` for its read tasks.
    """
    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(corpus_path, filesystem=filesystem, columns=["text_id", "text"],
                                     num_cpus=IO_TASK_CPUS)
    finally:
        context.use_datasource_v2 = previous


def check_settings(cfg: EmbedSection) -> EncoderSpec:
    """Fail on the driver, in seconds, for settings the actors would only reject after loading."""
    try:
        return inspect_encoder(cfg.model, cfg.kind, cfg.layer, cfg.max_length)
    except (OSError, ValueError) as exc:
        raise StageError(f"embed.model={cfg.model!r} (kind={cfg.kind!r}, layer={cfg.layer}, "
                         f"max_length={cfg.max_length}): {exc}") from exc


def _encode_dataset(ds, cfg: EmbedSection, text_column: str, keep: list[str], with_stats: bool, actors: int):
    """``ds``'s ``text_column`` through a pool of ``actors`` ``EncodeBatches`` actors, ``keep`` columns beside."""
    return ds.map_batches(
        EncodeBatches,
        fn_constructor_kwargs={"cfg": cfg, "text_column": text_column, "keep": keep, "with_stats": with_stats},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.num_gpus_per_actor,
    )


def build_vocabulary_counts(ds, cfg: EmbedSection) -> list[tuple[str, int]]:
    """Count words in parallel over the corpus batches; merge on the driver (bounded by vocabulary)."""
    total = WordCounter()
    counted = ds.map_batches(count_words, batch_size=WORD_COUNT_BATCH, batch_format="pyarrow")
    for batch in counted.iter_batches(batch_format="pyarrow", batch_size=None):
        total.add_counts(batch.column("word").to_pylist(), batch.column("count").to_pylist())
    return total.top(cfg.vocab_size, cfg.vocab_min_count)


def embed_corpus(corpus_path: str, out_dir: str, filesystem, cfg: EmbedSection) -> dict[str, Any]:
    """The embed stage's whole pipeline on explicit paths (the stage gives its own; the benchmark's are local)."""
    spec = check_settings(cfg)
    corpus = read_corpus(corpus_path, filesystem)

    start = time.perf_counter()
    vocabulary = build_vocabulary_counts(corpus, cfg)
    if not vocabulary:
        raise StageError(f"embed: no word of the corpus occurs embed.vocab_min_count={cfg.vocab_min_count} "
                         "times; lower it or use a larger corpus")
    count_s = time.perf_counter() - start
    log.info(f"[embed] vocabulary: {len(vocabulary)} words (counted in {count_s:.1f}s)")

    start = time.perf_counter()
    embeddings_dir = artifacts.EMBEDDINGS.under(out_dir)
    artifacts.write_dataset(_encode_dataset(corpus, cfg, "text", ["text_id"], True, cfg.num_actors),
                            artifacts.EMBEDDINGS, out_dir, filesystem, num_cpus=IO_TASK_CPUS)
    texts_s = time.perf_counter() - start

    start = time.perf_counter()
    table = pa.table({"word": pa.array([w for w, _ in vocabulary], pa.string()),
                      "count": pa.array([c for _, c in vocabulary], pa.int64())})
    # One block per batch, so that every actor of the pool gets a share of the words.
    words = ray.data.from_arrow([table.slice(i, cfg.batch_size) for i in range(0, table.num_rows, cfg.batch_size)])
    word_actors = min(cfg.num_actors, -(-len(vocabulary) // cfg.batch_size))
    artifacts.write_dataset(_encode_dataset(words, cfg, "word", ["word", "count"], False, word_actors),
                            artifacts.VOCABULARY, out_dir, filesystem, num_cpus=IO_TASK_CPUS)
    words_s = time.perf_counter() - start

    texts, empty, truncated, tokens = _summarise(embeddings_dir, filesystem, spec.dim)
    log.info(f"[embed] {texts} texts embedded in {texts_s:.1f}s on {cfg.num_actors} actor(s); "
        f"{empty} empty (zero vectors), {truncated} cut at {cfg.max_length} tokens")
    return {
        "texts": texts,
        "empty_texts": empty,
        "truncated_texts": truncated,
        "mean_tokens": round(tokens / max(texts - empty, 1), 2),
        "dim": spec.dim,
        "encoder_kind": spec.kind,
        "encoder_layer": spec.layer,
        "vocabulary_words": len(vocabulary),
        "actors": cfg.num_actors,
        "texts_per_s": round(texts / texts_s, 1) if texts_s > 0 else None,
        "embed_texts_s": round(texts_s, 2),
        "embed_words_s": round(words_s, 2),
        "count_words_s": round(count_s, 2),
    }


def _summarise(embeddings_dir: str, filesystem, dim: int) -> tuple[int, int, int, int]:
    """Stream the small per-text columns back (never the vectors) to count what was written."""
    dataset = artifacts.dataset_at(embeddings_dir, filesystem)
    expected = schemas.embedding_table_schema(dim)
    if not dataset.schema.equals(expected, check_metadata=False):
        raise StageError(f"embed: wrote {dataset.schema}, expected {expected}")
    texts = empty = truncated = tokens = 0
    for batch in dataset.to_batches(columns=["tokens", "truncated"]):
        counts = batch.column("tokens").to_numpy()
        texts += len(counts)
        empty += int((counts == 0).sum())
        tokens += int(counts.sum())
        truncated += int(batch.column("truncated").to_numpy(zero_copy_only=False).sum())
    return texts, empty, truncated, tokens
