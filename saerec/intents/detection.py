"""Detection by embedding: given only a latent's summary, pick its top texts out from random ones.

The paper asks the judge LM itself (the detection prompt; with likelihood scoring, how much the
summary raises each text's log-likelihood). SmolLM2-135M does that barely above chance: on
Beauty's 142 kept latents its mean balanced accuracy was 0.62. Ranking the same texts by the
cosine between their embedding and the summary's, with MiniLM, gave 0.83 for the same summaries
and texts, at milliseconds per latent instead of about a second.

What the number means: with the default encoder, the SAE was trained on this encoder's
embeddings, so a latent's top texts already lie close together in its space; the score says
whether the summary names what they share, as seen from the space the intents come from.

Two guards against the metric measuring itself (issue 31):
  * every kept latent is also scored with the bare-words baseline (``words_summary``: its first
    words as its "summary", what any summariser starts from), by the same scorer on the same
    texts; a summary is worth writing where it beats that;
  * with ``judge.summary_candidates`` > 1 the summaries are chosen by ``embed.model``'s embedding,
    so the config refuses a ``judge.detection_encoder`` that is that encoder; ``mpnet``
    (all-mpnet-base-v2, the ``detect`` extra, ``saerec.text.packaged``) is an encoder the judge
    never uses to write or choose summaries.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.nn.functional import normalize

from saerec.intents.quality import balanced_accuracy

# The bare-words baseline reads a latent's first 8 words (bench/detection.py measured it there).
WORDS_AS_SUMMARY = 8
Scorer = Callable[[list[str], list[str]], list[float]]


def words_summary(words: Sequence[str]) -> str:
    """The bare-words baseline's "summary" of a latent: its first ``WORDS_AS_SUMMARY`` words."""
    return ", ".join(list(words)[:WORDS_AS_SUMMARY])


def detection_score(summary: str, positives: list[str], negatives: list[str], score: Scorer,
                    threshold: float | None) -> float | None:
    """Balanced accuracy of the judge's ``score`` of each text against the summary, the latent's
    top texts against random ones (``threshold`` None: the judge ranks, see ``balanced_accuracy``)."""
    if not positives or not negatives:
        return None
    texts = [*positives, *negatives]
    found = score([summary] * len(texts), texts)
    pairs = [(p, label) for p, label in zip(found, [1] * len(positives) + [0] * len(negatives)) if p is not None]
    pos = [p for p, label in pairs if label == 1]
    neg = [p for p, label in pairs if label == 0]
    return balanced_accuracy(pos, neg, threshold) if pos and neg else None


def detection_with_baseline(summary: str, words: Sequence[str], positives: list[str], negatives: list[str],
                            score: Scorer, threshold: float | None) -> tuple[float | None, float | None]:
    """(the summary's detection, the bare-words baseline's), by one scorer on the same texts."""
    return (detection_score(summary, positives, negatives, score, threshold),
            detection_score(words_summary(words), positives, negatives, score, threshold))


def detection_by_latent(checks: Iterable[dict[str, Any]]) -> dict[tuple[int, int], float]:
    """Balanced accuracy per (latent, arm) from a served judge's per-text answers (rows with
    ``latent``, ``arm`` 0 for the summary or 1 for the bare-words baseline, ``label`` 1 for a top
    text and 0 for a random one, and ``fits``, the judge's score or None when it gave none)."""
    by_latent: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
    for row in checks:
        if row["fits"] is None:
            continue
        pos, neg = by_latent.setdefault((int(row["latent"]), int(row["arm"])), ([], []))
        (pos if row["label"] == 1 else neg).append(float(row["fits"]))
    return {key: balanced_accuracy(pos, neg) for key, (pos, neg) in by_latent.items() if pos and neg}


class EmbeddingDetector:
    """``detector(summaries, texts)``: the cosine of each text's embedding with its summary's."""

    def __init__(self, encoder: str | Any, device: str = "cpu") -> None:
        """``encoder``: a name ``embed.model`` accepts, or an object with ``encode(texts)``."""
        from saerec.text.encoders import load_encoder

        self.encoder = load_encoder(encoder, device=device) if isinstance(encoder, str) else encoder

    def __call__(self, summaries: Sequence[str], texts: Sequence[str]) -> list[float]:
        if len(summaries) != len(texts):
            raise ValueError(f"{len(summaries)} summaries but {len(texts)} texts")
        if not texts:
            return []
        unique = sorted(set(summaries))
        themes = normalize(torch.from_numpy(self.encoder.encode(unique)), dim=1)
        rows = normalize(torch.from_numpy(self.encoder.encode(list(texts))), dim=1)
        where = {summary: i for i, summary in enumerate(unique)}
        return (rows * themes[[where[summary] for summary in summaries]]).sum(dim=1).tolist()
