"""Benchmark: are Beauty's intents ones a shopper would recognise? (issue 31)

Runs the job itself (``configs/beauty-titles.yaml``: full titles and brands as item text) on
``--data-dir`` into ``--storage`` up to evaluate, once per steering query; the stages publish
once, so every query after the first re-runs only evaluate. Then it reads the published stage
metrics and writes ``bench/results/intents_beauty.json``:

- independent detection: the share of kept intents whose summaries detect their latent's texts
  at balanced accuracy >= 0.75, scored by all-mpnet-base-v2, an encoder the judge never uses to
  write or choose summaries, beside the bare-words baseline (the latent's top words as summary);
- category purity (Amazon categories, evaluation labels the model never reads) of the kept
  intents against random item sets, k-means clusters of the item texts and rejected latents;
- steering scored against categories: per query, the strength chosen on valid (at most 1 % of
  valid NDCG@20), its valid and test cost, and the category share of top-20 items before and after.

Example (CPU, resumable: a killed run continues at the first unpublished stage):
  pip install -c constraints.txt 'saerec[detect]'
  python bench/intents.py --data-dir /data/beauty --storage /tmp/saerec-bench
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import steering_row  # noqa: E402
from bench.provenance import git_commit  # noqa: E402
from bench.shared_data import shared_data_dir  # noqa: E402

from saerec.pipeline import StageInput  # noqa: E402
from saerec.storage import MANIFEST, Store  # noqa: E402

RUN = "beauty-titles"
QUERIES = ("nail polish=Nail Polish", "shampoo=Shampoos", "sunscreen=Sun", "eyeliner=Eyeliner")
OVERRIDES = ("rec.models=[grounded]", "rec.patience=10", "judge.detection_encoder=mpnet")


def job_command(data_dir: Path, storage: str, query: str, category: str, extra: list[str]) -> list[str]:
    sets = [*OVERRIDES, f"data.path={data_dir}", f"storage.uri={storage}", f"run.name={RUN}",
            f"evaluate.steering_query={query}", f"evaluate.steering_category={category}", *extra]
    return [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--config",
            str(REPO / "configs" / "beauty-titles.yaml"), *[a for s in sets for a in ("--set", s)],
            "--until", "evaluate"]


def published(store: Store, stage: str) -> StageInput:
    return StageInput(store, store.read_json(store.join(RUN, stage, MANIFEST)))


def summarise(store: Store, rows: list[dict[str, Any]]) -> dict[str, Any]:
    judge, profile, evaluate = (published(store, s) for s in ("judge", "profile", "evaluate"))
    j, p, e = judge.metrics, profile.metrics, evaluate.metrics
    rises = [r["category_share_rise"] for r in rows if r.get("category_share_rise") is not None]
    return {
        "judge": {k: j.get(k) for k in ("latents", "kept", "model", "scoring", "detection_encoder",
                                         "detection_latents", "detection_balanced_accuracy",
                                         "detection_words_balanced_accuracy", "detection_words_share_above_075")},
        "independent_detection_share_above_0.75": j.get("detection_share_above_075"),
        "summaries_minus_bare_words_balanced_accuracy": (
            round(j["detection_balanced_accuracy"] - j["detection_words_balanced_accuracy"], 4)
            if j.get("detection_balanced_accuracy") is not None
            and j.get("detection_words_balanced_accuracy") is not None else None),
        "purity_kept": p.get("purity_kept"), "purity_rejected": p.get("purity_rejected"),
        "purity_clusters": p.get("purity_clusters"), "purity_chance": p.get("purity_chance"),
        "purity_ratio_vs_random": p.get("purity_ratio_vs_chance"),
        "purity_ratio_vs_kmeans": p.get("purity_ratio_vs_clusters"),
        "purity_ratio_vs_rejected": p.get("purity_ratio_vs_rejected"),
        "purity_top_n": p.get("purity_top_n"),
        "grounded": {"model": e.get("selected_model"), "seeds": e.get("selected_seeds"),
                     "valid_ndcg@20": e.get("selected_valid_ndcg@20"),
                     "test": {m: e.get(f"{e.get('selected_model')}_test_{m}")
                              for m in ("hr@10", "hr@20", "ndcg@10", "ndcg@20")}},
        "steering": rows,
        "steering_queries_rising_20pct": sum(r >= 0.2 for r in rises),
        "fingerprints": {s.manifest["stage"]: s.manifest["fingerprint"] for s in (judge, profile, evaluate)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None, help="the Beauty folder (default: the shared data's beauty)")
    p.add_argument("--storage", default=str(REPO / "saerec-output" / "bench-intents"), help="the job's storage.uri")
    p.add_argument("--queries", nargs="+", default=list(QUERIES), help="QUERY=CATEGORY pairs")
    p.add_argument("--set", dest="extra", action="append", default=[], help="another job override, KEY=VALUE")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "intents_beauty.json")
    args = p.parse_args()
    data_dir = args.data_dir or shared_data_dir() / "beauty"
    store = Store(args.storage)
    rows, commands, started = [], [], time.time()
    for pair in args.queries:
        query, sep, category = pair.partition("=")
        if not sep or not query.strip() or not category.strip():
            p.error(f"--queries: got {pair!r}; write QUERY=CATEGORY, e.g. 'nail polish=Nail Polish'")
        cmd = job_command(data_dir, args.storage, query, category, args.extra)
        commands.append(" ".join(cmd[1:]))
        print(f"[intents] steering query {query!r} -> category {category!r}", flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
        rows.append(steering_row(json.loads(published(store, "evaluate").read_bytes("steering.json"))))
    result = {"dataset": "Amazon Beauty (ICLRec 5-core), item text = title + brand (configs/beauty-titles.yaml)",
              "commit": git_commit(),
              "machine": platform.machine(), "wall_s": round(time.time() - started, 1),
              "command": " ".join(sys.argv), "job_commands": commands, **summarise(store, rows)}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("steering", "job_commands")}, indent=1))
    for r in rows:
        print(f"  {r['query']!r:16} -> {r.get('category')!r:14} strength {r.get('strength')} valid cost "
              f"{r.get('valid_cost')} share {r.get('category_share_before')} -> {r.get('category_share_after')} "
              f"{r.get('skipped', '')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
