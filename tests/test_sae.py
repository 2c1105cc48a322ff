"""Unit tests for the TopK SAE model, sizing rule, metrics and training pieces (no Ray)."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors

from saerec.sae import (
    SAEConfig,
    TopKSAE,
    TrainState,
    build_optimizer,
    checkpoint_state,
    data_centre,
    default_lr,
    evaluate,
    geometric_median,
    load_checkpoint_state,
    num_latents,
    train_epoch,
)
from saerec.sae.metrics import activation_counts, dead_pct, density_histogram, fvu, fvu_from_sums

torch.set_num_threads(1)


def sparse_mixture(n: int, d: int, n_directions: int, active: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that are sums of ``active`` known unit directions with positive weights, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(n_directions, d, generator=gen), dim=1)
    chosen = torch.stack([torch.randperm(n_directions, generator=gen)[:active] for _ in range(n)])
    weights = torch.rand(n, active, generator=gen) + 0.5
    x = (weights[:, :, None] * directions[chosen]).sum(1) + 0.01 * torch.randn(n, d, generator=gen)
    return x, directions


def shuffled_batches(x: torch.Tensor, batch_size: int, epoch: int):
    """Batch order depends only on the epoch, so a resumed run replays the same order."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + epoch))
    return (x[order[i : i + batch_size]] for i in range(0, len(x), batch_size))


def fit(model: TopKSAE, x: torch.Tensor, epochs: int, lr: float, dead_after: int = 10**9) -> TrainState:
    optimizer = build_optimizer(model, lr)
    state = TrainState(model.n_latents, dead_after=dead_after)
    for epoch in range(epochs):
        train_epoch(model, optimizer, shuffled_batches(x, 256, epoch), state)
    return state


# -- model --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_topk_keeps_exactly_k_nonzeros_per_row(tied: bool) -> None:
    torch.manual_seed(0)
    model = TopKSAE(SAEConfig(d_in=16, n_latents=64, k=5, tied=tied))
    with torch.no_grad():
        model.b_enc.fill_(10.0)  # every pre-activation positive: TopK alone decides sparsity
    x = torch.randn(40, 16)
    values, indices = model.encode(x)
    assert values.shape == indices.shape == (40, 5)
    dense = torch.zeros(40, 64).scatter(1, indices, values)
    assert ((dense != 0).sum(1) == 5).all()
    assert all(len(set(row.tolist())) == 5 for row in indices)
    # the k kept are the k largest pre-activations
    pre = model.pre_activations(x)
    assert torch.equal(torch.sort(values, dim=1).values, torch.sort(pre.topk(5, dim=1).values, dim=1).values)


def test_topk_never_exceeds_k_and_relu_drops_negative_codes() -> None:
    torch.manual_seed(1)
    model = TopKSAE(SAEConfig(d_in=16, n_latents=64, k=8, tied=True))
    with torch.no_grad():
        model.b_enc.fill_(-0.6)  # many rows then have fewer than 8 positive pre-activations
    x = torch.randn(200, 16) * 0.3
    values, _ = model.encode(x)
    positives = (model.pre_activations(x) > 0).sum(1)
    assert torch.equal((values != 0).sum(1), positives.clamp(max=8))
    assert (positives < 8).any() and (values >= 0).all()


def test_tied_decoder_is_encoder_transpose_before_and_after_a_step() -> None:
    torch.manual_seed(2)
    model = TopKSAE(SAEConfig(d_in=12, n_latents=48, k=4, tied=True))
    assert model.W_dec is None
    assert all(name != "W_dec" for name, _ in model.named_parameters())
    x = torch.randn(64, 12)
    optimizer = build_optimizer(model, 1e-2)
    for _ in range(2):
        out = model(x)
        dense = torch.zeros(64, 48).scatter(1, out.top_indices, out.top_values)
        assert torch.allclose(out.reconstruction, dense @ model.W_enc + model.b_pre, atol=1e-5)
        assert model.decoder_weight() is model.W_enc
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


def test_untied_decoder_starts_as_encoder_transpose_and_rows_stay_unit_norm() -> None:
    torch.manual_seed(3)
    model = TopKSAE(SAEConfig(d_in=24, n_latents=96, k=6, tied=False, aux_k=12))
    assert torch.equal(model.W_dec, model.W_enc)
    x, _ = sparse_mixture(1024, 24, 32, 3, seed=3)
    state = fit(model, x, epochs=3, lr=1e-2, dead_after=256)
    assert state.step == 12
    assert not torch.equal(model.W_dec, model.W_enc)
    assert torch.allclose(model.W_dec.norm(dim=1), torch.ones(96), atol=1e-5)


def test_decoder_gradient_parallel_component_is_removed() -> None:
    torch.manual_seed(4)
    model = TopKSAE(SAEConfig(d_in=8, n_latents=32, k=3, tied=False))
    model(torch.randn(50, 8)).loss.backward()
    assert (model.W_dec.grad * model.W_dec).sum(1).abs().max() > 1e-4
    model.project_decoder_grad()
    assert (model.W_dec.grad * model.W_dec).sum(1).abs().max() < 1e-6


def test_auxk_revives_planted_dead_latents() -> None:
    x, _ = sparse_mixture(4096, 32, 64, 3, seed=5)
    planted = torch.arange(32)
    alive = {}
    for aux_k in (None, 16):
        torch.manual_seed(5)
        model = TopKSAE(SAEConfig(d_in=32, n_latents=64, k=3, tied=False, aux_k=aux_k))
        with torch.no_grad():
            model.W_enc[planted] *= 0.01  # these never win the TopK: dead from the start
        fit(model, x, epochs=3, lr=3e-3, dead_after=512)
        counts = evaluate(model, x.split(1024))["activation_counts"]
        alive[aux_k] = float((counts[planted] > 0).double().mean())
    assert alive[None] == 0.0
    assert alive[16] >= 0.9


@pytest.mark.parametrize("tied", [True, False])
def test_sae_recovers_known_sparse_directions(tied: bool) -> None:
    x, directions = sparse_mixture(8192, 32, 48, 3, seed=6)
    x = x + 1.0  # an offset the pre-bias must absorb
    torch.manual_seed(6)
    model = TopKSAE(SAEConfig(d_in=32, n_latents=96, k=3, tied=tied, aux_k=None if tied else 16))
    model.set_pre_bias(data_centre(x[:1024]))
    fit(model, x, epochs=10, lr=3e-3, dead_after=2048)
    cosine = (directions @ F.normalize(model.decoder_weight().detach(), dim=1).T).max(1).values
    assert float((cosine > 0.9).double().mean()) >= 0.9
    assert evaluate(model, x.split(2048))["fvu"] < 0.15


def test_geometric_median_resists_outliers_and_sets_pre_bias() -> None:
    gen = torch.Generator().manual_seed(7)
    cloud = torch.randn(500, 6, generator=gen) * 0.1 + 2.0
    outliers = torch.full((40, 6), 100.0)
    points = torch.cat([cloud, outliers])
    median = geometric_median(points)
    assert (median - 2.0).abs().max() < 0.1
    assert (points.mean(0) - 2.0).abs().min() > 5.0
    model = TopKSAE(SAEConfig(d_in=6, n_latents=12, k=2, tied=True))
    model.set_pre_bias(data_centre(points, "geometric_median"))
    assert torch.allclose(model.b_pre, median)
    model.set_pre_bias(data_centre(points, "mean"))
    assert torch.allclose(model.b_pre, points.mean(0))
    with pytest.raises(ValueError, match="pre-bias method"):
        model.set_pre_bias(data_centre(points, "median"))


def test_config_and_state_dict_round_trip_through_safetensors() -> None:
    torch.manual_seed(8)
    model = TopKSAE(SAEConfig(d_in=10, n_latents=40, k=4, tied=False, aux_k=5))
    config, weights = model.to_bytes()
    assert load_safetensors(weights).keys() == model.state_dict().keys(), "the weights are a plain safetensors file"
    clone = TopKSAE.from_bytes(config, weights)
    assert clone.config == model.config and not clone.training
    x = torch.randn(7, 10)
    assert torch.equal(clone(x).reconstruction, model(x).reconstruction)
    assert torch.equal(clone.intent_vectors(), model.W_enc.detach())
    assert clone.intent_vectors().shape == (40, 10)
    with pytest.raises(ValueError, match="missing key"):
        TopKSAE.from_bytes(b'{"d_in": 10}', weights)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['width'\]"):
        SAEConfig.from_dict({**model.config.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="not valid JSON"):
        TopKSAE.from_bytes(config[:-3], weights)
    with pytest.raises(ValueError, match="not a safetensors file"):
        TopKSAE.from_bytes(config, weights[:20])
    other = TopKSAE(SAEConfig(d_in=10, n_latents=41, k=4, tied=False)).to_bytes()[0]
    with pytest.raises(ValueError, match="do not fit the config"):
        TopKSAE.from_bytes(other, weights)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="k must be"):
        TopKSAE(SAEConfig(d_in=4, n_latents=8, k=9, tied=True))
    model = TopKSAE(SAEConfig(d_in=4, n_latents=8, k=2, tied=False, aux_k=2))
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        model(torch.randn(3, 5))
    with pytest.raises(ValueError, match="dead_mask"):
        model(torch.randn(3, 4), dead_mask=torch.zeros(7, dtype=torch.bool))


# -- sizing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_texts", "expected"),
    [(198_502, 16_384), (167_597, 16_384), (296_337, 32_768), (316_354, 32_768)],
)
def test_sizing_reproduces_the_papers_widths(n_texts: int, expected: int) -> None:
    assert num_latents(n_texts) == expected


def test_sizing_is_monotone_power_of_two_and_clamped() -> None:
    sizes = [num_latents(n) for n in (10, 1_000, 12_101, 50_000, 198_502, 1_000_000, 10**8)]
    assert sizes == sorted(sizes)
    assert all(size & (size - 1) == 0 for size in sizes)
    assert sizes[0] == 256 and num_latents(10, min_latents=64) == 64
    with pytest.raises(ValueError, match="n_texts"):
        num_latents(0)


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_on_hand_computed_values() -> None:
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    assert math.isclose(float(fvu(x, x)), 0.0)
    assert math.isclose(float(fvu(x, x.mean(0).expand_as(x))), 1.0, rel_tol=1e-6)
    sse = float((x * 0.5 - x).pow(2).sum())
    assert math.isclose(fvu_from_sums(sse, x.sum(0), float(x.pow(2).sum()), 2), float(fvu(x, x * 0.5)), rel_tol=1e-6)

    values = torch.tensor([[2.0, 0.0], [1.0, 3.0], [0.5, 1.0]])
    indices = torch.tensor([[0, 1], [0, 2], [2, 0]])
    counts = activation_counts(values, indices, n_latents=4)
    assert counts.tolist() == [3, 0, 2, 0]
    assert dead_pct(counts) == 50.0
    hist = density_histogram(torch.tensor([0, 1, 10, 100, 1000]), n_samples=1000)
    assert hist["dead"] == 1
    assert sum(hist["counts"]) == 4
    # log10 frequencies -3, -2, -1, 0 land in the bins starting at -3, -2, -1 and the last bin
    edges = hist["bin_edges_log10"]
    assert [edges[i] for i, c in enumerate(hist["counts"]) if c] == [-3.0, -2.0, -1.0]
    assert hist["counts"][-1] == 2


# -- training -----------------------------------------------------------------------------------


def test_train_epoch_reports_corpus_metrics_and_improves_fvu() -> None:
    x, _ = sparse_mixture(2048, 16, 24, 2, seed=9)
    torch.manual_seed(9)
    model = TopKSAE(SAEConfig(d_in=16, n_latents=48, k=2, tied=False, aux_k=8))
    optimizer = build_optimizer(model, 5e-3)
    state = TrainState(48, dead_after=1024)
    first = train_epoch(model, optimizer, shuffled_batches(x, 128, 0), state)
    for epoch in range(1, 4):
        last = train_epoch(model, optimizer, shuffled_batches(x, 128, epoch), state)
    assert last["fvu"] < first["fvu"]
    assert last["n_samples"] == 2048 and last["steps"] == 16
    assert 0 < last["l0"] <= 2
    assert state.epoch == 4 and int(state.samples_seen) == 4 * 2048
    assert set(last) >= {"fvu", "l0", "dead_pct", "auxk_dead_pct", "density_histogram", "loss", "aux_loss"}


def test_evaluate_over_shards_with_reduce_equals_whole_corpus() -> None:
    x, _ = sparse_mixture(600, 16, 24, 2, seed=10)
    torch.manual_seed(10)
    model = TopKSAE(SAEConfig(d_in=16, n_latents=48, k=3, tied=True))
    whole = evaluate(model, x.split(100))
    shard_b: list[torch.Tensor] = []
    evaluate(model, x[350:].split(100), reduce=lambda t: shard_b.append(t.clone()) or t)
    combined = evaluate(model, x[:350].split(100), reduce=lambda t: t + shard_b[0])
    assert math.isclose(combined["fvu"], whole["fvu"], rel_tol=1e-6)
    assert combined["l0"] == whole["l0"] and combined["n_samples"] == 600
    assert torch.equal(combined["activation_counts"], whole["activation_counts"])


def test_resumed_training_matches_uninterrupted_run() -> None:
    x, _ = sparse_mixture(1024, 16, 32, 3, seed=11)

    def fresh() -> tuple[TopKSAE, torch.optim.Optimizer, TrainState]:
        torch.manual_seed(11)
        model = TopKSAE(SAEConfig(d_in=16, n_latents=64, k=3, tied=False, aux_k=8))
        model.set_pre_bias(data_centre(x[:256]))
        with torch.no_grad():
            model.W_enc[:16] *= 0.01  # dead latents, so AuxK and the dead counters matter
        return model, build_optimizer(model, 5e-3), TrainState(64, dead_after=300)

    model, optimizer, state = fresh()
    for epoch in range(4):
        train_epoch(model, optimizer, shuffled_batches(x, 128, epoch), state)

    interrupted, optimizer_a, state_a = fresh()
    for epoch in range(2):
        train_epoch(interrupted, optimizer_a, shuffled_batches(x, 128, epoch), state_a)
    buffer = io.BytesIO()
    torch.save(checkpoint_state(interrupted, optimizer_a, state_a), buffer)
    del interrupted, optimizer_a, state_a

    resumed, optimizer_b, state_b = fresh()
    with torch.no_grad():
        resumed.W_enc.add_(1.0)  # prove the checkpoint, not the seed, supplies the weights
    buffer.seek(0)
    load_checkpoint_state(torch.load(buffer), resumed, optimizer_b, state_b)
    assert state_b.epoch == 2 and int(state_b.samples_seen) == 2048
    aux_losses = [
        train_epoch(resumed, optimizer_b, shuffled_batches(x, 128, epoch), state_b)["aux_loss"]
        for epoch in range(state_b.epoch, 4)
    ]
    assert max(aux_losses) > 0

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert torch.equal(state.since_fired, state_b.since_fired)


def test_default_lr_scales_with_inverse_sqrt_width() -> None:
    assert math.isclose(default_lr(2**14), 1e-3)
    assert math.isclose(default_lr(2**16), 5e-4)
    assert math.isclose(default_lr(2**12), 2e-3)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One of two gloo workers, each training on its half of the data, as Ray Train runs them."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, _ = sparse_mixture(1024, 16, 24, 2, seed=12)
    torch.manual_seed(12)
    model = TopKSAE(SAEConfig(d_in=16, n_latents=48, k=2, tied=False, aux_k=8))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = build_optimizer(ddp, 5e-3)
    state = TrainState(48, dead_after=64)

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    shard = x[rank::world]
    for _ in range(2):
        train_epoch(ddp, optimizer, shard.split(64), state, reduce)
    metrics = evaluate(ddp, shard.split(128), reduce)
    torch.save({"model": model.state_dict(), "since_fired": state.since_fired, "samples": int(state.samples_seen),
                "metrics": metrics}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ddp_workers_stay_in_step_and_report_corpus_metrics(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for name, tensor in ranks[0]["model"].items():
        assert torch.equal(tensor, ranks[1]["model"][name]), name
    assert torch.equal(ranks[0]["since_fired"], ranks[1]["since_fired"])
    assert ranks[0]["samples"] == 2 * 1024  # 2 epochs of the whole corpus, counted on every worker

    x, _ = sparse_mixture(1024, 16, 24, 2, seed=12)
    model = TopKSAE(SAEConfig(d_in=16, n_latents=48, k=2, tied=False, aux_k=8))
    model.load_state_dict(ranks[0]["model"])
    whole = evaluate(model, x.split(128))
    for metrics in (ranks[0]["metrics"], ranks[1]["metrics"]):
        assert metrics["fvu"] == pytest.approx(whole["fvu"], rel=1e-6)
        assert torch.equal(metrics["activation_counts"], whole["activation_counts"])
