"""Benchmark: the embed stage (Ray Data actor pool) against a bare single-process loop.

Same machine, same texts (Beauty item texts + the real All_Beauty reviews), same encoder and
settings. Every measurement runs in its own process so that peak memory is that run's alone:

- ``bare``: one process, ``torch`` threads = the CPUs one actor gets, at the niceness Ray gives its
  workers; load the encoder, encode in batches, write one Parquet file;
- ``stage``: a Ray driver running ``saerec.workers.encoding.embed_corpus`` (the stage's pipeline)
  on local storage; the time compared is the corpus pass (read -> actors start and load the
  encoder -> encode -> write sharded Parquet), Ray's own start-up excluded; actors' peak memory
  is sampled with psutil;
- driver memory: the stage on a synthetic corpus 1x and 8x as large (short item-like texts).

Besides texts per second, each run reports texts per CPU-second of its encoding processes (the
bare process, or the corpus pool's actors): on a machine shared with other work, wall-clock
ratios move with the load (the 1-minute load average is recorded around every run), CPU time
much less.

Usage: python bench/embed.py --data-dir ../shared/data [--actors 1,2] [--device cpu]
Writes a table to stdout and JSON to bench/results/embed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.shared_data import shared_data_dir  # noqa: E402

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TOKENIZERS_PARALLELISM": "false"}
ACTOR_TITLE = "EncodeBatches"
RESULT_MARKER = "BENCH_RESULT "
RAY_WORKER_NICENESS = 15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=shared_data_dir(),
                        help="folder holding beauty/items.tsv and amazon-2018-all-beauty/All_Beauty_5.json.gz")
    parser.add_argument("--model", default="minilm", help="encoder: 'minilm', a local folder or a hub id")
    parser.add_argument("--kind", default="auto", choices=("auto", "t5", "bert"))
    parser.add_argument("--layer", type=int, default=-1, help="hidden-state layer to pool (P5-base: 8)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=512, help="texts per actor call (sorted together)")
    parser.add_argument("--micro-batch-size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts to run the stage with")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="CPUs per actor; the bare loop uses as many torch threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bare-nice", type=int, default=RAY_WORKER_NICENESS,
                        help="niceness of the bare loop; Ray runs its workers at 15, and on a busy machine "
                             "the scheduler would otherwise favour the bare loop")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the bare loop and the stage configurations this many times, alternating; "
                             "medians are reported")
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N item texts and N reviews (a quick check; 0 = all)")
    parser.add_argument("--synthetic-base", type=int, default=4000,
                        help="texts in the 1x synthetic corpus of the driver-memory check (0 skips it)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embed.json")
    parser.add_argument("--child", choices=("bare", "stage"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def embed_settings(args: argparse.Namespace, actors: int):
    from saerec.config import load_config

    gpus = 1.0 if args.device == "cuda" else 0.0
    return load_config(None, [f"embed.model={args.model}", f"embed.kind={args.kind}", f"embed.layer={args.layer}",
                              f"embed.max_length={args.max_length}",
                              f"embed.batch_size={args.batch_size}",
                              f"embed.micro_batch_size={args.micro_batch_size}", f"embed.num_actors={actors}",
                              f"embed.cpus_per_actor={args.cpus_per_actor}", f"embed.num_gpus_per_actor={gpus}",
                              f"embed.device={args.device}", "embed.vocab_min_count=2"]).embed


def real_texts(data_dir: Path) -> tuple[list[str], list[str]]:
    """Beauty item descriptions and the All_Beauty review texts, as the project's loaders read them."""
    from saerec.data import amazon, sequences
    from saerec.data.records import BadRecords

    items = sequences.read_items_tsv(data_dir / "beauty" / "items.tsv")
    reviews = amazon.read_reviews(data_dir / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz", BadRecords("skip"))
    return list(items.values()), [r.review or "" for r in reviews]


def synthetic_texts(words: list[str], count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(count)]


def write_corpus(texts: list[str], folder: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from saerec import schemas

    folder.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    table = pa.table({"text_id": pa.array(range(1, n + 1), pa.int64()), "kind": pa.array(["item"] * n),
                      "user": pa.array([0] * n, pa.int32()), "item": pa.array([0] * n, pa.int32()),
                      "text": pa.array(texts, pa.string())}, schema=schemas.CORPUS)
    pq.write_table(table, folder / "part-00000.parquet", row_group_size=4096)
    return folder


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ActorSampler:
    """Samples this driver's encoder actors: peak resident memory, CPU time, when each was first seen.

    Only descendants of this process count: the local Ray it started spawns them, and other Ray
    instances on the machine are not ours to measure.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.seen: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            for proc in me.children(recursive=True):
                try:
                    if ACTOR_TITLE not in " ".join(proc.cmdline()):
                        continue
                    cpu = proc.cpu_times()
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                entry = self.seen.setdefault(proc.pid, {"first_seen": time.perf_counter(), "peak_mb": 0.0})
                entry["peak_mb"] = max(entry["peak_mb"], rss)
                entry["cpu_s"] = cpu.user + cpu.system
            self._stop.wait(self.interval)

    def before(self, moment: float) -> list[dict[str, float]]:
        return [e for e in self.seen.values() if e["first_seen"] < moment]

    def __enter__(self) -> ActorSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_bare(args: argparse.Namespace) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from saerec.text.encoders import load_encoder

    if args.device == "cpu":
        torch.set_num_threads(max(1, int(args.cpus_per_actor)))
    os.nice(args.bare_nice)
    texts = pq.read_table(args.corpus, columns=["text"]).column("text").to_pylist()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    encoder = load_encoder(args.model, args.kind, args.layer, args.max_length, args.device, "auto",
                           args.micro_batch_size)
    loaded = time.perf_counter()
    vectors = [encoder.encode(texts[i:i + args.batch_size]) for i in range(0, len(texts), args.batch_size)]
    encoded = time.perf_counter()
    flat = np.concatenate(vectors)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), encoder.dim)
    pq.write_table(pa.table({"text_id": pa.array(range(len(texts)), pa.int64()), "vector": column}),
                   args.workdir / "bare.parquet")
    done, cpu = time.perf_counter(), cpu_seconds() - cpu_start
    return {"texts": len(texts), "seconds": done - start, "load_s": loaded - start, "encode_s": encoded - loaded,
            "texts_per_s": len(texts) / (done - start), "cpu_s": cpu, "texts_per_cpu_s": len(texts) / cpu,
            "driver_peak_mb": peak_rss_mb(),
            "padding_efficiency": encoder.stats.tokens / max(encoder.stats.padded_tokens, 1)}


def child_stage(args: argparse.Namespace) -> dict:
    import pyarrow.fs as pafs

    from saerec.runtime import init_ray
    from saerec.workers.encoding import embed_corpus

    cfg = embed_settings(args, int(args.actors))
    init_ray(None, os.cpu_count())
    with ActorSampler() as actors:
        start = time.perf_counter()
        metrics = embed_corpus(str(args.corpus), str(args.workdir / "stage"), pafs.LocalFileSystem(), cfg)
        wall = time.perf_counter() - start
    # The corpus pool's actors are those that appeared before the corpus pass ended.
    corpus_actors = actors.before(start + metrics["count_words_s"] + metrics["embed_texts_s"])
    cpu = sum(a.get("cpu_s", 0.0) for a in corpus_actors)
    if cpu == 0:
        raise SystemExit("no encoder actor process was seen; cannot account its CPU time")
    return {"texts": metrics["texts"], "seconds": metrics["embed_texts_s"],
            "texts_per_s": metrics["texts"] / metrics["embed_texts_s"], "stage_wall_s": wall,
            "count_words_s": metrics["count_words_s"], "embed_words_s": metrics["embed_words_s"],
            "vocabulary_words": metrics["vocabulary_words"], "actors": cfg.num_actors,
            "cpu_s": cpu, "texts_per_cpu_s": metrics["texts"] / cpu,
            "driver_peak_mb": peak_rss_mb(),
            "actor_peak_mb": round(max((a["peak_mb"] for a in actors.seen.values()), default=0.0)),
            "actor_processes": len(actors.seen)}


def run_child(args: argparse.Namespace, mode: str, corpus: Path, actors: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as workdir:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--corpus", str(corpus),
               "--workdir", workdir, "--model", args.model, "--kind", args.kind, "--layer", str(args.layer),
               "--max-length", str(args.max_length),
               "--batch-size", str(args.batch_size), "--micro-batch-size", str(args.micro_batch_size),
               "--actors", str(actors), "--cpus-per-actor", str(args.cpus_per_actor), "--device", args.device,
               "--bare-nice", str(args.bare_nice)]
        load_before = os.getloadavg()[0]
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV})
    if result.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{result.stderr[-4000:]}")
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith(RESULT_MARKER))
    # Other work on the machine skews timings; the 1-minute load average before and after says how much.
    return {**json.loads(line[len(RESULT_MARKER):]), "load_avg_1m": [load_before, os.getloadavg()[0]]}


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_row(name: str, actors: int, r: dict, bare: dict) -> None:
    per_cpu = f"{r['texts_per_cpu_s']:.1f}"
    print(f"{name:<10} {actors:>6} {r['texts_per_s']:>9.1f} {r['texts_per_s'] / bare['texts_per_s']:>7.2f} "
          f"{per_cpu:>12} {r['seconds']:>8.1f} {r['driver_peak_mb']:>10.0f} {r.get('actor_peak_mb', '-'):>9} "
          f"{r['load_avg_1m'][0]:>5.1f}", flush=True)


def summarise_runs(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Median texts/s and texts per CPU-second of each configuration, and their ratio to the bare loop's."""
    import statistics

    medians = {name: {key: statistics.median(r[key] for r in rows) for key in ("texts_per_s", "texts_per_cpu_s")}
               for name, rows in runs.items()}
    bare = medians["bare"]
    return {name: {**m, "ratio_vs_bare": m["texts_per_s"] / bare["texts_per_s"],
                   "cpu_ratio_vs_bare": m["texts_per_cpu_s"] / bare["texts_per_cpu_s"]}
            for name, m in medians.items()}


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = child_bare(args) if args.child == "bare" else child_stage(args)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    data_dir = args.data_dir.resolve()
    if not (data_dir / "beauty" / "items.tsv").exists():
        print(f"data folder {data_dir} lacks beauty/items.tsv; pass --data-dir", file=sys.stderr)
        return 2
    report: dict = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items() if k != "child"}}
    items, reviews = real_texts(data_dir)
    if args.limit:
        items, reviews = items[:args.limit], reviews[:args.limit]
    texts = items + reviews
    actor_counts = [int(a) for a in args.actors.split(",")]
    print(f"real corpus: {len(items)} item texts + {len(reviews)} reviews "
          f"({args.model}, layer {args.layer}, max_length {args.max_length}, {args.device})", flush=True)
    print(f"{'run':<10} {'actors':>6} {'texts/s':>9} {'x bare':>7} {'texts/cpu-s':>12} {'seconds':>8} "
          f"{'driver MB':>10} {'actor MB':>9} {'load':>5}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        corpus = write_corpus(texts, Path(tmp) / "real")
        runs: dict[str, list[dict]] = {"bare": [], **{f"stage_{a}": [] for a in actor_counts}}
        report["real"] = {"texts": len(texts), "runs": runs}
        for _ in range(args.repeats):
            runs["bare"].append(run_child(args, "bare", corpus))
            print_row("bare loop", 1, runs["bare"][-1], runs["bare"][-1])
            for actors in actor_counts:
                runs[f"stage_{actors}"].append(run_child(args, "stage", corpus, actors))
                print_row("stage", actors, runs[f"stage_{actors}"][-1], runs["bare"][-1])
                save(report, args.out)
        report["real"]["summary"] = summary = summarise_runs(runs)
        save(report, args.out)
        if args.repeats > 1:
            print(f"\nmedians over {args.repeats} alternating repeats")
            for name, row in summary.items():
                print(f"{name:<10} {row['texts_per_s']:>9.1f} texts/s  x bare {row['ratio_vs_bare']:.2f}  "
                      f"{row['texts_per_cpu_s']:.1f} texts/cpu-s  x bare {row['cpu_ratio_vs_bare']:.2f}")

        if args.synthetic_base:
            words = sorted({w for t in items for w in t.split()})
            report["driver_memory"] = {}
            print(f"\ndriver memory vs corpus size (synthetic texts, stage with {max(actor_counts)} actors)")
            for factor in (1, 8):
                folder = write_corpus(synthetic_texts(words, args.synthetic_base * factor), Path(tmp) / f"x{factor}")
                r = run_child(args, "stage", folder, max(actor_counts))
                report["driver_memory"][f"{factor}x"] = r
                print(f"{factor}x {r['texts']:>7} texts  driver peak {r['driver_peak_mb']:.0f} MB  "
                      f"actor peak {r['actor_peak_mb']} MB  {r['texts_per_s']:.0f} texts/s", flush=True)
                save(report, args.out)
    save(report, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
