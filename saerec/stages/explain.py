"""Stage ``explain``: every SAE latent -> its top-N words (eq. 2), activation frequency and texts.

Reads: embed (``vocabulary/`` word vectors, ``embeddings/`` text vectors), train_sae (weights and
config), prepare (corpus texts; the demo's planted intents). The two heavy steps, the word
alignment over F x V tiles and encoding the corpus with the SAE, run in one Ray task
(``saerec.workers.sae_codes``) so they can be sent to a GPU (``explain.num_gpus``); the driver only
joins words and texts to the ids.

Word vectors (``explain.word_vectors``): ``corpus`` (default) takes each vocabulary word's
vector as the mean embedding of the corpus texts containing it (``CorpusWordVectors``);
``encoder`` takes the embed stage's embedding of the word alone, as the paper describes. On the
planted demo (256 latents, 16 intents) the share of planted intents that some latent's top-10
words match at >= 0.8 purity was 0.06 to 0.12 with ``encoder`` over every similarity and
temperature tried, and 1.00 with ``corpus`` (cosine, alpha = beta in 0.1..1).

Writes the artifact ``CODES`` (``schemas.SAE_CODES``): each non-empty text's SAE code, written part
by part during that one pass, so the corpus goes through the SAE once and the profile stage reads
the codes instead of encoding again. And ``LATENTS`` (``schemas.EXPLAINED_LATENTS``): per latent its words and scores,
firing frequency over the non-empty corpus texts, its ``explain.top_texts`` strongest texts and
``explain.random_texts`` random texts it does not rank among its strongest, the negatives of
the judge's held-out detection score.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from saerec import artifacts, restore, schemas
from saerec.config import ExplainSection
from saerec.intents.quality import planted_intent_recovery, sample_negatives
from saerec.pipeline import Stage, StageContext, StageError
from saerec.workers.sae_codes import explain_on_ray


def _lists(rows: np.ndarray, lookup: Any, value_type: pa.DataType) -> pa.Array:
    return pa.array([[lookup(int(v)) for v in row if v >= 0] for row in rows], pa.list_(value_type))


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: ExplainSection = ctx.sections["explain"]
    embed, train_sae, prepare = ctx.input("embed"), ctx.input("train_sae"), ctx.input("prepare")
    words, word_vectors = artifacts.read_vocabulary(embed)
    sae = restore.sae(train_sae)
    if word_vectors.shape[1] != sae.d_in:
        raise StageError(f"explain: word vectors have dimension {word_vectors.shape[1]} but the SAE reads "
                         f"{sae.d_in}; embed and train_sae outputs do not match")
    out = explain_on_ray(sae, words, word_vectors, embed, prepare, ctx.output, cfg)

    n_latents, text_ids = len(out["frequency"]), out["text_ids"]
    random_rows = sample_negatives(len(text_ids), out["top_rows"], cfg.random_texts,
                                   np.random.default_rng(ctx.seed))
    top_ids = np.where(out["top_rows"] >= 0, text_ids[np.maximum(out["top_rows"], 0)], -1)
    random_ids = np.where(random_rows >= 0, text_ids[np.maximum(random_rows, 0)], -1)
    texts = artifacts.read_corpus_texts(prepare, np.concatenate([top_ids[top_ids >= 0], random_ids[random_ids >= 0]]))
    top_words = [[words[i] for i in row] for row in out["word_ids"]]
    table = pa.table({
        "latent": pa.array(np.arange(n_latents, dtype=np.int32)),
        "words": pa.array(top_words, pa.list_(pa.string())),
        "scores": pa.array(list(out["scores"]), pa.list_(pa.float32())),
        "frequency": pa.array(out["frequency"], pa.float64()),
        "top_text_ids": _lists(top_ids, int, pa.int64()),
        "top_texts": _lists(top_ids, texts.get, pa.string()),
        "top_activations": pa.array([list(v[r >= 0]) for v, r in zip(out["top_values"], top_ids)],
                                    pa.list_(pa.float32())),
        "random_text_ids": _lists(random_ids, int, pa.int64()),
        "random_texts": _lists(random_ids, texts.get, pa.string()),
    }, schema=schemas.EXPLAINED_LATENTS)
    artifacts.write_table(ctx.output, artifacts.LATENTS, table)

    metrics: dict[str, Any] = {
        "latents": n_latents,
        "vocabulary_words": len(words),
        "texts": len(text_ids),
        "alive_latents": int((out["frequency"] > 0).sum()),
        "mean_top_word_score": round(float(out["scores"][:, 0].mean()), 6),
        "word_vectors": cfg.word_vectors,
        "words_in_no_text": int(out["words_in_no_text"]),
        "align_s": round(float(out["align_s"]), 2),
        "encode_s": round(float(out["encode_s"]), 2),
    }
    planted = artifacts.read_planted(prepare)
    if planted is not None:
        recovery = planted_intent_recovery(top_words, {p["name"]: p["words"] for p in planted})
        metrics["planted_recovery_all_latents"] = recovery["recovery"]
        artifacts.write_json(ctx.output, artifacts.PLANTED_RECOVERY, recovery)
    return metrics


STAGE = Stage(name="explain", run=run, inputs=("prepare", "embed", "train_sae"), sections=("explain",))
