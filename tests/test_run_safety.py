"""A run lives at {storage.uri}/{run.name} and nowhere else (issue 33, items 1-3 and 16).

Each attack is tried the way a user would, as the real job, and the test checks that nothing
outside the run folder changed; the runner's own defences (a root that cannot be left, deletions
only of marked attempt folders inside the stage folder) are tried on the runner directly.
"""
from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from saerec.config import ConfigError, load_config
from saerec.pipeline import ATTEMPT_MARKER, Runner
from saerec.storage import Store, StorageError
from tests.conftest import REPO
from tests.toy_stages import NUMBERS

sys.path.insert(0, str(REPO / "jobs"))
from full_pipeline import select_stages  # noqa: E402


def _job(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "full_pipeline.py"), *args, "--until", "prepare"],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder`` with the file's bytes."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _other_run(tmp_path: Path) -> Path:
    """Another run's folder beside the storage, with an unfinished attempt that must survive."""
    other = tmp_path / "other"
    attempt = other / "prepare" / "attempt-20260101T000000-deadbeef"
    attempt.mkdir(parents=True)
    (attempt / "sentinel.txt").write_text("another run's work in progress")
    (attempt / ATTEMPT_MARKER).write_text(json.dumps({"attempt": attempt.name}))
    return other


@pytest.mark.parametrize("name", ["ABSOLUTE", "../other", "a/b", "..", ".", "", "demo run", "a\\b"])
def test_a_run_name_that_is_not_one_safe_folder_name_is_refused(tmp_path, name):
    other = _other_run(tmp_path)
    name = str(other) if name == "ABSOLUTE" else name
    storage = tmp_path / "storage"
    before = _tree(tmp_path)
    result = _job("--set", f"storage.uri={storage}", "--set", f"run.name={json.dumps(name)}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: run.name: got {name!r}; a run name is one folder name" in result.stderr
    assert "Traceback" not in result.stderr and "Ray" not in result.stdout
    assert _tree(tmp_path) == before, "nothing is written or deleted anywhere"


def test_run_name_rule_in_the_config():
    for good in ("demo", "beauty-2026.01_v2", "v1.0", "a" * 128):
        assert load_config(None, [f"run.name={good}"]).run.name == good
    with pytest.raises(ConfigError, match="run.name: got 'a/../b'"):
        load_config(None, ["run.name=a/../b"])
    with pytest.raises(ConfigError, match="run.name"):
        load_config(None, [f"run.name={'a' * 129}"])


def test_a_file_uri_with_a_host_is_refused(tmp_path):
    """``file://tmp/x`` used to drop ``tmp`` and write at /x."""
    top = f"saerec-escape-{uuid.uuid4().hex[:8]}"
    uri = f"file://{tmp_path.name}/{top}"
    before = _tree(tmp_path)
    result = _job("--set", f"storage.uri={uri}", cwd=tmp_path.parent)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (f"error: storage.uri {uri!r} names the host {tmp_path.name!r}, and a file:// URI is a path on this "
            f"machine: write file:///{tmp_path.name}/{top} for an absolute path") in result.stderr
    assert not Path("/", top).exists(), "nothing is created at the filesystem root"
    assert _tree(tmp_path) == before and "Traceback" not in result.stderr


def test_storage_uris_that_mean_one_place(tmp_path):
    assert Store(f"file://localhost{tmp_path}/a").root == str(tmp_path / "a")
    assert Store(f"file://{tmp_path}/a").root == str(tmp_path / "a")
    with pytest.raises(StorageError, match="names the host 'tmp'"):
        Store("file://tmp/x")
    with pytest.raises(StorageError, match="would be dropped"):
        Store(f"file://{tmp_path}/a?b")
    with pytest.raises(StorageError, match="'.' or '..'"):
        Store("s3://bucket/a/../b")
    with pytest.raises(StorageError, match="storage.uri is empty"):
        Store(" ")


def test_the_store_never_leaves_its_root(tmp_path):
    store = Store(str(tmp_path / "root"))
    assert store.join("run", "stage") == str(tmp_path / "root" / "run" / "stage")
    for escape in (("..", "x"), ("run", "../../x"), (str(tmp_path / "elsewhere"),)):
        with pytest.raises(StorageError, match="leaves the storage root"):
            store.join(*escape)


def test_a_runner_given_an_escaping_name_writes_and_deletes_nothing_outside(tmp_path):
    """The config refuses such a name; a runner handed one anyway (a library user) is stopped by the store."""
    other = _other_run(tmp_path)
    cfg = load_config(None, [f"storage.uri={tmp_path / 'storage'}"])
    cfg.run.name = "../other"
    before = _tree(tmp_path)
    with pytest.raises(StorageError, match="leaves the storage root"):
        Runner(cfg, Store(cfg.storage.uri)).run_stage(NUMBERS)
    assert _tree(tmp_path) == before and (other / "prepare").is_dir()


def _runner(tmp_path: Path) -> Runner:
    cfg = load_config(None, [f"storage.uri={tmp_path / 'storage'}", "run.name=toy", "data.demo.users=20"])
    return Runner(cfg, Store(cfg.storage.uri))


def test_leftovers_are_removed_only_with_the_runner_marker_and_inside_the_stage(tmp_path, caplog):
    runner = _runner(tmp_path)
    stage_dir = Path(runner.stage_dir("numbers"))
    killed = stage_dir / "attempt-20260101T000000-0000aaaa"  # what a killed run of this runner leaves
    killed.mkdir(parents=True)
    (killed / ATTEMPT_MARKER).write_text(json.dumps({"attempt": killed.name}))
    foreign = stage_dir / "attempt-20260101T000000-0000bbbb"  # no marker: not the runner's
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    victim = tmp_path / "victim"  # a link out of the stage folder, with a marker where it leads
    victim.mkdir()
    (victim / ATTEMPT_MARKER).write_text(json.dumps({"attempt": "attempt-20260101T000000-0000cccc"}))
    (victim / "data.txt").write_text("outside")
    (stage_dir / "attempt-20260101T000000-0000cccc").symlink_to(victim, target_is_directory=True)

    published = runner.run_stage(NUMBERS)
    assert not killed.exists()
    assert (foreign / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(victim)) == [ATTEMPT_MARKER, "data.txt"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"not removing {foreign}: it has no {ATTEMPT_MARKER}, so no saerec runner made it; " \
           "delete it by hand if it is yours" in warnings
    assert f"not removing {stage_dir / 'attempt-20260101T000000-0000cccc'}: it leads outside {stage_dir}" in warnings
    marker = json.loads((Path(published["output_dir"]) / ATTEMPT_MARKER).read_text())
    assert marker["attempt"] == published["attempt"] and marker["pid"] == os.getpid()
    assert ATTEMPT_MARKER not in published["outputs"], "the marker is the runner's, not an output"

    replaced = runner.run_stage(NUMBERS, force=True)
    assert not Path(published["output_dir"]).exists(), "the replaced attempt carries the marker and goes"
    assert posixpath.basename(replaced["output_dir"]) in os.listdir(stage_dir)


def test_a_selection_that_leaves_no_stage_is_refused_before_ray(tmp_path):
    with pytest.raises(ConfigError, match="--stages embed with --until prepare selects no stage: it comes after "
                                          "prepare"):
        select_stages("embed", "prepare")
    with pytest.raises(ConfigError, match="names no stage"):
        select_stages(" , ", None)
    assert select_stages("embed,prepare", "embed") == ["prepare", "embed"]
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--until", "prepare",
                             "--stages", "embed", "--set", f"storage.uri={tmp_path / 'out'}"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: --stages embed with --until prepare selects no stage" in result.stderr
    assert "Ray" not in result.stdout and not (tmp_path / "out").exists()
