"""The backbone axis: BSARec's causal frequency filter, causality of every registered variant, and
a BSARec-backbone grounded model that trains, restores and explains exactly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from saerec.rec.batching import leave_one_out
from saerec.rec.bsarec import lowpass_kernel
from saerec.rec.attribution import explain_grounded
from saerec.rec.grounded import ItemProfiles
from saerec.config import EvaluateSection, RecSection
from saerec.rec.runs import train_run
from saerec.rec.training import seed_everything
from saerec.rec.saerec_model import IntentConfig
from saerec.rec.sasrec import BACKBONES, EncoderConfig, SASRec
from saerec.rec.variants import NAMES, ON_EVERY_BACKBONE, VARIANTS, build_model, model_spec, restore_model, variant
from tests.rec_toy import chain_sequences

N_ITEMS, N_INTENTS, TEXT_DIM, MAX_LEN = 20, 6, 8, 12


def _whole_window_filter(window: torch.Tensor, c: int) -> torch.Tensor:
    """BSARec's own low-pass part of a (L, d) window: its lowest c // 2 + 1 rfft frequencies."""
    spectrum = torch.fft.rfft(window.double(), dim=0, norm="ortho")
    spectrum[c // 2 + 1:] = 0
    return torch.fft.irfft(spectrum, n=window.shape[0], dim=0, norm="ortho")


@pytest.mark.parametrize("max_len, c", [(50, 5), (50, 3), (9, 4), (8, 1)])
def test_each_position_gets_the_papers_filter_of_the_window_ending_there(max_len, c):
    x = torch.randn(max_len - 2, 3, generator=torch.Generator().manual_seed(0))
    kernel = lowpass_kernel(max_len, c)
    assert torch.equal(kernel, kernel.tril()), "the filter reads no later position"
    width = len(x)
    low = kernel[:width, :width] @ x
    for t in range(width):
        window = torch.zeros(max_len, 3)
        window[max_len - 1 - t:] = x[:t + 1]
        assert torch.allclose(low[t], _whole_window_filter(window, c)[-1].float(), atol=1e-6), t
    assert torch.allclose(lowpass_kernel(max_len, max_len), torch.eye(max_len), atol=1e-6), \
        "c >= max_len keeps every frequency"
    with pytest.raises(ValueError, match="cut-off c must be >= 1"):
        lowpass_kernel(max_len, 0)


def _inputs(name: str) -> tuple[torch.Tensor | None, ItemProfiles | None]:
    gen = torch.Generator().manual_seed(1)
    found = variant(name)
    if found.intent_set is None:
        return None, None
    if found.model == "dense-text":
        return torch.randn(N_ITEMS + 1, TEXT_DIM, generator=gen), None
    rows = {item: ([item % N_INTENTS, (item + 2) % N_INTENTS], [0.6, 0.3]) for item in range(1, N_ITEMS + 1)}
    profiles = ItemProfiles.from_lists(N_ITEMS, rows) if found.grounded else None
    return torch.randn(N_INTENTS, TEXT_DIM, generator=gen), profiles


def _model(name: str, **encoder: object) -> torch.nn.Module:
    intents, profiles = _inputs(name)
    cfg = EncoderConfig(n_items=N_ITEMS, d=16, blocks=2, heads=2, max_len=MAX_LEN, dropout=0.0, **encoder)
    torch.manual_seed(0)
    spec = model_spec(name, cfg, IntentConfig(k=2, ema_beta=0.9), None if intents is None else tuple(intents.shape),
                      profiles)
    return build_model(spec, intents, profiles).eval()


SEQS = torch.tensor([[3, 7, 1, 9, 4, 12, 0], [5, 2, 8, 0, 0, 0, 0], [11, 12, 13, 14, 15, 16, 17]])
LENGTHS = torch.tensor([6, 3, 7])


def _later_items_move_earlier_outputs(model: torch.nn.Module, t: int) -> tuple[bool, bool]:
    """Replace every item after position t: (did any output at <= t move, did any output after t move)."""
    changed = SEQS.clone()
    real = torch.arange(SEQS.shape[1]) < LENGTHS.unsqueeze(1)
    changed[:, t + 1:] = torch.where(real[:, t + 1:], N_ITEMS + 1 - SEQS[:, t + 1:], 0)
    with torch.no_grad():
        before, after = model(SEQS, LENGTHS), model(changed, LENGTHS)
    position = torch.arange(SEQS.shape[1]).expand_as(SEQS)[real]
    moved = ~torch.isclose(before, after, atol=1e-5).all(dim=1)
    return bool(moved[position <= t].any()), bool(moved[position > t].any())


@pytest.mark.parametrize("name", NAMES)
def test_no_position_of_any_variant_depends_on_a_later_item(name):
    model = _model(name)
    for t in (0, 2, 4):
        early, late = _later_items_move_earlier_outputs(model, t)
        assert not early, f"{name}: an output at position <= {t} moved when later items changed"
        assert late, f"{name}: changing the later items moved nothing (the check would be blind)"
    wider = torch.cat([SEQS, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(wider, LENGTHS, last_only=True), model(SEQS, LENGTHS, last_only=True), atol=1e-5), \
            f"{name}: a user's state depends on the padded width of the batch"


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_full_sorts_with_padding_and_seen_items_masked(name):
    model = _model(name)
    with torch.no_grad():
        raw = model.item_scores(model(SEQS, LENGTHS, last_only=True))
        masked, unmasked = model.full_sort_scores(SEQS, LENGTHS), model.full_sort_scores(SEQS, LENGTHS, mask_seen=False)
    seen = torch.zeros_like(raw, dtype=torch.bool).scatter_(1, SEQS, True)
    seen[:, 0] = True
    assert torch.isneginf(masked[seen]).all() and torch.equal(masked[~seen], raw[~seen])
    assert torch.isneginf(unmasked[:, 0]).all() and torch.equal(unmasked[:, 1:], raw[:, 1:])


def test_the_causality_check_catches_a_whole_window_filter():
    model = _model("bsarec")
    eye = torch.eye(MAX_LEN, dtype=torch.float64)
    whole = _whole_window_filter(eye, model.cfg.bsarec_c).float()  # the paper's filter: every position reads all
    for block in model.blocks:
        block.filter.kernel.copy_(whole)
    assert _later_items_move_earlier_outputs(model, 2)[0]


def test_every_plain_item_representation_exists_on_bsarec_and_intent_attention_stays_on_sasrec():
    for base in ON_EVERY_BACKBONE:
        on_bsarec = VARIANTS["bsarec" if base == "sasrec" else f"bsarec-{base}"]
        assert on_bsarec.backbone == "bsarec" and "BSARec" in on_bsarec.label
        assert (on_bsarec.model, on_bsarec.intent_set, on_bsarec.projected) == \
            (VARIANTS[base].model, VARIANTS[base].intent_set, VARIANTS[base].projected)
    assert all(v.backbone == "sasrec" for v in VARIANTS.values() if v.attends)
    assert {v.backbone for v in VARIANTS.values()} == set(BACKBONES)
    assert _model("bsarec-grounded-all").cfg.backbone == "bsarec" and _model("grounded-all").cfg.backbone == "sasrec"
    with pytest.raises(ValueError, match="unknown backbone 'gru'; allowed: sasrec, bsarec"):
        EncoderConfig(n_items=3, backbone="gru")


def test_a_model_saved_before_the_backbone_axis_restores_as_sasrec():
    old = _model("grounded")
    spec = model_spec("grounded", old.cfg, IntentConfig(k=2, ema_beta=0.9), (N_INTENTS, TEXT_DIM), _inputs("grounded")[1])
    for key in ("backbone", "bsarec_alpha", "bsarec_c"):
        del spec["encoder"][key]
    restored = restore_model(spec, old.state_dict())
    assert isinstance(restored, SASRec) and restored.cfg.backbone == "sasrec"
    assert torch.equal(restored(SEQS, LENGTHS), old(SEQS, LENGTHS))


def test_bsarec_knobs_reach_the_encoder_and_change_the_model():
    rec = RecSection(bsarec_alpha=0.3, bsarec_c=7, max_len=MAX_LEN)
    spec = model_spec("bsarec", rec.encoder(N_ITEMS), rec.intent(), None)
    assert (spec["encoder"]["backbone"], spec["encoder"]["bsarec_alpha"], spec["encoder"]["bsarec_c"]) == \
        ("bsarec", 0.3, 7)
    model = build_model(spec, None)
    assert model.blocks[0].alpha == 0.3 and torch.equal(model.blocks[0].filter.kernel, lowpass_kernel(MAX_LEN, 7))
    one, other = _model("bsarec"), _model("bsarec", bsarec_alpha=0.2)
    assert not torch.allclose(one(SEQS, LENGTHS), other(SEQS, LENGTHS))


def test_grounded_bsarec_trains_restores_and_its_scores_split_exactly_into_intents(tmp_path):
    split = leave_one_out(chain_sequences(n_users=30, n_items=N_ITEMS, length=8), N_ITEMS, MAX_LEN)
    intents, profiles = _inputs("bsarec-grounded")
    rec = RecSection(d=16, blocks=1, heads=2, max_len=MAX_LEN, dropout=0.1, lr=1e-2, batch_size=16,
                     max_epochs=12, patience=12, checkpoint_seconds=1e9)
    trained = train_run("bsarec-grounded", 0, rec, EvaluateSection(), split, intents, n_items=N_ITEMS,
                        profiles=profiles)
    losses = [h["loss"] for h in trained.result.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert trained.result.best_valid["ndcg@10"] > 0.5, "the ring's next item is ranked near the top"
    model = trained.model
    assert model.cfg.backbone == "bsarec"

    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    restored = restore_model(trained.spec, torch.load(path))
    test = split.test
    seqs, lengths = torch.from_numpy(test.inputs), torch.from_numpy(test.lengths)
    with torch.no_grad():
        reps = restored(seqs, lengths, last_only=True)
        scores = restored.item_scores(reps)
        assert torch.equal(scores, model.item_scores(model(seqs, lengths, last_only=True)))
        parts = restored.score_parts(reps, torch.arange(1, N_ITEMS + 1).expand(len(reps), -1))
    assert torch.allclose(parts["id"] + parts["contributions"].sum(-1), scores[:, 1:], atol=1e-5)
    explained = explain_grounded(restored, test.inputs, test.lengths, top_n=3, per_item=2)
    scores = scores.numpy()
    listed = np.take_along_axis(scores, explained["items"], axis=1)
    assert np.all(np.diff(listed, axis=1) <= 0) and np.all(explained["intents"] >= 0)
    assert dataclasses.asdict(restored.cfg) == trained.spec["encoder"]


def test_the_config_names_bsarec_variants_and_bounds_its_knobs():
    from saerec.config import ConfigError, load_config

    cfg = load_config(None, ["rec.models=[bsarec, bsarec-grounded-all, bsarec-dense]", "rec.bsarec_c=3"])
    assert cfg.rec.models == ["bsarec", "bsarec-grounded-all", "bsarec-dense"] and cfg.rec.bsarec_c == 3
    for bad, message in (("rec.bsarec_alpha=1", r"rec.bsarec_alpha: got 1.0; allowed range \(0.0, 1.0\)"),
                         ("rec.bsarec_c=0", r"rec.bsarec_c: got 0; allowed range \[1, inf\]"),
                         ("rec.models=[bsarec-saerec]", "rec.models: unknown model 'bsarec-saerec'")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])


@pytest.mark.parametrize("name", ["grounded", "bsarec-grounded-all"])
def test_an_item_never_seen_in_training_is_its_intents_alone(name):
    """A new arrival (no training interaction) is represented by its text's intents only, as input
    and as output: its ID part is 0 and gets no gradient, its scores still split exactly, and the
    restored model keeps this."""
    sequences = chain_sequences(n_users=30, n_items=N_ITEMS, length=8)
    unseen = N_ITEMS  # never in any training window: the last item of one user's valid position
    sequences = [np.asarray([i for i in s if i != unseen]) for s in sequences]
    sequences[0] = np.concatenate([sequences[0][:-1], [unseen], sequences[0][-1:]])
    split = leave_one_out(sequences, N_ITEMS, MAX_LEN)
    assert not any(unseen in s for s in split.train) and split.valid.targets[0] == unseen
    intents, profiles = _inputs(name)
    rec = RecSection(d=16, blocks=1, heads=2, max_len=MAX_LEN, dropout=0.1, lr=1e-2, batch_size=16,
                     max_epochs=3, patience=3, checkpoint_seconds=1e9)
    trained = train_run(name, 0, rec, EvaluateSection(), split, intents, n_items=N_ITEMS, profiles=profiles)
    model = trained.model
    assert model.id_scale[unseen] == 0 and model.id_scale[1:unseen].eq(1).all() and model.id_scale[0] == 0
    seed_everything(0)  # as train_run seeds before it builds the model
    initial = build_model(trained.spec, intents, profiles)
    assert torch.equal(model.item_emb.weight[unseen], initial.item_emb.weight[unseen]), "no gradient reached it"
    assert not torch.equal(model.item_emb.weight[1], initial.item_emb.weight[1]), "a seen item's ID trains"
    seqs, lengths = torch.from_numpy(split.test.inputs), torch.from_numpy(split.test.lengths)
    with torch.no_grad():
        reps = model(seqs, lengths, last_only=True)
        parts = model.score_parts(reps, torch.full((len(reps), 1), unseen))
        table = model.item_table()
        assert torch.equal(parts["id"], torch.zeros_like(parts["id"]))
        assert torch.allclose(parts["contributions"].sum(-1)[:, 0], model.item_scores(reps)[:, unseen], atol=1e-5)
        assert torch.allclose(table[unseen], model._intent_part(torch.tensor([unseen]))[0])
    restored = restore_model(trained.spec, model.state_dict())
    assert torch.equal(restored.id_scale, model.id_scale)
    older = {k: v for k, v in model.state_dict().items() if k != "id_scale"}  # saved before ground_unseen existed
    assert restore_model(trained.spec, older).id_scale[1:].eq(1).all(), "an older model kept every item's ID"
