"""Stage ``judge``: an LLM summarises each latent's words, keeps the recommendation intents.

Reads: explain (``LATENTS``), train_sae (the intent vectors = rows of W_enc), prepare
(the demo's planted intents). The latents run through a Ray Data pipeline chosen by
``judge.backend``:
  * ``local``: an ``ActorPoolStrategy`` pool of ``LocalJudge`` actors (a transformers causal
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
(``saerec.intents.selection``).

Writes the artifacts ``FEATURES`` (``schemas.JUDGED_FEATURES``) and ``INTENTS`` (the kept
latents' vectors (n, D) and ids, with their summaries and words).
Metrics: counts per verdict, kept, throughput, mean detection accuracy and the share of kept
latents at 0.75 or above, each for the summaries and the bare-words baseline, and on the demo the
planted-intent recovery of the kept latents.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray
import torch

from saerec import artifacts, restore, schemas
from saerec.config import EmbedSection, JudgeSection
from saerec.intents import engine_requests as er
from saerec.intents.detection import EmbeddingDetector, detection_with_baseline, words_summary
from saerec.intents.detection import detection_score  # noqa: F401  (tests and bench/ import it from here)
from saerec.intents.judges import LocalJudge, resolve_local_model
from saerec.intents.models import DEFAULT_MODELS
from saerec.intents.prompts import JudgePrompts
from saerec.intents.quality import balanced_accuracy, planted_intent_recovery
from saerec.intents.selection import ActivationSelector
from saerec.intents.verdicts import ALL_VERDICTS, CANNOT_TELL, parse_detection, parse_summary, parse_verdict
from saerec.logs import counted
from saerec.pipeline import Stage, StageContext, StageError
JUDGE_COLUMNS = ("latent", "words", "frequency", "top_texts", "random_texts")
RESULT_COLUMNS = ("latent", "summary", "verdict", "detection", "detection_words", "prescreen_score", "screened_out")
DETECTION_GOOD = 0.75  # issue 31's target: this balanced accuracy for 80 % of kept intents


def judge_model(cfg: JudgeSection) -> str:
    """``judge.model``, or the backend's default (the config requires a model for ``http``)."""
    return cfg.model or DEFAULT_MODELS[cfg.backend]


class LocalJudgeActor:
    """One Ray Data actor: loads the model once, then judges batches of latents.

    With ``judge.prescreen`` every latent that fires on some text first gets the one cheap batched
    pass, the coherence z-score of its words; only latents at or above the threshold get the
    expensive steps (generating a summary, the verdict, detection). The others, and latents that
    never fire, are verdict No, without summary.
    """

    def __init__(self, cfg: JudgeSection, model: str, threads: int, null_pool: list[str], seed: int,
                 selection: dict[str, Any] | None = None) -> None:
        """``selection`` (with ``judge.summary_candidates`` > 1): the SAE's ``W_enc``, ``b_enc``,
        ``b_pre`` and the ``encoder`` section (``EmbedSection``) the SAE's inputs were embedded with."""
        torch.set_num_threads(threads)
        self.keep = set(cfg.keep)
        self.detection = cfg.detection
        self.prescreen = cfg.prescreen
        prompts = JudgePrompts.load(cfg.domain)
        self.judge = LocalJudge(prompts, model=model, batch_size=cfg.batch_size,
                                max_new_tokens=cfg.max_new_tokens, no_repeat_words=cfg.no_repeat_words,
                                device=cfg.device, scoring=cfg.scoring,
                                null_pool=null_pool, null_lists=cfg.null_lists, seed=seed)
        # A larger model may write the summaries while the small one keeps the cheap batched
        # scoring (coherence, verdicts): at 16,384 Beauty latents Qwen2.5-Coder-0.5B-Instruct's summaries are
        # detected at 0.71 against SmolLM2's 0.68 (bench/detection.py).
        self.summariser = self.judge if cfg.summary_model is None else LocalJudge(
            prompts, model=cfg.summary_model, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
            no_repeat_words=cfg.no_repeat_words, device=cfg.device, scoring="prompt")
        self.candidates = cfg.summary_candidates
        self.select = None
        if self.candidates > 1:
            if selection is None:
                raise ValueError("judge.summary_candidates > 1 needs the SAE and its encoder to choose among them")
            self.select = activation_selector(selection, cfg.device)
        if cfg.detection and cfg.detection_scoring == "embedding":
            self.detect, self.threshold = EmbeddingDetector(cfg.detection_encoder, cfg.device), None
        else:
            self.detect, self.threshold = self.judge.detect, self.judge.detection_threshold

    def summaries(self, words: list[list[str]], latents: list[int]) -> list[str]:
        """The summariser's greedy summary, or the best of its ``summary_candidates``."""
        if self.select is None:
            return self.summariser.summarise(words)
        return self.select(self.summariser.summary_candidates(words, self.candidates), latents, words)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        words = [list(w) for w in batch["words"]]
        scored = self.prescreen is not None or self.judge.scoring == "likelihood"
        # With the prescreen, a latent that fires on no text is out before any LM pass: it is in
        # no item's profile, and it has no texts for detection.
        alive = np.asarray(batch["frequency"]) > 0 if self.prescreen is not None else np.ones(len(words), dtype=bool)
        z = np.full(len(words), np.nan)
        if scored and alive.any():
            z[alive] = self.judge.coherence_z([words[i] for i in np.flatnonzero(alive)])
        passed = alive & (z >= self.prescreen) if self.prescreen is not None else alive
        todo = [i for i, ok in enumerate(passed) if ok]
        summaries: list[str | None] = [None] * len(words)
        verdicts = ["No"] * len(words)
        detection: list[float | None] = [None] * len(words)
        baseline: list[float | None] = [None] * len(words)
        if todo:
            found = self.summaries([words[i] for i in todo], [int(batch["latent"][i]) for i in todo])
            judged = self.judge.classify(found, [words[i] for i in todo], [z[i] for i in todo] if scored else None)
            for i, summary, verdict in zip(todo, found, judged):
                summaries[i], verdicts[i] = summary, verdict
                if self.detection and verdict in self.keep:
                    detection[i], baseline[i] = detection_with_baseline(
                        summary, words[i], list(batch["top_texts"][i]), list(batch["random_texts"][i]),
                        self.detect, self.threshold)
        return {"latent": batch["latent"], "summary": np.array(summaries, dtype=object),
                "verdict": np.array(verdicts, dtype=object),
                "detection": _floats(detection), "detection_words": _floats(baseline),
                "prescreen_score": z, "screened_out": ~passed}


def activation_selector(selection: dict[str, Any], device: str) -> ActivationSelector:
    """The choice among summary candidates, from ``selection_inputs``: the encoder the SAE's
    inputs came from, loaded as the embed stage loads it, and the SAE's encoder weights."""
    from saerec.text.encoders import load_encoder

    embed = selection["encoder"]
    encoder = load_encoder(embed.model, embed.kind, embed.layer, embed.max_length, device=device)
    return ActivationSelector(encoder, selection["W_enc"], selection["b_enc"], selection["b_pre"])


def selection_inputs(sae: Any, embed: EmbedSection) -> dict[str, Any]:
    """What ``LocalJudgeActor`` needs to choose among summary candidates: the SAE's encoder weights
    and the embed settings its inputs came from."""
    return {"encoder": embed, "W_enc": sae.W_enc.detach(), "b_enc": sae.b_enc.detach(), "b_pre": sae.b_pre.detach()}


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


def judge_locally(ds: Any, cfg: JudgeSection, model: str, null_pool: list[str], seed: int, block_rows: int,
                  selection: dict[str, Any] | None = None) -> Any:
    gpus = cfg.num_gpus_per_actor if cfg.device == "cuda" else 0
    return ds.map_batches(LocalJudgeActor, fn_constructor_kwargs={
        "cfg": cfg, "model": model, "threads": max(1, int(cfg.cpus_per_actor)), "null_pool": null_pool,
        "seed": seed, "selection": selection},
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency), batch_size=block_rows,
        num_cpus=cfg.cpus_per_actor, num_gpus=gpus, batch_format="numpy")


def judge_served(ds: Any, cfg: JudgeSection, model: str) -> Any:
    """Three processor rounds (summary, verdict, detection); each is materialised before the next
    so that only one engine pool holds the GPUs at a time. Not runnable without GPUs/vLLM."""
    prompts = JudgePrompts.load(cfg.domain)
    settings = er.ServedJudgeSettings(
        model=model, batch_size=cfg.batch_size, concurrency=cfg.concurrency, max_model_len=cfg.max_model_len,
        num_gpus_per_actor=cfg.num_gpus_per_actor, enable_prefix_caching=cfg.enable_prefix_caching,
        gpu_memory_utilization=cfg.gpu_memory_utilization, base_url=cfg.base_url)
    rounds = ServedRounds(cfg.backend, settings)
    keep = set(cfg.keep)

    summarised = rounds.run(ds, lambda r: er.summary_row(prompts, list(r["words"]), settings.max_summary_tokens),
                            "summary", lambda text, row: parse_summary(text, words=list(row["words"])))
    todo = summarised.filter(lambda r: r["summary"] != CANNOT_TELL)
    verdicts = rounds.run(todo, lambda r: er.verdict_row(prompts, r["summary"], list(r["words"])),
                          "verdict", lambda text, _row: parse_verdict(text))
    skipped = summarised.filter(lambda r: r["summary"] == CANNOT_TELL).map(lambda r: {**r, "verdict": CANNOT_TELL})
    judged = verdicts.union(skipped).materialize()
    if not cfg.detection:
        return judged.map(lambda r: {**_result(r), "detection": None, "detection_words": None})
    if cfg.detection_scoring == "embedding":
        return judged.map_batches(EmbeddingDetectionActor, fn_constructor_kwargs={
            "encoder": cfg.detection_encoder, "keep": sorted(keep)}, compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=cfg.batch_size, num_cpus=1, batch_format="numpy")

    def pairs(row: dict[str, Any]) -> list[dict[str, Any]]:
        """The judge's detection prompts for the summary (``arm`` 0) and the bare-words baseline (1)."""
        if row["verdict"] not in keep:
            return []
        summaries = (row["summary"], words_summary(list(row["words"])))
        return [{"latent": row["latent"], "summary": summary, "arm": arm, "text": text, "label": label}
                for arm, summary in enumerate(summaries)
                for label, texts in ((1, row["top_texts"]), (0, row["random_texts"])) for text in texts]

    checks = rounds.run(judged.flat_map(pairs), lambda r: er.detection_row(prompts, r["summary"], r["text"]),
                        "fits", lambda text, _row: parse_detection(text))
    scores = _detection_by_latent(checks)
    return judged.map(lambda r: {**_result(r), "detection": scores.get((int(r["latent"]), 0)),
                                 "detection_words": scores.get((int(r["latent"]), 1))})


class EmbeddingDetectionActor:
    """Detection for a served judge's kept latents by embedding (``judge.detection_scoring``), on
    CPU beside the engines: the encoder is small and each latent needs a dozen texts."""

    def __init__(self, encoder: str, keep: list[str]) -> None:
        self.detector = EmbeddingDetector(encoder, "cpu")
        self.keep = set(keep)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        scored = [detection_with_baseline(str(summary), list(words), list(top), list(others), self.detector, None)
                  if verdict in self.keep else (None, None)
                  for summary, verdict, words, top, others in zip(batch["summary"], batch["verdict"], batch["words"],
                                                                  batch["top_texts"], batch["random_texts"])]
        return {"latent": batch["latent"], "summary": batch["summary"], "verdict": batch["verdict"],
                "detection": _floats([d for d, _ in scored]), "detection_words": _floats([w for _, w in scored])}


class ServedRounds:
    """Runs one prompt over a dataset with the configured served backend."""

    def __init__(self, backend: str, settings: Any) -> None:
        self.backend = backend
        self.settings = settings

    def run(self, ds: Any, request: Callable[[dict[str, Any]], dict[str, Any]], column: str,
            parse: Callable[[str, dict[str, Any]], Any]) -> Any:
        """``parse(answer, row)`` turns the engine's answer into ``column`` (the row gives context,
        e.g. the latent's words, which a summary must not merely copy)."""
        # ray.data.llm needs the optional `gpu` extra (ray[llm]); only a served judge imports it.
        from ray.data.llm import HttpRequestProcessorConfig, build_processor, vLLMEngineProcessorConfig

        model, settings = self.settings.model, self.settings
        if self.backend == "vllm":
            config = vLLMEngineProcessorConfig(**er.vllm_processor_kwargs(settings))

            def pre(row: dict[str, Any]) -> dict[str, Any]:
                return {**row, **request(row)}

            def answer(row: dict[str, Any]) -> str:
                return row.get("generated_text") or ""
        else:
            config = HttpRequestProcessorConfig(**er.http_processor_kwargs(settings))

            def pre(row: dict[str, Any]) -> dict[str, Any]:
                built = request(row)
                return {**row, "payload": er.http_payload(model, built["messages"],
                                                          built["sampling_params"]["max_tokens"])}

            def answer(row: dict[str, Any]) -> str:
                return er.http_answer(row.get("http_response"))

        def post(row: dict[str, Any]) -> dict[str, Any]:
            kept = {k: row[k] for k in (*JUDGE_COLUMNS, "summary", "verdict", "arm", "text", "label") if k in row}
            return {**kept, column: parse(answer(row), row)}

        return build_processor(config, preprocess=pre, postprocess=post)(ds).materialize()


def _detection_by_latent(checks: Any) -> dict[tuple[int, int], float]:
    """Balanced accuracy per (latent, arm): arm 0 the summary, 1 the bare-words baseline."""
    by_latent: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
    for row in checks.iter_rows():
        if row["fits"] is None:
            continue
        pos, neg = by_latent.setdefault((int(row["latent"]), int(row["arm"])), ([], []))
        (pos if row["label"] == 1 else neg).append(float(row["fits"]))
    return {key: balanced_accuracy(pos, neg) for key, (pos, neg) in by_latent.items() if pos and neg}


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _result(row: dict[str, Any]) -> dict[str, Any]:
    return {"latent": row["latent"], "summary": row["summary"], "verdict": row["verdict"]}


def judging_order(frequency: np.ndarray, max_latents: int | None) -> np.ndarray:
    """Latent positions to judge: most frequently firing first, at most ``max_latents``."""
    order = np.lexsort((np.arange(len(frequency)), -frequency))
    return order if max_latents is None else order[:max_latents]


def collect(ds: Any, ctx: StageContext, total: int) -> dict[int, dict[str, Any]]:
    """Stream the judged rows back to the driver, with a progress line over latents every 30 s."""
    results: dict[int, dict[str, Any]] = {}
    for row in counted(ds.iter_rows(), total, f"[{ctx.stage}]", "latents"):
        results[int(row["latent"])] = {k: row.get(k) for k in RESULT_COLUMNS if k != "latent"}
    return results


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: JudgeSection = ctx.sections["judge"]
    keep = tuple(cfg.keep)
    model = judge_model(cfg)
    if cfg.backend == "local":
        for key, name in (("judge.model", model), ("judge.summary_model", cfg.summary_model)):
            try:
                if name is not None:
                    resolve_local_model(name)
            except ValueError as exc:
                raise StageError(f"{key}: {exc}") from None
    explained = artifacts.read_table(ctx.input("explain"), artifacts.LATENTS)
    sae = restore.sae(ctx.input("train_sae"))
    if cfg.summary_candidates > 1:
        check_selection_encoder(ctx.sections["embed"], sae.d_in)
    if cfg.detection and cfg.detection_scoring == "embedding":
        check_detection_encoder(cfg)
    order = judging_order(explained.column("frequency").to_numpy(), cfg.max_latents)
    todo = explained.select(list(JUDGE_COLUMNS)).take(pa.array(order))

    start = time.perf_counter()
    # Several blocks, so that the actor pool shares the work and results (and the progress bar)
    # stream back as they come: at most 8 batches per block, whatever the number of latents.
    # A local actor takes a whole block per call, so that the ~1 in 8 latents that pass the
    # prescreen still fill the LM's batches: generating for 2 latents at a time instead of 16
    # costs 1.5x per latent (it reads the summariser's weights once per step either way).
    rows = max(cfg.batch_size, min(8 * cfg.batch_size, -(-todo.num_rows // (8 * cfg.concurrency))))
    ds = ray.data.from_arrow([todo.slice(start, rows) for start in range(0, max(todo.num_rows, 1), rows)])
    if cfg.backend == "local":
        pool = sorted({w for words in explained.column("words").to_pylist() for w in words})
        selection = selection_inputs(sae, ctx.sections["embed"]) if cfg.summary_candidates > 1 else None
        judged = judge_locally(ds, cfg, model, pool, ctx.seed, rows, selection)
    else:
        judged = judge_served(ds, cfg, model)
    results = collect(judged, ctx, len(order))
    judge_s = time.perf_counter() - start

    latents = explained.column("latent").to_numpy()
    found = [results.get(int(l), {}) for l in latents]  # latents not judged (judge.max_latents) have no row
    summary = [_text(r.get("summary")) for r in found]
    verdict = [_text(r.get("verdict")) for r in found]
    detection = [_number(r.get("detection")) for r in found]
    baseline = [_number(r.get("detection_words")) for r in found]
    prescreen = [_number(r.get("prescreen_score")) for r in found]
    screened = [bool(r.get("screened_out") or False) for r in found]
    # A screened-out latent has no summary to show, so it is never an intent, even with "No" kept.
    kept = np.array([v in keep and not out for v, out in zip(verdict, screened)], dtype=bool)
    features = pa.table({
        "latent": explained.column("latent"), "words": explained.column("words"),
        "scores": explained.column("scores"), "frequency": explained.column("frequency"),
        "summary": pa.array(summary, pa.string()), "verdict": pa.array(verdict, pa.string()),
        "kept": pa.array(kept), "detection": pa.array(detection, pa.float64()),
        "detection_words": pa.array(baseline, pa.float64()),
        "prescreen_score": pa.array(prescreen, pa.float64()), "screened_out": pa.array(screened),
    }, schema=schemas.JUDGED_FEATURES)
    artifacts.write_table(ctx.output, artifacts.FEATURES, features)
    index = torch.as_tensor(latents[kept], dtype=torch.long)
    artifacts.write_intent_set(ctx.output, artifacts.IntentSet(
        vectors=sae.intent_vectors()[index].detach().float(), latents=latents[kept],
        summaries=[summary[i] for i in np.flatnonzero(kept)],
        words=[features.column("words")[int(i)].as_py() for i in np.flatnonzero(kept)]))

    counts = Counter(v for v in verdict if v is not None)
    scored = [d for d in detection if d is not None]
    scored_words = [d for d in baseline if d is not None]
    metrics: dict[str, Any] = {
        "backend": cfg.backend, "model": model, "summary_model": cfg.summary_model or model,
        "summary_candidates": cfg.summary_candidates,
        "latents": len(latents), "judged": len(results),
        "kept": int(kept.sum()), "keep": list(keep),
        **{f"verdict_{v.lower().replace(' ', '_')}": counts.get(v, 0) for v in ALL_VERDICTS},
        "prescreen": cfg.prescreen, "screened_out": int(sum(screened)),
        "judge_s": round(judge_s, 2), "latents_per_s": round(len(results) / judge_s, 3) if judge_s > 0 else None,
        "detection_scoring": cfg.detection_scoring if cfg.detection else None,
        "detection_encoder": cfg.detection_encoder if cfg.detection and cfg.detection_scoring == "embedding" else None,
        "detection_latents": len(scored),
        "detection_balanced_accuracy": _mean(scored), "detection_words_balanced_accuracy": _mean(scored_words),
        "detection_share_above_075": _share(scored, DETECTION_GOOD),
        "detection_words_share_above_075": _share(scored_words, DETECTION_GOOD),
    }
    planted = artifacts.read_planted(ctx.input("prepare"))
    if planted is not None:
        kept_words = [features.column("words")[int(i)].as_py() for i in np.flatnonzero(kept)]
        recovery = planted_intent_recovery(kept_words, {p["name"]: p["words"] for p in planted})
        metrics["planted_recovery"] = recovery["recovery"]
        metrics["planted_best_purity"] = recovery["best_purity"]
    return metrics


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _share(values: list[float], at_least: float) -> float | None:
    return round(float(np.mean(np.asarray(values) >= at_least)), 4) if values else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


# The embed keys that say which encoder the SAE's inputs came from: summary selection embeds with it.
STAGE = Stage(name="judge", run=run, inputs=("prepare", "train_sae", "explain"), sections=("judge", "embed"),
              only_keys={"embed": ("model", "kind", "layer", "max_length")})
