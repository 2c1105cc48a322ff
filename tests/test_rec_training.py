"""Training: a tiny model overfits a tiny dataset, early stopping, exact resume."""
from __future__ import annotations

import pytest
import torch

from saerec.rec.batching import leave_one_out
from saerec.rec.metrics import evaluate
from saerec.rec.saerec_model import IntentConfig, SAERec
from saerec.rec.sasrec import EncoderConfig, SASRec
from saerec.rec.training import EarlyStopping, FitConfig, fit
from tests.rec_toy import chain_sequences

torch.set_num_threads(1)
N_ITEMS = 24


def _data():
    return leave_one_out(chain_sequences(n_users=40, n_items=N_ITEMS, length=8), N_ITEMS, max_len=10)


def _model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = EncoderConfig(n_items=N_ITEMS, d=16, heads=2, blocks=1, max_len=10, dropout=0.0)
    if kind == "sasrec":
        return SASRec(cfg)
    return SAERec(cfg, torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), IntentConfig(k=2, ema_beta=0.9))


@pytest.mark.parametrize("kind", ["sasrec", "saerec"])
def test_tiny_model_overfits_tiny_chain_data(kind):
    data = _data()
    model = _model(kind)
    cfg = FitConfig(lr=1e-2, batch_size=16, max_epochs=25, patience=25, ks=(1, 5), select_metric="hr@1")
    result = fit(model, data, cfg, max_len=10)
    assert result.history[-1]["loss"] < 0.2 * result.history[0]["loss"]
    assert result.best_valid["hr@1"] > 0.9
    model.load_state_dict(result.best_model)
    test = evaluate(model, data.test, ks=(1, 5), mask_history=True)
    assert test["hr@1"] > 0.9


def test_early_stopping_counts_epochs_without_improvement():
    stop = EarlyStopping(patience=2)
    assert stop.update(1, 0.1) and stop.update(2, 0.2)
    assert not stop.update(3, 0.2) and not stop.should_stop
    assert not stop.update(4, 0.15) and stop.should_stop
    assert (stop.best_epoch, stop.best_score) == (2, 0.2)


def test_fit_stops_after_patience_and_selects_the_best_valid_epoch():
    data = _data()
    cfg = FitConfig(lr=1e-3, batch_size=16, max_epochs=50, patience=1, ks=(5,), select_metric="ndcg@5")
    result = fit(_model("sasrec"), data, cfg, max_len=10)
    scores = [h["valid_ndcg@5"] for h in result.history]
    assert len(result.history) < 50
    assert result.best_valid["ndcg@5"] == max(scores)
    assert result.best_epoch == scores.index(max(scores)) + 1


@pytest.mark.parametrize("kind", ["sasrec", "saerec"])
def test_resume_from_a_snapshot_reproduces_the_uninterrupted_run(kind):
    data = _data()
    cfg = FitConfig(lr=5e-3, batch_size=8, max_epochs=4, patience=10, ks=(5,), select_metric="ndcg@5", seed=3)
    full_run = fit(_model(kind, seed=3), data, cfg, max_len=10)
    snapshots = []
    short = FitConfig(**{**cfg.__dict__, "max_epochs": 2})
    fit(_model(kind, seed=3), data, short, max_len=10, on_epoch=lambda state, snap: snapshots.append(snap))
    resumed = fit(_model(kind, seed=99), data, cfg, max_len=10, resume=snapshots[-1])
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full_run.history], rel=1e-6)
    for name, tensor in full_run.best_model.items():
        assert torch.allclose(tensor, resumed.best_model[name], atol=1e-6), name


def test_fit_config_rejects_a_selection_metric_it_does_not_compute():
    with pytest.raises(ValueError, match="select_metric 'ndcg@50'"):
        FitConfig(select_metric="ndcg@50")


class _RecordingSASRec(SASRec):
    """A real SASRec that remembers which training sequences it was fed."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.seen = []

    def forward(self, seqs, lengths, targets=None, last_only=False):
        if targets is not None:
            self.seen += [tuple(r) for r in seqs.tolist()]
        return super().forward(seqs, lengths, targets, last_only)


def test_data_parallel_shards_split_the_same_epoch_into_disjoint_batches():
    import numpy as np

    from saerec.rec.batching import bucketed_batches, training_examples
    from saerec.rec.training import make_optimizer, train_epoch

    data = _data()
    examples = training_examples(data.train, max_len=10)
    cfg = EncoderConfig(n_items=N_ITEMS, d=16, heads=2, blocks=1, max_len=10, dropout=0.0)
    seen = []
    for rank in (0, 1):
        model = _RecordingSASRec(cfg)
        train_epoch(model, make_optimizer(model, FitConfig()), examples, 6, np.random.default_rng(5), shard=(rank, 2))
        seen.append(model.seen)
    batches = list(bucketed_batches(examples, 6, np.random.default_rng(5)))
    kept = len(batches) - len(batches) % 2
    expected = [tuple(r) for b in batches[:kept] for r in b[0].tolist()]
    assert [tuple(r) for b in batches[0:kept:2] for r in b[0].tolist()] == seen[0]
    assert sorted(seen[0] + seen[1]) == sorted(expected)
    assert len(seen[0]) > 0 and len(seen[1]) > 0


def test_token_weighting_only_changes_training_when_batches_differ_in_size():
    import numpy as np

    from saerec.rec.batching import training_examples
    from saerec.rec.training import make_optimizer, train_epoch

    examples = training_examples(leave_one_out([[1, 2, 3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 7]] * 4, N_ITEMS,
                                               max_len=10).train, max_len=10)

    def weights_after(batch_size, weighted):
        model = _model("sasrec", seed=0)
        train_epoch(model, make_optimizer(model, FitConfig(lr=1e-2)), examples, batch_size,
                    np.random.default_rng(0), token_weighted=weighted)
        return model.item_emb.weight.detach().clone()

    assert torch.allclose(weights_after(len(examples), True), weights_after(len(examples), False), atol=1e-6)
    assert not torch.allclose(weights_after(4, True), weights_after(4, False), atol=1e-6)
