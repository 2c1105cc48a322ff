"""Benchmark: the README's quick start, the default demo job, timed stage by stage.

Runs ``python jobs/full_pipeline.py`` with the embedded default config (nothing but the storage
folder changed) from a clean storage folder, then reads each published stage's manifest and writes
``bench/results/demo_run.json``: the job's wall time, each stage's, and the numbers the README
quotes for the demo (latents kept, detection, planted recovery, the models' valid and test
NDCG@20, the model chosen on valid). The install is not timed: it depends on the package index.

  python bench/demo_run.py                      # -> bench/results/demo_run.json
  python bench/demo_run.py --until evaluate     # the quick start without the sweep and the report
  python bench/demo_run.py --storage /tmp/demo  # keep the run (its report: /tmp/demo/demo/report/...)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.provenance import git_commit  # noqa: E402

from saerec.stages import STAGE_ORDER  # noqa: E402
from saerec.storage import MANIFEST, Store  # noqa: E402

RUN = "demo"
QUOTED = {"judge": ("latents", "judged", "kept", "detection_balanced_accuracy", "detection_words_balanced_accuracy",
                    "planted_recovery"),
          "train_sae": ("fvu", "l0", "dead_pct"),
          "evaluate": ("selected_model", "selected_ties", "selected_valid_ndcg@20", "selected_test_ndcg@20")}


def stage_rows(store: Store) -> dict[str, dict[str, Any]]:
    """Each published stage's wall time and the metrics the README quotes (all of evaluate's per-model
    test NDCG@20 too)."""
    rows = {}
    for stage in STAGE_ORDER:
        path = store.join(RUN, stage, MANIFEST)
        if not store.exists(path):
            continue
        manifest = store.read_json(path)
        metrics = manifest.get("metrics", {})
        keep = {k: metrics[k] for k in QUOTED.get(stage, ()) if k in metrics}
        if stage == "evaluate":
            keep.update({k: v for k, v in metrics.items() if k.endswith("_test_ndcg@20")})
            keep["by_popularity"] = _popularity(store.read_json(store.join(RUN, stage, manifest["attempt"], "metrics.json")))
        rows[stage] = {"wall_s": manifest["wall_time_s"], **keep}
    return rows


def _popularity(tested: dict[str, Any]) -> dict[str, Any]:
    """Evaluate's breakdown by the held-out item's popularity, cut to what the README quotes: each
    bucket's test users, each model's test NDCG@20 per bucket, and the paired intervals per bucket."""
    found = tested["by_popularity"]
    return {"test_users": {name: b["test_users"] for name, b in found["buckets"].items()},
            "ndcg@20": {model: {name: b["ndcg@20"]["mean"] for name, b in buckets.items()}
                        for model, buckets in found["models"].items()},
            "paired": [{"a": c["a"], "b": c["b"], **{name: {k: b[k] for k in ("difference", "low", "high")}
                                                     for name, b in c["buckets"].items()}}
                       for c in found["comparisons"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--until", choices=STAGE_ORDER, default=None, help="stop after this stage (default: every stage)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "demo_run.json")
    p.add_argument("--storage", type=Path, default=None,
                   help="an empty folder for the run, kept to read its report (default: a temporary one, removed)")
    args = p.parse_args()
    if args.storage is not None and args.storage.exists() and any(args.storage.iterdir()):
        p.error(f"--storage {args.storage} is not empty: the run must start from nothing to be timed")
    storage = args.storage or Path(tempfile.mkdtemp(prefix="saerec-demo-run-"))
    cmd = [sys.executable, "jobs/full_pipeline.py", "--set", f"storage.uri={storage}",
           *(["--until", args.until] if args.until else [])]
    try:
        started = time.time()
        subprocess.run(cmd, check=True, cwd=REPO)
        wall = time.time() - started
        stages = stage_rows(Store(str(storage)))
    finally:
        if args.storage is None:
            shutil.rmtree(storage, ignore_errors=True)
    result = {"command": " ".join(["python", *sys.argv]), "job": "python jobs/full_pipeline.py"
              + (f" --until {args.until}" if args.until else ""), "commit": git_commit(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "job_wall_s": round(wall, 1), "stages": stages}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'stage':10} {'wall s':>8}")
    for stage, row in stages.items():
        print(f"{stage:10} {row['wall_s']:8.1f}")
    print(f"{'job':10} {wall:8.1f}\nwrote {args.out}")


if __name__ == "__main__":
    main()
