"""Storage faults: an S3 server that restarts or vanishes mid-stage, bad credentials, a missing bucket,
read-only storage under a Ray Data write, and Ctrl-C. After each: nothing lost, duplicated or
half-published, and no credential in any output. (Faults on a Ray head, a killed driver among
them, are in test_cluster.py, which owns the head.)"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pytest

from saerec.config import load_config
from saerec.pipeline import ATTEMPT_MARKER, MANIFEST, Runner, Stage, StageContext
from saerec.storage import Store, StorageError
from tests.conftest import REPO
from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3


# -- storage faults ------------------------------------------------------------------------------------------


def _two_part_stage(between: Callable[[], None]) -> Stage:
    """Writes part one, lets the test break the server, then writes part two."""
    def run(ctx: StageContext) -> dict:
        ctx.output.write_table("one.parquet", pa.table({"x": [1, 2]}))
        between()
        ctx.output.write_table("two.parquet", pa.table({"x": [3, 4]}))
        return {"parts": 2}
    return Stage(name="parts", run=run, sections=("data",))


@pytest.fixture
def own_s3(tmp_path):
    """A SeaweedFS server of this test's own, so stopping it disturbs no other test."""
    server = SeaweedS3(tmp_path / "weed")
    server.start()
    yield server
    server.stop()


def _runner(server: SeaweedS3) -> Runner:
    cfg = load_config(None, [f"storage.uri=s3://{server.bucket}/faults", "run.name=faults",
                             f"storage.endpoint_url={server.endpoint}"])
    return Runner(cfg, Store(cfg.storage.uri, cfg.storage.endpoint_url))


def _published_files(runner: Runner, stage: str) -> list[str]:
    manifest = runner.manifest(stage)
    return sorted(posixpath.relpath(p, manifest["output_dir"]) for p in runner.store.list_files(manifest["output_dir"])
                  if posixpath.basename(p) != ATTEMPT_MARKER)


def test_s3_restart_during_a_stage_is_retried(own_s3):
    runner = _runner(own_s3)
    published = runner.run_stage(_two_part_stage(own_s3.restart))
    assert published["metrics"] == {"parts": 2}
    assert _published_files(runner, "parts") == ["one.parquet", "two.parquet"]
    assert runner.store.read_table(posixpath.join(published["output_dir"], "two.parquet")).num_rows == 2


def test_s3_gone_during_a_stage_fails_clearly_and_publishes_nothing(own_s3, caplog):
    caplog.set_level(logging.INFO, logger="saerec")
    runner = _runner(own_s3)
    with pytest.raises(StorageError) as failure:
        runner.run_stage(_two_part_stage(own_s3.stop))
    message = str(failure.value)
    assert message.startswith(f"storage operation on s3://{own_s3.bucket}/faults/faults/parts/attempt-")
    assert "/two.parquet failed: " in message and "connect" in message.lower()
    assert SECRET_KEY not in message and ACCESS_KEY not in message
    assert any(line.startswith("could not remove s3://") for line in caplog.messages), \
        "the runner says what it left behind"

    own_s3.start()
    assert runner.manifest("parts") is None, "a failed stage is never published"
    published = runner.run_stage(_two_part_stage(lambda: None))
    assert _published_files(runner, "parts") == ["one.parquet", "two.parquet"]
    stage_dir = runner.stage_dir("parts")
    assert runner.store.list_dirs(stage_dir) == [posixpath.basename(published["output_dir"])]
    assert sorted(runner.store.list_files(stage_dir)) == sorted(
        [posixpath.join(stage_dir, MANIFEST), posixpath.join(published["output_dir"], ATTEMPT_MARKER)]
        + [posixpath.join(published["output_dir"], f) for f in published["outputs"]])


def _job(env_update: dict[str, str], *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py")]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, **env_update}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_wrong_credentials_fail_clearly_without_leaking_them(s3_server):
    wrong = "wrong-secret-9f8e7d6c5b4a"
    result = _job({**s3_server.env, "AWS_SECRET_ACCESS_KEY": wrong},
                  f"storage.uri=s3://{s3_server.bucket}/creds", f"storage.endpoint_url={s3_server.endpoint}")
    assert result.returncode == 2
    assert f"error: storage s3://{s3_server.bucket}/creds is not usable:" in result.stderr
    assert "Ray" not in result.stdout, "it fails before any work starts"
    output = result.stdout + result.stderr
    assert wrong not in output and SECRET_KEY not in output


def test_missing_bucket_fails_clearly(s3_server):
    result = _job(s3_server.env, "storage.uri=s3://no-such-bucket-here/x", f"storage.endpoint_url={s3_server.endpoint}")
    assert result.returncode == 2
    assert "error: bucket 'no-such-bucket-here' of s3://no-such-bucket-here/x does not exist" in result.stderr
    assert SECRET_KEY not in result.stdout + result.stderr


# -- read-only storage and Ctrl-C (issue 33, items 11 and 12) ---------------------------------------------------


def _read_only(folder: Path) -> Callable[[], None]:
    """Make ``folder`` refuse new files even to root (an immutable folder), or skip; returns the undo."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (chattr +i refused)")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_storage_under_a_ray_data_write_is_a_storage_error(ray_local, tmp_path):
    import pyarrow.fs as pafs
    from saerec import artifacts
    attempt = tmp_path / "attempt"
    (attempt / "embeddings").mkdir(parents=True)
    for locked, art in ((attempt / "embeddings", artifacts.EMBEDDINGS), (attempt, artifacts.VOCABULARY)):
        undo = _read_only(locked)  # files refused inside a write task; then the folder refused on the driver
        try:
            with pytest.raises(StorageError) as failure:
                artifacts.write_dataset(ray_local.data.range(20), art, str(attempt), pafs.LocalFileSystem(), num_cpus=0)
        finally:
            undo()
        message = str(failure.value)
        assert message.startswith(f"storage operation on {art.under(str(attempt))} failed: "), message
        assert "not permitted" in message or "Permission denied" in message
        assert "ray::" not in message and "\n" not in message


@pytest.mark.slow
def test_ctrl_c_during_a_stage_exits_130_and_leaves_a_clean_run(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--set", f"storage.uri={out}",
           "--set", "data.demo.users=20000", "--until", "embed"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                           start_new_session=True)
    try:
        for line in job.stdout:
            if "] running..." in line:
                break
        time.sleep(2)  # into the stage's work
        os.killpg(job.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr[-3000:]
    assert "interrupted; published stages are kept, re-run to resume" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    for stage in (out / "demo").glob("*"):
        attempts = sorted(p.name for p in stage.iterdir() if p.name.startswith("attempt-"))
        manifest = stage / MANIFEST
        published = [json.loads(manifest.read_text())["attempt"]] if manifest.exists() else []
        assert attempts == published, f"{stage.name}: only a published attempt is left"
