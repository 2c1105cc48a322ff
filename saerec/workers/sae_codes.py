"""The explain stage's Ray task (``explain_on_ray``): the corpus through the SAE once, then the word alignment.

The one pass over the non-empty texts publishes each chunk's SAE codes (``CODES``) as it comes,
so no later stage encodes the corpus again, and feeds the activation summary and the corpus word
vectors; memory holds one chunk, the bounded top texts per latent and one id per text.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch

from saerec import artifacts
from saerec.config import ExplainSection
from saerec.intents.activations import summarise_activations
from saerec.intents.alignment import align_words
from saerec.intents.word_vectors import CorpusWordVectors
from saerec.pipeline import StageFiles
from saerec.sae.model import TopKSAE
from saerec.text.vocabulary import tokenize_words


def encode_corpus(sae: TopKSAE, embed: StageFiles, output: StageFiles, chunk_size: int,
                  device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Stream the non-empty texts through the SAE once, ``chunk_size`` at a time, publishing each
    chunk's codes as one part of ``CODES``; yields (text ids, vectors, values, latents) per chunk."""
    batches = artifacts.dataset(embed, artifacts.EMBEDDINGS).to_batches(columns=["text_id", "vector", "tokens"],
                                                                         batch_size=chunk_size)
    for part, batch in enumerate(batches):
        keep, matrix = artifacts.nonempty_vectors(batch)
        if not keep.any():
            continue
        ids, vectors = batch.column("text_id").to_numpy()[keep], torch.from_numpy(matrix)
        with torch.inference_mode():
            values, latents = sae.encode(vectors.to(device))
        artifacts.write_codes(output, part, ids, values.cpu().numpy(), latents.cpu().numpy())
        yield ids, vectors, values, latents


def explain_on_ray(sae: TopKSAE, words: list[str], encoder_vectors: np.ndarray, embed: StageFiles,
                   prepare: StageFiles, output: StageFiles, cfg: ExplainSection) -> dict[str, np.ndarray]:
    """``explain_latents`` as one Ray task with one CPU and ``explain.num_gpus`` GPUs."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=cfg.num_gpus)(explain_latents)
    return ray.get(task.remote(sae, words, encoder_vectors, embed, prepare, output, cfg))


def explain_latents(sae: TopKSAE, words: list[str], encoder_vectors: np.ndarray, embed: StageFiles,
                    prepare: StageFiles, output: StageFiles, cfg: ExplainSection) -> dict[str, np.ndarray]:
    """One pass over the corpus (SAE codes, published as they come; corpus word vectors), then the
    word alignment.

    Runs where Ray puts it (on a GPU with ``explain.num_gpus``). With ``similarity=cosine`` the
    word vectors are centred on the SAE's ``b_pre`` first, the point the encoder measures texts
    from; ``dot`` is the paper's plain e_w . v_i.
    """
    device = torch.device("cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu")
    sae = sae.to(device)
    grounded = CorpusWordVectors(words, encoder_vectors.shape[1], tokenize_words)
    corpus = _corpus_texts(prepare) if cfg.word_vectors == "corpus" else {}
    text_ids: list[np.ndarray] = []

    def codes():
        for ids, vectors, values, latents in encode_corpus(sae, embed, output, cfg.chunk_size, device):
            text_ids.append(ids)
            if corpus:
                grounded.add(vectors, [corpus.get(int(i), "") for i in ids])
            yield values, latents

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


def _corpus_texts(prepare: StageFiles) -> dict[int, str]:
    table = artifacts.dataset(prepare, artifacts.CORPUS).to_table(columns=["text_id", "text"])
    return dict(zip(table.column("text_id").to_pylist(), table.column("text").to_pylist()))
