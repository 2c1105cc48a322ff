"""Faults: a killed driver, an S3 server that restarts or vanishes mid-stage, and bad credentials or a
missing bucket. After each: nothing lost, duplicated or half-published, and no credential in any output."""
from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pyarrow as pa
import pytest

from saerec.config import load_config
from saerec.pipeline import MANIFEST, Runner, Stage, StageContext
from saerec.storage import Store, StorageError
from tests.conftest import REPO
from tests.ray_head import job_id, pipeline_args
from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3


# Every test here shares one `ray start --head` (and the demo submitted to it): one xdist worker.
pytestmark = pytest.mark.xdist_group("ray_head")


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


def _runner(server: SeaweedS3, logs: list[str]) -> Runner:
    cfg = load_config(None, [f"storage.uri=s3://{server.bucket}/faults", "run.name=faults",
                             f"storage.endpoint_url={server.endpoint}"])
    return Runner(cfg, Store(cfg.storage.uri, cfg.storage.endpoint_url), log=logs.append)


def _published_files(runner: Runner, stage: str) -> list[str]:
    manifest = runner.manifest(stage)
    return sorted(posixpath.relpath(p, manifest["output_dir"]) for p in runner.store.list_files(manifest["output_dir"]))


def test_s3_restart_during_a_stage_is_retried(own_s3):
    logs: list[str] = []
    runner = _runner(own_s3, logs)
    published = runner.run_stage(_two_part_stage(own_s3.restart))
    assert published["metrics"] == {"parts": 2}
    assert _published_files(runner, "parts") == ["one.parquet", "two.parquet"]
    assert runner.store.read_table(posixpath.join(published["output_dir"], "two.parquet")).num_rows == 2


def test_s3_gone_during_a_stage_fails_clearly_and_publishes_nothing(own_s3):
    logs: list[str] = []
    runner = _runner(own_s3, logs)
    with pytest.raises(StorageError) as failure:
        runner.run_stage(_two_part_stage(own_s3.stop))
    message = str(failure.value)
    assert message.startswith(f"storage operation on s3://{own_s3.bucket}/faults/faults/parts/attempt-")
    assert "/two.parquet failed: " in message and "connect" in message.lower()
    assert SECRET_KEY not in message and ACCESS_KEY not in message
    assert any(line.startswith("could not remove s3://") for line in logs), "the runner says what it left behind"

    own_s3.start()
    assert runner.manifest("parts") is None, "a failed stage is never published"
    published = runner.run_stage(_two_part_stage(lambda: None))
    assert _published_files(runner, "parts") == ["one.parquet", "two.parquet"]
    stage_dir = runner.stage_dir("parts")
    assert runner.store.list_dirs(stage_dir) == [posixpath.basename(published["output_dir"])]
    assert sorted(runner.store.list_files(stage_dir)) == sorted(
        [posixpath.join(stage_dir, MANIFEST)] + [posixpath.join(published["output_dir"], f) for f in published["outputs"]])


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


def test_missing_bucket_through_ray_job_submit(ray_head, s3_server):
    result = ray_head.submit(*pipeline_args("s3://no-such-bucket-here/x", s3_server.endpoint, []), cwd=REPO)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "error: bucket 'no-such-bucket-here' of s3://no-such-bucket-here/x does not exist" in output
    assert SECRET_KEY not in output
    assert not [p for p in ray_head.log_files() if SECRET_KEY.encode() in p.read_bytes()]


# -- process faults on the Ray head ----------------------------------------------------------------------------


def _saved_trial_states(store: Store, run: str) -> list[str]:
    return [p for p in store.list_files(store.join(run, "sweep", "_train")) if "/trial_states/" in p
            and p.endswith(".pt")]


def _wait_for_a_saved_trial(store: Store, run: str, earlier: list[str], ray_head, job: str,
                            timeout: float = 300) -> None:
    """Until a trial of this job has saved its training state (the sweep is then mid-trial) and Tune
    has stored the experiment state it restores from."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = set(_saved_trial_states(store, run)) - set(earlier)
        if new:
            experiment = posixpath.join(posixpath.dirname(posixpath.dirname(next(iter(new)))), "sweep")
            if any("experiment_state" in p for p in store.list_files(experiment)):
                return
        time.sleep(0.5)
    status, logs = ray_head.status(job)
    raise AssertionError(f"no trial state saved within {timeout} s; job {status}:\n{logs[-3000:]}")


def _head_process(ray_head, match: Callable[[list[str]], bool]) -> psutil.Process:
    for proc in ray_head.processes():
        try:
            if match(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("process not found among the head's processes")


# Two trials, one at a time, saving their state every epoch, long enough to be caught in the middle.
SLOW_SWEEP = ["sweep.ablations=[full,sasrec]", "sweep.ks=[]", "sweep.review_drops=[]", "sweep.seeds=[0]",
              "sweep.concurrency=1", "sweep.patience=15", "sweep.checkpoint_seconds=0"]


def _assert_complete_sweep(store: Store, run: str, trials: int) -> dict:
    manifest = store.read_json(store.join(run, "sweep", MANIFEST))
    results = store.read_table(posixpath.join(manifest["output_dir"], "results.parquet"))
    ids = results.column("trial_id").to_pylist()
    assert len(ids) == len(set(ids)) == trials == manifest["metrics"]["trials"]
    attempts = [d for d in store.list_dirs(store.join(run, "sweep")) if d.startswith("attempt-")]
    assert attempts == [posixpath.basename(manifest["output_dir"])], "no half-published or duplicate attempt"
    return manifest


@pytest.mark.timeout(1800)
def test_sigkilled_driver_resumes_from_manifests_and_saved_state(submitted_demo, ray_head, s3_server):
    assert submitted_demo.result.returncode == 0
    store = Store(submitted_demo.uri, s3_server.endpoint)
    args = [*pipeline_args(submitted_demo.uri, s3_server.endpoint, [*submitted_demo.overrides, *SLOW_SWEEP,
                                                                    "sweep.max_epochs=15"]), "--until", "sweep"]
    earlier = _saved_trial_states(store, "demo")
    submit = ray_head.submit(*args, cwd=REPO, no_wait=True)
    assert submit.returncode == 0, submit.stderr[-2000:]
    _wait_for_a_saved_trial(store, "demo", earlier, ray_head, job_id(submit))
    driver = _head_process(ray_head, lambda cmd: any(c.endswith("full_pipeline.py") for c in cmd)
                           and "sweep.max_epochs=15" in cmd and not any(c.endswith("/ray") for c in cmd))
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    assert store.read_json(store.join("demo", "sweep", MANIFEST))["config"]["sweep"]["max_epochs"] != 15

    again = ray_head.submit(*args, cwd=REPO)
    assert again.returncode == 0, again.stdout[-4000:]
    for stage in ("prepare", "train_rec", "evaluate"):
        assert f"[{stage}] skipped" in again.stdout
    manifest = _assert_complete_sweep(store, "demo", 2)
    assert manifest["metrics"]["restored"] is True
    assert manifest["metrics"]["trials_resumed_mid_training"] >= 1
