"""Benchmark: why our Beauty numbers differ from the paper's, one protocol change at a time.

Every cell trains one model with one seed through the job's own training path
(``saerec.rec.runs.train_run``) on the same Beauty sequences and reports its test metrics:

  sasrec/strict          our protocol: train on all but the last two items, select on valid
  sasrec/select-test     the same training, epochs selected on the test item
  sasrec/paper           + training sequences end at the valid item (the public code's protocol)
  sasrec/paper-augment   + every prefix a training example (ICSRec's recipe, in the public code)
  saerec/{strict,paper}        SAERec as the paper's eqs. (3)-(8) write it, over the judged intents
  saerec-code/{strict,paper}   SAERec as the public code builds it (every latent, residual fusion)

The decomposition reads the SASRec cells in order (each step adds one change) and then the
model: the public code's SAERec against SASRec under the paper protocol.

Steps: ``--step chain`` runs the job's stages prepare .. profile on ``--data-dir`` (the ICLRec
layout) into ``--work-dir`` (published stages are reused); ``--step train --cells ...`` trains
cells and writes one JSON part per cell (a finished part is not trained again); ``--step
report`` merges the parts into ``bench/results/protocol_beauty.json`` and prints the tables.
Example (CPU, two cells at a time):
  python bench/protocol.py --step chain
  python bench/protocol.py --step train --cells sasrec/strict sasrec/select-test ... &
  python bench/protocol.py --step train --cells saerec/strict saerec/paper ... &
  python bench/protocol.py --step report
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.provenance import git_commit  # noqa: E402
from bench.harness import (METRICS, Published, add_beauty_args, beauty_config, check_beauty_args,  # noqa: E402
                           each_cell, read_parts, run_chain, train_cell)

from saerec.config import EvaluateSection, RecSection  # noqa: E402
from saerec.rec import runs  # noqa: E402

CELLS = ("sasrec/strict", "sasrec/select-test", "sasrec/paper", "sasrec/paper-augment",
         "saerec/strict", "saerec/paper", "saerec-code/strict", "saerec-code/paper")
PAPER = {"SASRec": {"hr@10": 0.0624, "hr@20": 0.0894, "ndcg@10": 0.0342, "ndcg@20": 0.0386},
         "SAERec": {"hr@10": 0.1055, "hr@20": 0.1427, "ndcg@10": 0.0643, "ndcg@20": 0.0737}}
STEPS = (("the paper protocol (both changes below)", "sasrec/strict", "sasrec/paper"),
         ("selection on the test item", "sasrec/strict", "sasrec/select-test"),
         ("training on the valid item", "sasrec/select-test", "sasrec/paper"),
         ("prefix augmentation", "sasrec/paper", "sasrec/paper-augment"),
         ("the public code's SAERec instead of SASRec (paper protocol)", "sasrec/paper", "saerec-code/paper"),
         ("the paper's SAERec instead of SASRec (paper protocol)", "sasrec/paper", "saerec/paper"),
         ("the paper's SAERec instead of SASRec (strict protocol)", "sasrec/strict", "saerec/strict"))


def settings_of(cell: str, args: argparse.Namespace) -> tuple[str, RecSection, EvaluateSection, str]:
    """(variant, rec and evaluate settings, split kind) of a cell; split kind: strict, select-test or paper."""
    name, _, protocol = cell.partition("/")
    split = "paper" if protocol.startswith("paper") else protocol
    rec = RecSection(d=64, blocks=2, heads=2, max_len=50, dropout=0.5, k=args.k, lr=1e-3, batch_size=256,
                     max_epochs=args.augment_max_epochs if protocol == "paper-augment" else args.max_epochs,
                     patience=args.patience, checkpoint_seconds=float("inf"), prefix_augment=protocol == "paper-augment")
    return name, rec, EvaluateSection(protocol="paper" if split == "paper" else "strict"), split


def step_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    published = Published(beauty_config(args.data_dir, args.work_dir))
    data = published.sequences()

    def train(cell: str, out: Path) -> None:
        name, rec, evaluation, split_kind = settings_of(cell, args)
        split = runs.split(data.sequences, data.n_items, rec, evaluation)
        if split_kind == "select-test":
            split = dataclasses.replace(split, valid=split.test)
        intents, profiles = published.inputs_of([name], data.n_items, 0)
        train_cell(cell, name, 0, rec, evaluation, split, intents, profiles, data.n_items, out,
                   extra={"split": split_kind, "prefix_augment": rec.prefix_augment,
                          "upstream": published.upstream()})

    each_cell(args.cells, args.parts, train)


def step_report(args: argparse.Namespace) -> None:
    earlier = json.loads(args.out.read_text())["cells"] if args.out.exists() else {}
    rows = {**earlier, **read_parts(args.parts)}  # cells measured in earlier sessions stay, new parts win
    missing = [c for c in CELLS if c not in rows]
    table = [[c, rows[c]["best_epoch"], rows[c]["epochs"], *[rows[c]["test"][m] for m in METRICS]]
             for c in CELLS if c in rows]
    steps = []
    for what, before, after in STEPS:
        if before in rows and after in rows:
            delta = rows[after]["test"]["ndcg@20"] - rows[before]["test"]["ndcg@20"]
            steps.append({"change": what, "from": before, "to": after, "ndcg@20_from": rows[before]["test"]["ndcg@20"],
                          "ndcg@20_to": rows[after]["test"]["ndcg@20"], "delta_ndcg@20": delta})
    print(f"{'cell':24} {'best':>4} {'ep':>3} " + " ".join(f"{m:>8}" for m in METRICS))
    for row in table:
        print(f"{row[0]:24} {row[1]:4d} {row[2]:3d} " + " ".join(f"{v:8.4f}" for v in row[3:]))
    for name, values in PAPER.items():
        print(f"{'paper ' + name:24} {'':4} {'':3} " + " ".join(f"{values[m]:8.4f}" for m in METRICS))
    print("\nNDCG@20, one change at a time:")
    for s in steps:
        print(f"  {s['change']:58} {s['ndcg@20_from']:.4f} -> {s['ndcg@20_to']:.4f} ({s['delta_ndcg@20']:+.4f})")
    if missing:
        print(f"\ncells not run yet: {', '.join(missing)}")
    out = {"dataset": "Amazon Beauty (ICLRec sequences, item titles as text)", "seed": 0,
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "cells": rows, "steps": steps, "paper": PAPER, "missing": missing,
           "commit": git_commit(), "commands": args.commands or []}
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", choices=("chain", "train", "report"), required=True)
    add_beauty_args(p)
    p.add_argument("--parts", type=Path, default=None, help="folder of per-cell JSON parts (default: work dir/parts)")
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument("--augment-max-epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--commands", nargs="*", help="the commands that produced the parts, stored in the JSON")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "protocol_beauty.json")
    args = p.parse_args()
    check_beauty_args(args)
    args.parts = args.parts or args.work_dir / "parts"
    if args.step == "chain":
        run_chain(beauty_config(args.data_dir, args.work_dir))
    else:
        {"train": step_train, "report": step_report}[args.step](args)


if __name__ == "__main__":
    main()
