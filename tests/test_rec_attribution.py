"""Top-N lists, intent explanations and the steering study."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from saerec.rec.batching import leave_one_out
from saerec.rec.attribution import explain_users, match_texts, match_words, steering_study, top_items
from saerec.rec.saerec_model import IntentConfig, SAERec
from saerec.rec.sasrec import EncoderConfig
from tests.rec_toy import chain_sequences

N_ITEMS = 24


def _setup():
    torch.manual_seed(0)
    data = leave_one_out(chain_sequences(n_users=12, n_items=N_ITEMS), N_ITEMS, max_len=10)
    cfg = EncoderConfig(n_items=N_ITEMS, d=16, heads=2, blocks=1, max_len=10, dropout=0.0)
    model = SAERec(cfg, torch.randn(6, 8), IntentConfig(k=2, ema_beta=0.9)).eval()
    model.public_score.copy_(torch.arange(6.0))
    with torch.no_grad():
        for param in model.personal_attn.parameters():
            param.mul_(50.0)
    return data, model


def test_top_items_are_ranked_unseen_real_items():
    data, model = _setup()
    items = top_items(model, data.test.inputs, data.test.lengths, top_n=5)
    assert items.shape == (len(data.test), 5)
    for row, hist, n in zip(items, data.test.inputs, data.test.lengths):
        assert 0 not in row and not set(row) & set(hist[:n].tolist()) and len(set(row)) == 5
    unmasked = top_items(model, data.test.inputs, data.test.lengths, top_n=N_ITEMS, mask_history=False)
    assert all(sorted(r) == list(range(1, N_ITEMS + 1)) for r in unmasked)


def test_explanations_hold_personal_and_public_intents_per_user():
    data, model = _setup()
    out = explain_users(model, data.test.inputs, data.test.lengths, top_n=3)
    assert out["items"].shape == (len(data.test), 3)
    assert out["personal"].shape == (len(data.test), 2) and out["personal"].max() < 6
    assert sorted(out["public"].tolist()) == [4, 5]
    assert np.allclose(out["weights"].sum(axis=1), 1.0, atol=1e-5) and out["weights"].shape[1] == 3


def test_steering_study_reports_the_shift_towards_flagged_items():
    data, model = _setup()
    flags = np.zeros(N_ITEMS + 1, dtype=bool)
    flags[1:6] = True
    study = steering_study(model, data.test.inputs, data.test.lengths, [0, 1], strength=0.0,
                           item_flags=flags, top_n=5)
    assert study["flagged_before"] == study["flagged_after"] and study["users_changed"] == 0.0
    study = steering_study(model, data.test.inputs, data.test.lengths, [0, 1], strength=10.0,
                           item_flags=flags, top_n=5)
    assert study["users"] == len(data.test) and 0.0 <= study["mean_overlap"] <= 1.0
    assert study["users_changed"] > 0.0
    with pytest.raises(ValueError, match="item_flags must have shape"):
        steering_study(model, data.test.inputs, data.test.lengths, [0], 1.0, flags[:-1], 5)


def test_match_texts_finds_whole_words_case_insensitively():
    texts = ["Skin care routine", "skincare", None, "hair and SKIN  care"]
    assert match_texts(texts, "skin care").tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="empty"):
        match_texts(texts, "  ")


def test_flagged_share_counts_listed_items_of_a_category():
    from saerec.rec.attribution import category_flags, flagged_share

    labels = {1: ["Sun", "Skin Care"], 2: ["Nail Polish"], 3: ["Sun"], 5: ["Sun"], 9: ["Sun"]}
    flags = category_flags(labels, "Sun", n_items=6)  # item 9 lies outside the run's items
    assert flags.tolist() == [False, True, False, True, False, True, False]
    lists = np.array([[1, 2, 3, 4], [6, 5, 4, 2]])
    assert flagged_share(lists, flags) == pytest.approx(3 / 8)
    assert flagged_share(lists[:, :1], flags) == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        flagged_share(np.array([[7]]), flags)


def test_match_category_prefers_the_equal_name_then_whole_words():
    from saerec.rec.attribution import match_category

    names = ["Eyeliner", "Nail Polish", "Nail Polish Remover", "Shampoos", "Sun", "Sunscreen Lotions"]
    assert match_category(names, "nail polish") == ["Nail Polish"]
    assert match_category(names, "sunscreen") == ["Sunscreen Lotions"]
    assert match_category(names, "shampoo") == [], "a plural name needs evaluate.steering_category"
    assert match_category(names, "polish") == ["Nail Polish", "Nail Polish Remover"]


def _grounded():
    from saerec.rec.grounded import GroundedSASRec, ItemProfiles

    torch.manual_seed(0)
    data = leave_one_out(chain_sequences(n_users=12, n_items=N_ITEMS), N_ITEMS, max_len=10)
    rows = {item: ([item % 4, 4 + item % 2], [0.5, 0.2]) for item in range(1, N_ITEMS + 1)}
    cfg = EncoderConfig(n_items=N_ITEMS, d=16, heads=2, blocks=1, max_len=10, dropout=0.0)
    return data, GroundedSASRec(cfg, ItemProfiles.from_lists(N_ITEMS, rows), 6).eval()


def test_grounded_steering_raises_the_share_of_listed_items_carrying_the_boosted_intent():
    from saerec.rec.attribution import cheapest_effect, grounded_steering_study
    from saerec.rec.metrics import evaluate

    data, model = _grounded()
    labelled = np.zeros(N_ITEMS + 1, dtype=bool)
    labelled[[7, 11, 2]] = True  # an outside label: two of the carrying items and one other
    study = grounded_steering_study(model, data.test, [3], [0.5, 100.0], top_n=5, category=labelled)
    levels = study["dose_response"]
    before = top_items(model, data.test.inputs, data.test.lengths, top_n=5)
    assert levels[0]["category_share"] == pytest.approx(labelled[before].mean()), \
        "strength 0 scores the model's own lists"
    assert [r["strength"] for r in levels] == [0.0, 0.5, 100.0]
    assert study["items_carrying"] == 6  # items 3, 7, ..., 23 carry intent 3
    assert levels[0]["users_changed"] == 0.0
    assert levels[0]["ndcg@5"] == pytest.approx(evaluate(model, data.test, [5])["ndcg@5"]), \
        "strength 0 is the model's own ranking"
    carrying = set(range(3, N_ITEMS + 1, 4))
    unseen = [min(5, len(carrying - set(h[:n].tolist()))) for h, n in zip(data.test.inputs, data.test.lengths)]
    assert levels[-1]["carrying_share"] == pytest.approx(sum(unseen) / (5 * len(unseen))), \
        "a huge boost fills every list with the unseen carrying items"
    assert levels[-1]["carrying_share"] >= levels[1]["carrying_share"] >= levels[0]["carrying_share"]
    assert levels[-1]["users_changed"] > 0
    in_label = [min(2, len({7, 11} - set(h[:n].tolist()))) for h, n in zip(data.test.inputs, data.test.lengths)]
    assert levels[-1]["category_share"] == pytest.approx(sum(in_label) / (5 * len(in_label))), \
        "a huge boost lists the unseen labelled carrying items, never the uncarrying item 2"
    on_valid = grounded_steering_study(model, data.valid, [3], [0.5, 100.0], top_n=5,
                                       category=labelled)["dose_response"]
    assert on_valid[0]["ndcg@5"] == pytest.approx(evaluate(model, data.valid, [5])["ndcg@5"])
    cheap = cheapest_effect(on_valid, levels, "ndcg@5", max_cost=1.0)
    assert cheap is not None and cheap["strength"] == 100.0
    assert cheap["carrying_share_after"] == levels[-1]["carrying_share"], "the chosen strength is reported on test"
    assert (cheap["category_share_before"], cheap["category_share_after"]) == (levels[0]["category_share"],
                                                                               levels[-1]["category_share"])
    assert "category_share" not in grounded_steering_study(model, data.test, [3], [1.0], top_n=5)["dose_response"][0]
    with pytest.raises(ValueError, match="non-empty subset"):
        grounded_steering_study(model, data.test, [6], [1.0], top_n=5)
    with pytest.raises(ValueError, match=">= 0"):
        grounded_steering_study(model, data.test, [1], [-1.0], top_n=5)


def test_a_query_matches_word_lists_holding_all_its_words_in_any_order():
    lists = [["polish", "nail", "coat"], ["nail", "file"], None, [], ["Sunscreen", "spf"]]
    assert match_words(lists, "nail polish").tolist() == [True, False, False, False, False]
    assert match_words(lists, "NAIL").tolist() == [True, True, False, False, False]
    assert match_words(lists, "sunscreen").tolist() == [False, False, False, False, True]
    with pytest.raises(ValueError, match="must not be empty"):
        match_words(lists, "  ")
