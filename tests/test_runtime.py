"""Starting Ray: a local Ray listens on loopback only, survives one failed start, and a cluster
address nothing answers on fails in seconds with a message naming it."""
import ast
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from saerec.runtime import DASHBOARD_TIMEOUT_VAR, LOCAL_ENV, RayStartError, free_port, init_ray
from tests.conftest import REPO


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only():
    script = textwrap.dedent(f"""
        import sys, os; sys.path.insert(0, {str(REPO)!r})
        for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",):
            os.environ.pop(k, None)
        import psutil
        from saerec.runtime import init_ray
        init_ray(None, 1)
        pids = {{p.pid for p in psutil.Process().children(recursive=True)}} | {{os.getpid()}}
        addrs = {{c.laddr.ip for c in psutil.net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN and c.pid in pids}}
        print("ADDRS", sorted(addrs))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("ADDRS"))
    addrs = ast.literal_eval(line.split(" ", 1)[1])
    assert addrs, "Ray should listen somewhere"
    assert set(addrs) <= {"127.0.0.1", "::ffff:127.0.0.1"}, addrs


def test_local_ray_workers_see_their_own_cluster_beside_another(ray_local):
    """Ray Train's placement-group cleaner asks the state API from a worker whether the training
    controller lives; with another Ray on the machine (``ray_local`` here) it must ask its own."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from saerec.runtime import init_ray
        init_ray(None, 1)
        import ray

        @ray.remote(num_cpus=0)
        class Marker:
            def ping(self):
                return True

        @ray.remote(num_cpus=0)
        def actor_names():
            from ray.util.state import list_actors
            return sorted(a.name for a in list_actors() if a.name)

        marker = Marker.options(name="saerec-marker").remote()
        ray.get(marker.ping.remote())
        print("NAMES", ray.get(actor_names.remote()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("NAMES"))
    assert "saerec-marker" in ast.literal_eval(line.split(" ", 1)[1])


def _fake_ray(monkeypatch, failures: int, spawn: list | None = None):
    """Replace ray.init and friends: the first ``failures`` starts raise as a slow raylet does."""
    import ray
    calls = {"init": [], "shutdown": 0}

    def init(**kwargs):
        calls["init"].append(kwargs)
        if spawn is not None:  # a failed start leaves Ray processes behind, as a real one can
            spawn.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        if len(calls["init"]) <= failures:
            raise Exception("The current node timed out during startup. This could happen because ...")

    def shutdown():
        calls["shutdown"] += 1

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    for key in (*LOCAL_ENV, DASHBOARD_TIMEOUT_VAR):
        monkeypatch.delenv(key, raising=False)
    return calls


def test_local_start_is_retried_once_after_a_failure(monkeypatch):
    spawned: list = []
    calls = _fake_ray(monkeypatch, failures=1, spawn=spawned)
    assert init_ray(None, 2) == "started local Ray (2 CPUs) on the second try"
    assert len(calls["init"]) == 2 and calls["shutdown"] == 1
    assert calls["init"][0]["dashboard_port"] != calls["init"][1]["dashboard_port"], "a fresh port for the retry"
    assert spawned[0].wait(timeout=20) is not None, "what the failed start left running is stopped"
    assert spawned[1].poll() is None, "the running Ray is left alone"
    spawned[1].kill()
    assert os.environ[DASHBOARD_TIMEOUT_VAR] == "180"


def test_local_start_that_fails_twice_says_what_to_try(monkeypatch):
    calls = _fake_ray(monkeypatch, failures=2)
    with pytest.raises(RayStartError) as info:
        init_ray(None, 2)
    message = str(info.value)
    assert "local Ray did not start (2 tries; last: The current node timed out during startup" in message
    assert f"{DASHBOARD_TIMEOUT_VAR}=360" in message and "ray start --head" in message and "ray.address" in message
    assert len(calls["init"]) == 2 and calls["shutdown"] == 2


def test_the_start_up_allowance_is_a_setting_of_this_ray():
    """The variable is read by this Ray version where it waits for the dashboard."""
    import inspect

    from ray._private import ray_constants, services
    assert hasattr(ray_constants, DASHBOARD_TIMEOUT_VAR)
    assert f"ray_constants.{DASHBOARD_TIMEOUT_VAR}" in inspect.getsource(services.start_api_server)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_cluster_fails_fast_naming_the_address(scheme, monkeypatch):
    import ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever Ray other tests left connected
    address = f"{scheme}127.0.0.1:{free_port()}"
    start = time.time()
    with pytest.raises(RayStartError, match=rf"cannot reach the Ray cluster at {re.escape(address)} \(Connection refused"):
        init_ray(address)
    assert time.time() - start < 10
