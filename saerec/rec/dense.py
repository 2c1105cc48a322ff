"""Dense-text SASRec: items = ID + W t_j, with t_j the mean embedding of item j's texts.

The strongest use of the same text that is not interpretable: the grounded model replaces the
dense t_j by its sparse, named intent profile, and this control says what that costs or gains.
An item without text has t_j = 0 and is its ID embedding alone.
"""
from __future__ import annotations

from torch import Tensor, nn

from saerec.rec.sasrec import EncoderConfig, SASRec


class DenseTextSASRec(SASRec):
    """SASRec whose item representation adds a learned projection of the item's text embedding."""

    def __init__(self, cfg: EncoderConfig, item_texts: Tensor) -> None:
        if item_texts.dim() != 2 or item_texts.shape[0] != cfg.n_items + 1:
            raise ValueError(f"item text vectors must be (n_items + 1, D) = ({cfg.n_items + 1}, D), "
                             f"got {tuple(item_texts.shape)}")
        super().__init__(cfg)
        self.register_buffer("item_texts", item_texts.detach().float().clone())
        self.text_proj = nn.Linear(item_texts.shape[1], cfg.d, bias=False)
        nn.init.normal_(self.text_proj.weight, 0.0, cfg.init_std * item_texts.shape[1] ** -0.5)

    def item_table(self) -> Tensor:
        return self.item_emb.weight + self.text_proj(self.item_texts)

    def item_vectors(self, ids: Tensor) -> Tensor:
        return self.item_emb(ids) + self.text_proj(self.item_texts[ids])
