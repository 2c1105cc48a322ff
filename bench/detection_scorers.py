"""Benchmark: a published judge run's detection by other scorers, summaries beside bare words.

Reads the run's judge features (the kept latents' summaries and words) and explain latents (their
top and random texts), and scores every kept latent's summary and its bare-words baseline
(``words_summary``) with each ``--encoders`` name, the job's way (``judge.detection_scoring=embedding``).
Same summaries, same texts: only the scorer changes. ``mpnet`` needs the ``detect`` extra.

Usage: python bench/detection_scorers.py [--config configs/demo.yaml] [--set storage.uri=...]
                                         [--encoders minilm mpnet] [--out bench/results/detection_scorers.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.provenance import git_commit  # noqa: E402
from bench.harness import Published  # noqa: E402
from saerec import artifacts  # noqa: E402
from saerec.config import load_config  # noqa: E402
from saerec.intents.detection import EmbeddingDetector, detection_with_baseline  # noqa: E402

GOOD = 0.75


def summary_of(values: list[float | None]) -> dict[str, float | int | None]:
    found = np.array([v for v in values if v is not None], dtype=float)
    if not found.size:
        return {"latents": 0, "mean": None, "share_above_075": None}
    return {"latents": int(found.size), "mean": round(float(found.mean()), 4),
            "share_above_075": round(float((found >= GOOD).mean()), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--encoders", nargs="+", default=["minilm", "mpnet"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "detection_scorers.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    published = Published(load_config(args.config, args.overrides))
    features = artifacts.read_table(published["judge"], artifacts.FEATURES).to_pylist()
    texts = {r["latent"]: r for r in artifacts.read_table(published["explain"], artifacts.LATENTS).to_pylist()}
    kept = [f for f in features if f["kept"] and f["summary"]]
    scorers: dict[str, dict[str, object]] = {}
    for name in args.encoders:
        detector = EmbeddingDetector(name)
        pairs = [detection_with_baseline(f["summary"], f["words"], list(texts[f["latent"]]["top_texts"]),
                                         list(texts[f["latent"]]["random_texts"]), detector, None) for f in kept]
        both = [(s, w) for s, w in pairs if s is not None and w is not None]
        scorers[name] = {"summaries": summary_of([s for s, _ in pairs]), "words": summary_of([w for _, w in pairs]),
                         "summary_at_or_above_words": round(float(np.mean([s >= w for s, w in both])), 4) if both else None}
    result = {"run": published.cfg.run.name, "kept": len(kept), "judge_metrics": {
        k: v for k, v in published["judge"].metrics.items() if k.startswith("detection") or k in ("kept", "model")},
        "scorers": scorers, "command": "python " + " ".join(sys.argv),
        "commit": git_commit()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'scorer':>8} {'arm':>10} {'latents':>7} {'mean':>6} {'>=0.75':>7}")
    for name, row in scorers.items():
        for arm in ("summaries", "words"):
            print(f"{name:>8} {arm:>10} {row[arm]['latents']:7d} {row[arm]['mean']!s:>6} {row[arm]['share_above_075']!s:>7}")
        print(f"{name:>8} summaries at or above their words: {row['summary_at_or_above_words']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
