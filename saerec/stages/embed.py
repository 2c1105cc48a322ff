"""Stage ``embed``: every corpus text and every vocabulary word -> one pooled encoder vector.

Ray Data streams the corpus Parquet from storage through an actor pool (each actor loads the
encoder once, on its GPU when it has one) and writes sharded Parquet back to storage
(``saerec.workers.encoding``). The driver only ever holds word counts, so its memory grows with
the vocabulary, not with the corpus.

Outputs: ``embeddings/`` (``schemas.embedding_table_schema``: text_id, vector, tokens, truncated;
an empty text has tokens = 0 and an all-zero vector) and ``vocabulary/`` (word, count, vector),
the words embedded by the same encoder and pooling as the texts (eq. 2 compares them).
"""
from __future__ import annotations

from typing import Any

from saerec import artifacts
from saerec.config import EmbedSection
from saerec.pipeline import Stage, StageContext
from saerec.workers.encoding import embed_corpus


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: EmbedSection = ctx.sections["embed"]
    corpus_path = artifacts.CORPUS.path(ctx.input("prepare"))
    return embed_corpus(corpus_path, ctx.output.dir, ctx.store.fs, cfg)


STAGE = Stage(name="embed", run=run, inputs=("prepare",), sections=("embed",))
