"""One job per run: a lease file ``{storage.uri}/{run.name}/_lock.json``.

Two jobs on one run would compute the same stages twice and delete each other's attempt folders as
"leftovers", so the job takes this lease before any stage runs and gives it back when it exits.
The lease names its holder (host, pid, start time, a random token) and a heartbeat that a daemon
thread rewrites every ``heartbeat_s``; a lease whose heartbeat is older than ``stale_after_s``, or
whose process no longer exists on this same host (same host name and PID namespace), is dead and
is taken over.

Taking the lease:
- local storage: an exclusive create (a complete temporary file hard-linked into place, which fails
  when the lease exists). A dead lease is first renamed aside, and only if it is still the one that
  was judged dead, so of two jobs taking over at once exactly one gets it.
- S3: pyarrow's S3 filesystem sends no conditional put (``If-None-Match``), so the job writes its
  lease (one PUT), waits ``settle_s`` and reads it back: the last writer wins, the others see a live
  holder. This is safe while a job's read-then-write of the lease takes less than ``settle_s``.
On both, each heartbeat first reads the lease back: a job that finds another token there has lost
the lease (it hung past ``stale_after_s``), and ``check()`` stops it before its next stage.
Clocks of the hosts sharing a run are assumed to agree within a few seconds (NTP).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import psutil

from saerec.storage import Store, StorageError, _clean

LOCK_FILE = "_lock.json"
WAIT_REPORT_S = 60.0
log = logging.getLogger(__name__)


class RunLockError(RuntimeError):
    """Another live job holds the run, or this job lost its lease; the message names the holder."""


@dataclass(frozen=True)
class LeaseTiming:
    """Seconds that govern the lease (the defaults suit real jobs; tests shorten them).

    A heartbeat may take up to one S3 request timeout (30 s) on a slow store, so a lease is called
    dead only after four missed heartbeats.
    """
    heartbeat_s: float = 15.0
    stale_after_s: float = 60.0
    settle_s: float = 5.0
    poll_s: float = 5.0


@dataclass(frozen=True)
class Lease:
    """Who holds a run: written as the lease file's JSON."""
    run: str
    token: str
    host: str
    pid_namespace: str
    pid: int
    pid_started: float
    started: float
    heartbeat: float

    @classmethod
    def parse(cls, data: bytes) -> "Lease | None":
        """The lease in ``data``, or None when it is not one (a corrupt or foreign file)."""
        try:
            fields = json.loads(data)
            return cls(run=str(fields["run"]), token=str(fields["token"]), host=str(fields["host"]),
                       pid_namespace=str(fields["pid_namespace"]), pid=int(fields["pid"]),
                       pid_started=float(fields["pid_started"]),
                       started=float(fields["started"]), heartbeat=float(fields["heartbeat"]))
        except (ValueError, TypeError, KeyError):
            return None

    def encode(self) -> bytes:
        readable = {"started_at": _utc(self.started), "heartbeat_at": _utc(self.heartbeat)}
        return json.dumps({**asdict(self), **readable}, indent=2, sort_keys=True).encode()

    def describe(self, now: float) -> str:
        return (f"host {self.host}, pid {self.pid}, started {_utc(self.started)}, last heartbeat "
                f"{_utc(self.heartbeat)} ({max(0, round(now - self.heartbeat))} s ago)")

    def dead_because(self, now: float, stale_after_s: float) -> str | None:
        """Why this lease's holder is dead, or None while it may be alive."""
        if self.host == socket.gethostname() and self.pid_namespace == _pid_namespace() \
                and not _process_alive(self.pid, self.pid_started):
            return f"its process {self.pid} no longer exists on this host"
        age = now - self.heartbeat
        if age > stale_after_s:
            return f"its heartbeat is {round(age)} s old (stale after {round(stale_after_s)} s)"
        return None


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _pid_namespace() -> str:
    """This process's PID namespace on Linux: a container that shares the host's name but not its
    processes must not call the host's jobs dead."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_alive(pid: int, started: float) -> bool:
    """Whether ``pid`` is the process that wrote the lease (not a later one that reuses the pid)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


class _LocalLeaseFile:
    """The lease on a local disk: exclusive create by hard link, atomic replace by rename."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as src:
                return src.read()
        except FileNotFoundError:
            return None

    def _staged(self, data: bytes) -> str:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        staged = f"{self.path}.{secrets.token_hex(8)}.tmp"
        with open(staged, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return staged

    def write(self, data: bytes) -> None:
        os.replace(self._staged(data), self.path)

    def delete(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _create(self, data: bytes) -> bool:
        staged = self._staged(data)
        try:
            os.link(staged, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(staged)

    def claim(self, data: bytes, seen: bytes | None, settle_s: float) -> bool:
        """Make ``data`` the lease if the lease is still ``seen`` (None: no lease); True if it is ours."""
        if seen is not None:
            aside = f"{self.path}.{secrets.token_hex(8)}.dead"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False
            with open(aside, "rb") as src:
                moved = src.read()
            if moved != seen:  # a live lease that another job wrote since we read: put it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            os.unlink(aside)
            if moved != seen:
                return False
        return self._create(data)


class _S3LeaseFile:
    """The lease on S3: whole-object PUTs; taken by writing, waiting and reading back."""

    def __init__(self, store: Store, path: str):
        self.fs = store.fs
        self.path = path

    def read(self) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path) as src:
                return src.read()
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass

    def claim(self, data: bytes, seen: bytes | None, settle_s: float) -> bool:
        self.write(data)
        time.sleep(settle_s)
        return self.read() == data


class RunLock:
    """The lease of one run on one store: ``acquire`` before any stage, ``release`` at exit."""

    def __init__(self, store: Store, run: str, timing: LeaseTiming = LeaseTiming()):
        self.store = store
        self.run = run
        self.timing = timing
        self.path = store.join(run, LOCK_FILE)
        self.uri = store.uri(self.path)
        self._file = _S3LeaseFile(store, self.path) if store.scheme == "s3" else _LocalLeaseFile(self.path)
        self._mine: Lease | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _io(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except OSError as exc:
            raise StorageError(f"cannot {what} the run lock {self.uri}: {_clean(exc)}") from exc

    def acquire(self, wait: bool = False) -> "RunLock":
        """Take the run's lease, taking over a dead one. A live holder raises RunLockError naming it,
        or, with ``wait``, is waited for with a line per minute."""
        began = last_report = time.time()
        reported = False
        while True:
            holder = self._try_take()
            if holder is None:
                break
            now = time.time()
            if not wait:
                raise RunLockError(
                    f"run {self.run!r} is locked by another job ({holder.describe(now)}; lease "
                    f"{self.uri}). Let it finish or stop it, or re-run with --wait-lock to wait for it")
            if not reported or now - last_report >= WAIT_REPORT_S:
                waited = f"waited {round((now - began) / 60)} min; " if reported else ""
                log.info(f"[lock] {waited}run {self.run!r} is locked by {holder.describe(now)}; waiting for it "
                         "(--wait-lock)")
                reported, last_report = True, now
            time.sleep(self.timing.poll_s)
        if reported:
            log.info(f"[lock] run {self.run!r} is free after {round(time.time() - began)} s; going on")
        self._beat = threading.Thread(target=self._heartbeat, name=f"saerec-lock-{self.run}", daemon=True)
        self._beat.start()
        return self

    def _try_take(self) -> Lease | None:
        """Take the lease if it is free or dead; otherwise return its live holder."""
        seen = self._io("read", self._file.read)
        now = time.time()
        holder = Lease.parse(seen) if seen is not None else None
        dead = None
        if seen is not None:
            dead = "its lease file is unreadable" if holder is None else \
                holder.dead_because(now, self.timing.stale_after_s)
            if dead is None:
                return holder
        me = psutil.Process()
        mine = Lease(run=self.run, token=secrets.token_hex(16), host=socket.gethostname(),
                     pid_namespace=_pid_namespace(), pid=me.pid, pid_started=me.create_time(), started=now,
                     heartbeat=now)
        # Ours before the claim, so that a release (Ctrl-C mid-claim) deletes it if it landed.
        self._mine = mine
        try:
            taken = self._io("write", lambda: self._file.claim(mine.encode(), seen, self.timing.settle_s))
        except BaseException:
            with contextlib.suppress(StorageError):
                self._delete_if(mine.token)
            raise
        if not taken:
            self._mine = None
            return self._try_take()
        if seen is not None:
            who = f"from {holder.describe(now)}" if holder is not None else f"at {self.uri}"
            log.warning(f"[lock] took over the lock of run {self.run!r} {who}: {dead}")
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.timing.heartbeat_s):
            mine = self._mine
            try:
                current = self._io("read", self._file.read)
                found = Lease.parse(current) if current is not None else None
                if mine is None or found is None or found.token != mine.token:
                    now = time.time()
                    self._lost = found.describe(now) if found is not None else "nobody (the lease file is gone)"
                    log.error(f"[lock] lost the lock of run {self.run!r} to {self._lost}")
                    return
                beat = replace(mine, heartbeat=time.time())
                self._io("write", lambda: self._file.write(beat.encode()))
                self._mine = beat
            except StorageError as exc:
                log.warning(f"[lock] could not refresh the heartbeat: {exc}")

    def check(self) -> None:
        """Raise RunLockError if the lease was lost (taken over while this job hung)."""
        if self._lost is not None:
            raise RunLockError(f"this job lost the lock of run {self.run!r} to {self._lost}; stopping so the "
                               "two jobs do not overwrite each other's outputs")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours; never raises (a lease left
        behind goes stale and is taken over)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        mine, self._mine = self._mine, None
        if mine is not None:
            try:
                self._delete_if(mine.token)
            except StorageError as exc:
                log.warning(f"[lock] could not release the run lock: {exc}; the next job takes it over once "
                            f"it is stale ({round(self.timing.stale_after_s)} s)")

    def _delete_if(self, token: str) -> None:
        current = self._io("read", self._file.read)
        found = Lease.parse(current) if current is not None else None
        if found is not None and found.token == token:
            self._io("delete", self._file.delete)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
