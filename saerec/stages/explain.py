"""Stage ``explain``: every SAE latent -> its top-N words (eq. 2), activation frequency and texts.

Reads: embed (``vocabulary/`` word vectors, ``embeddings/`` text vectors), train_sae (weights and
config), prepare (corpus texts; the demo's planted intents). The two heavy steps, the word
alignment over F x V tiles and encoding the corpus with the SAE, run in one Ray task so they
can be sent to a GPU (``explain.num_gpus``); the driver only joins words and texts to the ids.

Word vectors (``explain.word_vectors``): ``corpus`` (default) takes each vocabulary word's
vector as the mean embedding of the corpus texts containing it (``CorpusWordVectors``);
``encoder`` takes the embed stage's embedding of the word alone, as the paper describes. On the
planted demo (256 latents, 16 intents) the share of planted intents that some latent's top-10
words match at >= 0.8 purity was 0.06 to 0.12 with ``encoder`` over every similarity and
temperature tried, and 1.00 with ``corpus`` (cosine, alpha = beta in 0.1..1).

Writes the artifact ``LATENTS`` (``schemas.EXPLAINED_LATENTS``): per latent its words and scores,
firing frequency over the non-empty corpus texts, its ``explain.top_texts`` strongest texts and
``explain.random_texts`` random texts it does not rank among its strongest, the negatives of
the judge's held-out detection score.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from saerec import artifacts, schemas
from saerec.config import ExplainSection
from saerec.intents.activations import summarise_activations
from saerec.intents.alignment import align_words
from saerec.intents.quality import planted_intent_recovery, sample_negatives
from saerec.intents.word_vectors import CorpusWordVectors
from saerec.pipeline import Stage, StageContext, StageError
from saerec.sae.model import TopKSAE
from saerec.text.vocabulary import tokenize_words


def explain_latents(sae_config: dict[str, Any], sae_state: dict[str, Any], words: list[str],
                    encoder_vectors: np.ndarray, embeddings_path: str, corpus_path: str, filesystem: Any,
                    cfg: ExplainSection) -> dict[str, np.ndarray]:
    """One pass over the corpus (SAE codes, corpus word vectors), then the word alignment.

    Runs where Ray puts it (on a GPU with ``explain.num_gpus``). With ``similarity=cosine`` the
    word vectors are centred on the SAE's ``b_pre`` first, the point the encoder measures texts
    from; ``dot`` is the paper's plain e_w . v_i.
    """
    device = torch.device("cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu")
    sae = TopKSAE.from_saved(sae_config, sae_state).to(device)
    grounded = CorpusWordVectors(words, encoder_vectors.shape[1], tokenize_words)
    corpus = _corpus_texts(corpus_path, filesystem) if cfg.word_vectors == "corpus" else {}
    text_ids: list[np.ndarray] = []

    def codes():
        dataset = artifacts.dataset_at(embeddings_path, filesystem)
        for batch in dataset.to_batches(columns=["text_id", "vector", "tokens"], batch_size=cfg.chunk_size):
            keep = batch.column("tokens").to_numpy() > 0
            if not keep.any():
                continue
            vectors = torch.from_numpy(np.ascontiguousarray(
                batch.column("vector").flatten().to_numpy().reshape(batch.num_rows, -1)[keep], dtype=np.float32))
            ids = batch.column("text_id").to_numpy()[keep]
            text_ids.append(ids)
            if corpus:
                grounded.add(vectors, [corpus.get(int(i), "") for i in ids])
            with torch.inference_mode():
                yield sae.encode(vectors.to(device))

    start = time.perf_counter()
    summary = summarise_activations(codes(), sae.n_latents, max(cfg.top_texts, 1))
    encode_s = time.perf_counter() - start

    start = time.perf_counter()
    word_vectors = grounded.vectors() if corpus else torch.from_numpy(encoder_vectors)
    if cfg.similarity == "cosine":
        word_vectors = word_vectors.to(device) - sae.b_pre.detach()
    alignment = align_words(sae.intent_vectors(), word_vectors, top_n=cfg.top_words,
                            alpha=cfg.alpha, beta=cfg.beta, cosine=cfg.similarity == "cosine",
                            latent_chunk=cfg.chunk_size, word_chunk=cfg.chunk_size, device=device)
    return {
        "word_ids": alignment.word_ids.numpy(), "scores": alignment.scores.float().numpy(),
        "frequency": summary.frequency.numpy(), "top_rows": summary.top_texts[:, :cfg.top_texts].numpy(),
        "top_values": summary.top_values[:, :cfg.top_texts].numpy(), "text_ids": np.concatenate(text_ids),
        "words_in_no_text": np.int64((grounded.counts == 0).sum()) if corpus else np.int64(0),
        "align_s": np.float64(time.perf_counter() - start), "encode_s": np.float64(encode_s),
    }


def _corpus_texts(corpus_path: str, filesystem: Any) -> dict[int, str]:
    table = artifacts.dataset_at(corpus_path, filesystem).to_table(columns=["text_id", "text"])
    return dict(zip(table.column("text_id").to_pylist(), table.column("text").to_pylist()))


def _lists(rows: np.ndarray, lookup: Any, value_type: pa.DataType) -> pa.Array:
    return pa.array([[lookup(int(v)) for v in row if v >= 0] for row in rows], pa.list_(value_type))


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: ExplainSection = ctx.sections["explain"]
    embed, train_sae, prepare = ctx.input("embed"), ctx.input("train_sae"), ctx.input("prepare")
    words, word_vectors = artifacts.read_vocabulary(embed)
    sae_config, sae_state = artifacts.read_sae_files(train_sae)
    if word_vectors.shape[1] != sae_config.get("d_in"):
        raise StageError(f"explain: word vectors have dimension {word_vectors.shape[1]} but the SAE reads "
                         f"{sae_config.get('d_in')}; embed and train_sae outputs do not match")
    task = ray.remote(num_cpus=1, num_gpus=cfg.num_gpus)(explain_latents)
    out = ray.get(task.remote(sae_config, sae_state, words, word_vectors, artifacts.EMBEDDINGS.path(embed),
                              artifacts.CORPUS.path(prepare), ctx.store.fs, cfg))

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
