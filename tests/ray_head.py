"""A private Ray head on 127.0.0.1 for job-submission tests, started with ``ray start --head``.

Other Ray instances may run on the same machine, so this never calls ``ray stop`` (which stops
every Ray on the machine): the head gets its own temp dir, ports and an environment marker,
and ``stop`` ends exactly the processes that carry that marker, by pid.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from saerec.runtime import free_port

MARKER = "SAEREC_TEST_RAY_HEAD"
# Ray 2.60 turns token authentication on for a head when ~/.ray/auth_token exists; the job CLI
# only sends that token when told the mode explicitly.
CLIENT_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
# ``ray start`` gives its raylet a fixed 30 s to register; a busy machine can miss that once.
START_ATTEMPTS = 3


def ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")  # this interpreter's Ray, venv activated or not
    return str(beside) if beside.exists() else shutil.which("ray") or "ray"


CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def credentials_file_env(folder: Path, access_key: str, secret_key: str) -> dict[str, str]:
    """S3 credentials as a shared credentials file, the way a node without an instance profile gets them.

    Not as variables: Ray Tune copies AWS_* variables of the driver into every trial's runtime
    env, and Ray's runtime-env agent logs runtime envs in full.
    """
    path = folder / "credentials"
    path.write_text(f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n")
    path.chmod(0o600)
    return {"AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_DEFAULT_REGION": "us-east-1"}


class RayHead:
    """Start, use and stop one Ray head; ``env`` is what its processes (and so every job) inherit,
    without any AWS credential variable of this process."""

    def __init__(self, env: dict[str, str], num_cpus: int = 2):
        self.id = uuid.uuid4().hex[:8]
        self.temp_dir = Path(f"/tmp/rh-{self.id}")
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.num_cpus = num_cpus
        inherited = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
        # Jobs run `python` from the head's PATH: this interpreter's, as on a node where saerec is installed.
        path = os.pathsep.join([str(Path(sys.executable).parent), inherited.get("PATH", "")])
        self.env = {**inherited, **env, **CLIENT_ENV, MARKER: self.id, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "PATH": path}

    def start(self) -> None:
        ports = {"--port": self.gcs_port, "--dashboard-port": self.dashboard_port,
                 "--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(), "--metrics-export-port": free_port(),
                 "--runtime-env-agent-port": free_port(), "--node-manager-port": free_port(),
                 "--object-manager-port": free_port()}
        cmd = [ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--num-cpus={self.num_cpus}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats", *[f"{flag}={port}" for flag, port in ports.items()]]
        for _ in range(START_ATTEMPTS):
            result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
            if result.returncode == 0:
                break
            self.stop()
        else:
            raise RuntimeError(f"ray start failed {START_ATTEMPTS} times, last:\n{result.stderr[-2000:]}")
        deadline = time.time() + 120  # the dashboard answers (401 without Ray's auth token) once it is up
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray dashboard at {self.address} did not answer within 120 s")

    def processes(self) -> list[psutil.Process]:
        """Every live process this head started (they all inherit the marker variable)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get(MARKER) == self.id and proc.pid != os.getpid():
                    found.append(proc)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return found

    def _cli(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([ray_cli(), "job", *args[:1], "--address", self.address, *args[1:]],
                              env={**os.environ, **CLIENT_ENV}, capture_output=True, text=True, cwd=cwd,
                              timeout=timeout)

    def submit(self, *args: str, runtime_env: str = "runtime_env.yaml", cwd: Path | None = None,
               no_wait: bool = False, timeout: float = 1700) -> subprocess.CompletedProcess:
        """``ray job submit`` of ``args``: waits for the job and prints its output, unless ``no_wait``."""
        flags = ["--no-wait"] if no_wait else []
        return self._cli("submit", "--runtime-env", runtime_env, *flags, "--", *args, cwd=cwd, timeout=timeout)

    def status(self, job_id: str) -> tuple[str, str]:
        """(``ray job status`` output, logs so far) of a submitted job."""
        return self._cli("status", job_id).stdout, self._cli("logs", job_id).stdout

    def wait(self, job_id: str, timeout: float = 600) -> tuple[str, str]:
        """(final status, logs) of a submitted job once it stops running."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self._cli("status", job_id).stdout
            if any(word in status for word in ("SUCCEEDED", "FAILED", "STOPPED")):
                return self.status(job_id)
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still running after {timeout} s")

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(procs, timeout=5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(alive, timeout=15)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def log_files(self) -> list[Path]:
        return [p for p in self.temp_dir.rglob("*") if p.is_file() and "logs" in p.parts]


@dataclass(frozen=True)
class SubmittedRun:
    """A pipeline job submitted to a head: where it wrote, with which settings, and what it printed."""

    uri: str
    overrides: list[str]
    result: subprocess.CompletedProcess


def job_id(submitted: subprocess.CompletedProcess) -> str:
    """The id ``ray job submit`` printed for the job it submitted."""
    found = re.search(r"Job '(raysubmit_[A-Za-z0-9]+)' submitted", submitted.stdout + submitted.stderr)
    if found is None:
        raise ValueError(f"no job id in the output of ray job submit:\n{submitted.stdout[-2000:]}")
    return found.group(1)


def pipeline_args(uri: str, endpoint: str, overrides: list[str]) -> list[str]:
    args = ["python", "jobs/full_pipeline.py", "--config", "configs/demo.yaml",
            "--set", f"storage.uri={uri}", "--set", f"storage.endpoint_url={endpoint}"]
    for override in overrides:
        args += ["--set", override]
    return args


def submit_demo(head: RayHead, endpoint: str, bucket: str, overrides: list[str]) -> SubmittedRun:
    """Submit the demo job (tiny overrides) from the repository root, as the README tells users to."""
    uri = f"s3://{bucket}/cluster-{uuid.uuid4().hex[:8]}"
    repo = Path(__file__).resolve().parents[1]
    return SubmittedRun(uri, overrides, head.submit(*pipeline_args(uri, endpoint, overrides), cwd=repo))
