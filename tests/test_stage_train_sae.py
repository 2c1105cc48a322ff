"""The train_sae stage on local Ray: outputs on S3, crash-and-resume, settings resolution."""
from __future__ import annotations

import os
from dataclasses import asdict, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from saerec import artifacts, schemas
from saerec.config import ConfigError, load_config
from saerec.pipeline import Runner, Stage, StageContext, StageError, StageFiles
from saerec.sae import SAEConfig, TopKSAE, TrainState, build_optimizer, data_centre, evaluate, train_epoch
from saerec.stages import train_sae
from saerec.workers import sae_train
from saerec.storage import Store
from tests.test_logs import logged
from tests.test_sae import sparse_mixture

DIM = 16
N_TEXTS = 600
EMPTY_IDS = (5, 77)


def toy_vectors() -> np.ndarray:
    x, _ = sparse_mixture(N_TEXTS, DIM, 24, 2, seed=21)
    x[list(EMPTY_IDS)] = 0.0
    return x.numpy()


def _toy_embed(ctx: StageContext) -> dict:
    """Stands in for the embed stage: its output layout, two shards, two empty texts."""
    vectors = toy_vectors()
    tokens = np.where(np.isin(np.arange(N_TEXTS), EMPTY_IDS), 0, 7).astype(np.int32)
    for part, rows in enumerate(np.array_split(np.arange(N_TEXTS), 2)):
        table = pa.table({
            "text_id": pa.array(rows, pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].reshape(-1)), DIM),
            "tokens": pa.array(tokens[rows]),
            "truncated": pa.array(np.zeros(len(rows), bool)),
        }, schema=schemas.embedding_table_schema(DIM))
        ctx.output.write_table(f"{artifacts.EMBEDDINGS.name}part-{part:05d}.parquet", table)
    return {"texts": N_TEXTS, "empty_texts": len(EMPTY_IDS), "dim": DIM}


TOY_EMBED = Stage(name="embed", run=_toy_embed, sections=("embed",))
SAE_SETTINGS = ["sae.n_latents=48", "sae.k=3", "sae.aux_k=8", "sae.epochs=3", "sae.batch_size=64", "sae.lr=0.005"]


def non_empty() -> torch.Tensor:
    keep = np.ones(N_TEXTS, bool)
    keep[list(EMPTY_IDS)] = False
    return torch.from_numpy(toy_vectors()[keep])


def test_stage_on_s3_publishes_a_consistent_sae(s3_server, s3_uri, ray_local):
    cfg = load_config(None, [f"storage.uri={s3_uri}", f"storage.endpoint_url={s3_server.endpoint}",
                             "run.name=sae", *SAE_SETTINGS])
    store = Store(cfg.storage.uri, cfg.storage.endpoint_url)
    runner = Runner(cfg, store)
    runner.run_stage(TOY_EMBED)
    with logged("saerec.train_progress") as lines:
        manifest = runner.run_stage(train_sae.STAGE)
    out = StageFiles(store, manifest["output_dir"])
    metrics = manifest["metrics"]

    assert sorted(manifest["outputs"]) == ["latent_frequency.parquet", "metrics.json", "sae.safetensors",
                                           "sae_config.json"]
    assert metrics["texts"] == N_TEXTS - len(EMPTY_IDS) and metrics["n_latents"] == 48
    assert metrics["resumed_from_epoch"] == 0 and metrics["samples_per_s"] > 0
    model = TopKSAE.from_bytes(out.read_bytes("sae_config.json"), out.read_bytes("sae.safetensors"))
    settings = out.read_json("metrics.json")["settings"]
    assert model.W_dec is not None and settings["dead_after"] == N_TEXTS - len(EMPTY_IDS)

    # the published metrics and frequencies are what the published weights do to the corpus
    local = evaluate(model, non_empty().split(128))
    assert metrics["fvu"] == pytest.approx(local["fvu"], rel=1e-4)
    assert metrics["l0"] == pytest.approx(local["l0"]) and metrics["dead_pct"] == local["dead_pct"]
    frequency = out.read_table("latent_frequency.parquet")
    assert frequency.schema.equals(schemas.LATENT_FREQUENCY)
    assert frequency.column("count").to_pylist() == local["activation_counts"].tolist()

    history = out.read_json("metrics.json")["history"]
    assert [epoch["epoch"] for epoch in history] == [1, 2, 3]
    assert history[-1]["fvu"] < history[0]["fvu"] and metrics["fvu"] < 0.5
    # the driver printed one line per epoch, with what the epoch recorded
    assert [line.rsplit(", ", 1)[0] for line in lines] == [
        f"[train_sae] epoch {h['epoch']}/3: loss {h['loss']:.4f}, fvu {h['fvu']:.4f}, dead {h['dead_pct']:.1f}%"
        for h in history], lines
    assert all(line.endswith(" s/epoch") for line in lines)
    assert runner.run_stage(train_sae.STAGE).get("skipped") is True

    # Ray Data, Train and DDP plumbing change nothing: a plain loop with the same seed, pre-bias
    # and epoch orders over the same rows trains the same weights
    x = non_empty()
    spec = sae_train.resolve_run(cfg.sae, DIM, len(x), cfg.seed)
    torch.manual_seed(cfg.seed)
    plain = TopKSAE(spec.model)
    plain.set_pre_bias(data_centre(x, "geometric_median"))
    optimizer = build_optimizer(plain, spec.lr)
    state = TrainState(plain.n_latents, spec.dead_after)
    for epoch in range(spec.epochs):
        order = sae_train.epoch_order(len(x), cfg.seed, epoch)
        train_epoch(plain, optimizer, (x[order[i : i + 64]] for i in range(0, len(x), 64)), state)
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


class FailAfterRows:
    """A map_batches function that lets ``limit`` rows through in total, then fails (a crash)."""

    def __init__(self, counter_file: str, limit: int):
        self.counter_file = counter_file
        self.limit = limit

    def __call__(self, batch: dict) -> dict:
        with open(self.counter_file, "a") as handle:
            handle.write(f"{len(batch['vector'])}\n")
        with open(self.counter_file) as handle:
            seen = sum(int(line) for line in handle)
        if seen > self.limit:
            raise RuntimeError("simulated crash")
        return batch


@pytest.mark.timeout(1200)  # three Ray Train runs
def test_crashed_run_resumes_from_its_checkpoint_and_matches_uninterrupted(tmp_path, ray_local):
    """Streamed feeding (every epoch re-reads the data) lets the data itself crash the run."""
    import ray.train
    from pyarrow.fs import LocalFileSystem

    source = tmp_path / "embeddings"
    source.mkdir()
    pq.write_table(pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(toy_vectors().reshape(-1)), DIM),
        "tokens": pa.array(np.full(N_TEXTS, 3, np.int32)),
    }), source / "part-00000.parquet")
    fs = LocalFileSystem()
    ds = sae_train.embedding_dataset(str(source), fs)
    cfg = load_config(None, [*SAE_SETTINGS, "sae.epochs=2", "sae.dead_after=100", "sae.cache_shard=false"]).sae
    spec = sae_train.resolve_run(cfg, DIM, N_TEXTS, seed=3)
    spec = replace(spec, pre_bias=sae_train.pre_bias_from_sample(ds, "mean"))

    def fit(dataset, name):
        return sae_train.train_on_ray(dataset, spec, str(tmp_path / "train"), fs, name, num_workers=1, use_gpu=False)

    whole = sae_train.read_final(fit(ds, "whole").checkpoint)

    crashing = ds.map_batches(FailAfterRows(str(tmp_path / "rows.txt"), limit=N_TEXTS), batch_size=50)
    crashing.context.execution_options.preserve_order = True
    with pytest.raises(ray.train.TrainingFailedError):
        fit(crashing, "crashy")
    assert os.path.exists(tmp_path / "train" / "crashy")
    resumed = sae_train.read_final(fit(ds, "crashy").checkpoint)

    assert resumed[0]["resumed_from_epoch"] == 1 and whole[0]["resumed_from_epoch"] == 0
    assert [e["epoch"] for e in resumed[0]["history"]] == [1, 2]
    resumed_state = TopKSAE.from_bytes(*resumed[1]).state_dict()
    for name, tensor in TopKSAE.from_bytes(*whole[1]).state_dict().items():
        assert torch.equal(tensor, resumed_state[name]), name
    assert torch.equal(whole[2], resumed[2])
    assert resumed[0]["final"]["fvu"] == whole[0]["final"]["fvu"]
    assert asdict(spec)["pre_bias"] is not None


def test_settings_follow_the_sizing_rule_and_reject_bad_values():
    cfg = load_config(None, ["sae.variant=tied", "sae.aux_k=0"]).sae
    spec = sae_train.resolve_run(cfg, 384, 198_502, seed=0)
    assert spec.model == SAEConfig(d_in=384, n_latents=16_384, k=32, tied=True, aux_k=None, aux_coef=cfg.aux_coef)
    assert spec.dead_after == 198_502 and spec.lr == pytest.approx(1e-3)
    small = sae_train.resolve_run(load_config(None, ["sae.n_latents=64"]).sae, 16, 500, seed=0)
    assert small.model.n_latents == 64 and small.model.aux_k == 64
    with pytest.raises(ConfigError, match="sae.k=32 exceeds sae.n_latents=16"):
        load_config(None, ["sae.n_latents=16"])
    with pytest.raises(StageError, match="sae.k=512 exceeds the number of latents 256"):
        sae_train.resolve_run(load_config(None, ["sae.k=512"]).sae, 16, 500, seed=0)
