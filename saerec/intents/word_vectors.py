"""Corpus-grounded word vectors: a word's vector is the mean embedding of the texts it occurs in.

Why not embed each word alone with the encoder: the SAE is trained on *text* embeddings, and a
single word fed to a sentence encoder lands far from where texts about it do. On the planted
demo, aligning latents with encoder-embedded words recovered 2 of 16 planted intents among
all 256 latents, with these vectors all 16 (see saerec/stages/explain.py). The mean over the
texts that contain a word lives in the SAE's own input space and carries the word's contexts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class CorpusWordVectors:
    """Accumulates, batch by batch, the sum and count of text embeddings per vocabulary word."""

    def __init__(self, words: Sequence[str], dim: int, tokenize: Callable[[str], list[str]]) -> None:
        self.index = {word: i for i, word in enumerate(words)}
        if len(self.index) != len(words):
            raise ValueError("the vocabulary has repeated words")
        self.tokenize = tokenize
        self.sums = torch.zeros(len(words), dim, dtype=torch.float64)
        self.counts = torch.zeros(len(words), dtype=torch.long)

    def add(self, vectors: Tensor, texts: Sequence[str]) -> None:
        """Add texts (one row of ``vectors`` each); a word counts once per text."""
        if vectors.shape[0] != len(texts):
            raise ValueError(f"{vectors.shape[0]} vectors but {len(texts)} texts")
        word_rows, text_rows = [], []
        for row, text in enumerate(texts):
            for word in set(self.tokenize(text or "")):
                if word in self.index:
                    word_rows.append(self.index[word])
                    text_rows.append(row)
        if not word_rows:
            return
        incidence = torch.sparse_coo_tensor(torch.tensor([word_rows, text_rows]),
                                            torch.ones(len(word_rows), dtype=torch.float64),
                                            (len(self.index), len(texts)), check_invariants=True)
        self.sums += torch.sparse.mm(incidence, vectors.detach().cpu().double())
        self.counts += torch.bincount(torch.tensor(word_rows), minlength=len(self.index))

    def vectors(self) -> Tensor:
        """(V, D) float32 means; words that occurred in no text get a zero vector."""
        return (self.sums / self.counts.clamp(min=1)[:, None]).float()
