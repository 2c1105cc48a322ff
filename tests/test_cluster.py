"""Cluster submission: the README's recipe on a local ``ray start --head`` with S3 storage, and the launcher files."""
from __future__ import annotations

import posixpath
import tomllib

import psutil
import pytest
import yaml

from saerec.stages import STAGE_ORDER
from saerec.storage import MANIFEST, Store
from tests.conftest import REPO
from tests.s3server import SECRET_KEY


# Every test here shares one `ray start --head` (and the demo submitted to it): one xdist worker.
pytestmark = pytest.mark.xdist_group("ray_head")


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
        manifest = store.read_json(store.join("demo", stage, MANIFEST))
        assert manifest["stage"] == stage and manifest["run"] == "demo"
        stored = store.list_files(manifest["output_dir"])
        assert sorted(posixpath.relpath(p, manifest["output_dir"]) for p in stored) == sorted(manifest["outputs"])
        attempts = [d for d in store.list_dirs(store.join("demo", stage)) if d.startswith("attempt-")]
        assert attempts == [posixpath.basename(manifest["output_dir"])], "exactly one published attempt"


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
