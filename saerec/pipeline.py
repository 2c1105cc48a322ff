"""The stage contract and the runner that enforces it.

A stage is ``run(ctx) -> metrics``. It reads only published upstream outputs (``ctx.input``),
writes only into its fresh attempt folder (``ctx.output``), and is published by the runner,
which writes ``_manifest.json`` last. Same fingerprint (own config sections + seed + upstream
fingerprints + the stage's code, see ``stage_code``) as the published manifest means the stage is skipped.

A manifest holds no absolute location: it names its attempt folder relative to its own stage
folder (``"attempt": "attempt-..."``) and its inputs by stage name and fingerprint. Every path is
resolved against the storage root and run name the job was given, so a run folder or S3 prefix
that is copied or moved stays valid, and a stage only ever deletes inside its own stage folder.

The runner writes a marker (``_saerec_attempt.json``) into each attempt folder it creates, and
removes an attempt folder only when it carries that marker (or the stage's manifest named it) and
lies inside the stage folder with links resolved. A manifest records each output's size, and a
stage checks its inputs' sizes before it starts, so a file cut short after publishing is named
with the stage to re-run instead of failing somewhere inside a reader.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import posixpath
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import pyarrow as pa
from safetensors import SafetensorError
from tqdm.auto import tqdm

from saerec.config import Config, result_settings
from saerec.storage import MANIFEST, Store, StorageError

T = TypeVar("T")
log = logging.getLogger(__name__)
ATTEMPT_PREFIX = "attempt-"
ATTEMPT_MARKER = "_saerec_attempt.json"
TRAIN_DIR = "_train"
# What a reader raises on a file that is not what it should be (cut short, overwritten, not the format).
UNREADABLE = (ValueError, OSError, pa.ArrowException, SafetensorError)


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

    @contextmanager
    def reading(self, name: str) -> Iterator[None]:
        """Parse a file of this folder: one that cannot be parsed is a StageError naming it (``unreadable``)."""
        try:
            yield
        except (StorageError, StageError):
            raise
        except UNREADABLE as exc:
            raise self.unreadable(name, exc) from exc

    def unreadable(self, name: str, exc: BaseException) -> StageError:
        return StageError(f"cannot read {self.uri(name)}: {_first_line(exc)}")

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        with self.reading(name):
            return self.store.read_table(self.path(name), columns)

    def read_json(self, name: str) -> Any:
        with self.reading(name):
            return self.store.read_json(self.path(name))

    def read_bytes(self, name: str) -> bytes:
        return self.store.read_bytes(self.path(name))

    def write_table(self, name: str, table: pa.Table) -> None:
        self.store.write_table(self.path(name), table)

    def write_json(self, name: str, obj: Any) -> None:
        self.store.write_json(self.path(name), obj)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.store.write_bytes(self.path(name), data)


class StageInput(StageFiles):
    """A published upstream stage: its manifest and its attempt folder.

    ``manifest`` is one the runner has read (``Runner.manifest``, ``Runner.run_stage``): its
    ``output_dir`` is where the attempt is under the current storage root, added on reading and
    never stored. A manifest read straight from storage is resolved by its run, stage and attempt.
    """

    def __init__(self, store: Store, manifest: dict[str, Any]):
        if "attempt" not in manifest:
            raise StageError(f"the manifest of stage {manifest.get('stage')!r} of run {manifest.get('run')!r} "
                             "was not read by this version's runner (no 'attempt'); re-run that stage with "
                             f"--stages {manifest.get('stage')} --force")
        directory = manifest.get("output_dir") or store.join(manifest["run"], manifest["stage"], manifest["attempt"])
        super().__init__(store, directory)
        self.manifest = manifest

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    def unreadable(self, name: str, exc: BaseException) -> StageError:
        """A published input that cannot be read: the fix is to re-run the stage that wrote it."""
        stage = self.manifest.get("stage")
        return StageError(f"cannot read {self.uri(name)}, an output of stage {stage}: {_first_line(exc)}; the "
                          "file is damaged (cut short or overwritten): re-run that stage with "
                          f"--stages {stage} --force")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    # The runner running this stage: a stage that studies variants of its upstream (the sweep) runs
    # them through ``runner.derived(...)``. None where a stage is run outside a Runner.
    runner: Runner | None = field(default=None, repr=False)

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


# Modules that run or record a stage without deciding what it computes (the runner, storage, config
# parsing, logging, Ray start-up): editing them re-runs nothing. Config *values* are fingerprinted.
NOT_STAGE_CODE = frozenset({"saerec.pipeline", "saerec.storage", "saerec.config", "saerec.logs", "saerec.runtime"})
# Covered, but their imports are not followed: the storage layout, and ``saerec.restore``, which
# imports the model classes it rebuilds from published files; a stage that computes with a model
# imports it itself, and one that only reads a published model re-runs when the stage that trained
# it does (its input fingerprint changes).
LAYOUT_MODULES = frozenset({"saerec.artifacts", "saerec.restore"})


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` (``a/b.py`` or ``a/b/__init__.py``), found without importing it."""
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return None
    if spec.submodule_search_locations is None:
        return None if rest else Path(spec.origin)
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for found in (base.parent / f"{base.name}.py", base / "__init__.py"):
        if found.is_file():
            return found
    return None


@functools.lru_cache(maxsize=None)
def _imported(name: str, source: bytes, is_package: bool) -> tuple[frozenset[str], frozenset[str]]:
    """Every module name ``source`` imports anywhere (lazy imports too; ``from a import b`` gives
    ``a`` and ``a.b``, dropped later when ``a.b`` is an attribute), and its string constants."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    strings: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return frozenset(found), frozenset(strings)


def stage_code(stage: Stage) -> dict[str, str]:
    """What a stage's code fingerprint covers, as ``{name: sha256 of its bytes}``.

    The rule: the module defining ``stage.run`` and, transitively, every module of its own top
    package or of ``saerec`` that it imports statically (``import``/``from ... import`` anywhere in
    the source), except ``NOT_STAGE_CODE`` and the imports of ``LAYOUT_MODULES``; plus every file in
    a non-package subfolder beside such a module whose source names that folder in a string (the
    prompt templates that ``saerec.intents.prompts`` reads from ``templates/``). Dynamic imports
    (``importlib``) are not followed: the sweep runs other stages through the runner, whose own
    fingerprints cover them.
    Names are module names and folder-relative paths, and hashes are of file contents, so the same
    code gives the same fingerprint on every machine.
    """
    root = getattr(stage.run, "__module__", None)
    if not root:
        return {}
    tops = {root.split(".")[0], "saerec"}
    covered: dict[str, str] = {}
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_STAGE_CODE:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        source = path.read_bytes()
        covered[name] = hashlib.sha256(source).hexdigest()
        imports, strings = _imported(name, source, path.name == "__init__.py")
        if name not in LAYOUT_MODULES:
            todo += [m for m in imports if m.split(".")[0] in tops]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for folder in sorted(path.parent.iterdir()):
            if (folder.is_dir() and not (folder / "__init__.py").exists()
                    and any(t == folder.name or t.startswith(f"{folder.name}/") for t in strings)):
                for data in sorted(f for f in folder.rglob("*") if f.is_file() and "__pycache__" not in f.parts):
                    key = f"{package}:{data.relative_to(path.parent).as_posix()}"
                    covered[key] = hashlib.sha256(data.read_bytes()).hexdigest()
    return dict(sorted(covered.items()))


def fingerprint(stage: Stage, cfg: Config, upstream: dict[str, dict[str, Any]]) -> str:
    """Hash of what decides a stage's outputs: seed, its sections' result keys, its inputs and its
    code (``stage_code``): editing that code re-runs the stage and, through their inputs, every
    stage downstream; editing other code re-runs nothing."""
    payload = {
        "stage": stage.name,
        "code": stage_code(stage),
        "seed": cfg.seed,
        "sections": {s: _fingerprinted(stage, s, result_settings(cfg.section(s))) for s in stage.sections},
        "inputs": {name: m["fingerprint"] for name, m in sorted(upstream.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Runner:
    """Runs stages in order against one store, skipping those already published with the same fingerprint.

    Everything is found under ``store`` + ``cfg.run.name``: a manifest is read from its stage
    folder and its attempt is looked up beside it, whatever root it was written under.
    """

    def __init__(self, cfg: Config, store: Store, base: Runner | None = None,
                 stages: Mapping[str, Stage] | None = None):
        self.cfg = cfg
        self.store = store
        self.base = base  # the run this one is derived from (``derived``), or None
        self.stages = stages  # the stages ``run_upstream`` finds by name; None: the job's (saerec.stages)
        self._reused: dict[str, dict[str, Any]] = {}  # stage -> the base run's manifest taken in place of a run
        self._damaged_manifests: set[str] = set()  # said once each

    def stage(self, name: str) -> Stage:
        """The stage called ``name`` among this runner's stages."""
        if self.stages is None:
            from saerec.stages import load_stage  # the job's stages (their modules import this one)

            return load_stage(name)
        if name not in self.stages:
            raise StageError(f"unknown stage {name!r}; stages are: {', '.join(self.stages)}")
        return self.stages[name]

    def derived(self, run_name: str, **sections: Any) -> Runner:
        """A runner for a variant of this run: this config with ``sections`` replaced (e.g. ``judge=...``),
        as run ``run_name`` in the same store.

        It takes this run's published stage wherever that stage's fingerprint is the one the variant
        would produce (its manifest then says ``reused_from``; another judge re-runs the judge and what
        reads it only), and runs and publishes the rest under ``run_name``. This run is never written.
        """
        cfg = dataclasses.replace(self.cfg, run=dataclasses.replace(self.cfg.run, name=run_name), **sections)
        return Runner(cfg, self.store, base=self, stages=self.stages)

    def run_upstream(self, stage: str) -> dict[str, dict[str, Any]]:
        """Run (or skip, or reuse) every stage that ``stage`` reads, directly or not, each after its own
        inputs; returns each one's manifest by stage name, in the order they ran."""
        order: list[str] = []

        def visit(name: str) -> None:
            for needed in self.stage(name).inputs:
                if needed not in order:
                    visit(needed)
                    order.append(needed)

        visit(stage)
        return {name: self.run_stage(self.stage(name)) for name in order}

    def stage_dir(self, stage: str) -> str:
        return self.store.join(self.cfg.run.name, stage)

    def _read_manifest(self, stage: str) -> dict[str, Any] | None:
        """The stored manifest, or None when there is none or it cannot be read: a damaged manifest
        (cut short by a full disk, say) is said, and the stage is taken as not published, so the
        next run re-runs it and replaces the manifest."""
        path = posixpath.join(self.stage_dir(stage), MANIFEST)
        if not self.store.exists(path):
            return None
        try:
            manifest = self.store.read_json(path)
        except ValueError as exc:
            problem = _first_line(exc)
        else:
            if isinstance(manifest, dict) and isinstance(manifest.get("fingerprint"), str):
                return manifest
            problem = "not a saerec manifest (no fingerprint)"
        if path not in self._damaged_manifests:
            self._damaged_manifests.add(path)
            log.warning(f"{self.store.uri(path)} cannot be read ({problem}); stage {stage} is taken as not published "
                        "and runs again")
        return None

    def _attempt(self, stage: str, manifest: dict[str, Any]) -> str | None:
        """The manifest's attempt folder name if that folder is in this run's stage folder.

        Manifests written before runs were relocatable hold an absolute ``output_dir`` instead;
        its last part is looked up here, never the absolute location (it may be another run's).
        """
        name = manifest.get("attempt")
        if name is None and isinstance(manifest.get("output_dir"), str):
            name = posixpath.basename(manifest["output_dir"].rstrip("/"))
        if not isinstance(name, str) or "/" in name or not name.startswith(ATTEMPT_PREFIX):
            return None
        # A stage that published no files has no folder to find (object stores have no empty folders).
        if not manifest.get("outputs"):
            return name
        return name if self.store.exists(posixpath.join(self.stage_dir(stage), name)) else None

    def _unresolvable(self, stage: str, manifest: dict[str, Any]) -> StageError:
        named = manifest.get("attempt") or manifest.get("output_dir")
        return StageError(
            f"the published manifest {self.store.uri(posixpath.join(self.stage_dir(stage), MANIFEST))} names "
            f"the attempt {named!r}, which is not in {self.store.uri(self.stage_dir(stage))} (a manifest from "
            f"an older saerec, or a partly copied run); re-run the stage with --stages {stage} --force")

    def _resolved(self, stage: str, manifest: dict[str, Any]) -> dict[str, Any]:
        attempt = self._attempt(stage, manifest)
        if attempt is None:
            raise self._unresolvable(stage, manifest)
        return {**manifest, "attempt": attempt, "output_dir": posixpath.join(self.stage_dir(stage), attempt)}

    def manifest(self, stage: str) -> dict[str, Any] | None:
        """The stage's published manifest with ``output_dir`` resolved under this store and run, or None.

        Raises StageError when the manifest names an attempt folder that is not beside it. In a
        derived run, a stage taken from the base run gives the base run's manifest.
        """
        if stage in self._reused:
            return self._reused[stage]
        found = self._read_manifest(stage)
        return None if found is None else self._resolved(stage, found)

    def _upstream(self, stage: Stage) -> dict[str, dict[str, Any]]:
        found = {}
        for name in stage.inputs:
            manifest = self.manifest(name)
            if manifest is None:
                raise StageError(f"stage {stage.name} needs the published output of stage {name} "
                                 f"under {self.store.uri(self.stage_dir(name))}; run {name} first")
            found[name] = manifest
        return found

    def is_published(self, stage: Stage) -> bool:
        """Whether ``run_stage(stage)`` would skip it: published, same fingerprint, attempt in place."""
        try:
            upstream = self._upstream(stage)
        except StageError:
            return False
        published = self._read_manifest(stage.name)
        return (published is not None and published.get("fingerprint") == fingerprint(stage, self.cfg, upstream)
                and self._attempt(stage.name, published) is not None)

    def _check_outputs(self, stage: str, manifest: dict[str, Any]) -> None:
        """Stop before reading a published output that is missing or not the size its manifest recorded.

        Manifests written before sizes were recorded are not checked; their readers still name a bad file.
        """
        sizes = manifest.get("output_sizes")
        if not isinstance(sizes, dict):
            return
        found = self.store.file_sizes(manifest["output_dir"])
        for name, size in sorted(sizes.items()):
            path = posixpath.join(manifest["output_dir"], name)
            actual = found.get(path)
            if actual != size:
                state = "is missing" if actual is None else f"has {actual} bytes where its manifest recorded {size}"
                raise StageError(f"{self.store.uri(path)}, an output of stage {stage}, {state}: it was cut short "
                                 f"or changed after it was published; re-run that stage with --stages {stage} --force")

    def _clean_leftovers(self, stage: str, keep: str | None) -> int:
        """Remove attempt folders no manifest points at: what killed runs left behind."""
        removed = 0
        for name in self.store.list_dirs(self.stage_dir(stage)):
            if name.startswith(ATTEMPT_PREFIX) and name != keep and self._discard(stage, name):
                removed += 1
        return removed

    def run_stage(self, stage: Stage, force: bool = False) -> dict[str, Any]:
        """Run (or skip) one stage; returns its published manifest, with ``skipped`` set when it was."""
        upstream = self._upstream(stage)
        fp = fingerprint(stage, self.cfg, upstream)
        if self.base is not None and not force:
            base = self.base.manifest(stage.name)
            if base is not None and base.get("fingerprint") == fp:
                self._reused[stage.name] = base
                return {**base, "skipped": True, "reused_from": self.base.cfg.run.name}
        published = self._read_manifest(stage.name)
        keep = self._attempt(stage.name, published) if published is not None else None
        if published is not None and published.get("fingerprint") == fp and not force:
            if keep is None:
                raise self._unresolvable(stage.name, published)
            return {**published, "attempt": keep, "output_dir": posixpath.join(self.stage_dir(stage.name), keep),
                    "skipped": True}
        for name, manifest in upstream.items():
            self._check_outputs(name, manifest)
        log.info(f"[{stage.name}] running...")
        if self._clean_leftovers(stage.name, keep):
            log.info(f"[{stage.name}] removed leftovers of an unfinished earlier run")
        attempt = f"{ATTEMPT_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        out_dir = posixpath.join(self.stage_dir(stage.name), attempt)
        self.store.write_json(posixpath.join(out_dir, ATTEMPT_MARKER), {
            "stage": stage.name, "run": self.cfg.run.name, "attempt": attempt, "host": socket.gethostname(),
            "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        ctx = StageContext(
            stage=stage.name, run_name=self.cfg.run.name, seed=self.cfg.seed,
            sections={s: self.cfg.section(s) for s in stage.sections}, store=self.store,
            output=StageFiles(self.store, out_dir),
            inputs={n: StageInput(self.store, m) for n, m in upstream.items()},
            fingerprint=fp, runner=self)
        start = time.time()
        try:
            metrics = stage.run(ctx) or {}
        except BaseException:
            self._discard(stage.name, attempt)
            raise
        sizes = {posixpath.relpath(p, out_dir): n for p, n in self.store.file_sizes(out_dir).items()}
        sizes.pop(ATTEMPT_MARKER, None)
        manifest = {
            "stage": stage.name,
            "run": self.cfg.run.name,
            "fingerprint": fp,
            "attempt": attempt,
            "inputs": {n: {"fingerprint": m["fingerprint"], "run": m.get("run"), "attempt": m["attempt"]}
                       for n, m in upstream.items()},
            "config": {s: dataclasses.asdict(self.cfg.section(s)) for s in stage.sections},
            "seed": self.cfg.seed,
            "outputs": sorted(sizes),
            "output_sizes": sizes,
            "metrics": metrics,
            "versions": _versions(),
            "wall_time_s": round(time.time() - start, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.store.write_json(posixpath.join(self.stage_dir(stage.name), MANIFEST), manifest)
        if keep is not None:
            self._discard(stage.name, keep, published=True)
        return {**manifest, "output_dir": out_dir}

    def _discard(self, stage: str, attempt: str, published: bool = False) -> bool:
        """Delete one attempt folder of this run's stage: the only deletion a stage ever makes.

        The folder must lie inside the stage folder with links resolved, and carry the runner's
        marker or be the one the stage's manifest named (``published``; older runs wrote no
        marker). Anything else is left in place with a warning. Returns whether it was removed.
        """
        if "/" in attempt or not attempt.startswith(ATTEMPT_PREFIX):
            raise StageError(f"refusing to delete {attempt!r}: not an attempt folder of stage {stage}")
        stage_dir = self.stage_dir(stage)
        directory = posixpath.join(stage_dir, attempt)
        try:
            if not self.store.contains(stage_dir, directory):
                log.warning(f"not removing {self.store.uri(directory)}: it leads outside {self.store.uri(stage_dir)}")
                return False
            if not published and not self._marked(directory, attempt):
                log.warning(f"not removing {self.store.uri(directory)}: it has no {ATTEMPT_MARKER}, so no saerec "
                            "runner made it; delete it by hand if it is yours")
                return False
            self.store.delete_dir(directory)
        except StorageError as exc:
            log.warning(f"could not remove {self.store.uri(directory)}: {exc}")
            return False
        return True

    def _marked(self, directory: str, attempt: str) -> bool:
        """Whether the attempt folder carries the marker the runner wrote when it created it."""
        path = posixpath.join(directory, ATTEMPT_MARKER)
        if not self.store.exists(path):
            return False
        try:
            marker = self.store.read_json(path)
        except ValueError:
            return False
        return isinstance(marker, dict) and marker.get("attempt") == attempt


# Counts of input left out (bad records, duplicates, empty texts, cut texts): shown whenever they are
# not zero, however many other metrics a stage reports, so nothing is dropped without the console saying so.
LEFT_OUT_SUFFIXES = ("_skipped", "_dropped", "_replaced", "_truncated")


def summarise(metrics: dict[str, Any], limit: int = 8) -> str:
    """A one-line view of a stage's scalar metrics for the console.

    The first ``limit`` scalars, then every non-zero count of left-out input, then where the first
    skipped bad records are (``bad_record_lines``: file -> line numbers, from ``prepare``).
    """
    parts, shown = [], 0
    for key, value in metrics.items():
        left_out = key.endswith(LEFT_OUT_SUFFIXES) and isinstance(value, int) and value > 0
        if shown >= limit and not left_out:
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)) and len(str(value)) < 40:
            parts.append(f"{key}={value}")
        else:
            continue
        shown += 1
    line = ", ".join(parts)
    where = metrics.get("bad_record_lines")
    if isinstance(where, dict) and where:
        line += "; first bad records skipped: " + "; ".join(
            f"{path} line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}" for path, lines in where.items())
    return line
