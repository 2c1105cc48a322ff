"""The embed stage on local Ray: storage on the SeaweedFS S3 server, a tiny random encoder, 2 actors."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from saerec import artifacts, schemas
from saerec.config import load_config
from saerec.pipeline import Runner, StageError
from saerec.stages import embed, prepare
from saerec.storage import Store
from saerec.text.encoders import load_encoder
from saerec.text.vocabulary import WordCounter
from saerec.text.encoders import resolve_model_path
from saerec.workers.encoding import embed_corpus
from tests.conftest import TINY_DEMO
from tests.test_text import save_tiny_bert


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), tokenizer)


def read_folder(store: Store, folder: str) -> pa.Table:
    return pa.concat_tables([store.read_table(p) for p in store.list_files(folder) if p.endswith(".parquet")])


def by_key(table: pa.Table, key: str) -> dict:
    return dict(zip(table.column(key).to_pylist(), np.stack(table.column("vector").to_numpy(zero_copy_only=False))))


def test_stage_on_s3_matches_the_encoder_and_skips_on_rerun(s3_server, s3_uri, ray_local, tiny_model):
    # s3_server first: Ray workers inherit the S3 credentials from the environment at ray.init.
    cfg = load_config(None, [*TINY_DEMO, f"storage.uri={s3_uri}", f"storage.endpoint_url={s3_server.endpoint}",
                             f"embed.model={tiny_model}", "embed.num_actors=2", "embed.batch_size=200",
                             "embed.micro_batch_size=32", "embed.max_length=32", "embed.vocab_min_count=2"])
    store = Store(cfg.storage.uri, cfg.storage.endpoint_url)
    runner = Runner(cfg, store)
    runner.run_stage(prepare.STAGE)
    manifest = runner.run_stage(embed.STAGE)

    corpus = read_folder(store, f"{runner.manifest('prepare')['output_dir']}/corpus")
    out = manifest["output_dir"]
    texts = read_folder(store, artifacts.EMBEDDINGS.under(out))
    assert texts.schema.equals(schemas.embedding_table_schema(16), check_metadata=False)
    assert sorted(texts.column("text_id").to_pylist()) == sorted(corpus.column("text_id").to_pylist())
    metrics = manifest["metrics"]
    assert metrics["texts"] == corpus.num_rows and metrics["dim"] == 16 and metrics["actors"] == 2
    assert metrics["empty_texts"] == 0
    assert metrics["truncated_texts"] == int(np.sum(texts.column("truncated").to_numpy(zero_copy_only=False)))

    encoder = load_encoder(tiny_model, max_length=32, device="cpu")
    vectors = by_key(texts, "text_id")
    sample = corpus.slice(0, 40)
    expected = encoder.encode(sample.column("text").to_pylist())
    for text_id, vector in zip(sample.column("text_id").to_pylist(), expected):
        np.testing.assert_allclose(vectors[text_id], vector, atol=1e-5)

    vocabulary = read_folder(store, artifacts.VOCABULARY.under(out))
    assert vocabulary.schema.equals(pa.schema([("word", pa.string()), ("count", pa.int64()),
                                               ("vector", pa.list_(pa.float32(), 16))]), check_metadata=False)
    one_pass = WordCounter()
    one_pass.update(corpus.column("text").to_pylist())
    wanted = one_pass.top(cfg.embed.vocab_size, 2)
    assert sorted(zip(vocabulary.column("word").to_pylist(), vocabulary.column("count").to_pylist())) == sorted(wanted)
    word_vectors = by_key(vocabulary, "word")
    words = [w for w, _ in wanted[:10]]
    np.testing.assert_allclose(np.stack([word_vectors[w] for w in words]), encoder.encode(words), atol=1e-5)

    assert runner.run_stage(prepare.STAGE).get("skipped") is True
    assert runner.run_stage(embed.STAGE).get("skipped") is True


def write_corpus(folder, texts: list) -> str:
    table = pa.table({"text_id": pa.array(range(len(texts)), pa.int64()), "kind": ["review"] * len(texts),
                      "user": pa.array([1] * len(texts), pa.int32()), "item": pa.array([1] * len(texts), pa.int32()),
                      "text": pa.array(texts, pa.string())}, schema=schemas.CORPUS)
    folder.mkdir()
    pq.write_table(table, folder / "part-00000.parquet")
    return str(folder)


def test_edge_case_texts_are_counted_not_fatal(ray_local, tmp_path, tiny_model):
    cfg = load_config(None, [f"embed.model={tiny_model}", "embed.max_length=16", "embed.vocab_min_count=1"]).embed
    texts = ["", "   ", "🙂🙂", "cream " * 10_000, "lip balm", "face cream"]
    corpus = write_corpus(tmp_path / "corpus", texts)
    metrics = embed_corpus(corpus, str(tmp_path / "out"), pa.fs.LocalFileSystem(), cfg)
    assert (metrics["texts"], metrics["empty_texts"], metrics["truncated_texts"]) == (6, 2, 1)
    table = pq.read_table(artifacts.EMBEDDINGS.under(str(tmp_path / "out"))).sort_by("text_id")
    assert table.column("tokens").to_pylist()[:2] == [0, 0] and table.column("tokens")[3].as_py() == 16
    assert not np.any(np.stack(table.column("vector").to_numpy(zero_copy_only=False)[:2]))


def test_null_text_names_the_row(ray_local, tmp_path, tiny_model):
    cfg = load_config(None, [f"embed.model={tiny_model}", "embed.max_length=32", "embed.vocab_min_count=1"]).embed
    corpus = write_corpus(tmp_path / "corpus", ["lip balm", None, "face cream"])
    with pytest.raises(Exception, match=r"'text_id': 1\}.*is null|is null.*text_id"):
        embed_corpus(corpus, str(tmp_path / "out"), pa.fs.LocalFileSystem(), cfg)


@pytest.mark.parametrize("overrides, message", [
    (["embed.max_length=128"], "max_length=128 exceeds the model's max_position_embeddings=64"),
    (["embed.layer=3"], "layer=3 is out of range"),
    (["embed.kind=t5"], "kind='t5' but model"),
])
def test_bad_settings_fail_on_the_driver_before_any_work(tmp_path, tiny_model, overrides, message):
    cfg = load_config(None, [f"embed.model={tiny_model}", "embed.max_length=32", *overrides]).embed
    with pytest.raises(StageError, match=message):
        embed_corpus(str(tmp_path / "nothing"), str(tmp_path / "out"), pa.fs.LocalFileSystem(), cfg)
