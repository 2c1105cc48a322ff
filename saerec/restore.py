"""Models and model inputs rebuilt from published stage outputs.

The bridge between storage and the model code: ``saerec.artifacts`` hands back bytes and state
dicts and knows no model class; each model builds itself from them (``TopKSAE.from_bytes``, the
variant registry's ``restore_model``). Here a file that does not load is a StageError naming it.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from saerec import artifacts
from saerec.pipeline import StageError, StageFiles
from saerec.rec.variants import Sources, restore_model
from saerec.sae.model import SAEConfig, TopKSAE


def sae(train_sae: StageFiles) -> TopKSAE:
    """The trained SAE, in eval mode."""
    config, weights = artifacts.read_sae_files(train_sae)
    with train_sae.reading(artifacts.SAE_CONFIG.name):
        parsed = TopKSAE.config_from_bytes(config)
    with train_sae.reading(artifacts.SAE_WEIGHTS.name):
        return TopKSAE.from_bytes(parsed, weights)


def sae_config(train_sae: StageFiles) -> SAEConfig:
    """The trained SAE's config alone (its size), without reading the weights."""
    with train_sae.reading(artifacts.SAE_CONFIG.name):
        return TopKSAE.config_from_bytes(train_sae.read_bytes(artifacts.SAE_CONFIG.name))


def rec_model(train_rec: StageFiles, run: dict[str, Any]) -> nn.Module:
    """A run's model rebuilt from its spec with its selected weights (intent buffers included)."""
    state = artifacts.read_model_state(train_rec, run)
    try:
        return restore_model(run["spec"], state)
    except (ValueError, RuntimeError) as exc:
        raise StageError(f"{train_rec.uri(run['model_file'])}: {exc}") from exc


def sources(stages: Any, n_items: int) -> Sources:
    """What the variants read, from published stages (``stages[name]`` -> StageFiles), read lazily."""
    return Sources(judged=lambda: artifacts.read_intent_set(stages["judge"]).vectors,
                   all_latents=lambda: sae(stages["train_sae"]).intent_vectors(),
                   texts=lambda: artifacts.read_text_embeddings(stages["embed"]),
                   item_texts=lambda: artifacts.read_item_text_vectors(stages["profile"], n_items),
                   profiles=lambda name: _profiles(stages, name))


def _profiles(stages: Any, intent_set: str) -> dict[int, tuple[list[int], list[float]]]:
    """Profile rows with intent ids as positions in the set: the judge's kept order for ``judged``;
    for ``all`` (every latent, in order) a latent id is its own position."""
    latents = artifacts.read_intent_set(stages["judge"]).latents if intent_set == "judged" else None
    return artifacts.read_profiles(stages["profile"], intent_set, latents)
