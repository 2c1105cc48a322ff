"""Benchmark: SASRec vs SAERec vs KMeans-Intent on Amazon Beauty, several seeds each.

Step 1 (``--step chain``, needs Ray and the text encoder): runs the pipeline's own stages
(prepare -> embed -> train_sae -> explain -> judge) on ``--data-dir`` with the item descriptions
as the corpus, and caches the intent sets in ``--work-dir/intents.safetensors``: the judged
latents, plus k-means centroids of the text embeddings (as many as intents). Step 2 (``--step
train``, plain PyTorch, GPU if present) trains and tests every (model, seed) in the same harness (strict
leave-one-out, selection on valid NDCG@20, test read once) and writes one JSON part. ``--step
timing`` trains each model alone for a few epochs to compare epoch times fairly, and ``--step
report`` merges parts into ``bench/results/rec_beauty.json`` and prints the table.

The stored bench/results/rec_beauty.json predates the judge stage: its intent set is every live
SAE latent (its ``chain.intent_source``), i.e. the noIde variant. Commands that produced it
(train/timing ran on one H200 through the device tool, 9 runs concurrently per configuration;
the chain and the CPU timing ran here):
  python bench/rec.py --step chain
  python bench/rec.py --step timing --timing-epochs 5 --out timing_gpu.json
  python bench/rec.py --step timing --device cpu --timing-epochs 2 --out timing_cpu.json
  for m in sasrec saerec kmeans; do for s in 0 1 2; do
    python bench/rec.py --step train --models $m --seeds $s --max-epochs 100 --patience 15 --out C/part_${m}_$s.json
    python bench/rec.py --step train --models $m --seeds $s --max-epochs 100 --patience 15 --emb-scale \
      --out B/part_${m}_$s.json
  done; done
  python bench/rec.py --step report --parts C/part_*.json --extra "B=..." --timing timing_*.json \
    --chain saerec-output/bench-rec/chain.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.shared_data import shared_data_dir  # noqa: E402

from saerec.rec import (EncoderConfig, FitConfig, IntentConfig, SAERec, SASRec, final_test, fit,  # noqa: E402
                        leave_one_out)
from saerec.rec.batching import training_examples  # noqa: E402
from saerec.rec.training import make_optimizer, seed_everything, train_epoch  # noqa: E402

PAPER_BEAUTY = {"SASRec": {"hr@10": 0.0624, "hr@20": 0.0894, "ndcg@10": 0.0342, "ndcg@20": 0.0386},
                "SAERec": {"hr@10": 0.1055, "hr@20": 0.1427, "ndcg@10": 0.0643, "ndcg@20": 0.0737},
                "KMeans-Intent": {"hr@20": 0.1349, "ndcg@20": 0.0671}}
REFERENCE_SASREC = {"hr@10": 0.0912, "hr@20": 0.1269, "ndcg@10": 0.0537, "ndcg@20": 0.0627}
NAMES = {"sasrec": "SASRec", "saerec": "SAERec", "kmeans": "KMeans-Intent"}


def read_sequence_file(data_dir: Path) -> tuple[list[list[int]], int]:
    """ICLRec ``sequences.txt``: ``user item item ...`` per line, ids from 1."""
    path = data_dir / "sequences.txt"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --data-dir with the Beauty sequences.txt and items.tsv")
    seqs = [[int(x) for x in line.split()[1:]] for line in path.read_text().splitlines() if line.strip()]
    return seqs, max(max(s) for s in seqs)


def run_chain(data_dir: Path, work_dir: Path) -> dict[str, object]:
    """Run the pipeline stages up to the intent set and cache the intent matrices."""
    from safetensors.torch import save_file

    from saerec.config import load_config
    from saerec.pipeline import Runner, StageInput
    from saerec.rec.kmeans import kmeans
    from saerec.runtime import init_ray
    from saerec.artifacts import read_intent_set, read_text_embeddings
    from saerec.storage import Store

    cfg = load_config(REPO / "configs" / "beauty.yaml",
                      [f"data.path={data_dir.resolve()}", f"storage.uri={(work_dir / 'pipeline').resolve()}"])
    init_ray(None, None)
    store = Store(cfg.storage.uri)
    store.check()
    runner = Runner(cfg, store)
    names = ["prepare", "embed", "train_sae", "explain", "judge"]
    manifests = {}
    for name in names:
        start = time.time()
        manifests[name] = runner.run_stage(importlib.import_module(f"saerec.stages.{name}").STAGE)
        print(f"[{name}] {time.time() - start:.0f}s", flush=True)

    texts = read_text_embeddings(StageInput(store, manifests["embed"]))
    judged = read_intent_set(StageInput(store, manifests["judge"]))
    vectors, latents = judged.vectors, judged.latents
    source = "judged SAE latents (judge stage)"
    centroids = kmeans(texts, len(vectors), seed=cfg.seed)[0]
    work_dir.mkdir(parents=True, exist_ok=True)
    save_file({"judged": vectors.contiguous(), "latents": torch.as_tensor(latents, dtype=torch.long),
               "kmeans": centroids.contiguous()}, str(work_dir / "intents.safetensors"),
              metadata={"source": source, "texts": str(len(texts))})
    info = {"intent_source": source, "n_intents": len(vectors), "corpus_texts": len(texts),
            "sae_metrics": manifests["train_sae"]["metrics"]}
    (work_dir / "chain.json").write_text(json.dumps(info, indent=2, default=str))
    return info


def load_intents(work_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = work_dir / "intents.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} not found: run --step chain first")
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def build(model: str, n_items: int, intents: dict[str, torch.Tensor], args: argparse.Namespace) -> torch.nn.Module:
    enc = EncoderConfig(n_items=n_items, d=64, blocks=2, heads=2, max_len=args.max_len, dropout=args.dropout,
                        scale_embeddings=args.emb_scale)
    if model == "sasrec":
        return SASRec(enc)
    icfg = IntentConfig(k=args.k, ema_beta=args.ema_beta)
    return SAERec(enc, intents["kmeans" if model == "kmeans" else "judged"], icfg)


def device_of(args: argparse.Namespace) -> str:
    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device


def step_train(args: argparse.Namespace) -> None:
    seqs, n_items = read_sequence_file(args.data_dir)
    intents, meta = load_intents(args.work_dir)
    data = leave_one_out(seqs, n_items, args.max_len)
    device = device_of(args)
    rows = []
    for model_name in args.models:
        for seed in args.seeds:
            seed_everything(seed)
            model = build(model_name, n_items, intents, args).to(device)
            cfg = FitConfig(lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                            max_epochs=args.max_epochs, patience=args.patience, seed=seed,
                            bucket=not args.no_bucket, token_weighted=not args.batch_weighted)
            start = time.time()
            result = fit(model, data, cfg, args.max_len, device=device,
                         on_epoch=lambda st, _s, m=model_name, s=seed: print(
                             f"{m} seed{s} epoch {st.epoch} loss {st.history[-1]['loss']:.3f} "
                             f"valid ndcg@20 {st.history[-1]['valid_ndcg@20']:.4f}", flush=True)
                         if st.epoch % 10 == 0 else None)
            test = final_test(model, result, data, cfg.ks, cfg.mask_history, device=device)
            rows.append({"model": model_name, "seed": seed, "best_epoch": result.best_epoch,
                         "epochs": len(result.history), "mean_epoch_seconds": result.mean_epoch_seconds,
                         "wall_seconds": time.time() - start, "valid": result.best_valid, "test": test})
            print(json.dumps(rows[-1]), flush=True)
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "intents": meta, "settings": vars_of(args), "runs": rows}
    args.out.write_text(json.dumps(out, indent=2))


def step_timing(args: argparse.Namespace) -> None:
    """Each model alone, same batches, a few epochs: the fair epoch-time comparison.

    Process CPU seconds are recorded beside wall seconds: on a shared CPU machine the wall
    clock measures the neighbours as much as the model.
    """
    seqs, n_items = read_sequence_file(args.data_dir)
    intents, _ = load_intents(args.work_dir)
    data = leave_one_out(seqs, n_items, args.max_len)
    examples = training_examples(data.train, args.max_len)
    device = device_of(args)
    times = {}
    for model_name in args.models:
        seed_everything(0)
        model = build(model_name, n_items, intents, args).to(device)
        opt = make_optimizer(model, FitConfig(lr=args.lr))
        rng = np.random.default_rng(0)
        train_epoch(model, opt, examples, args.batch_size, rng, device, bucket=not args.no_bucket)
        epochs, cpu = [], []
        for _ in range(args.timing_epochs):
            if device == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            train_epoch(model, opt, examples, args.batch_size, rng, device, bucket=not args.no_bucket)
            if device == "cuda":
                torch.cuda.synchronize()
            epochs.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        times[model_name] = {"epoch_seconds": epochs, "median": float(np.median(epochs)),
                             "cpu_seconds": cpu, "median_cpu": float(np.median(cpu))}
        print(model_name, times[model_name], flush=True)
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "timing": times}
    args.out.write_text(json.dumps(out, indent=2))


def vars_of(args: argparse.Namespace) -> dict[str, object]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("parts",)}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Mean ± std over seeds of each model's test metrics, with its valid score and epoch times."""
    summary = {}
    known = [m for m in NAMES if any(r["model"] == m for r in runs)]
    for model in dict.fromkeys(known + [r["model"] for r in runs]):
        rows = [r for r in runs if r["model"] == model]
        summary[model] = {
            "seeds": [r["seed"] for r in rows],
            "best_epochs": [r["best_epoch"] for r in rows],
            "valid_ndcg@20": float(np.mean([r["valid"]["ndcg@20"] for r in rows])),
            **{m: {"mean": float(np.mean([r["test"][m] for r in rows])), "std": float(np.std([r["test"][m] for r in rows]))}
               for m in ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20")},
            "epoch_seconds_in_run": float(np.mean([r["mean_epoch_seconds"] for r in rows])),
        }
    return summary


def _read_parts(paths: list[str]) -> tuple[list[dict], dict]:
    parts = [json.loads(Path(p).read_text()) for p in paths]
    runs = [dict(r, device=p.get("device")) for p in parts for r in p.get("runs", [])]
    return runs, (parts[0].get("settings", {}) if parts else {})


def print_table(title: str, summary: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"{'model':<14} {'HR@10':>16} {'HR@20':>16} {'NDCG@10':>16} {'NDCG@20':>16} {'valid N@20':>10}")
    for model, s in summary.items():
        cells = " ".join(f"{s[m]['mean']:.4f}±{s[m]['std']:.4f}".rjust(16) for m in ("hr@10", "hr@20", "ndcg@10", "ndcg@20"))
        print(f"{NAMES.get(model, model):<14} {cells} {s['valid_ndcg@20']:10.4f}")


def step_report(args: argparse.Namespace) -> None:
    """Merge parts: the main configuration, labelled alternatives, epoch timings, the chain info."""
    runs, settings = _read_parts(args.parts)
    main = summarise(runs)
    extras = {}
    for spec in args.extra:
        label, _, paths = spec.partition("=")
        extra_runs, extra_settings = _read_parts(paths.split(","))
        extras[label] = {"settings": extra_settings, "summary": summarise(extra_runs), "runs": extra_runs}
    chain = json.loads(Path(args.chain).read_text()) if args.chain else None
    timings = [json.loads(Path(p).read_text()) for p in args.timing]
    result = {"dataset": "Amazon Beauty (ICLRec 5-core)",
              "protocol": "leave-one-out (valid = 2nd-to-last, test = last), selection on valid NDCG@20, "
                          "test read once per run, full ranking over all items, history masked",
              "chain": chain, "settings": settings, "summary": main, "runs": runs, "alternatives": extras,
              "timing": timings, "paper_beauty": PAPER_BEAUTY, "reference_sasrec_ce": REFERENCE_SASREC}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2))
    print_table("main configuration", main)
    for label, extra in extras.items():
        print_table(label, extra["summary"])
    for t in timings:
        print(f"\nepoch time alone on {t['device']}: " + ", ".join(
            f"{m} {v['median']:.2f}s wall" + (f" / {v['median_cpu']:.1f}s CPU" if "median_cpu" in v else "")
            for m, v in t["timing"].items()))
    print(f"written {args.results}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", choices=("chain", "train", "timing", "report"), required=True)
    p.add_argument("--data-dir", type=Path, default=shared_data_dir() / "beauty")
    p.add_argument("--work-dir", type=Path, default=REPO / "saerec-output" / "bench-rec")
    p.add_argument("--models", type=lambda s: s.split(","), default=["sasrec", "saerec", "kmeans"])
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--timing-epochs", type=int, default=3)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--ema-beta", type=float, default=0.9)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-bucket", action="store_true", help="random batches instead of length buckets")
    p.add_argument("--batch-weighted", action="store_true", help="plain per-batch mean loss (no token weighting)")
    p.add_argument("--emb-scale", action="store_true", help="scale item embeddings by sqrt(d) (original SASRec)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=REPO / "saerec-output" / "bench-rec" / "part.json")
    p.add_argument("--parts", nargs="*", default=[], help="train parts of the main configuration")
    p.add_argument("--extra", nargs="*", default=[], help="LABEL=part1.json,part2.json,... alternative configurations")
    p.add_argument("--timing", nargs="*", default=[], help="timing step outputs")
    p.add_argument("--chain", help="chain.json written by --step chain")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "rec_beauty.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.step == "chain":
        print(json.dumps(run_chain(args.data_dir, args.work_dir), indent=2, default=str))
    elif args.step == "train":
        step_train(args)
    elif args.step == "timing":
        step_timing(args)
    else:
        step_report(args)


if __name__ == "__main__":
    main()
