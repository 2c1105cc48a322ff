"""Starting or joining Ray, and the environment a local run needs to stay offline and on loopback."""
from __future__ import annotations

import os
import socket

LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Makes a locally started Ray bind its servers to 127.0.0.1 instead of every interface.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def cluster_address(configured: str | None) -> str | None:
    """The Ray cluster to join: the config's, else ``RAY_ADDRESS`` (set by ``ray job submit``)."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_ray(address: str | None, num_cpus: int | None = None) -> str:
    """Join the given cluster, or start a private local Ray on 127.0.0.1; returns which it did.

    Ray reads its network settings when it is imported, so the local environment is set first.
    """
    if not address:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
    # Ray Data logs a progress block per operator every 10 s when stdout is not a terminal (job
    # logs, CI); once a minute keeps long stages visible without burying the stage lines.
    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "60")
    import ray

    if ray.is_initialized():
        return "already connected"
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"joined Ray cluster at {address}"
    # Ray Train's placement-group cleaner asks the state API whether its controller is alive. A
    # worker of a local Ray has no RAY_ADDRESS, so without an explicit API server the state API
    # goes looking for a Ray on this machine: with several running it fails or asks another
    # cluster, and the cleaner removed the placement group of a healthy training run.
    dashboard_port = free_port()
    api_server = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port,
             log_to_driver=True, runtime_env={"env_vars": {**{k: os.environ[k] for k in LOCAL_ENV}, **api_server}})
    return f"started local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
