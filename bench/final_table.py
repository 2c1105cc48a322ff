"""The final comparison table of one dataset, taken from a job run's own evaluate stage.

Issue 30's table comes from the product, not from a separate script: train the compared models with
the job (e.g. ``--set 'rec.models=[sasrec,grounded,bsarec,bsarec-grounded]' --set 'rec.seeds=[0,1,2]'``,
with ``rec.from_study`` for tuned settings), then point this script at the run. It reads the
published evaluate output (the model chosen on valid, every model's test metrics as mean, sample
std and n over seeds, the paired intervals, the popularity breakdown) and train_rec's runs (best
epochs, seconds per epoch), and writes one JSON per dataset with the published anchors beside:

  python bench/final_table.py --storage saerec-output --run beauty --dataset Beauty
      # -> bench/results/final_beauty.json

On CPU the cells of a table are trained one per thread by ``bench/rec.py`` (the job's own training
path, ``saerec.rec.runs``) and compared by ``bench/rec.py --step assess`` (evaluate's own
``comparisons.assess``); ``--assessed`` builds the same table from that JSON:

  python bench/final_table.py --assessed bench/results/bsarec_beauty.json --dataset Beauty
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import ANCHORS, METRICS  # noqa: E402
from bench.provenance import git_commit  # noqa: E402
from saerec import artifacts  # noqa: E402
from saerec.config import load_config  # noqa: E402
from saerec.pipeline import Runner, StageInput  # noqa: E402
from saerec.rec.comparisons import ids_counterpart  # noqa: E402
from saerec.storage import Store  # noqa: E402


def table(tested: dict[str, Any], runs: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """The per-dataset table: every model's test metrics with valid beside, its best epochs and s/epoch,
    the paired interval against the same backbone on ids, and the chosen model against the anchors."""
    summary = {}
    for model, found in tested["summary"].items():
        mine = [r for r in runs if r["variant"] == model]
        summary[model] = {**{m: found["test"][m] for m in METRICS}, "valid_ndcg@20": found["valid"],
                          "best_epochs": [r["best_epoch"] for r in mine],
                          "epoch_seconds": [round(r["mean_epoch_seconds"], 2) for r in mine]}
    models = list(tested["summary"])
    against_ids = [c for c in tested["comparisons"] if c["b"] == ids_counterpart(c["a"], models)]
    chosen = tested["selection"]["selected"]
    beats = {name: {m: summary[chosen][m]["mean"] > anchor[m] for m in METRICS}
             for name, anchor in ANCHORS.get(dataset.lower(), {}).items()}
    return {"dataset": dataset, "protocol": tested["protocol"], "selected_on_valid": chosen,
            "selection": tested["selection"], "summary": summary, "paired_vs_same_backbone_on_ids": against_ids,
            "comparisons": tested["comparisons"], "by_popularity": tested["by_popularity"],
            "anchors": ANCHORS.get(dataset.lower(), {}), "selected_beats_anchor": beats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", help="the job's storage.uri")
    p.add_argument("--run", help="the job's run.name")
    p.add_argument("--assessed", type=Path, default=None,
                   help="instead of a job run: a JSON of bench/rec.py --step assess (cells trained by the job's "
                        "training path, compared by evaluate's own assess)")
    p.add_argument("--dataset", required=True, choices=("Beauty", "Sports", "demo"))
    p.add_argument("--out", type=Path, default=None, help="default: bench/results/final_<dataset>.json")
    args = p.parse_args()
    out = args.out or REPO / "bench" / "results" / f"final_{args.dataset.lower()}.json"
    if args.assessed is not None:
        assessed = json.loads(args.assessed.read_text())
        result = {**table(assessed, assessed["runs"], args.dataset), "command": " ".join(["python", *sys.argv]),
                  "commit": git_commit(), "assessed": {"path": str(args.assessed), "command": assessed["command"],
                                                       "commit": assessed["commit"]}}
        return _write(result, out)
    if not (args.storage and args.run):
        raise SystemExit("name the job run (--storage and --run) or a bench assessment (--assessed)")
    store = Store(args.storage)
    runner = Runner(load_config(None, [f"storage.uri={args.storage}", f"run.name={args.run}"]), store)
    manifests = {stage: runner.manifest(stage) for stage in ("train_rec", "evaluate")}
    missing = [stage for stage, found in manifests.items() if found is None]
    if missing:
        raise SystemExit(f"run {args.run!r} in {args.storage} has no published {', '.join(missing)}: run the job first")
    tested = artifacts.read_json(StageInput(store, manifests["evaluate"]), artifacts.TEST_METRICS)
    runs = artifacts.read_runs(StageInput(store, manifests["train_rec"]))
    result = {**table(tested, runs, args.dataset), "command": " ".join(["python", *sys.argv]), "commit": git_commit(),
              "run": {"storage": args.storage, "name": args.run,
                      "evaluate_fingerprint": manifests["evaluate"]["fingerprint"]}}
    _write(result, out)


def _write(result: dict[str, Any], out: Path) -> None:
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'model':20} {'seeds':>5} {'valid N@20':>11} " + " ".join(f"{'test ' + m:>13}" for m in METRICS))
    for model, row in result["summary"].items():
        print(f"{model:20} {row['ndcg@20']['n']:5d} {row['valid_ndcg@20']['mean']:11.4f} "
              + " ".join(f"{row[m]['mean']:13.4f}" for m in METRICS))
    print(f"chosen on valid: {result['selected_on_valid']}; wrote {out}")


if __name__ == "__main__":
    main()
