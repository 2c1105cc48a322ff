"""A locally started Ray listens on loopback only."""
import ast
import subprocess
import sys
import textwrap

from tests.conftest import REPO


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
