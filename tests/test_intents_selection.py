"""Choosing a latent's summary among candidates by the SAE activation it causes (no model needed)."""
import numpy as np
import pytest
import torch

from saerec.intents.selection import ActivationSelector
from saerec.intents.verdicts import CANNOT_TELL, only_lists_words

VECTORS = {  # a stand-in encoder: a fixed 3-dim vector per text
    "nail care": [1.0, 0.0, 0.0], "hair dryer": [0.0, 1.0, 0.0], "fragrance": [0.0, 0.0, 1.0],
    "shiny nails": [0.6, 0.1, 0.0], "gel polish top coat": [3.0, 0.0, 0.0], CANNOT_TELL: [9.0, 9.0, 9.0],
}


class TableEncoder:
    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def encode(self, texts):
        self.seen.append(list(texts))
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


def selector(encoder=None, b_pre=(0.0, 0.0, 0.0)):
    # latent 0 reads axis 0, latent 1 axis 1 with a bias of -2 (it fires on nothing here)
    w_enc = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return ActivationSelector(encoder or TableEncoder(), w_enc, torch.tensor([0.0, -2.0]), torch.tensor(b_pre))


def test_the_candidate_that_fires_its_own_latent_most_is_chosen():
    pick = selector()
    assert pick.activations(["nail care", "hair dryer", "hair dryer"], [0, 0, 1]) == pytest.approx([1.0, 0.0, -1.0])
    chosen = pick([["hair dryer", "shiny nails", "nail care"], ["fragrance", "hair dryer"]], [0, 1],
                  [["nail"], ["hair"]])
    # latent 1 fires on neither (pre-activations -2 and -1): the less negative still ranks first
    assert chosen == ["nail care", "hair dryer"]
    assert selector(b_pre=(0.5, 0.0, 0.0)).activations(["nail care"], [0]) == pytest.approx([0.5])


def test_cannot_tell_and_word_lists_are_chosen_only_when_nothing_else_is_left():
    encoder = TableEncoder()
    pick = selector(encoder)
    words = [["gel", "polish", "top", "coat"]] * 3
    chosen = pick([["gel polish top coat", "shiny nails"], ["gel polish top coat"], [CANNOT_TELL]], [0, 0, 0], words)
    assert chosen == ["shiny nails", "gel polish top coat", CANNOT_TELL]
    assert CANNOT_TELL not in [t for batch in encoder.seen for t in batch]
    assert pick([], [], []) == []


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="do not fit together"):
        ActivationSelector(TableEncoder(), torch.zeros(2, 3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="2 candidate lists, 1 latents and 2 word lists"):
        selector()([["nail care"], ["fragrance"]], [0], [[], []])
    narrow = ActivationSelector(TableEncoder(), torch.zeros(2, 4), torch.zeros(2), torch.zeros(4))
    with pytest.raises(ValueError, match="3-dim vectors but the SAE reads 4"):
        narrow.activations(["nail care"], [0])


def test_only_lists_words_needs_four_words_all_from_the_list():
    words = ["pura", "ar", "dhc", "dor", "cu", "nail", "polish"]
    assert only_lists_words("pura ar dhc dor", words) and only_lists_words("Nail, polish, DHC, cu", words)
    assert not only_lists_words("nail polish", words) and not only_lists_words("pura ar dhc nails", words)
    assert not only_lists_words("pura ar dhc dor", [])
