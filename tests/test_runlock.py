"""The run lock: one job per run, on local disk and on S3 (SeaweedFS). The lease itself in-process,
then two real processes: a holder (tests/lock_holder.py, or a real job) and a second job."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from saerec.runlock import LOCK_FILE, Lease, LeaseTiming, RunLock, RunLockError
from saerec.storage import Store
from tests.conftest import REPO, TINY_DEMO

FAST = LeaseTiming(heartbeat_s=0.2, stale_after_s=30.0, settle_s=0.3, poll_s=0.1)
HOST = socket.gethostname()
PID_NS = os.readlink("/proc/self/ns/pid")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        found = Store(str(tmp_path / "out"))
    else:
        s3_server = request.getfixturevalue("s3_server")
        found = Store(request.getfixturevalue("s3_uri"), s3_server.endpoint)
    found.check()
    return found


def lease_on_disk(store: Store, run: str = "demo") -> dict | None:
    path = store.join(run, LOCK_FILE)
    return store.read_json(path) if store.exists(path) else None


def plant(store: Store, run: str = "demo", **fields) -> Lease:
    """A lease written as another job would have written it."""
    now = time.time()
    lease = Lease(**{"run": run, "token": "f" * 32, "host": "elsewhere", "pid_namespace": PID_NS, "pid": 4242,
                     "pid_started": now, "started": now, "heartbeat": now, **fields})
    store.write_bytes(store.join(run, LOCK_FILE), lease.encode())
    return lease


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_lease_names_its_holder_blocks_the_same_run_only_and_is_released(store):
    lock = RunLock(store, "demo", FAST).acquire()
    lease = lease_on_disk(store)
    assert (lease["host"], lease["pid"], lease["run"]) == (HOST, os.getpid(), "demo")
    assert lease["started_at"].endswith("Z") and len(lease["token"]) == 32

    with pytest.raises(RunLockError) as held:
        RunLock(store, "demo", FAST).acquire()
    assert f"run 'demo' is locked by another job (host {HOST}, pid {os.getpid()}, started " in str(held.value)
    assert "last heartbeat" in str(held.value) and "--wait-lock" in str(held.value)
    assert lease_on_disk(store)["token"] == lease["token"], "the refused job leaves the lease alone"

    other = RunLock(store, "other", FAST).acquire()
    other.release()
    lock.release()
    assert lease_on_disk(store) is None and lease_on_disk(store, "other") is None
    RunLock(store, "demo", FAST).acquire().release()


@pytest.mark.parametrize("where", ["another host", "a container with this host's name"])
def test_a_live_holder_elsewhere_is_not_taken_over(store, where):
    planted = plant(store, pid=dead_pid()) if where == "another host" else \
        plant(store, host=HOST, pid_namespace="pid:[1]", pid=dead_pid())
    with pytest.raises(RunLockError, match=f"host {planted.host}, pid {planted.pid}, "):
        RunLock(store, "demo", FAST).acquire()
    assert lease_on_disk(store)["token"] == planted.token


def test_heartbeat_refreshes_the_lease(store):
    with RunLock(store, "demo", FAST):
        first = lease_on_disk(store)["heartbeat"]
        deadline = time.time() + 20
        while lease_on_disk(store)["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.1)
        assert lease_on_disk(store)["heartbeat"] > first


@pytest.mark.parametrize("dead", ["stale heartbeat", "dead pid on this host", "unreadable"])
def test_a_dead_holder_is_taken_over_and_the_job_says_so(store, dead, caplog):
    if dead == "stale heartbeat":
        plant(store, heartbeat=time.time() - 100)
        said = r"its heartbeat is 10\d s old \(stale after 30 s\)"
    elif dead == "dead pid on this host":
        pid = dead_pid()
        plant(store, host=HOST, pid=pid)
        said = f"its process {pid} no longer exists on this host"
    else:
        store.write_bytes(store.join("demo", LOCK_FILE), b'{"run": "de')
        said = "its lease file is unreadable"
    with caplog.at_level(logging.WARNING, logger="saerec.runlock"):
        lock = RunLock(store, "demo", FAST).acquire()
    took = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert len(took) == 1 and took[0].startswith("[lock] took over the lock of run 'demo' ")
    assert re.search(f"{said}$", took[0]) if dead == "stale heartbeat" else took[0].endswith(said)
    assert lease_on_disk(store)["pid"] == os.getpid()
    lock.release()


def test_of_two_jobs_taking_over_one_dead_lease_exactly_one_wins(store):
    # On S3 the protocol holds while a job's read-then-write of the lease is shorter than settle_s.
    timing = replace(FAST, settle_s=2.0) if store.scheme == "s3" else FAST
    for _ in range(3 if store.scheme == "s3" else 20):
        plant(store, heartbeat=time.time() - 100)
        start = threading.Barrier(2)
        won, refused = [], []

        def take():
            start.wait()
            try:
                won.append(RunLock(store, "demo", timing).acquire())
            except RunLockError as exc:
                refused.append(exc)

        threads = [threading.Thread(target=take) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (len(won), len(refused)) == (1, 1)
        assert lease_on_disk(store)["token"] == won[0]._mine.token
        won[0].release()


def test_wait_lock_waits_for_the_holder_then_goes_on(store, caplog):
    holder = RunLock(store, "demo", FAST).acquire()
    got = []
    with caplog.at_level(logging.INFO, logger="saerec.runlock"):
        waiter = threading.Thread(target=lambda: got.append(RunLock(store, "demo", FAST).acquire(wait=True)))
        waiter.start()
        deadline = time.time() + 20
        while not any("waiting for it (--wait-lock)" in r.getMessage() for r in caplog.records):
            assert time.time() < deadline, "no waiting line"
            time.sleep(0.05)
        assert got == [] and waiter.is_alive()
        holder.release()
        waiter.join(30)
    assert len(got) == 1
    assert lease_on_disk(store)["token"] == got[0]._mine.token
    assert any(r.getMessage().startswith("[lock] run 'demo' is free after") for r in caplog.records)
    got[0].release()


def test_a_job_that_lost_its_lease_stops_before_the_next_stage(store):
    lock = RunLock(store, "demo", replace(FAST, heartbeat_s=1.0)).acquire()
    lock.check()
    first, deadline = lease_on_disk(store)["heartbeat"], time.time() + 20
    while lease_on_disk(store)["heartbeat"] == first:  # just after a heartbeat, not in the middle of one
        assert time.time() < deadline, "no heartbeat"
        time.sleep(0.02)
    plant(store, host="usurper", pid=7)
    deadline = time.time() + 20
    while lock._lost is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunLockError, match="this job lost the lock of run 'demo' to host usurper, pid 7"):
        lock.check()
    lock.release()
    assert lease_on_disk(store)["host"] == "usurper", "release leaves another job's lease alone"


# Two real processes: a holder and the job.

def job(*args, env=None, wait=True):
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), *args]
    kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                  env={**os.environ, **(env or {})})
    return subprocess.run(cmd, timeout=600, **kwargs) if wait else subprocess.Popen(cmd, **kwargs)


def storage_args(store: Store, endpoint: str | None) -> list[str]:
    uri = f"s3://{store.root}" if store.scheme == "s3" else store.root
    return ["--set", f"storage.uri={uri}"] + (["--set", f"storage.endpoint_url={endpoint}"] if endpoint else [])


def start_holder(store: Store, endpoint: str | None, run: str, env: dict) -> subprocess.Popen:
    uri = f"s3://{store.root}" if store.scheme == "s3" else store.root
    holder = subprocess.Popen([sys.executable, "-m", "tests.lock_holder", uri, endpoint or "-", run],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, **env})
    assert holder.stdout.readline().strip() == "held"
    return holder


def missing_data(tmp_path) -> list[str]:
    """Settings that fail right after the lock, before Ray starts: a job that got past the lock says
    ``error: data.path ...`` instead of naming a holder."""
    return ["--set", "data.source=amazon", "--set", f"data.path={tmp_path / 'missing.json.gz'}",
            "--until", "prepare"]


@pytest.fixture
def job_store(store, request):
    endpoint = request.getfixturevalue("s3_server").endpoint if store.scheme == "s3" else None
    env = request.getfixturevalue("s3_server").env if store.scheme == "s3" else {}
    return store, endpoint, env


def test_second_job_fails_fast_naming_the_holder_and_deletes_nothing(job_store):
    store, endpoint, env = job_store
    in_progress = store.join("demo", "prepare", "attempt-20260101T000000-0000abcd", "part-0.parquet")
    store.write_bytes(in_progress, b"the first job's output, mid-stage")
    holder = start_holder(store, endpoint, "demo", env)
    try:
        second = job(*storage_args(store, endpoint), "--until", "prepare", env=env)
        assert second.returncode == 2, second.stderr[-2000:]
        lease = lease_on_disk(store)
        assert (f"error: run 'demo' is locked by another job (host {HOST}, pid {holder.pid}, started "
                f"{lease['started_at']}, last heartbeat ") in second.stderr
        assert "--wait-lock" in second.stderr and "Traceback" not in second.stderr
        assert "Ray" not in second.stdout, "refused before Ray starts"
        assert store.read_bytes(in_progress) == b"the first job's output, mid-stage"
        assert lease_on_disk(store)["pid"] == holder.pid
    finally:
        holder.communicate("", timeout=60)
    assert lease_on_disk(store) is None


def test_a_job_on_another_run_is_not_blocked(job_store, tmp_path):
    store, endpoint, env = job_store
    holder = start_holder(store, endpoint, "other", env)
    try:
        result = job(*storage_args(store, endpoint), *missing_data(tmp_path), env=env)
    finally:
        holder.communicate("", timeout=60)
    assert result.returncode == 2 and "error: data.path" in result.stderr, result.stderr[-2000:]
    assert "locked" not in result.stderr
    assert lease_on_disk(store) is None, "the job released its lock on the error"


def test_a_job_takes_over_a_killed_holders_lock(job_store, tmp_path):
    store, endpoint, env = job_store
    holder = start_holder(store, endpoint, "demo", env)
    holder.kill()
    holder.wait(30)
    result = job(*storage_args(store, endpoint), *missing_data(tmp_path), env=env)
    assert result.returncode == 2 and "error: data.path" in result.stderr, result.stderr[-2000:]
    took = [line for line in result.stderr.splitlines() if "took over" in line]
    assert len(took) == 1 and took[0].startswith(f"[lock] took over the lock of run 'demo' from host {HOST}, "
                                                 f"pid {holder.pid}, started ")
    assert took[0].endswith(f"its process {holder.pid} no longer exists on this host")
    assert lease_on_disk(store) is None


def test_wait_lock_job_waits_then_runs(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.check()
    holder = start_holder(store, None, "demo", {})
    waiting = job(*storage_args(store, None), *missing_data(tmp_path), "--wait-lock", wait=False)
    try:
        line = waiting.stdout.readline()
        while line and "[lock]" not in line:
            line = waiting.stdout.readline()
        assert line.startswith(f"[lock] run 'demo' is locked by host {HOST}, pid {holder.pid}, started ")
        assert line.rstrip().endswith("waiting for it (--wait-lock)")
        assert waiting.poll() is None
    finally:
        holder.communicate("", timeout=60)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 2 and "error: data.path" in err, err[-2000:]
    assert "[lock] run 'demo' is free after" in out
    assert lease_on_disk(store) is None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_real_jobs_on_s3_the_second_is_refused_and_the_first_publishes(s3_server, s3_uri):
    store = Store(s3_uri, s3_server.endpoint)
    args = [*storage_args(store, s3_server.endpoint), "--until", "embed"]
    for override in TINY_DEMO:
        args += ["--set", override]
    first = job(*args, env=s3_server.env, wait=False)
    try:
        deadline = time.time() + 300
        # Wait for prepare's attempt folder: the lock is held and Ray is up (a driver stopped while Ray
        # starts can miss Ray's start-up deadlines on a loaded machine).
        while not store.list_dirs(store.join("demo", "prepare")):
            assert first.poll() is None and time.time() < deadline, "the first job never started prepare"
            time.sleep(0.2)
        assert lease_on_disk(store) is not None
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, lock taken, while the second job starts
        try:
            second = job(*args, env=s3_server.env)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"error: run 'demo' is locked by another job (host {HOST}, pid {first.pid}, started " in second.stderr
        assert "Ray" not in second.stdout and "Traceback" not in second.stderr
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert "[prepare] running..." in out and "[prepare] done" in out and "[embed] done" in out
    assert lease_on_disk(store) is None, "the first job released its lock"
    manifest = json.loads(store.read_bytes(store.join("demo", "prepare", "_manifest.json")))
    attempts = [d for d in store.list_dirs(store.join("demo", "prepare")) if d.startswith("attempt-")]
    assert attempts == [manifest["attempt"]]


@pytest.mark.slow
def test_an_interrupted_job_releases_its_lock(tmp_path):
    store = Store(str(tmp_path / "out"))
    args = [*storage_args(store, None), "--until", "prepare"]
    for override in TINY_DEMO:
        args += ["--set", override]
    running = job(*args, wait=False)
    try:
        deadline = time.time() + 120
        while lease_on_disk(store) is None:
            assert running.poll() is None and time.time() < deadline, "the job never took the lock"
            time.sleep(0.1)
        running.send_signal(signal.SIGINT)
        running.communicate(timeout=120)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode != 0
    assert lease_on_disk(store) is None, "Ctrl-C gives the lock back"
