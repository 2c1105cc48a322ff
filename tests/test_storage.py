"""Storage and the stage contract against a real S3 server (SeaweedFS) and the local disk."""
import json
import os
import posixpath
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from saerec.config import load_config
from saerec.pipeline import Runner, StageError, StageInput
from saerec.storage import MANIFEST, Store, StorageError
from tests.conftest import REPO
from tests.s3server import SECRET_KEY
from tests.toy_stages import DOUBLE, NUMBERS, TOTAL

TOYS = (NUMBERS, DOUBLE, TOTAL)


def make_runner(uri, endpoint=None, *overrides):
    sets = [f"storage.uri={uri}", "run.name=toy", *overrides]
    if endpoint:
        sets.append(f"storage.endpoint_url={endpoint}")
    cfg = load_config(None, sets)
    return Runner(cfg, Store(cfg.storage.uri, cfg.storage.endpoint_url))


def test_roundtrip_on_s3(s3_server, s3_uri):
    store = Store(s3_uri, s3_server.endpoint)
    store.check()
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    store.write_table(store.join("t", "part.parquet"), table)
    store.write_json(store.join("t", "m.json"), {"k": [1, 2]})
    assert store.read_table(store.join("t", "part.parquet")).equals(table)
    assert store.read_json(store.join("t", "m.json")) == {"k": [1, 2]}
    assert [p.rsplit("/", 1)[1] for p in store.list_files(store.join("t"))] == ["m.json", "part.parquet"]
    with pytest.raises(StorageError, match="does not exist"):
        store.read_bytes(store.join("t", "nope.json"))


@pytest.mark.parametrize("where", ["s3", "local"])
def test_publish_skip_and_rerun_on_change(s3_server, s3_uri, tmp_path, where):
    uri, endpoint = (s3_uri, s3_server.endpoint) if where == "s3" else (str(tmp_path / "out"), None)
    runner = make_runner(uri, endpoint, "data.demo.users=30")
    first = runner.run_stage(NUMBERS)
    assert first["metrics"] == {"rows": 30} and "skipped" not in first
    assert sorted(first["outputs"]) == ["numbers.parquet", "summary.json"]
    second = runner.run_stage(DOUBLE)
    assert second["inputs"]["numbers"]["fingerprint"] == first["fingerprint"]
    assert runner.run_stage(NUMBERS).get("skipped") is True
    assert runner.run_stage(DOUBLE).get("skipped") is True
    assert runner.run_stage(NUMBERS, force=True).get("skipped") is None

    changed = make_runner(uri, endpoint, "data.demo.users=40")
    third = changed.run_stage(NUMBERS)
    assert third["fingerprint"] != first["fingerprint"]
    assert changed.run_stage(DOUBLE)["metrics"] == {"rows": 40}
    attempts = [d for d in changed.store.list_dirs(changed.stage_dir("numbers")) if d.startswith("attempt-")]
    assert len(attempts) == 1, "replaced attempts must be removed"


def test_resource_keys_do_not_rerun_a_stage_but_result_keys_do(tmp_path):
    uri = str(tmp_path / "out")
    make_runner(uri).run_stage(NUMBERS)
    first = make_runner(uri).run_stage(DOUBLE)
    more_actors = make_runner(uri, None, "embed.num_actors=4", "embed.batch_size=7", "embed.cpus_per_actor=2")
    assert more_actors.run_stage(DOUBLE).get("skipped") is True
    other_model = make_runner(uri, None, "embed.vocab_size=50")
    rerun = other_model.run_stage(DOUBLE)
    assert "skipped" not in rerun and rerun["fingerprint"] != first["fingerprint"]
    assert rerun["config"]["embed"]["vocab_size"] == 50


def test_missing_upstream_is_a_clear_error(tmp_path):
    runner = make_runner(str(tmp_path / "out"))
    with pytest.raises(StageError, match="needs the published output of stage numbers"):
        runner.run_stage(DOUBLE)


def test_killed_stage_is_never_taken_as_done(s3_server, s3_uri):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        from tests.test_storage import make_runner
        from tests.toy_stages import NUMBERS
        make_runner({s3_uri!r}, {s3_server.endpoint!r}).run_stage(NUMBERS)
    """)
    env = {**os.environ, **s3_server.env, "TOY_KILL_AFTER_WRITE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert proc.returncode == -9
    runner = make_runner(s3_uri, s3_server.endpoint)
    assert runner.manifest("numbers") is None
    leftovers = runner.store.list_files(runner.stage_dir("numbers"))
    assert any(p.endswith("numbers.parquet") for p in leftovers)

    done = runner.run_stage(NUMBERS)
    assert "skipped" not in done
    files = runner.store.list_files(runner.stage_dir("numbers"))
    assert all(p.startswith(done["output_dir"]) or p.endswith(MANIFEST) for p in files)


def test_unreachable_storage_names_the_uri():
    store = Store("s3://nowhere/prefix", "http://127.0.0.1:9")
    with pytest.raises(StorageError, match="s3://nowhere/prefix"):
        store.check()


def test_wrong_credentials_and_missing_bucket(s3_server, monkeypatch):
    store = Store(f"s3://missing-bucket-{os.getpid()}/x", s3_server.endpoint)
    with pytest.raises(StorageError, match="does not exist"):
        store.check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    bad = Store(f"s3://{s3_server.bucket}/x", s3_server.endpoint)
    with pytest.raises(StorageError) as info:
        bad.check()
        bad.write_bytes(bad.join("f"), b"1")
    assert "definitely-wrong-secret" not in str(info.value)
    assert SECRET_KEY not in str(info.value)


def test_bad_uris():
    with pytest.raises(StorageError, match="unsupported scheme"):
        Store("gs://bucket/x")
    with pytest.raises(StorageError, match="no bucket"):
        Store("s3:///x")


def _roots(where, s3_server, s3_uri, tmp_path, *names):
    """Storage URIs for ``names`` (each its own root) and the endpoint, on S3 or on the local disk."""
    if where == "s3":
        return [f"{s3_uri}/{n}" for n in names], s3_server.endpoint
    return [str(tmp_path / n) for n in names], None


def _snapshot(store):
    """Every file under the store's root with its bytes."""
    return {posixpath.relpath(p, store.root): store.read_bytes(p) for p in store.list_files(store.root)}


def _copy_root(src, dst):
    pafs.copy_files(src.root, dst.root, source_filesystem=src.fs, destination_filesystem=dst.fs)


def _attempts(runner, stage):
    return [d for d in runner.store.list_dirs(runner.stage_dir(stage)) if d.startswith("attempt-")]


@pytest.mark.parametrize("where", ["s3", "local"])
def test_copied_run_never_touches_the_original(s3_server, s3_uri, tmp_path, where):
    """Issue 16: forcing a stage in a copy of a run deleted the original's attempt, and the copy's
    stages kept reading the original's files."""
    (uri_a, uri_b), endpoint = _roots(where, s3_server, s3_uri, tmp_path, "A", "B")
    original = make_runner(uri_a, endpoint, "data.demo.users=30")
    for stage in TOYS:
        original.run_stage(stage)
    before = _snapshot(original.store)
    copy = make_runner(uri_b, endpoint, "data.demo.users=30")
    _copy_root(original.store, copy.store)
    assert all(copy.run_stage(stage).get("skipped") for stage in TOYS), "a copy is a valid run as it is"

    forced = copy.run_stage(DOUBLE, force=True)
    total = copy.run_stage(TOTAL, force=True)
    assert _snapshot(original.store) == before, "the original is byte-for-byte untouched"
    assert total["inputs"]["double"]["attempt"] == forced["attempt"]
    assert forced["output_dir"].startswith(copy.store.join("toy", "double") + "/")
    for stage in TOYS:
        assert _attempts(copy, stage.name) == [copy.manifest(stage.name)["attempt"]], "one attempt, the published one"
        stored = copy.store.read_json(posixpath.join(copy.stage_dir(stage.name), MANIFEST))
        assert "output_dir" not in stored and all("output_dir" not in i for i in stored["inputs"].values())

    original.store.delete_dir(original.store.root)  # from here on, only the copy's own files exist
    assert copy.run_stage(DOUBLE, force=True)["metrics"] == {"rows": 30}
    assert copy.run_stage(TOTAL, force=True)["metrics"] == {"sum": 2 * sum(range(30))}
    assert StageInput(copy.store, copy.manifest("total")).read_json("total.json") == {"sum": 870, "n": 30}


@pytest.mark.parametrize("where", ["s3", "local"])
def test_moved_run_skips_every_stage(s3_server, s3_uri, tmp_path, where):
    (uri_a, uri_c), endpoint = _roots(where, s3_server, s3_uri, tmp_path, "A", "moved/C")
    original = make_runner(uri_a, endpoint)
    results = {stage.name: original.run_stage(stage) for stage in TOYS}
    outputs = {name: _snapshot_stage(original, name) for name in results}
    moved = make_runner(uri_c, endpoint)
    _copy_root(original.store, moved.store)
    original.store.delete_dir(original.store.root)
    for stage in TOYS:
        again = moved.run_stage(stage)
        assert again.get("skipped") is True
        assert again["fingerprint"] == results[stage.name]["fingerprint"]
        assert again["output_dir"] == posixpath.join(moved.stage_dir(stage.name), results[stage.name]["attempt"])
        assert _snapshot_stage(moved, stage.name) == outputs[stage.name], "the same outputs, read from the new place"


def _snapshot_stage(runner, stage):
    found = StageInput(runner.store, runner.manifest(stage))
    return {name: found.read_bytes(name) for name in found.manifest["outputs"]}


def _to_old_format(runner, stage):
    """Rewrite a manifest as saerec wrote them before runs were relocatable: absolute locations."""
    path = posixpath.join(runner.stage_dir(stage), MANIFEST)
    manifest = runner.store.read_json(path)
    manifest["output_dir"] = posixpath.join(runner.stage_dir(stage), manifest.pop("attempt"))
    for name, entry in manifest["inputs"].items():
        entry["output_dir"] = posixpath.join(runner.stage_dir(name), entry.pop("attempt"))
        entry.pop("run")
    runner.store.write_json(path, manifest)


def test_manifests_from_before_still_load_or_say_how_to_rerun(tmp_path):
    original = make_runner(str(tmp_path / "A"))
    for stage in TOYS:
        original.run_stage(stage)
        _to_old_format(original, stage.name)
    assert all(original.run_stage(stage).get("skipped") for stage in TOYS), "old manifests load in place"
    before = _snapshot(original.store)

    copy = make_runner(str(tmp_path / "B"))
    _copy_root(original.store, copy.store)
    assert all(copy.run_stage(stage).get("skipped") for stage in TOYS), "found by name in the copy's folders"
    assert StageInput(copy.store, copy.manifest("double")).dir.startswith(copy.store.root + "/")

    copy.store.delete_dir(posixpath.join(copy.stage_dir("numbers"), copy.manifest("numbers")["attempt"]))
    with pytest.raises(StageError, match=r"names the attempt .*A/toy/numbers/attempt-.*re-run the stage with "
                                         r"--stages numbers --force"):
        copy.run_stage(DOUBLE)
    with pytest.raises(StageError, match="--stages numbers --force"):
        copy.run_stage(NUMBERS)
    assert "skipped" not in copy.run_stage(NUMBERS, force=True)
    assert _snapshot(original.store) == before, "an old manifest's absolute path is never deleted"
    assert _attempts(copy, "numbers") == [copy.manifest("numbers")["attempt"]]


# -- issue 33: atomic manifests, damaged manifests and damaged outputs ---------------------------------------


def test_a_local_file_is_replaced_whole_never_rewritten_in_place(tmp_path):
    """A manifest is written beside its place and renamed into it: a reader holding the old file
    still reads it whole, and no temporary file stays behind."""
    runner = make_runner(str(tmp_path / "out"), None, "data.demo.users=30")
    runner.run_stage(NUMBERS)
    path = posixpath.join(runner.stage_dir("numbers"), MANIFEST)
    with open(path, "rb") as old:
        runner.run_stage(NUMBERS, force=True)
        assert json.loads(old.read())["metrics"] == {"rows": 30}, "the old manifest was not cut short"
    assert sorted(os.listdir(runner.stage_dir("numbers"))) == sorted([MANIFEST, runner.manifest("numbers")["attempt"]])


@pytest.mark.parametrize("where", ["s3", "local"])
@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"[1, 2]"])
def test_a_damaged_manifest_is_not_published_and_the_next_run_recovers(s3_server, s3_uri, tmp_path, where,
                                                                        damage, caplog):
    uri, endpoint = (s3_uri, s3_server.endpoint) if where == "s3" else (str(tmp_path / "out"), None)
    runner = make_runner(uri, endpoint, "data.demo.users=30")
    first = runner.run_stage(NUMBERS)
    path = posixpath.join(runner.stage_dir("numbers"), MANIFEST)
    runner.store.write_bytes(path, damage(runner.store.read_bytes(path)))

    assert runner.manifest("numbers") is None and not runner.is_published(NUMBERS)
    with pytest.raises(StageError, match="needs the published output of stage numbers"):
        runner.run_stage(DOUBLE)
    again = runner.run_stage(NUMBERS)
    assert "skipped" not in again and again["fingerprint"] == first["fingerprint"]
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1, "said once, however often the manifest is looked at"
    assert said[0].startswith(f"{runner.store.uri(path)} cannot be read (")
    assert said[0].endswith("stage numbers is taken as not published and runs again")
    assert _attempts(runner, "numbers") == [again["attempt"]], "the earlier attempt went with the damaged manifest"
    assert runner.run_stage(DOUBLE)["metrics"] == {"rows": 30}


def _damage(runner, stage, name, change):
    path = posixpath.join(runner.manifest(stage)["output_dir"], name)
    runner.store.write_bytes(path, change(runner.store.read_bytes(path)))
    return runner.store.uri(path)


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_truncated_output_names_the_file_and_the_stage_to_rerun(s3_server, s3_uri, tmp_path, where):
    uri, endpoint = (s3_uri, s3_server.endpoint) if where == "s3" else (str(tmp_path / "out"), None)
    runner = make_runner(uri, endpoint, "data.demo.users=30")
    runner.run_stage(NUMBERS)
    size = len(runner.store.read_bytes(posixpath.join(runner.manifest("numbers")["output_dir"], "numbers.parquet")))
    damaged = _damage(runner, "numbers", "numbers.parquet", lambda b: b[:100])
    with pytest.raises(StageError) as failure:
        runner.run_stage(DOUBLE)
    assert str(failure.value) == (
        f"{damaged}, an output of stage numbers, has 100 bytes where its manifest recorded {size}: it was cut "
        "short or changed after it was published; re-run that stage with --stages numbers --force")
    assert runner.manifest("double") is None and _attempts(runner, "double") == []

    runner.run_stage(NUMBERS, force=True)  # what the message says to do
    assert runner.run_stage(DOUBLE)["metrics"] == {"rows": 30}


def test_an_output_damaged_in_place_names_the_file_and_the_stage(tmp_path):
    """Same size, wrong bytes (or a manifest from before sizes were recorded): the reader's error,
    named with the file and the stage to re-run, instead of a traceback from inside the reader."""
    from saerec import artifacts, restore
    from saerec.pipeline import Stage
    from saerec.sae import SAEConfig, TopKSAE

    def write_sae(ctx):
        artifacts.write_sae(ctx.output, *TopKSAE(SAEConfig(d_in=2, n_latents=4, k=1, tied=True)).to_bytes())
        return {}

    runner = make_runner(str(tmp_path / "out"))
    sae_stage = Stage(name="train_sae", run=write_sae)
    runner.run_stage(sae_stage)
    damaged = _damage(runner, "train_sae", "sae.safetensors", lambda b: b[:8] + b"\x00" * (len(b) - 8))
    found = StageInput(runner.store, runner.manifest("train_sae"))
    with pytest.raises(StageError) as failure:
        restore.sae(found)
    assert str(failure.value).startswith(f"cannot read {damaged}, an output of stage train_sae: ")
    assert str(failure.value).endswith("the file is damaged (cut short or overwritten): re-run that stage with "
                                       "--stages train_sae --force")
    _damage(runner, "train_sae", "sae_config.json", lambda b: b[:-5] + b"\x00" * 5)
    with pytest.raises(StageError, match=r"cannot read .*/sae_config.json, an output of stage train_sae: "):
        restore.sae(found)

    runner.run_stage(NUMBERS)
    damaged = _damage(runner, "numbers", "numbers.parquet", lambda b: b[:4] + b"\x00" * (len(b) - 8) + b[-4:])
    with pytest.raises(StageError, match=rf"cannot read {damaged}, an output of stage numbers: .*re-run that stage "
                                         r"with --stages numbers --force"):
        StageInput(runner.store, runner.manifest("numbers")).read_table("numbers.parquet")


def test_storage_knows_no_model_class():
    """artifacts and storage hand back files, bytes and state dicts; the models are built elsewhere
    (saerec.restore), so storage never imports a model module."""
    import ast

    def imported(path):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
        return found

    for name in ("artifacts.py", "storage.py"):
        models = sorted(m for m in imported(REPO / "saerec" / name)
                        if m.startswith(("saerec.rec", "saerec.sae")) or m in ("saerec.rec", "saerec.sae"))
        assert models == [], f"saerec/{name} imports {models}"


def test_nonempty_vectors_drop_empty_texts_and_give_a_writable_float32_matrix():
    from saerec import artifacts, schemas

    table = pa.table({"text_id": pa.array([4, 5, 6], pa.int64()),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 0.0, 0.0, 3.0, 4.0],
                                                                           pa.float32()), 2),
                      "tokens": pa.array([3, 0, 1], pa.int32()), "truncated": pa.array([False] * 3)},
                     schema=schemas.embedding_table_schema(2))
    for batch in (table, table.to_batches()[0], pa.concat_tables([table.slice(0, 1), table.slice(1)])):
        kept, matrix = artifacts.nonempty_vectors(batch)
        assert kept.tolist() == [True, False, True]
        assert matrix.dtype == "float32" and matrix.flags.writeable and matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    kept, matrix = artifacts.nonempty_vectors(table.slice(1, 1))
    assert kept.tolist() == [False] and matrix.shape == (0, 2)


def test_codes_stream_back_as_written_and_profiles_turn_latent_ids_into_positions(tmp_path):
    """The SAE codes explain publishes come back per text as (values, latent ids); item profiles
    record latent ids, and a reader that needs positions in an intent set gets them from the set."""
    import numpy as np

    from saerec import artifacts, schemas
    from saerec.pipeline import Stage

    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    latents = np.array([[0, 3], [1, 2], [3, 1], [2, 0], [1, 3], [0, 2]])

    def explain(ctx):
        artifacts.write_codes(ctx.output, 0, np.arange(10, 14), values[:4], latents[:4])
        artifacts.write_codes(ctx.output, 3, np.arange(14, 16), values[4:], latents[4:])
        artifacts.write_table(ctx.output, artifacts.PROFILES, pa.table({
            "set": ["judged", "judged", "all"], "item": [1, 2, 1], "intents": [[7, 3], [3], [7, 3, 0]],
            "weights": [[0.5, 0.25], [0.75], [0.5, 0.25, 0.125]]}, schema=schemas.ITEM_PROFILES))
        return {}

    runner = make_runner(str(tmp_path / "out"))
    runner.run_stage(Stage(name="explain", run=explain))
    found = StageInput(runner.store, runner.manifest("explain"))
    chunks = list(artifacts.read_codes(found, batch_size=3))
    assert all(len(ids) <= 3 for ids, _, _ in chunks)
    ids, got_values, got_latents = (np.concatenate(part) for part in zip(*chunks))
    assert ids.tolist() == list(range(10, 16))
    assert np.array_equal(got_values, values) and np.array_equal(got_latents, latents)

    assert artifacts.read_profiles(found, "judged") == {1: ([7, 3], [0.5, 0.25]), 2: ([3], [0.75])}
    assert artifacts.read_profiles(found, "judged", np.array([3, 7])) == {1: ([1, 0], [0.5, 0.25]), 2: ([0], [0.75])}
    with pytest.raises(StageError, match=r"item_profiles.parquet gives item 1 latent 7, which the 'judged' intent set "
                                         "does not hold; the profile and judge outputs do not match"):
        artifacts.read_profiles(found, "judged", np.array([3, 5]))


def test_codes_with_rows_of_different_sizes_are_refused_naming_the_folder(tmp_path):
    from saerec import artifacts, schemas
    from saerec.pipeline import Stage

    def explain(ctx):
        artifacts.write_table(ctx.output, artifacts.CODES, pa.table({
            "text_id": pa.array([1, 2], pa.int64()), "latents": pa.array([[0, 1], [2]], pa.list_(pa.int32())),
            "values": pa.array([[0.5, 0.25], [0.5]], pa.list_(pa.float32()))}, schema=schemas.SAE_CODES), part=0)
        return {}

    runner = make_runner(str(tmp_path / "out"))
    runner.run_stage(Stage(name="explain", run=explain))
    found = StageInput(runner.store, runner.manifest("explain"))
    with pytest.raises(StageError, match=r"/codes holds rows with different numbers of latents and values"):
        list(artifacts.read_codes(found, batch_size=10))
