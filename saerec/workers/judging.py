"""The judge's Ray execution: a pool of local LM actors, or rounds against served engines.

``judge_locally`` runs ``LocalJudgeActor`` (a transformers causal LM, SmolLM2-135M-Instruct by
default, on CPU or a GPU) over the latents in an ``ActorPoolStrategy`` pool. ``judge_served`` runs
``ray.data.llm`` processors, vLLM engines or an OpenAI-compatible endpoint, one round per prompt
(summary, verdict, and with ``judge.detection_scoring=judge`` detection), temperature 0. Both give
one row per judged latent with the ``RESULT_COLUMNS``; ``collect`` streams them to the driver.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray
import torch

from saerec.config import EmbedSection, JudgeSection
from saerec.intents import engine_requests as er
from saerec.intents.detection import EmbeddingDetector, detection_by_latent, detection_with_baseline, words_summary
from saerec.intents.judges import LocalJudge
from saerec.intents.prompts import JudgePrompts
from saerec.intents.selection import ActivationSelector
from saerec.intents.verdicts import CANNOT_TELL, parse_detection, parse_summary, parse_verdict
from saerec.logs import counted

JUDGE_COLUMNS = ("latent", "words", "frequency", "top_texts", "random_texts")
RESULT_COLUMNS = ("latent", "summary", "verdict", "detection", "detection_words", "prescreen_score", "screened_out")


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


def block_rows(cfg: JudgeSection, latents: int) -> int:
    """Rows per block of the judged dataset: several blocks, so that the actor pool shares the work
    and results (and the progress line) stream back as they come, at most 8 batches per block
    whatever the number of latents. A local actor takes a whole block per call, so that the ~1 in 8
    latents that pass the prescreen still fill the LM's batches: generating for 2 latents at a time
    instead of 16 costs 1.5x per latent (it reads the summariser's weights once per step either way)."""
    return max(cfg.batch_size, min(8 * cfg.batch_size, -(-latents // (8 * cfg.concurrency))))


def _dataset(todo: pa.Table, rows: int) -> Any:
    return ray.data.from_arrow([todo.slice(start, rows) for start in range(0, max(todo.num_rows, 1), rows)])


def judge_locally(todo: pa.Table, cfg: JudgeSection, model: str, null_pool: list[str], seed: int,
                  selection: dict[str, Any] | None = None) -> Any:
    """``todo`` (the ``JUDGE_COLUMNS`` of the latents to judge) through a pool of ``LocalJudgeActor``."""
    rows = block_rows(cfg, todo.num_rows)
    gpus = cfg.num_gpus_per_actor if cfg.device == "cuda" else 0
    return _dataset(todo, rows).map_batches(LocalJudgeActor, fn_constructor_kwargs={
        "cfg": cfg, "model": model, "threads": max(1, int(cfg.cpus_per_actor)), "null_pool": null_pool,
        "seed": seed, "selection": selection},
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency), batch_size=rows,
        num_cpus=cfg.cpus_per_actor, num_gpus=gpus, batch_format="numpy")


def judge_served(todo: pa.Table, cfg: JudgeSection, model: str) -> Any:
    """Three processor rounds (summary, verdict, detection); each is materialised before the next
    so that only one engine pool holds the GPUs at a time. Not runnable without GPUs/vLLM."""
    ds = _dataset(todo, block_rows(cfg, todo.num_rows))
    prompts = JudgePrompts.load(cfg.domain)
    settings = er.ServedJudgeSettings(
        model=model, batch_size=cfg.batch_size, concurrency=cfg.concurrency, max_model_len=cfg.max_model_len,
        num_gpus_per_actor=cfg.num_gpus_per_actor, enable_prefix_caching=cfg.enable_prefix_caching,
        gpu_memory_utilization=cfg.gpu_memory_utilization, base_url=cfg.base_url)
    rounds = ServedRounds(cfg.backend, settings)
    keep = set(cfg.keep)

    summarised = rounds.run(ds, lambda r: er.summary_row(prompts, list(r["words"]), settings.max_summary_tokens),
                            "summary", lambda text, row: parse_summary(text, words=list(row["words"])))
    todo_rows = summarised.filter(lambda r: r["summary"] != CANNOT_TELL)
    verdicts = rounds.run(todo_rows, lambda r: er.verdict_row(prompts, r["summary"], list(r["words"])),
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
    scores = detection_by_latent(checks.iter_rows())
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


def collect(ds: Any, label: str, total: int) -> dict[int, dict[str, Any]]:
    """Stream the judged rows back to the driver, with a progress line over latents every 30 s."""
    results: dict[int, dict[str, Any]] = {}
    for row in counted(ds.iter_rows(), total, label, "latents"):
        results[int(row["latent"])] = {k: row.get(k) for k in RESULT_COLUMNS if k != "latent"}
    return results


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _result(row: dict[str, Any]) -> dict[str, Any]:
    return {"latent": row["latent"], "summary": row["summary"], "verdict": row["verdict"]}
