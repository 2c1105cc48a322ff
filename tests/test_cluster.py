"""Cluster submission: the README's recipe on a local ``ray start --head`` with S3 storage (the one
full tiny pipeline of the suite: every stage runs, a second submission skips every stage), the
launcher files, and faults on the head (a missing bucket, a SIGKILLed driver)."""
from __future__ import annotations

import posixpath
import signal
import time
import tomllib
from typing import Callable

import psutil
import pytest
import yaml

from saerec.pipeline import ATTEMPT_MARKER
from saerec.stages import STAGE_ORDER
from saerec.storage import MANIFEST, Store
from tests.conftest import REPO
from tests.ray_head import job_id, pipeline_args
from tests.s3server import SECRET_KEY


# The first test to use ``submitted_demo`` waits for the whole tiny pipeline to run as a job.
PIPELINE_TIMEOUT = pytest.mark.timeout(1800)


@PIPELINE_TIMEOUT
def test_submitted_job_publishes_every_stage_in_the_bucket(submitted_demo, s3_server):
    result = submitted_demo.result
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "succeeded" in result.stdout + result.stderr
    assert "joined Ray cluster" in result.stdout, "the job must join the head, not start its own Ray"
    assert "all selected stages are published." in result.stdout
    store = Store(submitted_demo.uri, s3_server.endpoint)
    for stage in STAGE_ORDER:
        assert f"[{stage}] done" in result.stdout
        manifest = store.read_json(store.join("demo", stage, MANIFEST))
        assert manifest["stage"] == stage and manifest["run"] == "demo"
        attempt = store.join("demo", stage, manifest["attempt"])
        stored = store.list_files(attempt)
        assert sorted(posixpath.relpath(p, attempt) for p in stored) == sorted(manifest["outputs"] + [ATTEMPT_MARKER])
        attempts = [d for d in store.list_dirs(store.join("demo", stage)) if d.startswith("attempt-")]
        assert attempts == [manifest["attempt"]], "exactly one published attempt"


def _published_attempts(store: Store) -> dict[str, str]:
    return {stage: store.read_json(store.join("demo", stage, MANIFEST))["attempt"] for stage in STAGE_ORDER}


@PIPELINE_TIMEOUT
def test_second_submission_skips_every_stage_and_publishes_nothing_new(submitted_demo, ray_head, s3_server):
    """Runs before the SIGKILL test below, which re-publishes the sweep with other settings."""
    assert submitted_demo.result.returncode == 0
    store = Store(submitted_demo.uri, s3_server.endpoint)
    before = _published_attempts(store)
    again = ray_head.submit(*pipeline_args(submitted_demo.uri, s3_server.endpoint, submitted_demo.overrides), cwd=REPO)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    for stage in STAGE_ORDER:
        assert f"[{stage}] skipped" in again.stdout
    assert "running..." not in again.stdout
    assert _published_attempts(store) == before


@PIPELINE_TIMEOUT
def test_no_credential_in_job_output_or_ray_logs(submitted_demo, ray_head):
    assert SECRET_KEY not in submitted_demo.result.stdout + submitted_demo.result.stderr
    logs = ray_head.log_files()
    assert logs, "the head writes logs under its temp dir"
    leaked = [str(p) for p in logs if SECRET_KEY.encode() in p.read_bytes()]
    assert leaked == []


@PIPELINE_TIMEOUT
def test_head_listens_on_loopback_only(submitted_demo, ray_head):
    addresses = set()
    for proc in ray_head.processes():
        try:
            addresses |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses


def test_runtime_env_ships_the_repo_and_no_secrets():
    env = yaml.safe_load((REPO / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert "pip" not in env and "conda" not in env, "the nodes' environment provides the dependencies"
    assert not any(k.startswith("AWS_") and k != "AWS_DEFAULT_REGION" for k in env["env_vars"])
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"


def test_pip_runtime_env_lists_exactly_the_project_dependencies():
    pip_env = yaml.safe_load((REPO / "configs" / "runtime_env.pip.yaml").read_text())
    plain = yaml.safe_load((REPO / "runtime_env.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert pip_env["pip"]["packages"] == project["dependencies"]
    assert {k: v for k, v in pip_env.items() if k != "pip"} == plain


def test_cluster_launcher_config_is_consistent():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    assert workers, "at least one worker type"
    for name, node in workers.items():
        assert 0 == node["min_workers"] <= node["max_workers"] <= cfg["max_workers"], name
    assert any(node["node_config"]["InstanceType"].startswith(("g", "p")) for node in workers.values()), "GPU workers"
    setup = " ".join(cfg["setup_commands"])
    assert "constraints.txt" in setup and "~/saerec" in setup and cfg["file_mounts"]["~/saerec"] == "."
    for command in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "--dashboard-host=0.0.0.0" not in command


# -- faults on the head: the tests share its fixture, so they live in this file (one xdist worker) --


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
SLOW_SWEEP = ["sweep.ablations=[saerec,sasrec]", "sweep.ks=[]", "sweep.review_drops=[]", "sweep.seeds=[0]",
              "sweep.concurrency=1", "sweep.patience=15", "rec.checkpoint_seconds=0"]


def _assert_complete_sweep(store: Store, run: str, trials: int) -> dict:
    manifest = store.read_json(store.join(run, "sweep", MANIFEST))
    results = store.read_table(store.join(run, "sweep", manifest["attempt"], "results.parquet"))
    ids = results.column("trial_id").to_pylist()
    assert len(ids) == len(set(ids)) == trials == manifest["metrics"]["trials"]
    attempts = [d for d in store.list_dirs(store.join(run, "sweep")) if d.startswith("attempt-")]
    assert attempts == [manifest["attempt"]], "no half-published or duplicate attempt"
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
