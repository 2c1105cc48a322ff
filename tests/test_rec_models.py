"""SASRec and SAERec: causality, padding invariance, eq. (4), ablation switches, steering."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saerec.rec.losses import full_softmax_cross_entropy
from saerec.rec.saerec_model import IntentConfig, SAERec, steering
from saerec.rec.sasrec import EncoderConfig, SASRec
from saerec.rec.variants import variant

N_ITEMS, N_INTENTS, TEXT_DIM = 30, 12, 8


def _cfg(**kw) -> EncoderConfig:
    return EncoderConfig(n_items=N_ITEMS, d=16, blocks=2, heads=2, max_len=10, dropout=kw.pop("dropout", 0.0), **kw)


def _intents(seed: int = 0) -> torch.Tensor:
    return torch.randn(N_INTENTS, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def _saerec(name: str = "saerec", k: int = 3, beta: float = 0.9, seed: int = 0) -> SAERec:
    """A registered SAERec variant (its ablation switches from the variant registry)."""
    torch.manual_seed(seed)
    return SAERec(_cfg(), _intents(), IntentConfig(k=k, ema_beta=beta, **variant(name).switches))


def _batch():
    seqs = torch.tensor([[3, 7, 1, 9, 4, 0], [5, 2, 8, 0, 0, 0], [11, 12, 13, 14, 15, 16]])
    return seqs, torch.tensor([5, 3, 6]), torch.tensor([[7, 1, 9, 4, 2, 0], [2, 8, 6, 0, 0, 0], [12, 13, 14, 15, 16, 17]])


@pytest.mark.parametrize("make", [lambda: SASRec(_cfg()), lambda: _saerec()])
def test_states_are_causal_and_independent_of_padding_width(make):
    model = make().eval()
    seqs, lengths, _ = _batch()
    base = model.encode(seqs, lengths)
    changed = seqs.clone()
    changed[0, 3] = 20
    assert torch.allclose(model.encode(changed, lengths)[0, :3], base[0, :3], atol=1e-6)
    assert not torch.allclose(model.encode(changed, lengths)[0, 3], base[0, 3])
    wider = torch.cat([seqs, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(model(wider, lengths, last_only=True), model(seqs, lengths, last_only=True), atol=1e-5)
    reps = model(seqs, lengths)
    assert reps.shape == (int(lengths.sum()), 16)


def test_saerec_positions_do_not_see_the_future_through_retrieval():
    model = _saerec().eval()
    seqs, lengths, _ = _batch()
    changed = seqs.clone()
    changed[2, 4:] = torch.tensor([1, 2])
    before, after = model(seqs, lengths), model(changed, lengths)
    first_rows = int(lengths[:2].sum())
    assert torch.allclose(before[: first_rows + 4], after[: first_rows + 4], atol=1e-6)
    assert not torch.allclose(before[first_rows + 4:], after[first_rows + 4:])


def test_ema_update_matches_equation_4():
    model = _saerec(beta=0.8)
    projected = model.projected_intents().detach()
    f = torch.zeros(N_INTENTS)
    for step in range(3):
        users = torch.randn(5, 16, generator=torch.Generator().manual_seed(step))
        top = (F.normalize(users, dim=-1) @ F.normalize(projected, dim=-1).T).topk(3, dim=-1).indices
        a = torch.zeros(N_INTENTS)
        for row in top:
            a[row] += 1.0 / 5
        f = 0.8 * f + 0.2 * a
        model.update_public(users, projected)
        assert torch.allclose(model.public_score, f, atol=1e-7)
    assert model.public_ids().tolist() == f.topk(3).indices.tolist()


def test_public_score_moves_in_training_and_is_frozen_in_eval():
    model = _saerec()
    seqs, lengths, targets = _batch()
    model.eval()
    model(seqs, lengths)
    assert torch.count_nonzero(model.public_score) == 0
    model.train()
    model(seqs, lengths, targets)
    assert torch.count_nonzero(model.public_score) > 0
    assert model.public_score.sum().item() == pytest.approx(0.1 * 3)


def test_no_ema_ranks_public_intents_by_raw_cumulative_counts():
    ema, raw = _saerec("saerec", k=1, beta=0.5), _saerec("noEMA", k=1, beta=0.5)
    projected = ema.projected_intents().detach()
    early, late = projected[0].expand(6, -1), projected[1].expand(2, -1)
    for model in (ema, raw):
        model.update_public(early, projected)
        for _ in range(3):
            model.update_public(late, projected)
    assert raw.public_score[0] == 6 and raw.public_score[1] == 6 * 0 + 2 * 3
    assert ema.public_ids().tolist() == [1]
    raw.update_public(early, projected)
    assert raw.public_ids().tolist() == [0]


@pytest.mark.parametrize("ablation, branch", [("noPer", "personal_attn"), ("noPub", "public_attn"),
                                              ("noFus", "fusion")])
def test_each_ablation_removes_its_branch(ablation, branch):
    full = _saerec("saerec")
    ablated = _saerec(ablation)
    ablated.load_state_dict(full.state_dict())
    seqs, lengths, targets = _batch()
    full.public_score.copy_(torch.linspace(0, 1, N_INTENTS))
    ablated.public_score.copy_(full.public_score)
    full.eval(), ablated.eval()
    assert not torch.allclose(full(seqs, lengths), ablated(seqs, lengths))
    ablated.train()
    ablated(seqs, lengths, targets).backward()
    for name, param in ablated.named_parameters():
        if name.startswith(branch + "."):
            assert param.grad is None, name
        else:
            assert param.grad is not None, name


def test_full_model_trains_every_branch():
    model = _saerec()
    seqs, lengths, targets = _batch()
    model(seqs, lengths, targets).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_steering_boost_forces_retrieval_and_is_undone():
    model = _saerec().eval()
    seqs, lengths, _ = _batch()
    before = model.explain(seqs, lengths)["personal"]
    target = 7
    with steering(model, [target], strength=5.0):
        boosted = model.explain(seqs, lengths)["personal"]
        assert (boosted == target).any(dim=1).all()
    assert torch.equal(model.explain(seqs, lengths)["personal"], before)
    assert torch.count_nonzero(model.steer_bias) == 0
    with pytest.raises(ValueError, match="intent ids"):
        with steering(model, [N_INTENTS], 1.0):
            pass


def test_explain_refuses_training_mode_and_bad_configs_name_the_problem():
    model = _saerec()
    seqs, lengths, _ = _batch()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.explain(seqs, lengths)
    with pytest.raises(ValueError, match="k=20 exceeds"):
        SAERec(_cfg(), _intents(), IntentConfig(k=20, ema_beta=0.9))
    with pytest.raises(ValueError, match="unknown model variant 'noX'"):
        variant("noX")
    with pytest.raises(ValueError, match="exceeds max_len"):
        SASRec(_cfg()).encode(torch.ones(1, 11, dtype=torch.long), torch.tensor([11]))


def test_intent_attention_matches_attending_over_the_gathered_intents():
    from saerec.rec.saerec_model import IntentAttention

    torch.manual_seed(0)
    attn = IntentAttention(d=8, heads=2, dropout=0.0).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    queries, table = torch.randn(4, 8), torch.randn(10, 8)
    ids = torch.tensor([[0, 3], [9, 1], [2, 2], [5, 7]])
    bias = torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.0, 0.0], [2.0, -1.0]])
    expected = []
    for q, row, b in zip(queries, ids, bias):
        k, v = attn.key_value(table[row]).chunk(2, dim=-1)
        heads = []
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)
            w = torch.softmax(attn.query(q)[sl] @ k[:, sl].T / 2.0 + b, dim=-1)
            heads.append(w @ v[:, sl])
        expected.append(attn.out(torch.cat(heads)))
    assert torch.allclose(attn(queries, table, ids, bias), torch.stack(expected), atol=1e-5)
    shared = attn(queries, table, torch.tensor([4, 6]), torch.zeros(2))
    per_query = attn(queries, table, torch.tensor([[4, 6]] * 4), torch.zeros(4, 2))
    assert torch.allclose(shared, per_query, atol=1e-6)


def test_full_softmax_cross_entropy_matches_the_reference_in_value_and_gradients():
    g = torch.Generator().manual_seed(3)
    reps = torch.randn(40, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, dtype=torch.float64).mul(3).requires_grad_()
    targets = torch.randint(0, 300, (40,), generator=g)
    targets[:5] = 7  # repeated targets
    upstream = torch.tensor(2.5, dtype=torch.float64)
    ours = full_softmax_cross_entropy(reps, weight, targets)
    (ours * upstream).backward()
    got = reps.grad.clone(), weight.grad.clone()
    reps.grad = weight.grad = None
    reference = F.cross_entropy(reps @ weight.T, targets)
    (reference * upstream).backward()
    assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got[0], reps.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got[1], weight.grad, rtol=1e-10, atol=1e-12)


def test_full_softmax_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="share d"):
        full_softmax_cross_entropy(torch.zeros(4, 8), torch.zeros(10, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have shape \(4,\)"):
        full_softmax_cross_entropy(torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(3, dtype=torch.long))
