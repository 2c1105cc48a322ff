"""The job as a user runs it: a subprocess that starts its own local Ray, with its first stage on local
disk (the whole tiny pipeline runs once in the suite, submitted to a Ray head with S3 storage in
``test_cluster.py``, which also submits it again to see every stage skipped; a job that starts its own
Ray on S3 is in ``test_runlock.py``; each stage on local disk is in its stage test); and the errors a
user meets before any work (bad input paths, an unreachable cluster, bad records)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_DEMO


def run_job(*args, env=None):
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), *args]
    for override in TINY_DEMO:
        cmd += ["--set", override]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=REPO, timeout=900)


@pytest.mark.slow
def test_job_on_local_storage_then_skips(tmp_path):
    args = ["--set", f"storage.uri={tmp_path / 'out'}", "--until", "prepare"]
    first = run_job(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[prepare] running..." in first.stdout and "[prepare] done" in first.stdout
    assert (tmp_path / "out" / "demo" / "prepare" / "_manifest.json").exists()
    second = run_job(*args)
    assert second.returncode == 0, second.stderr[-3000:]
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


def run_bare_job(*args):
    """The job with only the given overrides (no tiny demo): for inputs that fail before any model runs."""
    return subprocess.run([sys.executable, str(REPO / "jobs" / "full_pipeline.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def test_missing_data_path_is_reported_before_ray_starts(tmp_path):
    missing = tmp_path / "reviews_Beauty_5.json.gz"
    result = run_bare_job("--set", f"storage.uri={tmp_path / 'out'}", "--set", "data.source=amazon",
                          "--set", f"data.path={missing}", "--until", "prepare")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: data.path {missing}: no such file (data.source=amazon expects a reviews file" in result.stderr
    assert "Ray" not in result.stdout, "reported before Ray is started"
    assert "Traceback" not in result.stderr


def test_unreachable_ray_address_is_a_clear_error(tmp_path):
    from saerec.runtime import free_port
    address = f"127.0.0.1:{free_port()}"
    result = run_bare_job("--set", f"storage.uri={tmp_path / 'out'}", "--set", f"ray.address={address}",
                          "--until", "prepare")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: cannot reach the Ray cluster at {address}" in result.stderr
    assert "Traceback" not in result.stderr


def _reviews(path, bad_lines):
    good = [json.dumps({"reviewerID": f"u{u}", "asin": f"i{(u + j) % 4}", "unixReviewTime": 100 * j,
                        "reviewText": f"text {u} {j}"}) for u in range(5) for j in range(5)]
    path.write_text("\n".join(good[:3] + bad_lines + good[3:]) + "\n")
    return path


@pytest.mark.slow
def test_bad_records_are_named_or_skipped_and_shown(tmp_path):
    bad = [json.dumps({"reviewerID": "u1", "asin": "i1", "unixReviewTime": 7, "reviewText": {"a": 1}}),
           json.dumps({"reviewerID": "u1", "asin": 5, "unixReviewTime": 7}), "{oops"]
    path = _reviews(tmp_path / "reviews.json", bad)
    args = ["--set", "data.source=amazon", "--set", f"data.path={path}", "--set", "data.k_core=1",
            "--set", "ray.num_cpus=1", "--until", "prepare"]
    failed = run_bare_job("--set", f"storage.uri={tmp_path / 'a'}", *args)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert f"error: {path}:4: reviewText is a JSON object, expected a string" in failed.stderr
    assert "Traceback" not in failed.stderr

    skipped = run_bare_job("--set", f"storage.uri={tmp_path / 'b'}", *args, "--set", "data.on_bad_record=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    done = next(line for line in skipped.stdout.splitlines() if line.startswith("[prepare] done"))
    assert "bad_records_skipped=3" in done and f"first bad records skipped: {path} lines 4, 5, 6" in done
    assert "duplicates_dropped" in done
