"""Choosing a latent's summary among candidates: the one that, read as a text, fires the latent most.

A summary explains a latent well when a text saying just that would activate it. Each candidate
is embedded by the encoder the SAE was trained on (``embed.model``) and scored by the latent's
pre-activation ``W_enc[l] . (x - b_pre) + b_enc[l]`` (before ReLU and TopK, so candidates that
do not fire it still rank). A candidate that only lists four or more of the latent's words
(``only_lists_words``) fires it strongly and names nothing, so it is chosen only when every
candidate does that. The choice reads only the summariser's candidates, the latent's words and
the SAE's weights, never the latent's top or random texts, so detection on those texts stays
held out.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from saerec.intents.verdicts import CANNOT_TELL, only_lists_words


class ActivationSelector:
    """``selector(candidates, latents, words)``: per latent, the candidate with the highest pre-activation."""

    def __init__(self, encoder: object, w_enc: torch.Tensor, b_enc: torch.Tensor, b_pre: torch.Tensor) -> None:
        if w_enc.dim() != 2 or b_enc.shape != (w_enc.shape[0],) or b_pre.shape != (w_enc.shape[1],):
            raise ValueError(f"SAE weights do not fit together: W_enc {tuple(w_enc.shape)}, "
                             f"b_enc {tuple(b_enc.shape)}, b_pre {tuple(b_pre.shape)}")
        self.encoder = encoder
        self.w_enc, self.b_enc, self.b_pre = w_enc.float(), b_enc.float(), b_pre.float()

    def activations(self, texts: Sequence[str], latents: Sequence[int]) -> list[float]:
        """Pre-activation of ``latents[i]`` on the embedding of ``texts[i]``."""
        if len(texts) != len(latents):
            raise ValueError(f"{len(texts)} texts but {len(latents)} latents")
        if not texts:
            return []
        x = torch.from_numpy(np.asarray(self.encoder.encode(list(texts)), dtype=np.float32))
        if x.shape[1] != self.w_enc.shape[1]:
            raise ValueError(f"the encoder gives {x.shape[1]}-dim vectors but the SAE reads {self.w_enc.shape[1]}: "
                             "the selection must use the encoder the SAE was trained on (embed.model)")
        index = torch.as_tensor(list(latents), dtype=torch.long)
        return (((x - self.b_pre) * self.w_enc[index]).sum(dim=1) + self.b_enc[index]).tolist()

    def __call__(self, candidates: Sequence[Sequence[str]], latents: Sequence[int],
                 words: Sequence[Sequence[str]]) -> list[str]:
        """"Cannot Tell" is chosen only when it is a latent's only candidate."""
        if not len(candidates) == len(latents) == len(words):
            raise ValueError(f"{len(candidates)} candidate lists, {len(latents)} latents and {len(words)} word lists")
        named = []
        for found, latent_words in zip(candidates, words):
            found = [text for text in found if text != CANNOT_TELL]
            named.append([text for text in found if not only_lists_words(text, latent_words)] or found)
        flat = [(row, text) for row, found in enumerate(named) for text in found]
        scores = self.activations([text for _, text in flat], [latents[row] for row, _ in flat])
        best: dict[int, tuple[float, str]] = {}
        for (row, text), score in zip(flat, scores):
            if row not in best or score > best[row][0]:
                best[row] = (score, text)
        return [best[row][1] if row in best else CANNOT_TELL for row in range(len(candidates))]
