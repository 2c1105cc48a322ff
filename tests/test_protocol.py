"""The evaluation protocol switch: strict (ours) never reads the test item before the final
evaluation; paper (the public SAERec code's) trains on the valid item and selects on the test
item; prefix augmentation; and the public code's SAERec (residual fusion, last-item retrieval)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from saerec.config import EvaluateSection, RecSection
from saerec.rec import evaluate
from saerec.rec.batching import leave_one_out, training_examples
from saerec.rec.runs import split, train_run
from saerec.rec.saerec_model import IntentConfig, SAERec
from saerec.rec.sasrec import EncoderConfig
from saerec.rec.variants import model_spec
from tests.rec_toy import chain_sequences, unique_sequences

torch.set_num_threads(1)
N_ITEMS = 24
REC = RecSection(d=8, heads=2, blocks=1, max_len=10, k=2, max_epochs=3, patience=3, batch_size=16,
                 checkpoint_seconds=0.0)
STRICT = EvaluateSection()


class PoisonedSet:
    """A stand-in test set whose every read raises: proof that nothing looked at it."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the test set was read ({name}) before the final evaluation")

    def __len__(self) -> int:
        raise AssertionError("the test set was read (len) before the final evaluation")


def test_paper_protocol_trains_on_the_valid_item_and_selects_on_the_test_item():
    seqs = unique_sequences([5, 3, 8])
    strict = leave_one_out(seqs, n_items=16, max_len=10)
    paper = leave_one_out(seqs, n_items=16, max_len=10, protocol="paper")
    assert [s.tolist() for s in strict.train] == [s[:-2] for s in seqs]
    assert [s.tolist() for s in paper.train] == [s[:-1] for s in seqs], "training ends at the valid item"
    assert paper.valid is paper.test, "the selection set is the test set"
    assert paper.test.targets.tolist() == [s[-1] for s in seqs] == strict.test.targets.tolist()
    assert (strict.protocol, paper.protocol) == ("strict", "paper")
    with pytest.raises(ValueError, match="protocol must be one of strict, paper"):
        leave_one_out(seqs, n_items=16, max_len=10, protocol="lenient")


@pytest.mark.parametrize("variant, intents", [("sasrec", None), ("saerec", torch.randn(6, 8))])
def test_strict_training_and_selection_never_read_the_test_set(variant, intents):
    data = leave_one_out(chain_sequences(n_users=30, n_items=N_ITEMS, length=8), N_ITEMS, max_len=10)
    poisoned = dataclasses.replace(data, test=PoisonedSet())
    trained = train_run(variant, 0, REC, STRICT, poisoned, intents, n_items=N_ITEMS)
    assert len(trained.result.history) == 3
    with pytest.raises(AssertionError, match="the test set was read"):
        evaluate(trained.model, poisoned.test)


def test_the_paper_protocol_selects_on_test_so_its_selected_score_is_the_test_score():
    seqs = chain_sequences(n_users=30, n_items=N_ITEMS, length=8)
    paper = EvaluateSection(protocol="paper")
    data = split(seqs, N_ITEMS, REC, paper)
    trained = train_run("sasrec", 0, REC, paper, data, None, n_items=N_ITEMS)
    test = evaluate(trained.model, data.test, paper.ks, paper.mask_history)
    assert trained.result.best_valid == pytest.approx(test)


def test_prefix_augmentation_makes_one_example_per_prefix_with_its_loss_at_the_end():
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    plain = training_examples(seqs, max_len=2)
    augmented = training_examples(seqs, max_len=2, prefixes=True)
    assert len(plain) == 2 and len(augmented) == 3 + 1
    rows = [(a[:n].tolist(), t[:n].tolist()) for a, t, n in zip(augmented.inputs, augmented.targets, augmented.lengths)]
    assert rows == [([1], [2]), ([1, 2], [0, 3]), ([2, 3], [0, 4]), ([5], [6])]
    assert int((augmented.targets > 0).sum()) == 4, "one loss position per example"


def test_a_prefix_augmented_run_trains_on_every_prefix():
    data = leave_one_out(chain_sequences(n_users=30, n_items=N_ITEMS, length=8), N_ITEMS, max_len=10)
    rec = dataclasses.replace(REC, prefix_augment=True, max_epochs=1)
    assert rec.fit(STRICT, 0).prefix_augment
    trained = train_run("sasrec", 0, rec, STRICT, data, None, n_items=N_ITEMS)
    assert np.isfinite(trained.result.history[0]["loss"])


def _code_model(**switches) -> SAERec:
    torch.manual_seed(0)
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=10, dropout=0.0)
    return SAERec(cfg, torch.randn(6, 4), IntentConfig(k=6, ema_beta=0.9, **switches)).eval()


def test_residual_fusion_is_the_public_codes_formula():
    model = _code_model(fusion_rule="residual")
    a, b, c = torch.randn(3, 5, 8).unbind(0)
    fused, weights = model.fuse([a, b, c])
    others = torch.stack([b, c], dim=1)
    w = torch.softmax(torch.einsum("nd,njd->nj", a, others) / 8 ** 0.5, dim=-1)
    assert torch.allclose(fused, a + (w.unsqueeze(-1) * others).sum(1), atol=1e-6)
    assert torch.allclose(weights[:, 0], torch.ones(5)) and torch.allclose(weights[:, 1:], w)


def test_item_query_retrieves_by_the_input_items_embedding():
    model = _code_model(query="item")
    states, items = torch.randn(4, 8), torch.tensor([3, 7, 7, 11])
    assert torch.equal(model.queries(states, items), model.item_emb(items))
    state_model = _code_model()
    assert torch.equal(state_model.queries(states, items), states)


def test_the_public_code_variant_retrieves_every_intent():
    enc = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=10)
    spec = model_spec("saerec-code", enc, IntentConfig(k=2, ema_beta=0.9), intent_shape=(37, 4))
    assert spec["intent_set"] == "all" and spec["intent"]["k"] == 37
    assert (spec["intent"]["query"], spec["intent"]["fusion_rule"]) == ("item", "residual")
    assert model_spec("saerec", enc, IntentConfig(k=2, ema_beta=0.9), intent_shape=(37, 4))["intent"]["k"] == 2


def test_retrieving_every_intent_attends_over_the_whole_set_whatever_the_order():
    model = _code_model(query="item")
    model.public_score.copy_(torch.linspace(0, 1, 6))
    seqs, lengths = torch.tensor([[3, 7, 1, 0], [5, 2, 8, 9]]), torch.tensor([3, 4])
    fast = model(seqs, lengths, last_only=True)
    states = model.encode(seqs, lengths)
    rows = torch.arange(2)
    last, items = states[rows, lengths - 1], seqs[rows, lengths - 1]
    projected = model.projected_intents()
    ids = model.personal_ids(model.queries(last, items), projected)
    per_query = model.personal_attn(last, projected, ids, model.steer_bias[ids])
    public = model.public_attn(last, projected, model.public_ids(), model.steer_bias[model.public_ids()])
    assert torch.allclose(fast, model.fuse([last, per_query, public])[0], atol=1e-5)
