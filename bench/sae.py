"""Benchmark: the train_sae stage's Ray Train loop against a bare PyTorch loop, tied against untied SAEs.

In one run on one set of embeddings (Beauty item descriptions, or any embed-stage output):
- samples/s of the stage's Ray Train loop (Ray Data feeding, DDP wrapper, per-epoch metrics
  and checkpoints) against a bare PyTorch loop over the same tensor on the same device, with the
  same model, seed, batch order and AuxK bookkeeping (target: at least 0.85x);
- FVU, L0 and dead % of the paper's tied SAE, the tied SAE with AuxK and the untied SAE at
  equal k and F, for each F asked for;
- peak memory of each run (GPU memory allocated when on a GPU, else the process's peak RSS).

Embeddings: ``--embeddings`` names an embed-stage ``embeddings/`` Parquet folder; otherwise the
item texts of ``--data-dir`` (``items.tsv``) are encoded with ``saerec.text`` (MiniLM by default)
and cached under ``--work-dir``.

Example:
  python bench/sae.py --data-dir ../shared/data/beauty --n-latents sizing,16384 --epochs 20
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.shared_data import shared_data_dir  # noqa: E402

from saerec import artifacts, schemas  # noqa: E402
from saerec.config import load_config  # noqa: E402
from saerec.sae import TopKSAE, TrainState, build_optimizer, evaluate, num_latents  # noqa: E402
from saerec.sae.metrics import activation_counts  # noqa: E402
from saerec.sae.training import train_step  # noqa: E402
from saerec.workers import sae_train  # noqa: E402

VARIANTS = {"tied": ["sae.variant=tied", "sae.aux_k=0"],
            "tied+auxk": ["sae.variant=tied"],
            "untied": ["sae.variant=untied"]}


def encode_items(data_dir: Path, out_dir: Path, model: str) -> dict[str, float]:
    """Embed ``items.tsv`` texts with the project's encoder into an embed-stage-shaped folder."""
    from saerec.text.encoders import load_encoder

    path = data_dir / "items.tsv"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --data-dir with the Beauty items.tsv, or --embeddings")
    with path.open(newline="") as handle:
        texts = [row["text"] or "" for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    start = time.perf_counter()
    encoder = load_encoder(model)
    encoded = encoder.encode_detailed(texts)
    seconds = time.perf_counter() - start
    dim = encoded.vectors.shape[1]
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "text_id": pa.array(np.arange(len(texts)), pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(encoded.vectors.reshape(-1)), dim),
        "tokens": pa.array(encoded.tokens, pa.int32()),
        "truncated": pa.array(encoded.truncated, pa.bool_()),
    }, schema=schemas.embedding_table_schema(dim)), out_dir / "part-00000.parquet")
    return {"texts": len(texts), "dim": dim, "encode_s": round(seconds, 2)}


def read_vectors(folder: Path) -> np.ndarray:
    """The non-empty vectors, for the bare loop (the stage reads the same folder through Ray Data)."""
    table = pads.dataset(str(folder), format="parquet").to_table(columns=["vector", "tokens"])
    return artifacts.nonempty_vectors(table)[1]


def bare_loop(x: torch.Tensor, spec: sae_train.SaeRun, device: torch.device) -> dict[str, float]:
    """The same training as the stage with nothing around it: no Ray, no metrics, no checkpoints.

    On a CPU it gets the one thread Ray gives a one-CPU Train worker.
    """
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(spec.seed)
    model = TopKSAE(spec.model)
    if spec.pre_bias is not None:
        model.set_pre_bias(torch.tensor(spec.pre_bias))
    model.to(device)
    optimizer = build_optimizer(model, spec.lr)
    state = TrainState(model.n_latents, spec.dead_after).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for epoch in range(spec.epochs):
        order = sae_train.epoch_order(len(x), spec.seed, epoch).to(device)
        for i in range(0, len(x), spec.batch_size):
            batch = x[order[i : i + spec.batch_size]]
            out = train_step(model, optimizer, state, batch)
            state.update(activation_counts(out.top_values, out.top_indices, model.n_latents), batch.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    final = evaluate(model, x.split(spec.batch_size))
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    return {"samples_per_s": round(spec.epochs * len(x) / seconds, 1), "train_s": round(seconds, 3),
            "fvu": final["fvu"], "dead_pct": final["dead_pct"], "l0": final["l0"], "peak_memory_mb": peak}


def stage_fit(ds, spec: sae_train.SaeRun, work_dir: Path, use_gpu: bool) -> dict[str, float]:
    """One Ray Train run of the stage's training (fresh storage, so nothing is resumed)."""
    from pyarrow.fs import LocalFileSystem

    start = time.perf_counter()
    result = sae_train.train_on_ray(ds, spec, str(work_dir / "train"), LocalFileSystem(), f"bench-{uuid.uuid4().hex[:8]}",
                           num_workers=1, use_gpu=use_gpu)
    wall = time.perf_counter() - start
    progress, saved, _ = sae_train.read_final(result.checkpoint)
    final = progress["final"]
    samples = sum(epoch["n_samples"] for epoch in progress["history"])
    row = {"samples_per_s": round(samples / final["train_loop_seconds"], 1),
           "train_s": final["train_loop_seconds"], "fit_wall_s": round(wall, 2), "load_s": final["load_seconds"],
           "fvu": final["fvu"], "dead_pct": final["dead_pct"], "l0": final["l0"],
           "peak_memory_mb": final["peak_memory_mb"], "peak_memory_of": final["peak_memory_of"]}
    model = TopKSAE.from_bytes(*saved)
    if model.W_dec is not None:
        cosine = torch.nn.functional.cosine_similarity(model.W_enc.detach(), model.W_dec.detach(), dim=1)
        row["enc_dec_cosine_mean"] = round(float(cosine.mean()), 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=shared_data_dir() / "beauty", help="folder with items.tsv")
    parser.add_argument("--embeddings", type=Path, help="an embed-stage embeddings/ Parquet folder instead")
    parser.add_argument("--model", default="minilm", help="text encoder when embedding items.tsv")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/saerec-bench-sae"))
    parser.add_argument("--n-latents", default="sizing,16384",
                        help="comma list of F values; 'sizing' is the sizing rule's value for the corpus")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sae.json")
    args = parser.parse_args()

    from saerec.runtime import init_ray

    use_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    source: dict[str, object] = {}
    folder = args.embeddings
    if folder is None:
        folder = args.work_dir / f"embeddings-{args.model.replace('/', '_')}"
        if not folder.exists():
            source.update(encode_items(args.data_dir, folder, args.model))
        source["data_dir"] = str(args.data_dir.resolve())
    source["embeddings"] = str(folder)
    vectors = read_vectors(folder)
    n_texts, dim = vectors.shape
    widths = [num_latents(n_texts) if w.strip() == "sizing" else int(w) for w in args.n_latents.split(",")]
    print(f"{n_texts} non-empty texts of dim {dim}; F = {widths}; device {device}", flush=True)

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv),
            "device": torch.cuda.get_device_name(0) if use_gpu else platform.processor() or platform.machine(),
            "torch": torch.__version__, "texts": n_texts, "dim": dim, "epochs": args.epochs,
            "batch_size": args.batch_size, "seed": args.seed, "source": source,
            "quality": quality, "speed": speed}, indent=2))

    init_ray(None)
    ds = sae_train.embedding_dataset(str(folder), None)
    x = torch.tensor(vectors, device=device)
    quality: list[dict] = []
    speed: list[dict] = []
    base = ["sae.k=" + str(args.k), f"sae.epochs={args.epochs}", f"sae.batch_size={args.batch_size}",
            f"sae.use_gpu={str(use_gpu).lower()}"]
    pre_bias = None
    for n_latents in widths:
        for variant in [v.strip() for v in args.variants.split(",")]:
            cfg = load_config(None, [*base, *VARIANTS[variant], f"sae.n_latents={n_latents}"]).sae
            spec = sae_train.resolve_run(cfg, dim, n_texts, args.seed)
            if pre_bias is None:
                pre_bias = sae_train.pre_bias_from_sample(ds, cfg.pre_bias)
            spec = replace(spec, pre_bias=pre_bias)
            stage = stage_fit(ds, spec, args.work_dir, use_gpu)
            quality.append({"variant": variant, "n_latents": n_latents, "k": args.k, **stage})
            print(f"  {variant:10s} F={n_latents:6d}: fvu {stage['fvu']:.4f}  dead {stage['dead_pct']:.1f}%  "
                  f"stage {stage['samples_per_s']:.0f}/s", flush=True)
            save()
            if n_latents == max(widths) and variant in ("tied", "untied"):
                bare = bare_loop(x, spec, device)
                final_only = stage_fit(ds, replace(spec, checkpoint_every=args.epochs), args.work_dir, use_gpu)
                speed.append({"variant": variant, "n_latents": n_latents, "bare": bare,
                              "stage_checkpoint_every_epoch": stage, "stage_final_checkpoint_only": final_only,
                              "ratio_every_epoch": round(stage["samples_per_s"] / bare["samples_per_s"], 3),
                              "ratio_final_only": round(final_only["samples_per_s"] / bare["samples_per_s"], 3)})
                save()

    print(f"\n{'variant':10s} {'F':>6s} {'k':>3s} {'FVU':>7s} {'L0':>5s} {'dead%':>6s} {'peak MB':>8s} {'samples/s':>10s}")
    for row in quality:
        print(f"{row['variant']:10s} {row['n_latents']:6d} {row['k']:3d} {row['fvu']:7.4f} {row['l0']:5.1f} "
              f"{row['dead_pct']:6.1f} {row['peak_memory_mb']:8.1f} {row['samples_per_s']:10.0f}")
    print(f"\n{'variant':10s} {'F':>6s} {'bare/s':>9s} {'stage/s (ckpt each epoch)':>26s} {'ratio':>6s} "
          f"{'stage/s (final ckpt)':>21s} {'ratio':>6s}")
    for row in speed:
        print(f"{row['variant']:10s} {row['n_latents']:6d} {row['bare']['samples_per_s']:9.0f} "
              f"{row['stage_checkpoint_every_epoch']['samples_per_s']:26.0f} {row['ratio_every_epoch']:6.3f} "
              f"{row['stage_final_checkpoint_only']['samples_per_s']:21.0f} {row['ratio_final_only']:6.3f}")

    save()
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
