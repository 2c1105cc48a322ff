"""The registry of recommender variants: the one place that names them.

A variant is a model class, the intent set it reads and its ablation switches. train_rec,
evaluate, the sweep, the report and config validation all take names and labels from here;
adding a variant is one entry below plus its model code.

Models: ``sasrec`` (no intents), ``saerec`` (SASRec states refined by intent attention) and
``grounded`` (items built from their intent profiles, ``saerec.rec.grounded``).

Intent sets: ``judged`` (the kept SAE latents), ``all`` (every SAE latent, no judge),
``kmeans`` (k-means centroids of the same text embeddings) and ``random`` (Gaussian vectors with
the judged set's count and norms: the control for whether the text matters at all).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from saerec.rec.grounded import GroundedSASRec, ItemProfiles
from saerec.rec.kmeans import kmeans
from saerec.rec.saerec_model import IntentConfig, SAERec
from saerec.rec.sasrec import EncoderConfig, SASRec

INTENT_SETS = ("judged", "all", "kmeans", "random")


@dataclass(frozen=True)
class Variant:
    """One trainable model: its report label, the intent set it reads, its IntentConfig switches,
    and the paper's row it corresponds to (for the report's side-by-side table)."""

    name: str
    label: str
    intent_set: str | None = None
    switches: Mapping[str, Any] = field(default_factory=dict)
    paper_row: str | None = None
    every_intent: bool = False  # retrieve every intent of the set (k = its size), as the public code does
    model: str = "saerec"  # saerec or grounded when an intent set is read; sasrec reads none
    projected: bool = False  # grounded: E_i = W_m v_i from the intent vectors instead of a free vector

    @property
    def grounded(self) -> bool:
        """Whether the model reads the items' intent profiles."""
        return self.model == "grounded"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("sasrec", "SASRec", paper_row="SASRec"),
    Variant("saerec", "SAERec (paper eqs. 3-8)", "judged", paper_row="SAERec"),
    Variant("saerec-code", "SAERec (public code: every latent, last-item retrieval, residual fusion)", "all",
            {"query": "item", "fusion_rule": "residual"}, every_intent=True),
    Variant("noIde", "SAERec, every SAE latent (no judge)", "all"),
    Variant("noPer", "SAERec without personal intents", "judged", {"personal": False}),
    Variant("noPub", "SAERec without public intents", "judged", {"public": False}),
    Variant("noFus", "SAERec without adaptive fusion", "judged", {"fusion": False}),
    Variant("noEMA", "SAERec without the EMA", "judged", {"ema": False}),
    Variant("kmeans", "KMeans-Intent", "kmeans", paper_row="KMeans-Intent"),
    Variant("random", "random intents (control)", "random"),
    Variant("grounded", "Grounded SASRec (items = ID + their judged intents, free intent vectors)", "judged",
            model="grounded"),
    Variant("grounded-proj", "Grounded SASRec (items = ID + their judged intents, projected SAE directions)",
            "judged", model="grounded", projected=True),
)}
NAMES: tuple[str, ...] = tuple(VARIANTS)
# The model whose k, review drop and judge the sweep's one-factor studies vary.
FULL_MODEL = "saerec"
# Which trained variant's lists evaluate explains and steers: the first of these that was trained.
EXPLAIN_ORDER = ("grounded", "grounded-proj", "saerec", "noEMA", "noFus", "noPub", "noPer", "noIde", "saerec-code", "kmeans",
                 "random")


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; allowed: {', '.join(NAMES)}")
    return VARIANTS[name]


def label(name: str) -> str:
    """The report's name of a variant (unknown names are shown as they are)."""
    return VARIANTS[name].label if name in VARIANTS else name


def is_grounded(spec: Mapping[str, Any]) -> bool:
    """Whether a stored model spec is of a grounded model (its explanations are exact)."""
    return spec.get("model") == "grounded"


def model_spec(name: str, encoder: EncoderConfig, k: int, ema_beta: float,
               intent_shape: tuple[int, int] | None, profiles: ItemProfiles | None = None) -> dict[str, Any]:
    """Everything needed to rebuild a variant's model; stored beside its weights."""
    found = variant(name)
    spec: dict[str, Any] = {"variant": name, "encoder": dataclasses.asdict(encoder), "intent_set": found.intent_set,
                            "model": found.model if found.intent_set is not None else "sasrec"}
    if found.intent_set is None:
        return spec
    if intent_shape is None:
        raise ValueError(f"model {name} needs the {found.intent_set} intent set")
    spec["intent_shape"] = [int(n) for n in intent_shape]
    if found.grounded:
        if profiles is None:
            raise ValueError(f"model {name} needs the items' {found.intent_set} intent profiles")
        spec["grounded"] = {"projected": found.projected, "profile_width": int(profiles.ids.shape[1])}
    else:
        k = intent_shape[0] if found.every_intent else k
        spec["intent"] = dataclasses.asdict(IntentConfig(k=k, ema_beta=ema_beta, **found.switches))
    return spec


def build_model(spec: Mapping[str, Any], intents: Tensor | None, profiles: ItemProfiles | None = None) -> nn.Module:
    """A fresh model from a ``model_spec``; ``intents`` (n, D) for the variants that read one,
    ``profiles`` for the grounded ones."""
    enc = EncoderConfig(**spec["encoder"])
    if spec["intent_set"] is None:
        return SASRec(enc)
    if intents is None:
        raise ValueError(f"model {spec['variant']} needs the {spec['intent_set']} intent set")
    if is_grounded(spec):
        if profiles is None:
            raise ValueError(f"model {spec['variant']} needs the items' intent profiles")
        return GroundedSASRec(enc, profiles, len(intents), intents if spec["grounded"]["projected"] else None)
    return SAERec(enc, intents, IntentConfig(**spec["intent"]))


def restore_model(spec: Mapping[str, Any], state: Mapping[str, Tensor]) -> nn.Module:
    """A trained model from its spec and saved weights, in eval mode. The intent vectors and item
    profiles travel in the weights (buffers of the model), so the model is built on placeholders
    of their shapes."""
    placeholder, profiles = None, None
    if spec["intent_set"] is not None:
        if "intent_shape" not in spec:
            raise ValueError("the model spec predates intent_shape; re-run train_rec with --force")
        placeholder = torch.zeros(*spec["intent_shape"])
    if is_grounded(spec):
        shape = (spec["encoder"]["n_items"] + 1, spec["grounded"]["profile_width"])
        profiles = ItemProfiles(torch.zeros(shape, dtype=torch.long), torch.zeros(shape))
    model = build_model(spec, placeholder, profiles)
    model.load_state_dict(state)
    return model.eval()


def random_like(intents: Tensor, seed: int) -> Tensor:
    """Gaussian directions with the same count and row norms as ``intents``: no text in them at all."""
    noise = torch.randn(intents.shape, generator=torch.Generator().manual_seed(seed))
    return nn.functional.normalize(noise, dim=1) * intents.norm(dim=1, keepdim=True)


def intent_sets(needed: set[str], judged: Callable[[], Tensor], all_latents: Callable[[], Tensor],
                texts: Callable[[], Tensor], seed: int, clusters: int | None) -> dict[str, Tensor]:
    """Every intent matrix in ``needed``, each read or computed once (the loaders are called lazily).

    ``clusters`` is the k-means size; ``None`` = as many as judged intents, for a fair comparison.
    """
    unknown = sorted(needed - set(INTENT_SETS))
    if unknown:
        raise ValueError(f"unknown intent set {unknown[0]!r}; known: {', '.join(INTENT_SETS)}")
    out: dict[str, Tensor] = {}
    if needed & {"judged", "random"} or ("kmeans" in needed and clusters is None):
        out["judged"] = judged()
    if "all" in needed:
        out["all"] = all_latents()
    if "random" in needed:
        out["random"] = random_like(out["judged"], seed)
    if "kmeans" in needed:
        corpus = texts()
        n = clusters or len(out["judged"])
        if n > len(corpus):
            raise ValueError(f"rec.kmeans_clusters={n} exceeds the {len(corpus)} non-empty corpus texts")
        out["kmeans"] = kmeans(corpus, n, seed=seed)[0]
    return {name: out[name] for name in needed}
