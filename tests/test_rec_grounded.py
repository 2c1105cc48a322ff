"""Grounded SASRec: items are ID + their intents, and every score splits exactly into named intents."""
from __future__ import annotations

import pytest
import torch

from saerec.rec.grounded import GroundedSASRec, ItemProfiles
from saerec.rec.sasrec import EncoderConfig

N_ITEMS, N_INTENTS = 12, 5


def _profiles() -> ItemProfiles:
    return ItemProfiles.from_lists(N_ITEMS, {1: ([0, 3], [0.5, 0.25]), 2: ([3], [1.0]), 7: ([4, 1, 2], [0.2, 0.3, 0.1])})


@pytest.mark.parametrize("projected", [False, True])
def test_the_score_is_the_id_part_plus_the_intent_contributions(projected):
    torch.manual_seed(0)
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=6, dropout=0.0)
    model = GroundedSASRec(cfg, _profiles(), N_INTENTS, torch.randn(N_INTENTS, 4) if projected else None).eval()
    seqs, lengths = torch.tensor([[1, 2, 7, 0], [3, 4, 5, 6]]), torch.tensor([3, 4])
    reps = model(seqs, lengths, last_only=True)
    scores = model.item_scores(reps)
    items = torch.arange(1, N_ITEMS + 1).expand(2, -1)
    parts = model.score_parts(reps, items)
    rebuilt = parts["id"] + parts["contributions"].sum(-1)
    assert torch.allclose(rebuilt, scores[:, 1:], atol=1e-6)
    table = model.intent_table()
    assert torch.allclose(parts["contributions"][0, 6, 0], 0.2 * reps[0] @ table[4], atol=1e-6)
    assert torch.all(parts["contributions"][:, 2:6] == 0), "items without text have no intent part"


def test_an_item_without_text_is_its_id_embedding_and_profiles_are_checked():
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=6)
    model = GroundedSASRec(cfg, _profiles(), N_INTENTS)
    assert torch.equal(model.item_vectors(torch.tensor([5])), model.item_emb(torch.tensor([5])))
    assert not torch.equal(model.item_vectors(torch.tensor([1])), model.item_emb(torch.tensor([1])))
    with pytest.raises(ValueError, match="names intent 4, but there are 3"):
        GroundedSASRec(cfg, _profiles(), 3)
    with pytest.raises(ValueError, match="item ids are 1..12"):
        ItemProfiles.from_lists(N_ITEMS, {13: ([0], [1.0])})


def test_intent_vectors_learn_through_inputs_and_outputs():
    torch.manual_seed(0)
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=6, dropout=0.0)
    model = GroundedSASRec(cfg, _profiles(), N_INTENTS)
    seqs, lengths = torch.tensor([[1, 2, 7, 0]]), torch.tensor([3])
    model(seqs, lengths, torch.tensor([[2, 7, 1, 0]])).backward()
    grad = model.intent_emb.grad
    assert grad is not None and torch.all(grad[[0, 1, 2, 3, 4]].abs().sum(1) > 0)
