"""Beauty's intents side by side: short generated item text against full titles and brands (issue 31).

Reads two published runs of the job (each at least through profile; the title run through
evaluate for the explanations): ``--short`` (``configs/beauty.yaml``: IDGenRec's 5-word item
texts) and ``--titles`` (``configs/beauty-titles.yaml``). For each run it takes a seeded random
sample of kept intents (not the best ones) and shows each one's summary, top words, detection,
category purity (Amazon categories, evaluation labels the model never reads) and top items by
profile weight, named by their full titles. From the title run's evaluate it adds the
explanations of a seeded sample of test users: their top recommended items with the intents
that contribute most to each item's score. Writes ``bench/results/intents_side_by_side_beauty.json``
and prints it as Markdown.

Example:
  python bench/intents_side_by_side.py --short /tmp/runs/beauty --titles /tmp/runs/beauty-titles
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.provenance import git_commit  # noqa: E402
from saerec.pipeline import StageInput  # noqa: E402
from saerec.storage import MANIFEST, Store  # noqa: E402


def published(run_dir: str, stage: str) -> StageInput:
    """A stage of the run at ``run_dir`` ({storage.uri}/{run.name})."""
    root, _, run = run_dir.rstrip("/").rpartition("/")
    store = Store(root or ".")
    return StageInput(store, store.read_json(store.join(run, stage, MANIFEST)))


def items_by_latent(profiles: Any) -> dict[int, list[tuple[float, int]]]:
    """(weight, item) pairs per latent of the every-latent profile set, one pass over the table."""
    found: dict[int, list[tuple[float, int]]] = {}
    for item, intents, weights in profiles:
        for latent, weight in zip(intents, weights):
            found.setdefault(latent, []).append((weight, item))
    return found


def intents_of(run_dir: str, titles: dict[int, str], n: int, seed: int) -> dict[str, Any]:
    features = published(run_dir, "judge").read_table("features.parquet").to_pylist()
    profile = published(run_dir, "profile")
    table = profile.read_table("item_profiles.parquet").to_pylist()
    by_latent = items_by_latent((r["item"], r["intents"], r["weights"]) for r in table if r["set"] == "all")
    purity = {r["id"]: r for r in profile.read_table("intent_purity.parquet").to_pylist() if r["group"] == "kept"}
    kept = [f for f in features if f["kept"]]
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(len(kept), size=min(n, len(kept)), replace=False).tolist())
    rows = []
    for f in (kept[i] for i in sample):
        p = purity.get(f["latent"])
        rows.append({"latent": f["latent"], "summary": f["summary"], "words": f["words"][:8],
                     "detection": f["detection"], "detection_words": f["detection_words"],
                     "purity": None if p is None else round(float(p["purity"]), 3),
                     "category": None if p is None else p["category"],
                     "top_items": [titles.get(i, f"item {i}") for i in (item for _, item in sorted(by_latent.get(f["latent"], []), reverse=True)[:3])]})
    return {"run": run_dir, "kept": len(kept), "latents": len(features), "sample": rows}


def explanations(run_dir: str, titles: dict[int, str], n: int, seed: int) -> list[dict[str, Any]]:
    table = published(run_dir, "evaluate").read_table("recommendations.parquet").to_pylist()
    rng = np.random.default_rng(seed)
    rows = []
    for i in sorted(rng.choice(len(table), size=min(n, len(table)), replace=False).tolist()):
        r = table[i]
        items = [{"item": titles.get(item, f"item {item}"),
                  "intents": [s for s in (summaries or [])[:3] if s],
                  "intent_share": None if share is None else round(float(share), 3)}
                 for item, summaries, share in zip(r["items"][:3], r["item_intent_summaries"] or [[]] * 3,
                                                   r["item_intent_share"] or [None] * 3)]
        rows.append({"user": r["user"], "held_out": titles.get(r["target"], f"item {r['target']}"),
                     "hit": r["hit"], "top3": items})
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for name in ("short", "titles"):
        part = result[name]
        lines += [f"### {name}: {part['kept']} of {part['latents']} latents kept ({part['run']})", "",
                  "| latent | summary | top words | detection (words) | purity (category) | top items |",
                  "|---|---|---|---|---|---|"]
        for r in part["sample"]:
            det = "-" if r["detection"] is None else f"{r['detection']:.2f} ({r['detection_words']:.2f})"
            pur = "-" if r["purity"] is None else f"{r['purity']:.2f} ({r['category']})"
            lines.append(f"| {r['latent']} | {r['summary']} | {', '.join(r['words'])} | {det} | {pur} | "
                         f"{'; '.join(t[:60] for t in r['top_items'])} |")
        lines.append("")
    lines += ["### explanations (titles run)", ""]
    for u in result["explanations"]:
        lines.append(f"- user {u['user']} (held out: {u['held_out'][:60]}; hit {u['hit']}):")
        for it in u["top3"]:
            lines.append(f"  - {it['item'][:70]}: {', '.join(it['intents']) or '-'} (intent share {it['intent_share']})")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", required=True, help="the short-text run folder, {storage.uri}/{run.name}")
    p.add_argument("--titles", required=True, help="the title+brand run folder, {storage.uri}/{run.name}")
    p.add_argument("--intents", type=int, default=20, help="kept intents sampled per run")
    p.add_argument("--users", type=int, default=10, help="test users whose explanations are shown")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "intents_side_by_side_beauty.json")
    args = p.parse_args()
    items = published(args.titles, "prepare").read_table("items.parquet").to_pylist()
    titles = {r["item"]: r["text"] for r in items if r["text"]}
    result = {"command": " ".join(sys.argv),
              "commit": git_commit(),
              "short": intents_of(args.short, titles, args.intents, args.seed),
              "titles": intents_of(args.titles, titles, args.intents, args.seed),
              "explanations": explanations(args.titles, titles, args.users, args.seed)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
