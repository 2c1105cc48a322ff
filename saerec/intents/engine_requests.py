"""Rows and settings for served judges: a vLLM engine pool in Ray Data, or an HTTP endpoint.

Plain dictionaries only, so that this module imports neither Ray nor vLLM: the judge stage
passes them to ``ray.data.llm`` (``vLLMEngineProcessorConfig``, ``HttpRequestProcessorConfig``,
``build_processor``), and tests check them on machines without a GPU.

Decisions are deterministic: temperature 0 everywhere, and the verdict and detection answers
are constrained to their options with vLLM's guided choice (``structured_outputs.choice``).
An OpenAI-compatible endpoint is not assumed to support guided decoding; its free-text answer
goes through the same forgiving parser as every other backend.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saerec.intents.prompts import JudgePrompts, Message
from saerec.intents.verdicts import DETECTION_ANSWERS, VERDICTS


@dataclass(frozen=True)
class ServedJudgeSettings:
    """What the judge stage reads from ``judge.*`` for the vLLM and HTTP backends."""

    model: str
    batch_size: int = 64
    concurrency: int = 1
    max_model_len: int = 2048
    num_gpus_per_actor: float = 1.0
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.85
    max_summary_tokens: int = 24
    base_url: str | None = None


def vllm_processor_kwargs(settings: ServedJudgeSettings) -> dict[str, Any]:
    """Keyword arguments for ``ray.data.llm.vLLMEngineProcessorConfig``.

    One engine per GPU (``concurrency`` engines). The judge prompts are short (< 600 tokens)
    and share their few-shot prefix, so prefix caching turns most of each prompt into a cache
    hit and ``max_model_len`` can stay small, leaving GPU memory to the KV cache (more
    sequences in flight). Guided choice needs vLLM's structured-output backend (xgrammar).
    """
    if settings.num_gpus_per_actor <= 0:
        raise ValueError("judge.num_gpus_per_actor must be > 0 for the vllm backend (vLLM runs on GPUs)")
    tensor_parallel = max(1, int(settings.num_gpus_per_actor))
    return {
        "model_source": settings.model,
        "batch_size": settings.batch_size,
        "concurrency": settings.concurrency,
        "engine_kwargs": {
            "max_model_len": settings.max_model_len,
            "enable_prefix_caching": settings.enable_prefix_caching,
            "enable_chunked_prefill": True,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel,
            "max_num_seqs": max(settings.batch_size, 64),
        },
        "chat_template_stage": True,
        "tokenize_stage": True,
        "detokenize_stage": True,
    }


def http_processor_kwargs(settings: ServedJudgeSettings) -> dict[str, Any]:
    """Keyword arguments for ``ray.data.llm.HttpRequestProcessorConfig`` (chat completions)."""
    if not settings.base_url:
        raise ValueError("judge.base_url is required for the http backend, e.g. http://127.0.0.1:8000/v1")
    return {
        "url": settings.base_url.rstrip("/") + "/chat/completions",
        "batch_size": settings.batch_size,
        "concurrency": settings.concurrency,
        "max_retries": 3,
    }


def summary_row(prompts: JudgePrompts, words: Sequence[str], max_tokens: int) -> dict[str, Any]:
    return {"messages": prompts.summary_request(words), "sampling_params": _greedy(max_tokens)}


def verdict_row(prompts: JudgePrompts, summary: str, words: Sequence[str]) -> dict[str, Any]:
    return {"messages": prompts.verdict_request(summary, words), "sampling_params": _choice(VERDICTS)}


def detection_row(prompts: JudgePrompts, summary: str, text: str) -> dict[str, Any]:
    return {"messages": prompts.detection_request(summary, text), "sampling_params": _choice(DETECTION_ANSWERS)}


def http_payload(model: str, messages: list[Message], max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat-completions body at temperature 0."""
    return {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens}


def http_answer(response: object) -> str:
    """The first choice's text of a chat-completions response; "" for anything else."""
    try:
        content = response["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def _greedy(max_tokens: int) -> dict[str, Any]:
    return {"temperature": 0.0, "max_tokens": max_tokens}


def _choice(options: Sequence[str]) -> dict[str, Any]:
    return {"temperature": 0.0, "max_tokens": 4, "structured_outputs": {"choice": list(options)}}
