"""Benchmark: explain + judge of the paper's dictionary size (16,384 latents) on Beauty, on CPU.

The job's own stages run (``configs/beauty.yaml``, ``sae.n_latents=N`` in the run
``beauty-sae<N>``, prepare and embed copied from the main Beauty chain of ``bench/rec.py``),
with ``judge.prescreen`` and ``judge.concurrency`` actors. Printed and written to
``bench/results/judge_scale.json``:
  * the SAE (alive latents, FVU) and the wall time of train_sae, explain and judge;
  * the target: latents per second through explain + judge, and the judge's verdict counts,
    screened-out and kept latents, detection balanced accuracy (mean, quartiles);
  * side by side, on the same random sample of ``--sample`` latents and the same threads
    (``concurrency`` x ``cpus_per_actor``), the judge's own batch unit (``LocalJudgeActor``, in
    calls of the stage's block of 8 judge batches) under each of ``--arms``: without the
    prescreen, with it (the run's settings), with it but detection by the judge LM instead of
    embeddings, with one summary instead of ``--summary-candidates``, and with it but in calls
    of one judge batch (``prescreen_small_calls``): latents per second, the ratio to the first
    arm, mean detection, and whether each arm keeps the first arm's latents (with likelihood
    scoring a prescreen at the "Yes" level, z >= 2, cannot change what is kept).

Usage: python bench/judge_scale.py [--sae-latents 16384] [--prescreen 2.0] [--concurrency 2] [--sample 96]
       [--arms ARM ...] [--summary-model PATH] [--summary-candidates N] [--out bench/results/judge_scale.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.provenance import git_commit  # noqa: E402
from bench.harness import (Published, add_beauty_args, beauty_config, check_beauty_args,  # noqa: E402
                           run_chain, seed_sized_run, sized_overrides, spread)
from saerec import artifacts, restore  # noqa: E402

STAGES = ("prepare", "embed", "train_sae", "explain", "judge")
# side-by-side arms: name -> the judge settings it changes (the first is the baseline of the ratios)
ARMS = {"no_prescreen": {"prescreen": None}, "prescreen": {},
        "prescreen_judge_detection": {"detection_scoring": "judge"},
        "prescreen_one_summary": {"summary_candidates": 1},
        "prescreen_small_calls": {}}
# The actor reads the sample in calls of the stage's block (8 judge batches at 16,384 latents);
# this arm in calls of one judge batch, as the stage called it before: the few latents per call
# that pass the prescreen then make small summary batches.
SMALL_CALLS = {"prescreen_small_calls"}


def side_by_side(published: Published, sample: int, seed: int, arms_run: list[str]) -> dict[str, object]:
    """The judge's batch unit (``LocalJudgeActor``) on one sample, under each arm's settings."""
    import dataclasses

    import torch

    from saerec.intents.models import judge_model
    from saerec.workers.judging import JUDGE_COLUMNS, LocalJudgeActor, selection_inputs

    cfg = published.cfg.judge
    table = artifacts.read_table(published["explain"], artifacts.LATENTS)
    pool = sorted({w for words in table.column("words").to_pylist() for w in words})
    rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=min(sample, table.num_rows), replace=False))
    picked = table.select(list(JUDGE_COLUMNS)).take(rows)
    batch = {name: np.array(picked.column(name).to_pylist(), dtype=object) for name in JUDGE_COLUMNS}
    threads = max(1, int(cfg.concurrency * cfg.cpus_per_actor))
    selection = selection_inputs(restore.sae(published["train_sae"]), published.cfg.embed)
    arms: dict[str, dict[str, object]] = {}
    for arm in arms_run:
        arm_cfg = dataclasses.replace(cfg, **ARMS[arm])
        actor = LocalJudgeActor(arm_cfg, judge_model(cfg), threads, pool, seed, selection)
        torch.set_num_threads(threads)
        call = cfg.batch_size if arm in SMALL_CALLS else 8 * cfg.batch_size
        start = time.perf_counter()
        parts = [actor({name: column[i:i + call] for name, column in batch.items()}) for i in range(0, len(rows), call)]
        seconds = time.perf_counter() - start
        out = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        kept = sorted(int(l) for l, v in zip(out["latent"], out["verdict"]) if v in cfg.keep)
        detection = out["detection"][np.isfinite(out["detection"])]
        arms[arm] = {"prescreen": arm_cfg.prescreen, "detection_scoring": arm_cfg.detection_scoring,
                     "summary_candidates": arm_cfg.summary_candidates, "latents_per_call": call,
                     "seconds": round(seconds, 1), "latents_per_s": round(len(rows) / seconds, 3), "kept": kept,
                     "screened_out": int(np.sum(out["screened_out"])),
                     "detection_mean": round(float(detection.mean()), 4) if len(detection) else None}
    base = arms_run[0]
    return {"sample": int(len(rows)), "threads": threads, **arms, "baseline": base,
            "speedup": {arm: round(arms[arm]["latents_per_s"] / arms[base]["latents_per_s"], 2) for arm in arms},
            "same_kept": ({name: arms[name]["kept"] == arms[base]["kept"] for name in arms_run[1:]})}


def machine_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """float32 matmul speed at ``threads``: these runs' wall times differ between machines of the
    same core count (train_sae took 200 s on one and 331 s on another), and this says which kind
    a run had, measured on an idle machine."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round(2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_beauty_args(p)
    p.add_argument("--sae-latents", type=int, default=16384)
    p.add_argument("--prescreen", type=float, default=2.0, help="judge.prescreen (coherence z)")
    p.add_argument("--concurrency", type=int, default=2, help="judge actors (judge.concurrency)")
    p.add_argument("--sample", type=int, default=96, help="latents judged side by side under each arm (0: none)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=["no_prescreen", "prescreen", "prescreen_judge_detection"],
                   help="side-by-side arms, the first is the baseline of the ratios (prescreen = the run's settings)")
    p.add_argument("--summary-model", default=None, help="judge.summary_model (e.g. the Qwen2.5-Coder-0.5B GGUF)")
    p.add_argument("--summary-candidates", type=int, default=1, help="judge.summary_candidates")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "judge_scale.json")
    args = p.parse_args()
    check_beauty_args(args)
    if args.sae_latents < 2 or args.concurrency < 1 or args.sample < 0:
        raise SystemExit("--sae-latents must be >= 2, --concurrency >= 1 and --sample >= 0")
    cfg = beauty_config(args.data_dir, args.work_dir, [*sized_overrides(args.sae_latents, judge_latents=None),
                                                       f"judge.prescreen={args.prescreen}",
                                                       f"judge.concurrency={args.concurrency}",
                                                       *([f"judge.summary_model={args.summary_model}"]
                                                         if args.summary_model else []),
                                                       f"judge.summary_candidates={args.summary_candidates}"])
    gflops = machine_gflops(max(1, int(args.concurrency * cfg.judge.cpus_per_actor)))  # before the chain, on an idle machine
    seed_sized_run(beauty_config(args.data_dir, args.work_dir), cfg)
    run_chain(cfg, STAGES)
    published = Published(cfg)
    manifests = {stage: published.runner.manifest(stage) for stage in ("train_sae", "explain", "judge")}
    wall = {stage: round(float(m["wall_time_s"]), 1) for stage, m in manifests.items()}
    judged, explained = manifests["judge"]["metrics"], manifests["explain"]["metrics"]
    features = artifacts.read_table(published["judge"], artifacts.FEATURES)
    detection = np.array([d for d in features.column("detection").to_pylist() if d is not None])
    verdicts = {k[len("verdict_"):]: v for k, v in judged.items() if k.startswith("verdict_")}
    result = {
        "machine": platform.processor() or platform.machine(),
        "machine_gflops": gflops, "run": cfg.run.name,
        "sae": {"latents": args.sae_latents, "alive": explained["alive_latents"], "texts": explained["texts"],
                **{k: manifests["train_sae"]["metrics"].get(k) for k in ("fvu", "l0", "dead_pct")}},
        "judge": {"prescreen": args.prescreen, "concurrency": args.concurrency, "cpus_per_actor": cfg.judge.cpus_per_actor,
                  "model": judged["model"], "summary_model": judged.get("summary_model"),
                  "summary_candidates": judged.get("summary_candidates", 1),
                  "scoring": cfg.judge.scoring},
        "wall_s": wall,
        "explain_judge_s": round(wall["explain"] + wall["judge"], 1),
        "latents_per_s": round(args.sae_latents / (wall["explain"] + wall["judge"]), 3),
        "target_latents_per_s": 4.5,
        "verdicts": verdicts, "screened_out": judged["screened_out"], "kept": judged["kept"],
        "detection": spread(detection),
        "side_by_side": side_by_side(published, args.sample, cfg.seed, args.arms) if args.sample else None,
        "command": "python " + " ".join(sys.argv), "commit": git_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nSAE {args.sae_latents} latents ({result['sae']['alive']} alive, FVU {result['sae']['fvu']}); "
          f"train_sae {wall['train_sae']:.0f}s, explain {wall['explain']:.0f}s, judge {wall['judge']:.0f}s")
    print(f"explain + judge: {result['explain_judge_s']:.0f}s = {result['latents_per_s']:.2f} latents/s "
          f"(target {result['target_latents_per_s']}); verdicts {verdicts}; screened out {result['screened_out']}, "
          f"kept {result['kept']}; detection {result['detection']}")
    s = result["side_by_side"]
    if s:
        print(f"{'sample of ' + str(s['sample']):>26} {'seconds':>8} {'latents/s':>9} {'ratio':>6} {'kept':>5} {'detection':>9}")
        for arm in args.arms:
            print(f"{arm:>26} {s[arm]['seconds']:8.1f} {s[arm]['latents_per_s']:9.3f} {s['speedup'][arm]:6.2f} "
                  f"{len(s[arm]['kept']):5d} {str(s[arm]['detection_mean']):>9}")
        print(f"same kept latents as {s['baseline']}: {s['same_kept']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
