"""Stage ``profile``: every item's intent profile, the SAE activations of its texts pooled per item.

The SAE codes explain published (``CODES``) stream in batches, each text mapped to its item, and
fold into one item x latent table as they come (``saerec.intents.profiles``), so memory follows
the (item, latent) pairs that fire, not the corpus; the text embeddings stream the same way into
per-item sums. The corpus holds an item's description and its TRAINING reviews only (prepare), so
no valid or test text ever enters a profile.

Reads: prepare (the corpus' text -> item map), embed (text embeddings), train_sae (the SAE's size),
explain (the SAE codes), judge (the kept latents). Writes the artifacts ``ITEM_TEXT_VECTORS`` (each item's mean text
embedding, the dense-text control's input) and ``PROFILES``: for the ``judged`` set (the kept
latents) and the ``all`` set (every latent, for noIde) one row per item with text, its strongest
``profile.max_intents`` intents as SAE latent ids and their pooled weights. An item without text
has no row: its profile is empty.

With prepare's category labels it also scores category purity (``saerec.intents.purity``): the
kept latents against the rejected ones (every latent the judge did not keep), k-means clusters of
the items' text embeddings (as many as kept latents) and random item sets, each latent's top
``profile.purity_top_n`` items taken from the full pooled table (before the cut to an item's
strongest intents). Metrics ``purity_{kept,rejected,clusters,chance}`` (means), ``..._sets``
(how many sets each), ``purity_ratio_vs_{chance,clusters,rejected}`` (clusters: k-means of the item texts; chance: random item sets); every scored set is in
``INTENT_PURITY``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from saerec import artifacts, restore, schemas
from saerec.config import ProfileSection
from saerec.intents import purity
from saerec.intents.profiles import ProfileAccumulator
from saerec.pipeline import Stage, StageContext, StageError, StageFiles


BATCH_TEXTS = 4096


class TextItems:
    """The corpus' text -> item map (prepare), for the texts of a batch."""

    def __init__(self, prepare: StageFiles) -> None:
        corpus = artifacts.dataset(prepare, artifacts.CORPUS).to_table(columns=["text_id", "item"])
        order = np.argsort(corpus.column("text_id").to_numpy())
        self.text_ids = corpus.column("text_id").to_numpy()[order]
        self.items = corpus.column("item").to_numpy()[order]

    def __call__(self, ids: np.ndarray, source: str) -> torch.Tensor:
        where = np.searchsorted(self.text_ids, ids)
        if len(ids) and (where.max() >= len(self.text_ids) or not np.array_equal(self.text_ids[where], ids)):
            raise StageError(f"profile: a text of {source} is not in prepare's corpus; {source} and prepare outputs "
                             "do not match")
        return torch.from_numpy(self.items[where].astype(np.int64))


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: ProfileSection = ctx.sections["profile"]
    embed, explain, prepare = ctx.input("embed"), ctx.input("explain"), ctx.input("prepare")
    kept = artifacts.read_intent_set(ctx.input("judge")).latents
    n_latents = restore.sae_config(ctx.input("train_sae")).n_latents
    items_of = TextItems(prepare)
    n_items = int(artifacts.read_table(prepare, artifacts.ITEMS, ["item"]).column("item").to_numpy().max())
    folded = ProfileAccumulator(n_latents, cfg.pooling)
    for ids, values, latents in artifacts.read_codes(explain, BATCH_TEXTS):
        folded.add(items_of(ids, explain.uri()), torch.from_numpy(values), torch.from_numpy(latents))
    text_sums: torch.Tensor | None = None
    for batch in artifacts.dataset(embed, artifacts.EMBEDDINGS).to_batches(columns=["text_id", "vector", "tokens"],
                                                                            batch_size=BATCH_TEXTS):
        keep, matrix = artifacts.nonempty_vectors(batch)
        items = items_of(batch.column("text_id").to_numpy()[keep], embed.uri())
        if text_sums is None:
            text_sums = torch.zeros(n_items + 1, matrix.shape[1], dtype=torch.float64)
        text_sums.index_add_(0, items, torch.from_numpy(matrix).double())
    rows: dict[str, list] = {"set": [], "item": [], "intents": [], "weights": []}
    metrics: dict[str, Any] = {"items": n_items, "items_with_text": len(folded.texts), "pooling": cfg.pooling}
    for name, latents in (("judged", kept), ("all", np.arange(n_latents))):
        profiles = folded.profiles(latents, cfg.max_intents)
        for item in sorted(profiles):
            rows["set"].append(name)
            rows["item"].append(item)
            rows["intents"].append(profiles[item][0])
            rows["weights"].append(profiles[item][1])
        lengths = [len(p[0]) for p in profiles.values()]
        metrics[f"{name}_items_with_intents"] = len(profiles)
        metrics[f"{name}_mean_intents_per_item"] = round(float(np.mean(lengths)), 3) if lengths else 0.0
    artifacts.write_table(ctx.output, artifacts.PROFILES, pa.table(rows, schema=schemas.ITEM_PROFILES))
    with_text = sorted(folded.texts)
    means = torch.zeros(0, 1) if text_sums is None else (
        text_sums[with_text] / torch.tensor([folded.texts[i] for i in with_text], dtype=torch.float64).unsqueeze(1)
    ).float()
    artifacts.write_table(ctx.output, artifacts.ITEM_TEXT_VECTORS,
                          pa.table({"item": with_text, "vector": means.tolist()}, schema=schemas.ITEM_TEXT_VECTORS))
    categories = artifacts.read_item_categories(prepare)
    if categories is not None:
        metrics.update(_purity(ctx, cfg, folded, kept, n_latents, np.array(with_text), means,
                               categories))
    return metrics


def _purity(ctx: StageContext, cfg: ProfileSection, folded: ProfileAccumulator, kept: np.ndarray, n_latents: int,
            text_items: np.ndarray, text_vectors: torch.Tensor, categories: dict[int, list[str]]) -> dict[str, Any]:
    """Category purity of the kept latents against rejected latents, k-means clusters and chance;
    every scored set is published for the report's histogram."""
    lab = purity.labels(categories, cfg.purity_max_share)
    items, latents, weights = (t.numpy() for t in folded.pooled())
    study = purity.Study(items, latents, weights, kept, n_latents, text_items.astype(np.int64), text_vectors)
    scored = purity.compare(study, lab, cfg.purity_top_n, cfg.purity_draws, ctx.seed)
    artifacts.write_table(ctx.output, artifacts.INTENT_PURITY, pa.table({
        "group": [s.group for s in scored], "id": [s.id for s in scored], "purity": [s.purity for s in scored],
        "category": [s.category for s in scored]}, schema=schemas.INTENT_PURITY))
    return {"purity_top_n": cfg.purity_top_n, "purity_labelled_items": len(lab.categories),
            "purity_skipped_categories": lab.skipped, **purity.summary(scored)}


STAGE = Stage(name="profile", run=run, inputs=("prepare", "embed", "train_sae", "explain", "judge"),
              sections=("profile",))
