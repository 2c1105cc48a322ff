"""The registry of recommender variants: the one place that names them.

A variant is a backbone, a model class, the intent set it reads and its ablation switches. train_rec,
evaluate, the sweep, the report and config validation all take names and labels from here;
adding a variant is one entry below plus its model code.

Model kinds: none (SASRec, no intents), ``attention`` (SAERec: SASRec states refined by intent
attention), ``grounded`` (items built from their intent profiles, ``saerec.rec.grounded``),
``grounded-attention`` (SAERec's intent attention over grounded items) and ``dense-text``
(items = ID + a projection of their mean text embedding, ``saerec.rec.dense``).

Intent sets: ``judged`` (the kept SAE latents), ``all`` (every SAE latent, no judge),
``kmeans`` (k-means centroids of the same text embeddings), ``random`` (Gaussian vectors with
the judged set's count and norms: the control for whether the text matters at all) and ``text``
(each item's mean text embedding, for the ``dense`` variant; not intents).

Backbones (the sequence encoder, ``EncoderConfig.backbone``): ``sasrec`` and ``bsarec``
(``saerec.rec.bsarec``). The backbone is independent of the item representation. Every variant
that is a plain encoder over an item representation (id, grounded, dense: ``ON_EVERY_BACKBONE``)
also exists on BSARec, named with a ``bsarec-`` prefix (``bsarec`` for ids alone). SAERec's intent
attention variants stay on SASRec, as in the paper.

Item profiles (grounded variants), one per intent set: ``judged`` and ``all`` are the profile
stage's; ``random`` and ``kmeans`` are controls derived from the judged profiles that keep each
item's number of intents and their weights and change only WHICH intents an item carries: drawn
at random, or the k-means centroids nearest the item's mean text embedding.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from saerec.rec.dense import DenseTextSASRec
from saerec.rec.grounded import GroundedSAERec, GroundedSASRec, ItemProfiles
from saerec.rec.kmeans import kmeans
from saerec.rec.saerec_model import IntentConfig, SAERec
from saerec.rec.sasrec import BACKBONES, EncoderConfig, SASRec

INTENT_SETS = ("judged", "all", "kmeans", "random", "text")
RANDOM_SET = "random"  # the control: random vectors or profiles with the judged set's shape
ProfileRows = dict[int, tuple[list[int], list[float]]]
GROUNDED_KINDS = ("grounded", "grounded-attention")
ATTENDING_KINDS = ("attention", "grounded-attention")


@dataclass(frozen=True)
class Variant:
    """One trainable model: its report label, the intent set it reads, its IntentConfig switches,
    the paper's row it corresponds to (for the report's side-by-side table) and its backbone."""

    name: str
    label: str
    intent_set: str | None = None
    switches: Mapping[str, Any] = field(default_factory=dict)
    paper_row: str | None = None
    every_intent: bool = False  # retrieve every intent of the set (k = its size), as the public code does
    model: str = "attention"  # attention (SAERec), grounded, grounded-attention or dense-text
    projected: bool = False  # grounded: E_i = W_m v_i from the intent vectors instead of a free vector
    backbone: str = "sasrec"  # the sequence encoder, one of BACKBONES

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"variant {self.name}: unknown backbone {self.backbone!r}; "
                             f"allowed: {', '.join(BACKBONES)}")

    @property
    def grounded(self) -> bool:
        """Whether the model reads the items' intent profiles."""
        return self.model in GROUNDED_KINDS

    @property
    def attends(self) -> bool:
        """Whether the model is SAERec's intent attention over an intent set (k of them retrieved)."""
        return self.intent_set is not None and self.model in ATTENDING_KINDS


_SASREC_VARIANTS = (
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
    Variant("grounded-all", "Grounded SASRec over every SAE latent (no judge)", "all", model="grounded"),
    Variant("saerec-grounded", "SAERec (paper eqs. 3-8) over grounded items, attention on the same free intent "
            "vectors", "judged", model="grounded-attention"),
    Variant("saerec-grounded-history", "SAERec over grounded items, personal intents retrieved from the history "
            "items' profiles", "judged", {"query": "history"}, model="grounded-attention"),
    Variant("grounded-random", "Grounded SASRec, random profiles (control: same counts and weights)", "random",
            model="grounded"),
    Variant("grounded-kmeans", "Grounded SASRec, k-means profiles (control: same counts and weights)", "kmeans",
            model="grounded"),
    Variant("dense", "Dense-text SASRec (items = ID + W x text embedding; not interpretable)", "text",
            model="dense-text"),
)
# The variants that are a plain encoder over an item representation: each exists on every backbone.
ON_EVERY_BACKBONE = ("sasrec", "grounded", "grounded-proj", "grounded-all", "grounded-random", "grounded-kmeans",
                     "dense")


def on_backbone(base: Variant, backbone: str, title: str) -> Variant:
    """``base`` with its encoder swapped for ``backbone``: named ``{backbone}-{base}`` (the backbone
    alone for plain ids), labelled with ``title`` in place of SASRec."""
    name = backbone if base.name == "sasrec" else f"{backbone}-{base.name}"
    return dataclasses.replace(base, name=name, label=base.label.replace("SASRec", title), backbone=backbone,
                               paper_row=None)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    *_SASREC_VARIANTS,
    *(on_backbone(v, "bsarec", "BSARec") for v in _SASREC_VARIANTS if v.name in ON_EVERY_BACKBONE),
)}
NAMES: tuple[str, ...] = tuple(VARIANTS)
# The model whose k, review drop and judge the sweep's one-factor studies vary.
FULL_MODEL = "saerec"
# The plain recommender every other model is compared with (evaluate's paired intervals).
BASELINE = "sasrec"
# Which trained variant's lists evaluate explains and steers: the first of these that was trained.
EXPLAIN_ORDER = ("grounded", "grounded-proj", "grounded-all", "bsarec-grounded", "bsarec-grounded-proj",
                 "bsarec-grounded-all", "saerec-grounded", "saerec-grounded-history", "saerec",
                 "noEMA", "noFus", "noPub", "noPer", "noIde", "saerec-code", "kmeans", "random")


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; allowed: {', '.join(NAMES)}")
    return VARIANTS[name]


def label(name: str) -> str:
    """The report's name of a variant (unknown names are shown as they are)."""
    return VARIANTS[name].label if name in VARIANTS else name


def attends(spec: Mapping[str, Any]) -> bool:
    """Whether a stored model spec is of a SAERec (specs from before other model kinds say none)."""
    return spec["intent_set"] is not None and spec.get("model", "attention") in (*ATTENDING_KINDS, "saerec")


def is_grounded(spec: Mapping[str, Any]) -> bool:
    """Whether a stored model spec is of a grounded model (its explanations are exact)."""
    return spec.get("model") in GROUNDED_KINDS


def model_spec(name: str, encoder: EncoderConfig, intent: IntentConfig,
               intent_shape: tuple[int, int] | None, profiles: ItemProfiles | None = None) -> dict[str, Any]:
    """Everything needed to rebuild a variant's model; stored beside its weights. The variant sets
    the encoder's backbone and the intent config's switches (and k, for one that reads every intent)."""
    found = variant(name)
    encoder = dataclasses.replace(encoder, backbone=found.backbone)
    spec: dict[str, Any] = {"variant": name, "encoder": dataclasses.asdict(encoder), "intent_set": found.intent_set,
                            "model": found.model if found.intent_set is not None else "sasrec"}
    if found.intent_set is None:
        return spec
    if intent_shape is None:
        raise ValueError(f"model {name} needs the {found.intent_set} intent set")
    spec["intent_shape"] = [int(n) for n in intent_shape]
    if found.model == "dense-text":
        return spec
    if found.grounded:
        if profiles is None:
            raise ValueError(f"model {name} needs the items' {found.intent_set} intent profiles")
        spec["grounded"] = {"projected": found.projected, "profile_width": int(profiles.ids.shape[1])}
    if found.attends:
        k = intent_shape[0] if found.every_intent else intent.k
        spec["intent"] = dataclasses.asdict(dataclasses.replace(intent, k=k, **found.switches))
    return spec


def build_model(spec: Mapping[str, Any], intents: Tensor | None, profiles: ItemProfiles | None = None) -> nn.Module:
    """A fresh model from a ``model_spec``; ``intents`` (n, D) for the variants that read one,
    ``profiles`` for the grounded ones."""
    enc = EncoderConfig(**spec["encoder"])
    if spec["intent_set"] is None:
        return SASRec(enc)
    if intents is None:
        raise ValueError(f"model {spec['variant']} needs the {spec['intent_set']} intent set")
    if spec.get("model") == "dense-text":
        return DenseTextSASRec(enc, intents)
    if is_grounded(spec):
        if profiles is None:
            raise ValueError(f"model {spec['variant']} needs the items' intent profiles")
        if spec["model"] == "grounded-attention":
            return GroundedSAERec(enc, intents, IntentConfig(**spec["intent"]), profiles, spec["grounded"]["projected"])
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
    if is_grounded(spec) and "id_scale" not in state:
        # saved before new arrivals were grounded (GroundedItems.ground_unseen): every item kept its ID
        state = {**state, "id_scale": torch.ones(shape[0])}
    model.load_state_dict(state)
    return model.eval()


def random_like(intents: Tensor, seed: int) -> Tensor:
    """Gaussian directions with the same count and row norms as ``intents``: no text in them at all."""
    noise = torch.randn(intents.shape, generator=torch.Generator().manual_seed(seed))
    return nn.functional.normalize(noise, dim=1) * intents.norm(dim=1, keepdim=True)


@dataclass(frozen=True)
class Sources:
    """Loaders of what the variants read; each is called only when a variant needs it."""

    judged: Callable[[], Tensor]  # the kept latents' intent vectors
    all_latents: Callable[[], Tensor]  # every SAE latent's vector
    texts: Callable[[], Tensor]  # every non-empty corpus text's embedding (for k-means)
    item_texts: Callable[[], Tensor]  # (n_items + 1, D) each item's mean text embedding
    profiles: Callable[[str], ProfileRows]  # the profile stage's rows of one intent set


def intent_sets(needed: set[str], sources: Sources, seed: int, clusters: int | None) -> dict[str, Tensor]:
    """Every intent matrix in ``needed``, each read or computed once.

    ``clusters`` is the k-means size; ``None`` = as many as judged intents, for a fair comparison.
    """
    unknown = sorted(needed - set(INTENT_SETS))
    if unknown:
        raise ValueError(f"unknown intent set {unknown[0]!r}; known: {', '.join(INTENT_SETS)}")
    out: dict[str, Tensor] = {}
    if needed & {"judged", "random"} or ("kmeans" in needed and clusters is None):
        out["judged"] = sources.judged()
    if "all" in needed:
        out["all"] = sources.all_latents()
    if "random" in needed:
        out["random"] = random_like(out["judged"], seed)
    if "kmeans" in needed:
        corpus = sources.texts()
        n = clusters or len(out["judged"])
        if n > len(corpus):
            raise ValueError(f"rec.kmeans_clusters={n} exceeds the {len(corpus)} non-empty corpus texts")
        out["kmeans"] = kmeans(corpus, n, seed=seed)[0]
    if "text" in needed:
        out["text"] = sources.item_texts()
    return {name: out[name] for name in needed}


def random_profiles(judged: ItemProfiles, n_intents: int, seed: int) -> ItemProfiles:
    """Each item keeps its number of intents and their weights; the intents are drawn at random."""
    if judged.ids.shape[1] > n_intents:
        raise ValueError(f"profiles of {judged.ids.shape[1]} intents cannot be drawn from {n_intents}")
    draws = torch.rand(judged.ids.shape[0], n_intents, generator=torch.Generator().manual_seed(seed))
    ids = draws.argsort(dim=1)[:, :judged.ids.shape[1]]
    return ItemProfiles(torch.where(judged.weights > 0, ids, 0), judged.weights.clone())


def nearest_profiles(judged: ItemProfiles, item_texts: Tensor, centroids: Tensor) -> ItemProfiles:
    """Each item keeps its number of intents and their weights; the intents are the k-means
    centroids nearest (by cosine) the item's mean text embedding, nearest first."""
    width = min(judged.ids.shape[1], len(centroids))
    sims = nn.functional.normalize(item_texts.float(), dim=1) @ nn.functional.normalize(centroids.float(), dim=1).T
    ids = sims.topk(width, dim=1).indices
    weights = judged.weights[:, :width].clone()
    return ItemProfiles(torch.where(weights > 0, ids, 0), weights)


def profile_set(name: str, n_items: int, sources: Sources, intents: dict[str, Tensor], seed: int) -> ItemProfiles:
    """The item profiles over intent set ``name`` (see the module docstring)."""
    if name in ("judged", "all"):
        return ItemProfiles.from_lists(n_items, sources.profiles(name))
    judged = ItemProfiles.from_lists(n_items, sources.profiles("judged"))
    if name == "random":
        return random_profiles(judged, len(intents["random"]), seed)
    if name == "kmeans":
        return nearest_profiles(judged, sources.item_texts(), intents["kmeans"])
    raise ValueError(f"no item profiles over the {name!r} intent set")


def build_inputs(names: list[str], n_items: int, seed: int, sources: Sources, clusters: int | None
                 ) -> tuple[dict[str, Tensor], dict[str, ItemProfiles]]:
    """The intent matrices and (for the grounded variants) item profiles that ``names`` read,
    both keyed by intent set: what train_rec, the sweep and the benchmarks train on."""
    found = [variant(n) for n in names]
    intents = intent_sets({v.intent_set for v in found} - {None}, sources, seed, clusters)
    profiles = {s: profile_set(s, n_items, sources, intents, seed)
                for s in sorted({v.intent_set for v in found if v.grounded})}
    return intents, profiles
