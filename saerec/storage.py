"""Object storage for stage outputs: a local folder, ``file://`` or ``s3://bucket/prefix``.

One pyarrow filesystem serves pyarrow, Ray Data and Ray Train alike. A stage writes into a fresh
``attempt-*`` folder and publishes by writing ``_manifest.json`` last, a single PUT that names
that folder (relative to the manifest, so runs can be copied or moved); readers only ever follow
a manifest, so a half-written attempt is invisible.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"


class StorageError(RuntimeError):
    """Storage is unreachable, refuses us, or a path is missing; the message names the URI."""


def _s3_filesystem(endpoint_url: str | None) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    }
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        if not parsed.scheme or not parsed.netloc:
            raise StorageError(f"storage.endpoint_url {endpoint_url!r} must look like http://host:port")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


class Store:
    """The run's storage root and the file operations stages need, all on one pyarrow filesystem."""

    def __init__(self, uri: str, endpoint_url: str | None = None):
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise StorageError(f"storage.uri {uri!r} has no bucket; expected s3://bucket/prefix")
            self.fs: pafs.FileSystem = _s3_filesystem(endpoint_url)
            self.root = posixpath.join(parsed.netloc, parsed.path.strip("/")).rstrip("/")
            self.scheme = "s3"
        elif parsed.scheme in ("", "file"):
            local = parsed.path if parsed.scheme == "file" else uri
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(local).expanduser().resolve())
            self.scheme = "file"
        else:
            raise StorageError(f"storage.uri {uri!r}: unsupported scheme {parsed.scheme!r}; "
                               "use a local folder, file:// or s3://")
        self.endpoint_url = endpoint_url

    def join(self, *parts: str) -> str:
        """A filesystem path (no scheme) under the root."""
        return posixpath.join(self.root, *parts)

    def uri(self, path: str) -> str:
        """The user-facing URI of a filesystem path, for messages and manifests."""
        return f"s3://{path}" if self.scheme == "s3" else path

    def check(self) -> None:
        """Fail early, naming the URI, when storage is unreachable, the bucket is missing or we are refused."""
        try:
            if self.scheme == "s3":
                bucket = self.root.split("/", 1)[0]
                info = self.fs.get_file_info(bucket)
                if info.type != pafs.FileType.Directory:
                    raise StorageError(f"bucket {bucket!r} of s3://{self.root} does not exist")
            self.fs.create_dir(self.root, recursive=True)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"storage {self.uri(self.root)} is not usable: {_clean(exc)}") from exc

    def exists(self, path: str) -> bool:
        return self._call(path, lambda: self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def list_files(self, path: str) -> list[str]:
        """Every file below ``path``, recursively, sorted."""
        def listing() -> list[str]:
            selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
            return sorted(i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)
        return self._call(path, listing)

    def list_dirs(self, path: str) -> list[str]:
        def listing() -> list[str]:
            selector = pafs.FileSelector(path, recursive=False, allow_not_found=True)
            return sorted(i.base_name for i in self.fs.get_file_info(selector)
                          if i.type == pafs.FileType.Directory)
        return self._call(path, listing)

    def delete_dir(self, path: str) -> None:
        def delete() -> None:
            if self.fs.get_file_info(path).type == pafs.FileType.Directory:
                self.fs.delete_dir(path)
        self._call(path, delete)

    def write_bytes(self, path: str, data: bytes) -> None:
        def write() -> None:
            self.fs.create_dir(posixpath.dirname(path), recursive=True)
            with self.fs.open_output_stream(path) as out:
                out.write(data)
        self._call(path, write)

    def read_bytes(self, path: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(path) as src:
                return src.read()
        return self._call(path, read)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def write_table(self, path: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(path, buf.getvalue())

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file, or every Parquet file below a folder (sharded outputs)."""
        return self._call(path, lambda: pq.read_table(path, filesystem=self.fs, columns=columns))

    def _call(self, path: str, fn: Any) -> Any:
        try:
            return fn()
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri(path)} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"storage operation on {self.uri(path)} failed: {_clean(exc)}") from exc


def _clean(exc: BaseException) -> str:
    """An error message with any credential-looking material removed."""
    text = str(exc)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text.splitlines()[0] if text else type(exc).__name__
