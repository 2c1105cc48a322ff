"""Object storage for stage outputs: a local folder, ``file://`` or ``s3://bucket/prefix``.

One pyarrow filesystem serves pyarrow, Ray Data and Ray Train alike. A stage writes into a fresh
``attempt-*`` folder and publishes by writing ``_manifest.json`` last, a single PUT that names
that folder (relative to the manifest, so runs can be copied or moved); readers only ever follow
a manifest, so a half-written attempt is invisible.

Every file appears whole or not at all: on S3 an object exists only once its upload completed, and
on a local disk a file is written beside its place under a temporary name and renamed into it. A
store never reaches outside its root: ``join`` refuses a path that would leave it.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator
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
        if not uri.strip():
            raise StorageError("storage.uri is empty; give a local folder, file:///absolute/path or s3://bucket/prefix")
        if parsed.scheme in ("s3", "file") and (parsed.params or parsed.query or parsed.fragment):
            raise StorageError(f"storage.uri {uri!r} has a ';', '?' or '#' part, which would be dropped; "
                               "give the folder or prefix alone")
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise StorageError(f"storage.uri {uri!r} has no bucket; expected s3://bucket/prefix")
            if any(part in (".", "..") for part in parsed.path.split("/")):
                raise StorageError(f"storage.uri {uri!r}: an S3 prefix cannot hold '.' or '..' parts "
                                   "(S3 keys are not resolved like folders)")
            self.fs: pafs.FileSystem = _s3_filesystem(endpoint_url)
            self.root = posixpath.join(parsed.netloc, parsed.path.strip("/")).rstrip("/")
            self.scheme = "s3"
        elif parsed.scheme in ("", "file"):
            if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise StorageError(f"storage.uri {uri!r} names the host {parsed.netloc!r}, and a file:// URI is "
                                   f"a path on this machine: write file:///{parsed.netloc}{parsed.path} for an "
                                   f"absolute path or {parsed.netloc}{parsed.path} for one relative to the "
                                   "working folder")
            local = parsed.path if parsed.scheme == "file" else uri
            self.fs = pafs.LocalFileSystem()
            self.root = str(Path(local).expanduser().resolve())
            self.scheme = "file"
        else:
            raise StorageError(f"storage.uri {uri!r}: unsupported scheme {parsed.scheme!r}; "
                               "use a local folder, file:// or s3://")
        self.endpoint_url = endpoint_url

    def join(self, *parts: str) -> str:
        """A filesystem path (no scheme) under the root; a path that would leave the root is refused."""
        path = posixpath.normpath(posixpath.join(self.root, *parts))
        if not _below(self.root, path, or_equal=True):
            raise StorageError(f"refusing the path {posixpath.join(*parts)!r}: it leaves the storage root "
                               f"{self.uri(self.root)}")
        return path

    def contains(self, parent: str, path: str) -> bool:
        """Whether ``path`` is strictly below ``parent``, symbolic links resolved (on S3 there are none)."""
        if self.scheme == "file":
            parent, path = os.path.realpath(parent), os.path.realpath(path)
        return _below(posixpath.normpath(parent), posixpath.normpath(path))

    def uri(self, path: str) -> str:
        """The user-facing URI of a filesystem path, for messages and manifests."""
        return display_uri(self.fs, path)

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
        return sorted(self.file_sizes(path))

    def file_sizes(self, path: str) -> dict[str, int]:
        """Every file below ``path``, recursively, with its size in bytes."""
        def listing() -> dict[str, int]:
            selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
            return {i.path: i.size for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File}
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
        """Write a whole file atomically: a reader (or a later run) sees the old file or the new one, never part."""
        def write() -> None:
            self.fs.create_dir(posixpath.dirname(path), recursive=True)
            if self.scheme == "s3":  # one upload; the object appears only once it is complete
                with self.fs.open_output_stream(path) as out:
                    out.write(data)
                return
            folder, name = posixpath.split(path)
            temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")  # readers skip dot files
            try:
                with self.fs.open_output_stream(temporary) as out:
                    out.write(data)
                self.fs.move(temporary, path)
            except BaseException:
                with suppress(OSError):
                    os.remove(temporary)
                raise
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
        """One Parquet file, or every Parquet file below a folder (sharded outputs).

        A single file is fetched first and parsed after, so a damaged file raises the parser's
        error (which a stage's reader names with its file and stage), not a StorageError.
        """
        if self._call(path, lambda: self.fs.get_file_info(path)).type == pafs.FileType.File:
            return pq.read_table(pa.BufferReader(self.read_bytes(path)), columns=columns)
        return self._call(path, lambda: pq.read_table(path, filesystem=self.fs, columns=columns))

    def _call(self, path: str, fn: Any) -> Any:
        with storage_errors(self.uri(path)):
            return fn()


def display_uri(filesystem: pafs.FileSystem, path: str) -> str:
    """The user-facing URI of a path on a pyarrow filesystem (``s3://`` added on S3)."""
    return f"s3://{path}" if filesystem.type_name == "s3" else path


@contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn an OSError on ``uri`` into a StorageError naming it: a missing path, or storage that is
    unreachable, refuses us, is read-only or full. An OSError raised in a Ray task (a Ray Data
    write) arrives wrapped by Ray; its message is the task's, so the original error's is used."""
    try:
        yield
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist") from exc
    except OSError as exc:
        cause = getattr(exc, "cause", None)
        reason = _clean(cause if isinstance(cause, OSError) else exc)
        raise StorageError(f"storage operation on {uri} failed: {reason}") from exc


def _below(parent: str, path: str, or_equal: bool = False) -> bool:
    """Whether the normalised ``path`` is ``parent`` itself (with ``or_equal``) or inside it."""
    return (or_equal and path == parent) or path.startswith(parent.rstrip("/") + "/")


def _clean(exc: BaseException) -> str:
    """An error message with any credential-looking material removed."""
    text = str(exc)
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(var)
        if secret:
            text = text.replace(secret, "***")
    return text.splitlines()[0] if text else type(exc).__name__
