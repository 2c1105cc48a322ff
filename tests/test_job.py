"""The job as a user runs it: a subprocess on local Ray, once on local disk and once on S3."""
import os
import subprocess
import sys

from saerec.stages import STAGE_ORDER
from tests.conftest import REPO, TINY_DEMO


def run_job(*args, env=None):
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), *args]
    for override in TINY_DEMO:
        cmd += ["--set", override]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=REPO, timeout=900)


def test_job_on_local_storage_then_skips(tmp_path):
    first = run_job("--set", f"storage.uri={tmp_path / 'out'}")
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in STAGE_ORDER:
        assert f"[{stage}] done" in first.stdout
        assert (tmp_path / "out" / "demo" / stage / "_manifest.json").exists()
    second = run_job("--set", f"storage.uri={tmp_path / 'out'}")
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in STAGE_ORDER:
        assert f"[{stage}] skipped" in second.stdout
    assert "running..." not in second.stdout


def test_job_on_s3_then_skips(s3_server, s3_uri):
    args = ["--set", f"storage.uri={s3_uri}", "--set", f"storage.endpoint_url={s3_server.endpoint}",
            "--until", "prepare"]
    first = run_job(*args, env=s3_server.env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[prepare] running..." in first.stdout and "[prepare] done" in first.stdout
    second = run_job(*args, env=s3_server.env)
    assert "[prepare] skipped" in second.stdout and "running..." not in second.stdout


def test_bad_config_fails_before_work(tmp_path):
    result = run_job("--set", f"storage.uri={tmp_path / 'out'}", "--set", "sae.variant=loose")
    assert result.returncode == 2
    assert "sae.variant" in result.stderr and "'tied', 'untied'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_stages():
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "--config" in result.stdout and "prepare" in result.stdout
    assert "configs/demo.yaml" in result.stdout, "the demo file is the default config"
