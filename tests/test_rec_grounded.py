"""Grounded SASRec: items are ID + their intents, and every score splits exactly into named intents."""
from __future__ import annotations

import pytest
import torch

from saerec.rec.grounded import GroundedSASRec, ItemProfiles
from saerec.rec.sasrec import BACKBONES, EncoderConfig

N_ITEMS, N_INTENTS = 12, 5


def _profiles() -> ItemProfiles:
    return ItemProfiles.from_lists(N_ITEMS, {1: ([0, 3], [0.5, 0.25]), 2: ([3], [1.0]), 7: ([4, 1, 2], [0.2, 0.3, 0.1])})


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("projected", [False, True])
def test_the_score_is_the_id_part_plus_the_intent_contributions(projected, backbone):
    torch.manual_seed(0)
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=6, dropout=0.0, backbone=backbone)
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


def _sources(profiles: dict, item_texts: torch.Tensor, judged: torch.Tensor):
    from saerec.rec.variants import Sources

    return Sources(judged=lambda: judged, all_latents=lambda: judged, texts=lambda: item_texts[1:],
                   item_texts=lambda: item_texts, profiles=lambda name: profiles)


def test_control_profiles_keep_each_items_count_and_weights_and_change_only_which_intents():
    from saerec.rec.variants import build_inputs

    torch.manual_seed(0)
    item_texts = torch.randn(N_ITEMS + 1, 6)
    item_texts[[0, 3]] = 0.0
    rows = {1: ([0, 3], [0.5, 0.25]), 2: ([3], [1.0]), 7: ([4, 1, 2], [0.2, 0.3, 0.1])}
    sources = _sources(rows, item_texts, torch.randn(N_INTENTS, 6))
    intents, profiles = build_inputs(["grounded", "grounded-random", "grounded-kmeans"], N_ITEMS, 0, sources, None)
    judged = profiles["judged"]
    for control in ("random", "kmeans"):
        got = profiles[control]
        assert torch.equal(got.weights, judged.weights), control
        assert int(got.ids.max()) < len(intents[control]) == N_INTENTS
        for item in (1, 7):
            active = got.ids[item][got.weights[item] > 0]
            assert len(set(active.tolist())) == len(active), f"{control}: an intent twice in item {item}'s profile"
    assert not torch.equal(profiles["random"].ids, judged.ids)
    centroids = torch.nn.functional.normalize(intents["kmeans"], dim=1)
    nearest = (torch.nn.functional.normalize(item_texts[7], dim=0) @ centroids.T).argmax()
    assert int(profiles["kmeans"].ids[7, 0]) == int(nearest), "the nearest centroid comes first"


def test_the_dense_control_adds_a_projection_of_the_items_text_and_survives_a_save():
    from saerec.rec.saerec_model import IntentConfig
    from saerec.rec.variants import build_inputs, build_model, model_spec, restore_model

    torch.manual_seed(0)
    item_texts = torch.randn(N_ITEMS + 1, 6)
    item_texts[0] = 0.0
    intents, _ = build_inputs(["dense"], N_ITEMS, 0, _sources({}, item_texts, torch.randn(N_INTENTS, 6)), None)
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=6, dropout=0.0)
    spec = model_spec("dense", cfg, IntentConfig(k=5, ema_beta=0.9), tuple(intents["text"].shape))
    model = build_model(spec, intents["text"]).eval()
    ids = torch.tensor([2, 5])
    assert torch.allclose(model.item_vectors(ids), model.item_emb(ids) + model.text_proj(item_texts[ids]))
    assert torch.allclose(model.item_table()[ids], model.item_vectors(ids))
    restored = restore_model(spec, model.state_dict())
    seqs, lengths = torch.tensor([[1, 2, 7, 0]]), torch.tensor([3])
    assert torch.allclose(restored.item_scores(restored(seqs, lengths, last_only=True)),
                          model.item_scores(model(seqs, lengths, last_only=True)))
    with pytest.raises(ValueError, match="item text vectors must be"):
        build_model(spec, torch.zeros(N_ITEMS, 6))


@pytest.mark.parametrize("projected", [False, True])
def test_saerec_over_grounded_items_attends_to_the_vectors_its_items_are_built_from(projected):
    from saerec.rec.saerec_model import IntentConfig
    from saerec.rec.variants import build_model, model_spec, restore_model

    torch.manual_seed(0)
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=6, dropout=0.0)
    intents, profiles = torch.randn(N_INTENTS, 4), _profiles()
    spec = model_spec("saerec-grounded", cfg, IntentConfig(k=2, ema_beta=0.9), tuple(intents.shape), profiles)
    spec["grounded"]["projected"] = projected
    model = build_model(spec, intents, profiles)
    assert torch.equal(model.projected_intents(), model.intent_table())
    seqs, lengths = torch.tensor([[1, 2, 7, 0], [3, 4, 5, 6]]), torch.tensor([3, 4])
    model(seqs, lengths, torch.tensor([[2, 7, 1, 0], [4, 5, 6, 1]])).backward()
    learned = model.intent_proj.weight if projected else model.intent_emb
    assert learned.grad is not None and learned.grad.abs().sum() > 0
    assert model.personal_attn.key_value.weight.grad.abs().sum() > 0, "the intent attention is in the loss"
    model.eval()
    reps = model(seqs, lengths, last_only=True)
    parts = model.score_parts(reps, torch.arange(1, N_ITEMS + 1).expand(2, -1))
    assert torch.allclose(parts["id"] + parts["contributions"].sum(-1), model.item_scores(reps)[:, 1:], atol=1e-5)
    restored = restore_model(spec, model.state_dict())
    assert torch.allclose(restored.item_scores(restored(seqs, lengths, last_only=True)), model.item_scores(reps))


def test_history_retrieval_takes_the_intents_the_items_read_so_far_carry_most():
    from saerec.rec.saerec_model import IntentConfig, SAERec
    from saerec.rec.variants import build_model, model_spec

    torch.manual_seed(0)
    cfg = EncoderConfig(n_items=N_ITEMS, d=8, heads=2, blocks=1, max_len=6, dropout=0.0)
    intents, profiles = torch.randn(N_INTENTS, 4), _profiles()
    spec = model_spec("saerec-grounded-history", cfg, IntentConfig(k=2, ema_beta=0.9), tuple(intents.shape), profiles)
    model = build_model(spec, intents, profiles)
    seqs, lengths = torch.tensor([[1, 2, 7, 0], [7, 3, 0, 0]]), torch.tensor([3, 2])
    history = model.history_profiles(seqs)
    # item 1 = {0: .5, 3: .25}, then item 2 adds {3: 1.0}, then item 7 adds {4: .2, 1: .3, 2: .1}
    assert torch.allclose(history[0, 0], torch.tensor([0.5, 0.0, 0.0, 0.25, 0.0]))
    assert torch.allclose(history[0, 2], torch.tensor([0.5, 0.3, 0.1, 1.25, 0.2]))
    assert torch.equal(history[1, 1], history[1, 0]), "item 3 has no text, so no profile"
    model.eval()
    personal = model.explain(seqs, lengths)["personal"]
    assert [sorted(ids) for ids in personal.tolist()] == [[0, 3], [1, 4]]
    model.train()
    model(seqs, lengths, torch.tensor([[2, 7, 1, 0], [3, 5, 0, 0]])).backward()
    assert model.personal_attn.key_value.weight.grad.abs().sum() > 0, "the retrieved intents are in the loss"
    with pytest.raises(ValueError, match="needs a grounded model"):
        SAERec(cfg, intents, IntentConfig(k=2, query="history"))
