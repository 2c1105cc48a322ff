"""Benchmark: what moves detection at the paper's dictionary size (16,384 latents, Beauty, CPU).

``bench/judge_scale.py`` measured mean detection 0.669 over the 3,000 latents its 16,384-latent
run keeps (target 0.7), against 0.83 at 256 latents. This bench asks why, on one random sample
of the latents that run keeps (coherence z >= 2, the prescreen and the "Yes" level), by changing
one thing at a time and scoring detection the job's way (``judge.detection_scoring=embedding``:
a latent's top texts against random texts, ranked by their MiniLM cosine with the summary):

  * ``smollm2`` — the job's default: SmolLM2's summary of the latent's words, 5 + 5 texts;
  * ``smollm2_10_texts`` — the same summaries, 10 top texts against 10 random ones
    (``explain.top_texts=10``, ``explain.random_texts=10``);
  * ``words`` — no summariser: the latent's first 8 words as the "summary", the evidence any
    summariser starts from;
  * ``qwen-0.5b`` — Qwen2.5-Coder-0.5B-Instruct's summary, as ``judge.summary_model`` writes it (``--qwen``, the GGUF that
    ``fetch-judge-model.sh qwen-0.5b`` assembles), 5 + 5 texts;
  * ``qwen-0.5b_best<N>`` — the best of Qwen's ``--candidates`` N summaries by the SAE activation
    it causes, as ``judge.summary_candidates=N`` chooses (``saerec.intents.selection``);
  * ``qwen-0.5b_best<N>_by_words`` — the same candidates, chosen instead by the MiniLM cosine
    with the latent's first 8 words (a choice that does not read the SAE);
  * ``qwen-0.5b_best<N>_oracle`` — not a method: the candidate with the best detection on the
    very texts detection is scored on, the ceiling of any choice among these candidates;
  * ``smollm2_best<N>`` — the best of SmolLM2's N candidates, chosen as ``qwen-0.5b_best<N>``;
  * ``smollm2_z3`` — the default arm's latents with coherence z >= 3 only (a stricter "Yes").

The explain stage runs once more, in its own run (``beauty-sae<N>-texts10``, prepare, embed and
train_sae copied from the sized run), for the 10 + 10 texts. Printed as a table and written to
``bench/results/detection.json``.

Usage: python bench/judge_scale.py first (or the job with sae.n_latents=16384 until explain), then
  python bench/detection.py [--sample 200] [--keep-z 2.0] [--candidates 4]
                            [--qwen ~/.cache/saerec/judge-models/qwen-0.5b/qwen-0.5b.gguf]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.provenance import git_commit  # noqa: E402
from bench.harness import (Published, add_beauty_args, beauty_config, check_beauty_args,  # noqa: E402
                           run_chain, seed_sized_run, sized_overrides, spread)
from saerec import artifacts, restore  # noqa: E402
from saerec.intents.detection import WORDS_AS_SUMMARY, EmbeddingDetector, detection_score, words_summary  # noqa: E402
from saerec.intents.judges import LocalJudge  # noqa: E402
from saerec.intents.models import judge_model  # noqa: E402
from saerec.intents.prompts import JudgePrompts  # noqa: E402
from saerec.intents.verdicts import CANNOT_TELL  # noqa: E402
from saerec.workers.judging import activation_selector, selection_inputs  # noqa: E402

KEEP_Z = 2.0  # judge.prescreen of the 16k run, and the "Yes" level of likelihood scoring


def _latents(published: Published) -> dict[int, dict]:
    table = artifacts.read_table(published["explain"], artifacts.LATENTS)
    return {row["latent"]: row for row in table.to_pylist()}


def _summaries(judge: LocalJudge, words: list[list[str]]) -> tuple[list[str], float]:
    start = time.perf_counter()
    found = judge.summarise(words)
    return found, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_beauty_args(p)
    p.add_argument("--sae-latents", type=int, default=16384)
    p.add_argument("--sample", type=int, default=200, help="kept latents (z >= 2) in the sample")
    p.add_argument("--screen", type=int, default=2000, help="random alive latents whose coherence z is computed")
    p.add_argument("--qwen", type=Path, default=None, help="Qwen2.5-Coder-0.5B-Instruct GGUF for the qwen-0.5b arm")
    p.add_argument("--candidates", type=int, default=4, help="summary candidates per latent for the qwen-0.5b_best arms")
    p.add_argument("--keep-z", type=float, default=KEEP_Z, help="coherence z a latent of the sample reaches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "detection.json")
    args = p.parse_args()
    check_beauty_args(args)
    if args.sample < 1 or args.screen < args.sample or args.candidates < 2:
        raise SystemExit("--sample must be >= 1, --screen >= --sample and --candidates >= 2")
    if args.qwen is not None and not args.qwen.is_file():
        raise SystemExit(f"--qwen {args.qwen}: no such file (../shared/tools/fetch-judge-model.sh qwen-0.5b prints it)")
    torch.set_num_threads(args.threads)
    sized = beauty_config(args.data_dir, args.work_dir, sized_overrides(args.sae_latents, judge_latents=None))
    ten = beauty_config(args.data_dir, args.work_dir, [*sized_overrides(args.sae_latents, judge_latents=None),
                                                       f"run.name=beauty-sae{args.sae_latents}-texts10",
                                                       "explain.top_texts=10", "explain.random_texts=10"])
    if Published(sized).runner.manifest("explain") is None:
        raise SystemExit(f"run {sized.run.name} has no published explain: run bench/judge_scale.py first")
    seed_sized_run(sized, ten, stages=("prepare", "embed", "train_sae"))
    run_chain(ten, ("explain",))
    five, tens = _latents(Published(sized)), _latents(Published(ten))

    cfg = sized.judge
    pool = sorted({w for row in five.values() for w in row["words"]})
    smollm2 = LocalJudge(JudgePrompts.load(cfg.domain), model=judge_model(cfg), batch_size=cfg.batch_size,
                         max_new_tokens=cfg.max_new_tokens, no_repeat_words=cfg.no_repeat_words,
                         scoring=cfg.scoring, null_pool=pool, null_lists=cfg.null_lists, seed=sized.seed)
    alive = sorted(latent for latent, row in five.items() if row["frequency"] > 0)
    screened = np.random.default_rng(sized.seed).permutation(alive)[:args.screen].tolist()
    start = time.perf_counter()
    z = smollm2.coherence_z([list(five[latent]["words"]) for latent in screened])
    screen_s = time.perf_counter() - start
    picked = [latent for latent, score in zip(screened, z) if score >= args.keep_z][:args.sample]
    z_of = dict(zip(screened, z))
    print(f"coherence z of {len(screened)} random alive latents in {screen_s:.0f}s: "
          f"{sum(s >= args.keep_z for s in z)} at z >= {args.keep_z}; the sample is the first {len(picked)}", flush=True)
    words = [list(five[latent]["words"]) for latent in picked]
    detector = EmbeddingDetector(cfg.detection_encoder)

    def one(latent: int, summary: str, rows: dict[int, dict], n: int | None = None) -> float | None:
        if summary == CANNOT_TELL:
            return None
        return detection_score(summary, list(rows[latent]["top_texts"])[:n], list(rows[latent]["random_texts"])[:n],
                               detector, None)

    def detection(summaries: list[str], rows: dict[int, dict], n: int | None = None) -> list[float | None]:
        return [one(latent, summary, rows, n) for latent, summary in zip(picked, summaries)]

    sae = restore.sae(Published(sized)["train_sae"])
    select = activation_selector(selection_inputs(sae, sized.embed), "cpu")
    small, small_s = _summaries(smollm2, words)
    arms: dict[str, dict[str, object]] = {}
    default = detection(small, five)
    arms["smollm2"] = {"summary_s_per_latent": round(small_s / len(picked), 3), **spread(default)}
    start = time.perf_counter()
    small_best = select(smollm2.summary_candidates(words, args.candidates), picked, words)
    arms[f"smollm2_best{args.candidates}"] = {"summary_s_per_latent": round((time.perf_counter() - start) / len(picked), 3),
                                              **spread(detection(small_best, five))}
    arms["smollm2_10_texts"] = spread(detection(small, tens))
    arms["words"] = spread(detection([words_summary(w) for w in words], five))
    examples = {"smollm2": small}
    if args.qwen is not None:
        qwen = LocalJudge(JudgePrompts.load(cfg.domain), model=str(args.qwen), batch_size=cfg.batch_size,
                          max_new_tokens=cfg.max_new_tokens, no_repeat_words=cfg.no_repeat_words, scoring="prompt")
        large, large_s = _summaries(qwen, words)
        arms["qwen-0.5b"] = {"summary_s_per_latent": round(large_s / len(picked), 3), **spread(detection(large, five))}
        examples["qwen-0.5b"] = large
        start = time.perf_counter()
        candidates = qwen.summary_candidates(words, args.candidates)
        candidates_s = time.perf_counter() - start
        best = f"qwen-0.5b_best{args.candidates}"
        chosen = select(candidates, picked, words)
        arms[best] = {"summary_s_per_latent": round(candidates_s / len(picked), 3), **spread(detection(chosen, five))}
        examples[best] = chosen
        by_words = []
        for latent_words, found in zip(words, candidates):
            named = [c for c in found if c != CANNOT_TELL] or found
            fits = detector(named, [words_summary(latent_words)] * len(named))
            by_words.append(named[int(np.argmax(fits))])
        arms[f"{best}_by_words"] = spread(detection(by_words, five))
        oracle = []
        for latent, found in zip(picked, candidates):
            scores = [one(latent, c, five) for c in found]
            oracle.append(found[int(np.argmax([-1.0 if d is None else d for d in scores]))])
        arms[f"{best}_oracle"] = spread(detection(oracle, five))
    arms["smollm2_z3"] = spread([d for latent, d in zip(picked, default) if z_of[latent] >= 3.0])
    result = {
        "run": sized.run.name, "sae_latents": args.sae_latents, "screened": len(screened),
        "screened_at_keep_z": int(sum(s >= args.keep_z for s in z)), "sample": len(picked), "keep_z": args.keep_z,
        "detection_scoring": "embedding", "detection_encoder": cfg.detection_encoder, "arms": arms,
        "examples": [{"latent": latent, "z": round(float(z_of[latent]), 2), "words": w[:WORDS_AS_SUMMARY],
                      **{arm: found[i] for arm, found in examples.items()}, "detection_smollm2": default[i]}
                     for i, (latent, w) in enumerate(zip(picked, words)) if i < 12],
        "command": "python " + " ".join(sys.argv), "commit": git_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{'arm':>26} {'latents':>7} {'mean':>6} {'quartiles':>20} {'s/latent':>8}")
    for arm, row in arms.items():
        print(f"{arm:>26} {row['latents']:7d} {row['mean']!s:>6} {str(row['quartiles']):>20} "
              f"{row.get('summary_s_per_latent', ''):>8}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
