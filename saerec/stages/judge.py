"""Stage ``judge``: an LLM summarises each latent's words, keeps the recommendation intents.

Reads: explain (``LATENTS``), train_sae (the intent vectors = rows of W_enc), prepare
(the demo's planted intents). The latents run through a Ray Data pipeline chosen by
``judge.backend``:
  * ``local``: an ``ActorPoolStrategy`` pool of ``LocalJudgeActor`` actors (a transformers causal
    LM, SmolLM2-135M-Instruct by default, on CPU or with ``judge.device=cuda`` on a GPU);
  * ``vllm``: ``ray.data.llm`` vLLM engine processors, one round per prompt (summary, verdict,
    and with ``judge.detection_scoring=judge`` detection), temperature 0, the verdict and
    detection constrained by guided choice;
  * ``http``: the same rounds against an OpenAI-compatible endpoint (``judge.base_url``).
Each latent gets a summary (or "Cannot Tell"), a verdict (Yes / Probably / Maybe / No /
Cannot Tell) and, when kept, a held-out detection score: the balanced accuracy with which,
given only the summary, the latent's top-activating texts are told from random texts; by the
cosine of sentence embeddings (``judge.detection_scoring=embedding``, the default,
``saerec.intents.detection``) or by the judge LM itself (``judge``), and beside it, by the same
scorer on the same texts, the bare-words baseline (the latent's first words as its "summary").
With ``judge.prescreen`` (local backend) a latent whose words' coherence z-score is below the
threshold, or that fires on no text, is screened out first: no summary, verdict No, and the
features table says so (``prescreen_score``, ``screened_out``). With ``judge.summary_candidates``
n > 1 (local backend) the summariser writes n candidates per latent and the one whose embedding,
by the encoder the SAE was trained on (``embed.model``), fires the latent most is its summary
(``saerec.intents.selection``). The actors and rounds are in ``saerec.workers.judging``, the
tables and metrics in ``saerec.intents.features``.

Writes the artifacts ``FEATURES`` (``schemas.JUDGED_FEATURES``) and ``INTENTS`` (the kept
latents' vectors (n, D) and ids; their summaries and words are in ``FEATURES``).
Metrics: counts per verdict, kept, throughput, mean detection accuracy and the share of kept
latents at 0.75 or above, each for the summaries and the bare-words baseline, and on the demo the
planted-intent recovery of the kept latents.
"""
from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import torch

from saerec import artifacts, restore
from saerec.config import EmbedSection, JudgeSection
from saerec.intents.features import features_table, judge_metrics, judging_order
from saerec.intents.judges import resolve_local_model
from saerec.intents.models import judge_model
from saerec.pipeline import Stage, StageContext, StageError
from saerec.workers import judging


def check_selection_encoder(embed: EmbedSection, sae_dim: int) -> None:
    """Before any work: the encoder that embeds the candidates must give the SAE's input size."""
    from saerec.text.encoders import inspect_encoder

    try:
        dim = inspect_encoder(embed.model, embed.kind, embed.layer, embed.max_length).dim
    except (OSError, ValueError) as exc:
        raise StageError(f"judge.summary_candidates embeds the candidates with embed.model={embed.model!r}: {exc}") from None
    if dim != sae_dim:
        raise StageError(f"judge.summary_candidates embeds the candidates with embed.model={embed.model!r}, whose "
                         f"{dim}-dim vectors the SAE (d_in {sae_dim}) cannot read; use the embed settings the SAE "
                         "was trained with")


def check_detection_encoder(cfg: JudgeSection) -> None:
    """Before any work: ``judge.detection_encoder`` resolves (``mpnet`` is assembled here, once, so
    that the actors find it in the cache)."""
    from saerec.text.encoders import inspect_encoder

    try:
        inspect_encoder(cfg.detection_encoder)
    except (OSError, ValueError, ImportError) as exc:
        raise StageError(f"judge.detection_encoder={cfg.detection_encoder!r}: {exc}") from None


def check_local_models(cfg: JudgeSection) -> None:
    """Before any work: a local judge's models resolve to a model file or folder."""
    for key, name in (("judge.model", judge_model(cfg)), ("judge.summary_model", cfg.summary_model)):
        try:
            if name is not None:
                resolve_local_model(name)
        except ValueError as exc:
            raise StageError(f"{key}: {exc}") from None


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: JudgeSection = ctx.sections["judge"]
    model = judge_model(cfg)
    if cfg.backend == "local":
        check_local_models(cfg)
    explained = artifacts.read_table(ctx.input("explain"), artifacts.LATENTS)
    sae = restore.sae(ctx.input("train_sae"))
    if cfg.summary_candidates > 1:
        check_selection_encoder(ctx.sections["embed"], sae.d_in)
    if cfg.detection and cfg.detection_scoring == "embedding":
        check_detection_encoder(cfg)
    order = judging_order(explained.column("frequency").to_numpy(), cfg.max_latents)
    todo = explained.select(list(judging.JUDGE_COLUMNS)).take(pa.array(order))

    start = time.perf_counter()
    if cfg.backend == "local":
        pool = sorted({w for words in explained.column("words").to_pylist() for w in words})
        selection = judging.selection_inputs(sae, ctx.sections["embed"]) if cfg.summary_candidates > 1 else None
        judged = judging.judge_locally(todo, cfg, model, pool, ctx.seed, selection)
    else:
        judged = judging.judge_served(todo, cfg, model)
    results = judging.collect(judged, f"[{ctx.stage}]", len(order))
    judge_s = time.perf_counter() - start

    features = features_table(explained, results, cfg.keep)
    artifacts.write_table(ctx.output, artifacts.FEATURES, features)
    kept = features.filter(features.column("kept")).column("latent").to_numpy()
    artifacts.write_intent_set(ctx.output, artifacts.IntentSet(
        vectors=sae.intent_vectors()[torch.as_tensor(kept, dtype=torch.long)].detach().float(), latents=kept))

    planted = artifacts.read_planted(ctx.input("prepare"))
    quality = judge_metrics(features, cfg.keep, None if planted is None else {p["name"]: p["words"] for p in planted})
    return {
        "backend": cfg.backend, "model": model, "summary_model": cfg.summary_model or model,
        "summary_candidates": cfg.summary_candidates, "latents": features.num_rows, "judged": len(results),
        **quality, "prescreen": cfg.prescreen,
        "judge_s": round(judge_s, 2), "latents_per_s": round(len(results) / judge_s, 3) if judge_s > 0 else None,
        "detection_scoring": cfg.detection_scoring if cfg.detection else None,
        "detection_encoder": cfg.detection_encoder if cfg.detection and cfg.detection_scoring == "embedding" else None,
    }


# The embed keys that say which encoder the SAE's inputs came from: summary selection embeds with it.
STAGE = Stage(name="judge", run=run, inputs=("prepare", "train_sae", "explain"), sections=("judge", "embed"),
              only_keys={"embed": ("model", "kind", "layer", "max_length")})
