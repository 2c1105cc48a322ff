"""The stage contract and the runner that enforces it.

A stage is ``run(ctx) -> metrics``. It reads only published upstream outputs (``ctx.input``),
writes only into its fresh attempt folder (``ctx.output``), and is published by the runner,
which writes ``_manifest.json`` last. Same fingerprint (own config sections + seed + upstream
fingerprints) as the published manifest means the stage is skipped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import posixpath
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import pyarrow as pa
from tqdm.auto import tqdm

from saerec.config import Config, result_settings
from saerec.storage import MANIFEST, Store, StorageError

T = TypeVar("T")
ATTEMPT_PREFIX = "attempt-"
TRAIN_DIR = "_train"


class StageError(RuntimeError):
    """A stage cannot run (missing upstream output, bad input); the message says which and why."""


@dataclass(frozen=True)
class Stage:
    """A pipeline step: its name, what it reads, which config sections it sees, and its body.

    ``only_keys`` narrows a section's part of the fingerprint to the keys the stage reads from it
    (the sweep reads two keys of ``evaluate``; the steering settings must not re-run it).
    """
    name: str
    run: Callable[["StageContext"], dict[str, Any]]
    inputs: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    only_keys: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)


class StageFiles:
    """Files of one attempt folder of one stage, addressed by relative name."""

    def __init__(self, store: Store, directory: str):
        self.store = store
        self.dir = directory

    def path(self, name: str) -> str:
        return posixpath.join(self.dir, name)

    def uri(self, name: str = "") -> str:
        return self.store.uri(self.path(name) if name else self.dir)

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return self.store.read_table(self.path(name), columns)

    def read_json(self, name: str) -> Any:
        return self.store.read_json(self.path(name))

    def read_bytes(self, name: str) -> bytes:
        return self.store.read_bytes(self.path(name))

    def write_table(self, name: str, table: pa.Table) -> None:
        self.store.write_table(self.path(name), table)

    def write_json(self, name: str, obj: Any) -> None:
        self.store.write_json(self.path(name), obj)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.store.write_bytes(self.path(name), data)

    def read_tensors(self, name: str) -> dict[str, Any]:
        from safetensors.torch import load
        return load(self.read_bytes(name))

    def write_tensors(self, name: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
        from safetensors.torch import save
        self.write_bytes(name, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


class StageInput(StageFiles):
    """A published upstream stage: its manifest and its output folder."""

    def __init__(self, store: Store, manifest: dict[str, Any]):
        super().__init__(store, manifest["output_dir"])
        self.manifest = manifest

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})


@dataclass
class StageContext:
    """Everything a stage may touch: its config sections, seed, published inputs, and output folder."""
    stage: str
    run_name: str
    seed: int
    sections: dict[str, Any]
    store: Store
    output: StageFiles
    inputs: dict[str, StageInput]
    fingerprint: str
    ray_address: str | None = None
    extra_manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> Any:
        """The stage's own config section (the first one it declares)."""
        return next(iter(self.sections.values()))

    def input(self, stage: str) -> StageInput:
        if stage not in self.inputs:
            raise StageError(f"stage {self.stage} did not declare {stage} as an input")
        return self.inputs[stage]

    def train_storage(self) -> tuple[str, Any]:
        """``(storage_path, storage_filesystem)`` for Ray Train/Tune checkpoints of this stage.

        The folder is keyed by fingerprint, not attempt, so a killed run resumes from its
        checkpoints when the same stage with the same inputs runs again.
        """
        path = self.store.join(self.run_name, self.stage, TRAIN_DIR, self.fingerprint[:16])
        return path, self.store.fs

    def progress(self, items: Iterable[T], total: int | None = None, desc: str | None = None) -> Iterator[T]:
        """A progress bar for long loops; the finished bar stays, so a log file shows how it ended
        and the next line starts on a line of its own. Logs that are not a terminal get an update
        every 30 s instead of every 2 s."""
        interval = 2.0 if sys.stderr.isatty() else 30.0
        return iter(tqdm(items, total=total, desc=desc or self.stage, mininterval=interval))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("saerec", "ray", "torch", "transformers", "pyarrow"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _fingerprinted(stage: Stage, section: str, settings: dict[str, Any]) -> dict[str, Any]:
    keys = stage.only_keys.get(section)
    return settings if keys is None else {k: settings[k] for k in keys}


def fingerprint(stage: Stage, cfg: Config, upstream: dict[str, dict[str, Any]]) -> str:
    """Hash of what decides a stage's outputs: seed, its sections' result keys and its inputs."""
    payload = {
        "stage": stage.name,
        "seed": cfg.seed,
        "sections": {s: _fingerprinted(stage, s, result_settings(cfg.section(s))) for s in stage.sections},
        "inputs": {name: m["fingerprint"] for name, m in sorted(upstream.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Runner:
    """Runs stages in order against one store, skipping those already published with the same fingerprint."""

    def __init__(self, cfg: Config, store: Store, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.store = store
        self.log = log

    def stage_dir(self, stage: str) -> str:
        return self.store.join(self.cfg.run.name, stage)

    def manifest(self, stage: str) -> dict[str, Any] | None:
        path = posixpath.join(self.stage_dir(stage), MANIFEST)
        if not self.store.exists(path):
            return None
        return self.store.read_json(path)

    def _upstream(self, stage: Stage) -> dict[str, dict[str, Any]]:
        found = {}
        for name in stage.inputs:
            manifest = self.manifest(name)
            if manifest is None:
                raise StageError(f"stage {stage.name} needs the published output of stage {name} "
                                 f"under {self.store.uri(self.stage_dir(name))}; run {name} first")
            found[name] = manifest
        return found

    def _clean_leftovers(self, stage: str, keep: str | None) -> int:
        """Remove attempt folders no manifest points at: what killed runs left behind."""
        removed = 0
        for name in self.store.list_dirs(self.stage_dir(stage)):
            if name.startswith(ATTEMPT_PREFIX) and name != keep:
                self.store.delete_dir(posixpath.join(self.stage_dir(stage), name))
                removed += 1
        return removed

    def run_stage(self, stage: Stage, force: bool = False) -> dict[str, Any]:
        """Run (or skip) one stage; returns its published manifest, with ``skipped`` set when it was."""
        upstream = self._upstream(stage)
        fp = fingerprint(stage, self.cfg, upstream)
        published = self.manifest(stage.name)
        if published is not None and published.get("fingerprint") == fp and not force:
            return {**published, "skipped": True}
        self.log(f"[{stage.name}] running...")
        keep = posixpath.basename(published["output_dir"]) if published else None
        if self._clean_leftovers(stage.name, keep):
            self.log(f"[{stage.name}] removed leftovers of an unfinished earlier run")
        attempt = f"{ATTEMPT_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        out_dir = posixpath.join(self.stage_dir(stage.name), attempt)
        ctx = StageContext(
            stage=stage.name, run_name=self.cfg.run.name, seed=self.cfg.seed,
            sections={s: self.cfg.section(s) for s in stage.sections}, store=self.store,
            output=StageFiles(self.store, out_dir),
            inputs={n: StageInput(self.store, m) for n, m in upstream.items()},
            fingerprint=fp, ray_address=self.cfg.ray.address)
        start = time.time()
        try:
            metrics = stage.run(ctx) or {}
        except BaseException:
            self._discard(out_dir)
            raise
        manifest = {
            "stage": stage.name,
            "run": self.cfg.run.name,
            "fingerprint": fp,
            "output_dir": out_dir,
            "inputs": {n: {"fingerprint": m["fingerprint"], "output_dir": m["output_dir"]}
                       for n, m in upstream.items()},
            "config": {s: dataclasses.asdict(self.cfg.section(s)) for s in stage.sections},
            "seed": self.cfg.seed,
            "outputs": [posixpath.relpath(p, out_dir) for p in self.store.list_files(out_dir)],
            "metrics": metrics,
            "versions": _versions(),
            "wall_time_s": round(time.time() - start, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **ctx.extra_manifest,
        }
        self.store.write_json(posixpath.join(self.stage_dir(stage.name), MANIFEST), manifest)
        if published is not None:
            self._discard(published["output_dir"])
        return manifest

    def _discard(self, directory: str) -> None:
        try:
            self.store.delete_dir(directory)
        except StorageError as exc:
            self.log(f"could not remove {self.store.uri(directory)}: {exc}")


def summarise(metrics: dict[str, Any], limit: int = 8) -> str:
    """A one-line view of a stage's scalar metrics for the console."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)) and len(str(value)) < 40:
            parts.append(f"{key}={value}")
        if len(parts) == limit:
            break
    return ", ".join(parts)

