"""Benchmark: the recommenders' full-softmax loss against ``F.cross_entropy`` on Beauty's batches.

Every training step scores each real position against all 12,101 Beauty items, so the loss
around that score matrix is most of an epoch on CPU. In one run, on the real length-bucketed
batches of Beauty's training split (batch size 256, as ``rec.batch_size``), this times
forward + backward of:
- the loss alone: ``F.cross_entropy(reps @ W.T, t)`` against ``full_softmax_cross_entropy``;
- a whole SASRec training step (encoder, loss, backward, Adam) with either loss.
The two are interleaved batch by batch, so load from other work on the machine hits both alike.
Prints a table and writes ``bench/results/loss.json``.

Example: python bench/loss.py --batches 30 --threads 2
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.shared_data import shared_data_dir  # noqa: E402

from saerec.rec import EncoderConfig, FitConfig, SASRec, leave_one_out  # noqa: E402
from saerec.rec.batching import bucketed_batches, training_examples  # noqa: E402
from saerec.rec.losses import full_softmax_cross_entropy  # noqa: E402
from saerec.rec.training import make_optimizer  # noqa: E402


def reference_loss(model: SASRec, seqs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SASRec's training loss written with ``F.cross_entropy`` (what the model computed before)."""
    reps = model(seqs, lengths)
    mask = torch.arange(seqs.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    return F.cross_entropy(reps @ model.item_emb.weight[1:].T, targets[mask] - 1)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def read_sequence_file(folder: Path) -> tuple[list[list[int]], int]:
    """The ICLRec ``sequences.txt`` (``user item item ...``, item ids 1..n) as per-user item lists."""
    sequences = [[int(i) for i in line.split()[1:]] for line in (folder / "sequences.txt").read_text().splitlines()
                 if line.strip()]
    return sequences, max(max(s) for s in sequences)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=shared_data_dir() / "beauty", help="folder with sequences.txt")
    parser.add_argument("--batches", type=int, default=30, help="training batches timed per variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "loss.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sequences, n_items = read_sequence_file(args.data_dir)
    examples = training_examples(leave_one_out(sequences, n_items, 50).train, 50)
    batches = list(bucketed_batches(examples, 256, np.random.default_rng(0)))[: args.batches]
    positions = [int(lengths.sum()) for _, lengths, _ in batches]

    model = SASRec(EncoderConfig(n_items=n_items))
    optimizer = make_optimizer(model, FitConfig())
    weight = model.item_emb.weight.detach()[1:].clone().requires_grad_()
    times: dict[str, list[float]] = {"loss_reference": [], "loss_ours": [], "step_reference": [], "step_ours": []}
    for seqs, lengths, targets in [batches[0]] + batches:  # the first batch warms up and is dropped
        reps = torch.randn(int(lengths.sum()), model.cfg.d, requires_grad=True)
        flat = torch.randint(0, n_items, (reps.shape[0],))
        row = {
            "loss_reference": timed(lambda: F.cross_entropy(reps @ weight.T, flat).backward()),
            "loss_ours": timed(lambda: full_softmax_cross_entropy(reps, weight, flat).backward()),
        }
        for name, loss_fn in (("step_reference", reference_loss), ("step_ours", SASRec.forward)):
            def step(loss_fn=loss_fn) -> None:
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model, seqs, lengths, targets).backward()
                optimizer.step()
            row[name] = timed(step)
        for name, seconds in row.items():
            times[name].append(seconds)
    results = {name: float(np.median(values[1:])) for name, values in times.items()}
    report = {
        "data": str(args.data_dir.name), "n_items": n_items, "batches": len(batches),
        "positions_per_batch_median": float(np.median(positions)), "threads": args.threads,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "median_seconds": results,
        "loss_speedup": results["loss_reference"] / results["loss_ours"],
        "step_speedup": results["step_reference"] / results["step_ours"],
    }
    print(f"{'':24s}{'F.cross_entropy':>18s}{'ours':>10s}{'ratio':>8s}")
    for part in ("loss", "step"):
        ref, ours = results[f"{part}_reference"], results[f"{part}_ours"]
        print(f"{part + ' fwd+bwd (ms)' if part == 'loss' else 'SASRec train step (ms)':24s}"
              f"{ref * 1e3:18.1f}{ours * 1e3:10.1f}{ref / ours:8.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
