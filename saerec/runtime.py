"""Starting or joining Ray, and the environment a local run needs to stay offline and on loopback."""
from __future__ import annotations

import os
import socket
from typing import Any

LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Makes a locally started Ray bind its servers to 127.0.0.1 instead of every interface.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
# Ray 2.60 gives its dashboard 60 s to come up (ray._private.ray_constants), which a loaded 2-core
# machine sometimes misses; a job that starts its own Ray allows three minutes. The raylet's own
# 30 s registration wait is fixed in Ray's code, so that failure is met by one retry instead.
DASHBOARD_TIMEOUT_VAR = "RAY_DASHBOARD_STARTUP_TIMEOUT_S"
LOCAL_DASHBOARD_TIMEOUT_S = "180"
LOCAL_START_ATTEMPTS = 2
CONNECT_TIMEOUT_S = 5.0


class RayStartError(RuntimeError):
    """Ray could not be started or joined; the message names the address and says what to try."""


def cluster_address(configured: str | None) -> str | None:
    """The Ray cluster to join: the config's, else ``RAY_ADDRESS`` (set by ``ray job submit``)."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a cluster address (``ray://`` or bare), or None for ``auto`` and the like."""
    bare = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = bare.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def init_ray(address: str | None, num_cpus: int | None = None) -> str:
    """Join the given cluster, or start a private local Ray on 127.0.0.1; returns which it did.

    Ray reads its network settings when it is imported, so the local environment is set first.
    Raises RayStartError (which the job prints as ``error: ...``) when neither works.
    """
    if not address:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault(DASHBOARD_TIMEOUT_VAR, LOCAL_DASHBOARD_TIMEOUT_S)
    # Ray Data logs a progress block per operator every 10 s when stdout is not a terminal (job
    # logs, CI); once a minute keeps long stages visible without burying the stage lines.
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
    import ray

    if ray.is_initialized():
        return "already connected"
    if address:
        return _join(ray, address)
    return _start_local(ray, num_cpus)


def _join(ray: Any, address: str) -> str:
    """Join a running cluster; an address nothing answers on fails in seconds, not after Ray's retries."""
    target = _host_port(address)
    if target is not None:
        try:
            socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise RayStartError(
                f"cannot reach the Ray cluster at {address} ({exc.strerror or _first_line(exc)}); check ray.address "
                f"(or RAY_ADDRESS) and that the cluster is running (ray status --address {address}), or leave "
                "ray.address unset to start a local Ray") from exc
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or a bare Exception here
        raise RayStartError(f"could not join the Ray cluster at {address}: {_first_line(exc)}; check that it is "
                            "a Ray (GCS) address such as 10.0.0.5:6379 and that this Ray and Python match the "
                            "cluster's") from exc
    return f"joined Ray cluster at {address}"


def _start_local(ray: Any, num_cpus: int | None) -> str:
    """Start a private local Ray, once more after a failed start (a slow raylet or dashboard)."""
    import psutil

    failure: BaseException | None = None
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        # Ray Train's placement-group cleaner asks the state API whether its controller is alive. A
        # worker of a local Ray has no RAY_ADDRESS, so without an explicit API server the state API
        # goes looking for a Ray on this machine: with several running it fails or asks another
        # cluster, and the cleaner removed the placement group of a healthy training run.
        dashboard_port = free_port()
        api_server = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=dashboard_port, log_to_driver=True,
                     runtime_env={"env_vars": {**{k: os.environ[k] for k in LOCAL_ENV}, **api_server}})
        except Exception as exc:  # Ray raises a bare Exception for "node timed out during startup"
            failure = exc
            _stop_failed_start(ray, before)
            continue
        again = " on the second try" if attempt > 1 else ""
        return f"started local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs){again}"
    assert failure is not None
    raise RayStartError(
        f"local Ray did not start ({LOCAL_START_ATTEMPTS} tries; last: {_first_line(failure)}). The machine may be "
        f"too loaded: free some CPU or memory and run again, allow more time with {DASHBOARD_TIMEOUT_VAR}="
        f"{int(os.environ.get(DASHBOARD_TIMEOUT_VAR, LOCAL_DASHBOARD_TIMEOUT_S)) * 2}, or start Ray yourself "
        "(ray start --head --node-ip-address=127.0.0.1) and pass --set ray.address=127.0.0.1:6379; Ray's logs "
        "are in /tmp/ray/session_latest/logs") from failure


def _stop_failed_start(ray: Any, before: set[int]) -> None:
    """Undo a failed ``ray.init``: disconnect, and stop the Ray processes it left running."""
    import psutil

    try:
        ray.shutdown()
    except Exception:  # nothing was connected; the processes below are what is left
        pass
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    for proc in left:
        try:
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(left, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
