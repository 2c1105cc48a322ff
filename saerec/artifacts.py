"""The storage layout: every published output of every stage, with its schema, reader and writer.

This is the one module that knows file names. A stage reads its inputs and writes its outputs only
through the functions here, so the writer and every reader of a file cannot disagree on its name,
its schema or what a valid one looks like. Paths are relative to a stage's published attempt
folder (``StageFiles``); a name ending in ``/`` is a folder of Parquet parts.

Storage knows no model class: the readers here hand back files, bytes and state dicts, and
``saerec.restore`` builds the models from them (each model owns its persistence).
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from saerec import schemas
from saerec.data.split import split_labels
from saerec.pipeline import StageError, StageFiles
from saerec.storage import display_uri, storage_errors


@dataclass(frozen=True)
class Artifact:
    """One published output: the stage that writes it, its name in the attempt folder, its schema."""

    stage: str
    name: str
    about: str
    schema: pa.Schema | None = None

    def path(self, files: StageFiles) -> str:
        return files.path(self.name.rstrip("/"))

    def under(self, directory: str) -> str:
        """The artifact's path in an attempt folder given as a plain filesystem path."""
        return posixpath.join(directory, self.name.rstrip("/"))

    def uri(self, files: StageFiles) -> str:
        return files.uri(self.name.rstrip("/"))

    def exists(self, files: StageFiles) -> bool:
        return files.store.exists(self.path(files))


INTERACTIONS = Artifact("prepare", "interactions.parquet", "one row per kept interaction, with its split",
                        schemas.INTERACTIONS)
USERS = Artifact("prepare", "users.parquet", "user id -> raw id", schemas.USERS)
ITEMS = Artifact("prepare", "items.parquet", "item id -> raw id and description", schemas.ITEMS)
CORPUS = Artifact("prepare", "corpus/", "the training-only text corpus, in parts", schemas.CORPUS)
PLANTED = Artifact("prepare", "planted_intents.json", "demo only: the planted intents and their words")
ITEM_CATEGORIES = Artifact("prepare", "item_categories.parquet",
                           "evaluation labels, never model input: each labelled item's categories",
                           schemas.ITEM_CATEGORIES)
EMBEDDINGS = Artifact("embed", "embeddings/", "one vector per corpus text (text_id, vector, tokens, truncated)")
VOCABULARY = Artifact("embed", "vocabulary/", "the candidate words and their vectors (word, count, vector)")
SAE_WEIGHTS = Artifact("train_sae", "sae.safetensors", "the SAE's state dict")
SAE_CONFIG = Artifact("train_sae", "sae_config.json", "the SAE's constructor config (saerec.sae.SAEConfig)")
LATENT_FREQUENCY = Artifact("train_sae", "latent_frequency.parquet", "each latent's firing count and frequency",
                            schemas.LATENT_FREQUENCY)
SAE_METRICS = Artifact("train_sae", "metrics.json", "training settings, per-epoch history and final SAE metrics")
LATENTS = Artifact("explain", "latents.parquet", "per latent: words, frequency, top and random texts",
                   schemas.EXPLAINED_LATENTS)
CODES = Artifact("explain", "codes/", "per non-empty corpus text: its SAE code (k latent ids and values), in parts",
                 schemas.SAE_CODES)
PLANTED_RECOVERY = Artifact("explain", "planted_recovery.json", "demo only: planted intents among all latents")
FEATURES = Artifact("judge", "features.parquet", "per latent: summary, verdict, kept, detection",
                    schemas.JUDGED_FEATURES)
INTENTS = Artifact("judge", "intents.safetensors", "the kept latents' vectors and ids")
PROFILES = Artifact("profile", "item_profiles.parquet", "per intent set and item: its intents and pooled weights",
                    schemas.ITEM_PROFILES)
INTENT_PURITY = Artifact("profile", "intent_purity.parquet",
                         "with category labels: the purity of each kept and rejected latent, k-means cluster "
                         "and random item set", schemas.INTENT_PURITY)
ITEM_TEXT_VECTORS = Artifact("profile", "item_text_vectors.parquet", "per item with text: its texts' mean embedding",
                             schemas.ITEM_TEXT_VECTORS)
MODELS = Artifact("train_rec", "models/", "one safetensors file per (variant, seed), the spec in its metadata")
INTENT_SETS = Artifact("train_rec", "intent_sets.safetensors", "the intent matrices the trained variants read")
RUNS = Artifact("train_rec", "runs.json", "per run: spec, selected epoch, valid metrics, epoch times")
TEST_METRICS = Artifact("evaluate", "metrics.json", "test metrics per run and mean ± std per variant")
RECOMMENDATIONS = Artifact("evaluate", "recommendations.parquet", "per test user: top-N, target, intents",
                           schemas.RECOMMENDATIONS)
STEERING = Artifact("evaluate", "steering.json", "the steering study")
PER_USER = Artifact("evaluate", "per_user.parquet", "per run and user: valid and test rank, NDCG@20, HR@20",
                    schemas.PER_USER)
SWEEP_RESULTS = Artifact("sweep", "results.parquet", "one row per trial")
SWEEP_SUMMARY = Artifact("sweep", "summary.parquet", "mean and std over seeds per study point")
SWEEP_JSON = Artifact("sweep", "results.json", "both tables, plus where each study point's inputs came from")
SEARCH_RESULTS = Artifact("sweep", "search.parquet", "the search study: one row per trial, valid only")
SEARCH_STUDY = Artifact("sweep", "search.json", "the search study: each model's configuration chosen on valid")
REPORT_HTML = Artifact("report", "report.html", "the self-contained report")
REPORT_MARKDOWN = Artifact("report", "report.md", "the same report in Markdown")

LAYOUT: tuple[Artifact, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Artifact))


def _fail(art: Artifact, files: StageFiles, problem: str) -> StageError:
    return StageError(f"{art.uri(files)} {problem}")


def write_table(files: StageFiles, art: Artifact, table: pa.Table, part: int | None = None) -> None:
    """Write a table (or one part of a folder artifact), checking it against the declared schema."""
    if art.schema is not None and not table.schema.equals(art.schema):
        raise StageError(f"{art.stage} produced {art.name} with schema {table.schema}, expected {art.schema}")
    name = art.name if part is None else f"{art.name}part-{part:05d}.parquet"
    files.write_table(name, table)


def read_table(files: StageFiles, art: Artifact, columns: list[str] | None = None) -> pa.Table:
    """A published table, naming the file and the column when one the reader needs is missing."""
    table = files.read_table(art.name.rstrip("/"))
    missing = [c for c in columns or () if c not in table.column_names]
    if missing:
        raise _fail(art, files, f"has no column {missing[0]!r} (has: {', '.join(table.column_names)})")
    return table.select(columns) if columns else table


def write_json(files: StageFiles, art: Artifact, obj: Any) -> None:
    files.write_json(art.name, obj)


def read_json(files: StageFiles, art: Artifact) -> Any:
    return files.read_json(art.name)


def read_search_study(files: StageFiles) -> dict[str, dict[str, Any]]:
    """The sweep's search study: each searched model's chosen settings, ``{model: {key: value}}``
    (empty when the sweep ran no search study)."""
    study = read_json(files, SEARCH_STUDY)
    chosen = study.get("chosen") if isinstance(study, dict) else None
    if not isinstance(chosen, dict) or not all(isinstance(c, dict) and isinstance(c.get("params"), dict)
                                               for c in chosen.values()):
        raise _fail(SEARCH_STUDY, files, "has no 'chosen' mapping of model -> {params: {...}}")
    return {model: dict(found["params"]) for model, found in chosen.items()}


def write_text(files: StageFiles, art: Artifact, text: str) -> None:
    files.write_bytes(art.name, text.encode())


def dataset(files: StageFiles, art: Artifact) -> pads.Dataset:
    """A folder artifact as a pyarrow dataset, for streaming it in batches."""
    return dataset_at(art.path(files), files.store.fs)


def write_dataset(ds: Any, art: Artifact, directory: str, filesystem: Any, **ray_remote_args: Any) -> None:
    """Write a Ray Dataset as the Parquet parts of a folder artifact in an attempt folder.

    Storage that refuses the write (read-only, full, gone) is a StorageError naming the folder,
    not the Ray task's traceback.
    """
    path = art.under(directory)
    with storage_errors(display_uri(filesystem, path)):
        ds.write_parquet(path, filesystem=filesystem, ray_remote_args=ray_remote_args)


def dataset_at(path: str, filesystem: Any) -> pads.Dataset:
    """The same from a plain path and filesystem (what travels to a Ray task or actor)."""
    return pads.dataset(path, filesystem=filesystem, format="parquet")


def _tensors(files: StageFiles, art: Artifact, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A safetensors file's tensors and metadata; a damaged file is a StageError naming it (and its stage)."""
    name = name or art.name
    data = files.read_bytes(name)
    with files.reading(name):
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        return load_tensors(data), header.get("__metadata__", {})


def _write_tensors(files: StageFiles, name: str, tensors: dict[str, torch.Tensor],
                   metadata: dict[str, str] | None = None) -> None:
    files.write_bytes(name, save_tensors({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


# -- prepare ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sequences:
    """Every user's chronological items (ids from 1), the number of items, and the user ids."""

    users: np.ndarray
    sequences: list[np.ndarray]
    n_items: int


def read_sequences(prepare: StageFiles) -> Sequences:
    """The users' item sequences from prepare's interactions.

    prepare's ``split`` column must be the leave-one-out split (``saerec.data.split``) that the
    recommender stages rebuild from the order; a disagreement would mean two protocols, so it
    stops the stage.
    """
    table = read_table(prepare, INTERACTIONS, ["user", "item", "position", "split"]).to_pandas()
    n_items = int(read_table(prepare, ITEMS, ["item"]).column("item").to_numpy().max())
    table = table.sort_values(["user", "position"], kind="stable")
    users, starts = np.unique(table["user"].to_numpy(), return_index=True)
    items = np.split(table["item"].to_numpy().astype(np.int64), starts[1:])
    labels, lengths = table["split"].to_numpy(), np.diff(np.r_[starts, len(table)])
    wrong = np.flatnonzero(labels != split_labels(lengths))
    if len(wrong):
        row = np.searchsorted(starts, wrong[0], side="right") - 1
        found = list(labels[starts[row]:starts[row] + lengths[row]])
        raise _fail(INTERACTIONS, prepare, f"splits user {users[row]} as {found}; expected valid = "
                                           "second-to-last and test = last interaction")
    return Sequences(users=users, sequences=items, n_items=n_items)


def read_item_texts(prepare: StageFiles, n_items: int) -> list[str | None]:
    """Item descriptions by position (item id - 1); ``None`` where an item has none."""
    items = read_table(prepare, ITEMS, ["item", "text"])
    texts: list[str | None] = [None] * n_items
    for item, text in zip(items.column("item").to_pylist(), items.column("text").to_pylist()):
        texts[int(item) - 1] = text
    return texts


def read_corpus_texts(prepare: StageFiles, text_ids: np.ndarray) -> dict[int, str]:
    """Corpus texts by id, reading only the rows asked for."""
    if len(text_ids) == 0:
        return {}
    wanted = pa.array(np.unique(text_ids), pa.int64())
    table = dataset(prepare, CORPUS).to_table(columns=["text_id", "text"], filter=pc.field("text_id").isin(wanted))
    return dict(zip(table.column("text_id").to_pylist(), table.column("text").to_pylist()))


def read_planted(prepare: StageFiles) -> list[dict[str, Any]] | None:
    """The demo's planted intents ([{name, words}]), or None for real data."""
    return read_json(prepare, PLANTED) if PLANTED.exists(prepare) else None


def read_item_categories(prepare: StageFiles) -> dict[int, list[str]] | None:
    """``item -> category names`` for the labelled items, or None when the run has no labels."""
    if not ITEM_CATEGORIES.exists(prepare):
        return None
    table = read_table(prepare, ITEM_CATEGORIES, ["item", "categories"])
    return dict(zip(table.column("item").to_pylist(), table.column("categories").to_pylist()))


# -- embed -----------------------------------------------------------------------------------------

def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    vectors = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return vectors.flatten().to_numpy().reshape(len(vectors), -1)


def read_vocabulary(embed: StageFiles) -> tuple[list[str], np.ndarray]:
    """The candidate words and their vectors (V, D) float32."""
    table = read_table(embed, VOCABULARY, ["word", "vector"])
    if table.num_rows == 0:
        raise _fail(VOCABULARY, embed, "is empty")
    return table.column("word").to_pylist(), _matrix(table.column("vector")).astype(np.float32)


def nonempty_vectors(batch: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """(kept, matrix) of a batch of ``EMBEDDINGS`` rows: which rows are non-empty texts and their
    vectors as one writable (kept rows, dim) float32 matrix.

    Empty texts (tokens == 0) carry an all-zero vector that would teach the SAE a fake point and
    carry no intent, so every reader of the text embeddings drops them here.
    """
    kept = np.asarray(batch.column("tokens").to_numpy()) > 0
    vectors = batch.filter(pa.array(kept)).column("vector")
    vectors = vectors.combine_chunks() if isinstance(vectors, pa.ChunkedArray) else vectors
    flat = vectors.flatten().to_numpy(zero_copy_only=False)
    return kept, np.array(flat, dtype=np.float32).reshape(len(vectors), vectors.type.list_size)


def read_text_embeddings(embed: StageFiles) -> torch.Tensor:
    """Every non-empty corpus text's embedding (empty texts are all-zero and carry no intent)."""
    return torch.from_numpy(nonempty_vectors(read_table(embed, EMBEDDINGS, ["vector", "tokens"]))[1])


# -- train_sae -------------------------------------------------------------------------------------

def write_sae(files: StageFiles, config: bytes, weights: bytes) -> None:
    """The SAE as its own ``TopKSAE.to_bytes()`` gave it: config JSON and safetensors weights."""
    files.write_bytes(SAE_WEIGHTS.name, weights)
    files.write_bytes(SAE_CONFIG.name, config)


def read_sae_files(train_sae: StageFiles) -> tuple[bytes, bytes]:
    """(config JSON, safetensors weights): what ``TopKSAE.from_bytes`` takes, in a form that travels to a Ray task."""
    return train_sae.read_bytes(SAE_CONFIG.name), train_sae.read_bytes(SAE_WEIGHTS.name)


# -- explain -------------------------------------------------------------------------------------

def write_codes(files: StageFiles, part: int, text_ids: np.ndarray, values: np.ndarray, latents: np.ndarray) -> None:
    """One part of ``CODES``: the texts' ids and their (n, k) SAE values and latent ids."""
    n, k = values.shape
    write_table(files, CODES, pa.table({
        "text_id": pa.array(text_ids, pa.int64()),
        "latents": pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                            pa.array(latents.reshape(-1), pa.int32())),
        "values": pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                           pa.array(values.reshape(-1), pa.float32())),
    }, schema=schemas.SAE_CODES), part=part)


def read_codes(explain: StageFiles, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``CODES`` streamed in batches of at most ``batch_size`` texts: (text ids, values (n, k), latent ids (n, k))."""
    for batch in dataset(explain, CODES).to_batches(columns=["text_id", "latents", "values"], batch_size=batch_size):
        if batch.num_rows == 0:
            continue
        sizes = np.concatenate([pc.list_value_length(batch.column(c)).to_numpy() for c in ("latents", "values")])
        if sizes.min() != sizes.max():
            raise _fail(CODES, explain, "holds rows with different numbers of latents and values; every row holds "
                                        "the SAE's k (latent, value) pairs")
        latents, values = batch.column("latents").flatten().to_numpy(), batch.column("values").flatten().to_numpy()
        yield (batch.column("text_id").to_numpy(), values.reshape(batch.num_rows, -1).astype(np.float32),
               latents.reshape(batch.num_rows, -1).astype(np.int64))


# -- judge -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IntentSet:
    """The kept intents: their vectors (n, D) and SAE latent ids (summaries and words: ``FEATURES``)."""

    vectors: torch.Tensor
    latents: np.ndarray


def write_intent_set(files: StageFiles, intents: IntentSet) -> None:
    _write_tensors(files, INTENTS.name, {"vectors": intents.vectors.float(),
                                         "latents": torch.as_tensor(intents.latents, dtype=torch.long)})


def read_intent_set(judge: StageFiles) -> IntentSet:
    tensors, _ = _tensors(judge, INTENTS)
    for key in ("vectors", "latents"):
        if key not in tensors:
            raise _fail(INTENTS, judge, f"has no tensor {key!r} (has: {sorted(tensors)})")
    vectors, latents = tensors["vectors"].float(), tensors["latents"].long().numpy()
    if vectors.dim() != 2 or len(vectors) != len(latents) or len(vectors) == 0:
        raise _fail(INTENTS, judge, f"holds vectors {tuple(vectors.shape)} and {len(latents)} latent ids; "
                                    "expected vectors (n>0, D) and n ids")
    return IntentSet(vectors=vectors, latents=latents)


def read_summaries(judge: StageFiles) -> dict[int, str]:
    """SAE latent id -> the judge's summary (missing summaries are simply absent)."""
    table = read_table(judge, FEATURES, ["latent", "summary"])
    return {int(k): s for k, s in zip(table.column("latent").to_pylist(), table.column("summary").to_pylist())
            if s is not None}


def read_latent_words(judge: StageFiles) -> dict[int, list[str]]:
    """SAE latent id -> its top words as the judge read them."""
    table = read_table(judge, FEATURES, ["latent", "words"])
    return {int(k): list(w) for k, w in zip(table.column("latent").to_pylist(), table.column("words").to_pylist()) if w}


# -- profile ---------------------------------------------------------------------------------------

def read_profiles(profile: StageFiles, intent_set: str,
                  latents: np.ndarray | None = None) -> dict[int, tuple[list[int], list[float]]]:
    """``{item: (intent ids, weights)}`` of one intent set; items without a profile are absent.

    The file records SAE latent ids. With ``latents`` (the set's latent ids, intent i =
    ``latents[i]``, e.g. the judge's kept order) they become positions in the set, what a model's
    intent matrix is indexed by; a latent the set does not hold means profile and judge disagree.
    """
    table = read_table(profile, PROFILES, ["set", "item", "intents", "weights"])
    table = table.filter(pc.equal(table.column("set"), intent_set))
    if table.num_rows == 0:
        raise _fail(PROFILES, profile, f"holds no profile of the {intent_set!r} intent set")
    rows = {int(i): (ids, weights) for i, ids, weights in zip(
        table.column("item").to_pylist(), table.column("intents").to_pylist(), table.column("weights").to_pylist())}
    if latents is None:
        return rows
    position = {int(latent): i for i, latent in enumerate(latents)}
    for item, (ids, _) in rows.items():
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise _fail(PROFILES, profile, f"gives item {item} latent {unknown[0]}, which the {intent_set!r} intent "
                                           "set does not hold; the profile and judge outputs do not match")
    return {item: ([position[i] for i in ids], weights) for item, (ids, weights) in rows.items()}


def read_item_text_vectors(profile: StageFiles, n_items: int) -> torch.Tensor:
    """(n_items + 1, D) each item's mean text embedding; zero rows for items without text (and row 0)."""
    table = read_table(profile, ITEM_TEXT_VECTORS, ["item", "vector"])
    matrix = _matrix(table.column("vector"))
    items = table.column("item").to_numpy()
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise _fail(ITEM_TEXT_VECTORS, profile, f"names items outside 1..{n_items}")
    out = torch.zeros(n_items + 1, matrix.shape[1] if len(items) else 1)
    out[torch.from_numpy(items.astype(np.int64))] = torch.from_numpy(np.array(matrix, dtype=np.float32))
    return out


# -- train_rec -------------------------------------------------------------------------------------

def model_file(run_name: str) -> str:
    return f"{MODELS.name}{run_name}.safetensors"


def write_model(files: StageFiles, run_name: str, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """A trained model's selected weights, with its spec in the file's metadata; returns the file name."""
    name = model_file(run_name)
    _write_tensors(files, name, state, metadata={"spec": json.dumps(spec)})
    return name


def read_model_state(train_rec: StageFiles, run: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A run's selected weights (intent buffers included); ``saerec.restore.rec_model`` builds the model."""
    return _tensors(train_rec, MODELS, run["model_file"])[0]


def write_intent_sets(files: StageFiles, sets: dict[str, torch.Tensor], judged_latents: np.ndarray | None) -> None:
    tensors = dict(sets)
    if judged_latents is not None:
        tensors["judged_latents"] = torch.as_tensor(judged_latents, dtype=torch.long)
    if tensors:
        _write_tensors(files, INTENT_SETS.name, tensors)


def read_judged_latents(train_rec: StageFiles) -> np.ndarray:
    """The SAE latent ids of the judged intent set a run was trained on (row i = intent i)."""
    tensors = _tensors(train_rec, INTENT_SETS)[0]
    if "judged_latents" not in tensors:
        raise _fail(INTENT_SETS, train_rec, "holds no judged intent set")
    return tensors["judged_latents"].numpy()


def write_runs(files: StageFiles, users: np.ndarray, runs: list[dict[str, Any]]) -> None:
    write_json(files, RUNS, {"users": users.tolist(), "runs": runs})


def read_runs(train_rec: StageFiles) -> list[dict[str, Any]]:
    runs = read_json(train_rec, RUNS)["runs"]
    if not runs:
        raise _fail(RUNS, train_rec, "lists no runs")
    return runs
