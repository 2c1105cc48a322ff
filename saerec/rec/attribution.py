"""Score attribution: top-N recommendations, the intents behind them (for a grounded model the exact
parts each item's score splits into), and counterfactual steering by intent boosts.

Not to be confused with the ``explain`` stage, which labels SAE latents with words."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from saerec.rec.batching import RankingSet, ranking_batches
from saerec.rec.grounded import GroundedSAERec, GroundedSASRec
from saerec.rec.metrics import hr_ndcg, mask_scores, target_ranks
from saerec.rec.saerec_model import SAERec, steering


def match_texts(texts: Sequence[str | None], query: str) -> np.ndarray:
    """Boolean mask of texts containing ``query`` as a whole word (or phrase), case-insensitive."""
    if not query.strip():
        raise ValueError("steering query must not be empty")
    pattern = re.compile(r"\b" + r"\s+".join(map(re.escape, query.split())) + r"\b", re.IGNORECASE)
    return np.array([bool(t) and pattern.search(t) is not None for t in texts], dtype=bool)


def match_words(word_lists: Sequence[Sequence[str] | None], query: str) -> np.ndarray:
    """Boolean mask of word lists that hold every word of ``query`` (case-insensitive, in any order):
    a latent's top words name a theme without the summary's phrasing ("polish", "nail")."""
    wanted = {w.casefold() for w in query.split()}
    if not wanted:
        raise ValueError("steering query must not be empty")
    return np.array([bool(words) and wanted <= {w.casefold() for w in words} for words in word_lists], dtype=bool)


def match_category(names: Sequence[str], query: str) -> list[str]:
    """The category names a steering query targets: those equal to ``query`` (case-insensitive), or
    else those containing it as a whole word or phrase. One name is a target; none or several are not."""
    exact = [n for n in names if n.casefold() == query.strip().casefold()]
    if exact:
        return exact
    return [n for n, hit in zip(names, match_texts(names, query)) if hit]


def steering_category(labels: dict[int, list[str]] | None, query: str,
                      category: str | None = None) -> dict[str, str]:
    """The category a steering ``query`` targets, ``{"category": name}``, or ``{"category_skipped": why}``:
    ``category`` (``evaluate.steering_category``) if set, else the one category name matching the query.
    ``labels`` maps item ids to their category names (None: the run has none)."""
    if labels is None:
        return {"category_skipped": "prepare published no item categories (data.item_categories)"}
    names = sorted({name for found in labels.values() for name in found})
    if category is not None:
        found = [n for n in names if n.casefold() == category.strip().casefold()]
        return ({"category": found[0]} if found else
                {"category_skipped": f"no item is labelled evaluate.steering_category={category!r}"})
    found = match_category(names, query)
    if len(found) == 1:
        return {"category": found[0]}
    return {"category_skipped": f"{'no' if not found else len(found)} category names match {query!r}"
                                f"{' (' + ', '.join(found[:5]) + ')' if found else ''}; set evaluate.steering_category"}


def category_flags(labels: dict[int, list[str]], category: str, n_items: int) -> np.ndarray:
    """(n_items + 1,) mask of the items labelled ``category`` (index 0, the padding id, is never set)."""
    flags = np.zeros(n_items + 1, dtype=bool)
    flags[[i for i, names in labels.items() if category in names and 0 < i <= n_items]] = True
    return flags


def flagged_share(lists: np.ndarray, flags: np.ndarray) -> float:
    """Share of the items in the (U, N) top-N ``lists`` that ``flags`` marks (e.g. a category's items)."""
    if lists.size and (lists.min() < 0 or lists.max() >= len(flags)):
        raise ValueError(f"listed item ids must lie in [0, {len(flags)}), got {lists.min()}..{lists.max()}")
    return float(flags[lists].mean()) if lists.size else 0.0


def _batches(lengths: np.ndarray, batch_size: int):
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def top_items(model: torch.nn.Module, inputs: np.ndarray, lengths: np.ndarray, top_n: int,
              mask_history: bool = True, batch_size: int = 1024, device: torch.device | str = "cpu") -> np.ndarray:
    """(U, top_n) item ids ranked best first for the next step after each history."""
    model.eval()
    out = np.zeros((len(lengths), top_n), dtype=np.int64)
    for rows in _batches(lengths, batch_size):
        width = int(lengths[rows].max())
        seqs = torch.from_numpy(inputs[rows, :width]).to(device)
        scores = model.full_sort_scores(seqs, torch.from_numpy(lengths[rows]).to(device), mask_history)
        out[rows] = scores.topk(top_n, dim=1).indices.cpu().numpy()
    return out


@torch.no_grad()
def explain_users(model: SAERec, inputs: np.ndarray, lengths: np.ndarray, top_n: int,
                  mask_history: bool = True, batch_size: int = 1024,
                  device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Top-N items plus each user's personal intent ids, the public ids and the branch weights."""
    items = top_items(model, inputs, lengths, top_n, mask_history, batch_size, device)
    personal = np.zeros((len(lengths), model.icfg.k), dtype=np.int64)
    weights = None
    public = model.public_ids().cpu().numpy()
    for rows in _batches(lengths, batch_size):
        width = int(lengths[rows].max())
        info = model.explain(torch.from_numpy(inputs[rows, :width]).to(device),
                             torch.from_numpy(lengths[rows]).to(device))
        personal[rows] = info["personal"].cpu().numpy()
        if weights is None:
            weights = np.zeros((len(lengths), info["weights"].shape[1]), dtype=np.float32)
        weights[rows] = info["weights"].cpu().numpy()
    return {"items": items, "personal": personal, "public": public, "weights": weights}


@torch.no_grad()
def explain_grounded(model: GroundedSASRec | GroundedSAERec, inputs: np.ndarray, lengths: np.ndarray, top_n: int,
                     per_item: int, mask_history: bool = True, batch_size: int = 1024,
                     device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Top-N items with each item's ``per_item`` strongest intents by contribution a_ji (h . E_i),
    those contributions (-1 / 0 where an item has fewer intents), and the share of the item's
    score its intents account for, |intent part| / (|id part| + |intent part|) over all of its
    intents, not only the listed ones. The parts are the model's own arithmetic: the id part plus
    all contributions is the item's score."""
    model.eval()
    items = top_items(model, inputs, lengths, top_n, mask_history, batch_size, device)
    width = min(per_item, model.profile_ids.shape[1])
    intents = np.zeros((len(lengths), top_n, width), dtype=np.int64)
    contributions = np.zeros((len(lengths), top_n, width), dtype=np.float32)
    share = np.zeros((len(lengths), top_n), dtype=np.float32)
    for rows in _batches(lengths, batch_size):
        width_seq = int(lengths[rows].max())
        seqs = torch.from_numpy(inputs[rows, :width_seq]).to(device)
        reps = model(seqs, torch.from_numpy(lengths[rows]).to(device), last_only=True)
        parts = model.score_parts(reps, torch.from_numpy(items[rows]).to(device))
        order = parts["contributions"].abs().argsort(dim=-1, descending=True)[..., :width]
        listed = parts["weights"].gather(-1, order) > 0
        intents[rows] = torch.where(listed, parts["intents"].gather(-1, order), -1).cpu().numpy()
        contributions[rows] = parts["contributions"].gather(-1, order).cpu().numpy()
        intent_part = parts["contributions"].sum(-1)
        share[rows] = (intent_part.abs() / (parts["id"].abs() + intent_part.abs()).clamp_min(1e-12)).cpu().numpy()
    return {"items": items, "intents": intents, "contributions": contributions, "intent_share": share}


def steering_study(model: SAERec, inputs: np.ndarray, lengths: np.ndarray, intent_ids: Sequence[int],
                   strength: float, item_flags: np.ndarray, top_n: int, mask_history: bool = True,
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """How top-N lists shift when ``intent_ids`` are boosted by ``strength``.

    ``item_flags`` (n_items + 1,) marks the items of interest (e.g. a category); the study
    counts them in all users' top-N lists before and after, and how much the lists moved.
    """
    if item_flags.shape != (model.cfg.n_items + 1,):
        raise ValueError(f"item_flags must have shape ({model.cfg.n_items + 1},), got {item_flags.shape}")
    before = top_items(model, inputs, lengths, top_n, mask_history, device=device)
    with steering(model, intent_ids, strength):
        after = top_items(model, inputs, lengths, top_n, mask_history, device=device)
    overlap = np.mean([len(np.intersect1d(a, b)) / top_n for a, b in zip(before, after)])
    return {"boosted_intents": len(intent_ids), "strength": float(strength), "top_n": top_n,
            "users": len(lengths), "flagged_before": int(item_flags[before].sum()),
            "flagged_after": int(item_flags[after].sum()),
            "users_changed": float(np.mean((before != after).any(axis=1))),
            "mean_overlap": float(overlap)}


@torch.no_grad()
def grounded_steering_study(model: GroundedSASRec | GroundedSAERec, data: RankingSet, intent_ids: Sequence[int],
                            strengths: Sequence[float], top_n: int, mask_history: bool = True,
                            batch_size: int = 1024, device: torch.device | str = "cpu",
                            category: np.ndarray | None = None) -> dict[str, object]:
    """Dose-response of steering a grounded model toward ``intent_ids``.

    The steered score of item j for user u is ``s_uj + strength * std_u(s) * b_j``, where b_j is
    item j's total weight on the boosted intents (its profile's a_ji summed over them), scaled to
    at most 1. The boost is in units of the user's own score spread, so a strength means the same
    for every user; an item that carries none of the intents is never moved, and at strength 0
    the lists are the model's own. Per strength: the share of top-N items that carry a boosted
    intent, HR and NDCG at N on ``data``'s held-out items, the share of users whose list changed and,
    given ``category`` ((n_items + 1,) item mask, outside labels), the share of top-N items in it.
    """
    ids = torch.as_tensor(list(intent_ids), dtype=torch.long)
    if ids.numel() == 0 or ids.min() < 0 or ids.max() >= model.n_intents:
        raise ValueError(f"boosted intent ids must be a non-empty subset of [0, {model.n_intents}), got {ids.tolist()}")
    if any(s < 0 for s in strengths):
        raise ValueError(f"steering strengths must be >= 0, got {list(strengths)}")
    levels = [0.0, *sorted({float(s) for s in strengths} - {0.0})]
    model.eval()
    boosted = torch.isin(model.profile_ids, ids.to(model.profile_ids.device)) & (model.profile_weights > 0)
    boost = (model.profile_weights * boosted).sum(1)
    boost = boost / boost.max().clamp_min(1e-12)
    carrying = (boost > 0).cpu()
    ranks = np.zeros((len(levels), len(data)), dtype=np.int64)
    carried = np.zeros(len(levels))
    changed = np.zeros(len(levels))
    in_category = np.zeros(len(levels))
    for rows, seqs, lengths, targets in ranking_batches(data, batch_size):
        seqs, lengths, targets = seqs.to(device), lengths.to(device), targets.to(device)
        scores = model.full_sort_scores(seqs, lengths, mask_seen=False)
        spread = scores[:, 1:].std(dim=1, keepdim=True)
        base = None
        for level, strength in enumerate(levels):
            steered = mask_scores(scores + strength * spread * boost.to(scores.device), seqs if mask_history else None)
            ranks[level, rows] = target_ranks(steered, targets).cpu().numpy()
            top = steered.topk(top_n, dim=1).indices.cpu()
            carried[level] += float(carrying[top].sum())
            if category is not None:
                in_category[level] += flagged_share(top.numpy(), category) * top.numel()
            if base is None:
                base = top
            changed[level] += float((top.sort(dim=1).values != base.sort(dim=1).values).any(dim=1).sum())
    rows_out = []
    for level, strength in enumerate(levels):
        quality = hr_ndcg(ranks[level], [top_n])
        rows_out.append({"strength": strength, "carrying_share": carried[level] / (len(data) * top_n),
                         f"hr@{top_n}": quality[f"hr@{top_n}"], f"ndcg@{top_n}": quality[f"ndcg@{top_n}"],
                         "users_changed": changed[level] / len(data),
                         **({"category_share": in_category[level] / (len(data) * top_n)} if category is not None
                            else {})})
    return {"boosted_intents": int(ids.numel()), "items_carrying": int(carrying[1:].sum()), "top_n": top_n,
            "users": len(data), "dose_response": rows_out}


def cheapest_effect(valid: Sequence[dict[str, float]], test: Sequence[dict[str, float]], metric: str,
                    max_cost: float = 0.01) -> dict[str, float] | None:
    """The strongest steering level whose relative loss of ``metric`` on valid is at most ``max_cost``,
    chosen on the valid dose-response only; for that strength it reports the valid and test cost and,
    on test, the relative rise of the carrying share and, where the levels carry ``category_share``,
    that share before and after and its relative rise (None when it was 0 before). None when no
    boosted level is that cheap on valid. Both dose-responses are ``grounded_steering_study``'s over the
    same strengths."""
    base = valid[0]
    cheap = [r for r in valid[1:] if base[metric] - r[metric] <= max_cost * base[metric]]
    if not cheap:
        return None
    strength = cheap[-1]["strength"]
    on_test = {r["strength"]: r for r in test}
    if strength not in on_test or 0.0 not in on_test:
        raise ValueError(f"the test dose-response has no strength {strength} or 0 to report; it must use the "
                         "valid one's strengths")
    test_base, found = on_test[0.0], on_test[strength]

    def cost(before: dict[str, float], after: dict[str, float]) -> float:
        return 1 - after[metric] / before[metric] if before[metric] else 0.0

    rise = (found["carrying_share"] / test_base["carrying_share"] - 1 if test_base["carrying_share"] > 0
            else float("inf"))
    chosen = {"strength": strength, "chosen_on": "valid", f"valid_{metric}_cost": cost(base, cheap[-1]),
              f"test_{metric}_cost": cost(test_base, found), "carrying_share_before": test_base["carrying_share"],
              "carrying_share_after": found["carrying_share"], "carrying_share_rise": rise}
    if "category_share" in found:
        before, after = test_base["category_share"], found["category_share"]
        chosen.update({"category_share_before": before, "category_share_after": after,
                       "category_share_rise": after / before - 1 if before > 0 else None})
    return chosen
