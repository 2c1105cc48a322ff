"""Benchmark: the local LLM judge's quality and throughput, and the vLLM path's settings.

Judges (``--judges model:scoring ...``, default SmolLM2-135M with likelihood and with prompt
scoring, Qwen2.5-Coder-0.5B and -1.5B-Instruct with prompt scoring; the Qwen GGUFs come from
../shared/tools/fetch-judge-model.sh and are not project dependencies). Per judge:
Quality (labelled word lists, no SAE needed): 24 planted-intent word lists of the demo against
24 lists that are not one theme (random mixtures of intent words, generic review words,
function words, units, names):
  * verdict separability: ROC AUC of the verdict score (prompt: log P(Yes) - log P(No) at the
    classification prompt after the judge's own summary; likelihood: the coherence z-score),
    and how many lists of each kind get "Yes";
  * detection separability: ROC AUC of the detection score for demo-like review texts of the
    theme against texts of other themes, with the theme's name as the summary.
With ``--demo`` (the demo's explain latents.parquet) and ``--planted``: a lower bound of planted
recovery, judged on the latents that can count for it (see ``demo``), and how many of
``--demo-others`` other latents the judge keeps. With ``--beauty`` (Beauty's explain latents.parquet): on the ``--beauty-latents``
most frequent latents, the verdict counts, the detection balanced accuracy (mean, quartiles) of
every latent the judge could summarise, and the summaries, printed side by side for ten.
Throughput: latents per second through everything the judge stage does per latent (summary,
verdict, and for kept latents detection on 5 top + 5 random texts), after the model is loaded.

The vLLM path cannot run on these machines (CUDA only); ``VLLM_SETTINGS`` below is what we
expect it to need, derived from the model's size, NOT measured. Mistral-7B-Instruct in bf16 is
14.5 GB of weights; its KV cache costs 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes =
128 KiB per token, so with ``gpu_memory_utilization=0.85`` an 80 GB H100 keeps about 50 GB, or
~400k tokens, of cache: 256 sequences of the judge's <= 700-token prompts fit with room to spare.
Every prompt of one kind shares its ~300-token few-shot prefix, so with prefix caching a latent
costs ~100 new prompt tokens for the summary (+ <= 24 generated), ~120 for the verdict (1 token
chosen by guided choice) and ~10 x 130 for detection when kept. At a prefill rate of roughly
20k-40k tokens/s and batch decode of 5k-10k tokens/s for a 7B model on one H100, that is on
the order of 50-150 latents/s per GPU without detection: 32,768 latents in about 5-10 minutes,
plus detection for the ~1k kept.

Repeats (``--summaries latents.parquet``, an explain stage's output; only this is run): the
summaries of the ``--latents`` most frequently firing latents (the judge stage's order), with
the decoder's repetition control (``no_repeat_words``) off and on: the share of summaries that repeat a
word or copy the word list back, how many ``parse_summary`` turns into "Cannot Tell", the
likelihood verdicts, and with ``--planted`` (prepare's planted_intents.json) planted recovery
among the kept latents.

Usage: python bench/judge.py [--judges smollm2:likelihood qwen-0.5b:prompt ...] [--demo D/latents.parquet
           --planted D/planted_intents.json] [--beauty B/latents.parquet] [--latents 32] [--threads 2]
       python bench/judge.py --summaries PATH/latents.parquet [--planted PATH/planted_intents.json] [--latents 40]
Writes a table to stdout and JSON to bench/results/judge.json after every judge (a judge already
in the file is not measured again without --force; judge_repeats.json with --summaries).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VLLM_SETTINGS = {
    "model": "mistralai/Mistral-7B-Instruct-v0.3 (the paper's judge)",
    "judge.num_gpus_per_actor": "1 (tensor_parallel_size 1: 7B fits one 80 GB GPU)",
    "judge.concurrency": "number of GPUs (one engine each)",
    "judge.batch_size": "256 rows per engine call (max_num_seqs = batch_size)",
    "judge.max_model_len": "2048 (prompts < 700 tokens; a small cap leaves memory to the KV cache)",
    "judge.gpu_memory_utilization": "0.85 -> ~50 GB KV cache on an H100 80GB, ~400k tokens",
    "judge.enable_prefix_caching": "true (the few-shot prefix is shared by every request)",
    "expected memory": "14.5 GB weights + ~50 GB KV cache per H100 80GB",
    "expected throughput": "~50-150 latents/s per H100 without detection (estimate, not measured)",
}


def labelled_lists(rng: random.Random) -> tuple[list[list[str]], list[int]]:
    from saerec.data.demo import GENERIC, PLANTED

    pool = [w for words in PLANTED.values() for w in words]
    positive = [rng.sample(words, 10) for words in PLANTED.values()]
    negative = [rng.sample(pool, 10) for _ in range(12)] + [rng.sample(GENERIC, 10) for _ in range(6)]
    negative += [["the", "and", "of", "this", "that", "with", "for", "was", "is", "it"],
                 ["one", "two", "three", "monday", "went", "blue", "car", "also", "maybe", "seven"],
                 ["oz", "ml", "pack", "count", "inch", "size", "set", "piece", "lot", "pair"],
                 ["john", "city", "street", "river", "paper", "window", "chair", "music", "phone", "cable"],
                 ["would", "could", "should", "might", "must", "shall", "will", "can", "may", "need"],
                 ["very", "really", "quite", "pretty", "so", "too", "just", "even", "still", "much"]]
    return positive + negative, [1] * len(positive) + [0] * len(negative)


def review(rng: random.Random, theme: str) -> str:
    from saerec.data.demo import GENERIC, PLANTED, PRODUCT_NOUNS, TEMPLATES

    w, g = rng.sample(PLANTED[theme], 3), rng.sample(GENERIC, 4)
    return rng.choice(TEMPLATES).format(w0=w[0], w1=w[1], w2=w[2], noun=rng.choice(PRODUCT_NOUNS),
                                        g0=g[0], g1=g[1], g2=g[2], g3=g[3])


def quality(judge, rng: random.Random) -> dict[str, object]:
    from sklearn.metrics import roc_auc_score

    from saerec.data.demo import PLANTED

    lists, labels = labelled_lists(rng)
    summaries = judge.summarise(lists) if judge.scoring == "prompt" else ["(unused)"] * len(lists)
    if judge.scoring == "likelihood":
        scores = judge.coherence_z(lists)
    else:
        requests = [judge.prompts.verdict_request(s, w) for s, w in zip(summaries, lists)]
        logprobs = judge.option_logprobs("classify", requests, judge._verdict_ids)
        scores = (logprobs[:, 0] - logprobs[:, 3]).tolist()
    verdicts = judge.classify(summaries, lists)
    themes = list(PLANTED)[:12]
    pairs, truth = [], []
    for theme in themes:
        pairs += [(theme, review(rng, theme)) for _ in range(4)]
        pairs += [(theme, review(rng, rng.choice([t for t in themes if t != theme]))) for _ in range(4)]
        truth += [1] * 4 + [0] * 4
    detect = judge.detect([s for s, _ in pairs], [t for _, t in pairs])
    return {
        "verdict_auc": round(float(roc_auc_score(labels, scores)), 3),
        "yes_on_planted": sum(v == "Yes" for v, y in zip(verdicts, labels) if y == 1),
        "yes_on_not_a_theme": sum(v == "Yes" for v, y in zip(verdicts, labels) if y == 0),
        "detection_auc": round(float(roc_auc_score(truth, detect)), 3),
    }


def throughput(judge, lists: list[list[str]], texts: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    summaries = judge.summarise(lists)
    summarise_s = time.perf_counter() - start
    start = time.perf_counter()
    verdicts = judge.classify(summaries, lists)
    classify_s = time.perf_counter() - start
    start = time.perf_counter()
    pairs = [(s, t) for s, v in zip(summaries, verdicts) if v == "Yes" for t in texts]
    judge.detect([s for s, _ in pairs], [t for _, t in pairs])
    detect_s = time.perf_counter() - start
    total = summarise_s + classify_s + detect_s
    return {"latents": len(lists), "kept": sum(v == "Yes" for v in verdicts),
            "summarise_s": round(summarise_s, 2), "classify_s": round(classify_s, 2),
            "detect_s": round(detect_s, 2), "latents_per_s": round(len(lists) / total, 3)}


def repeats(judge, latents_file: Path, planted_file: Path | None, count: int) -> dict[str, object]:
    import numpy as np
    import pyarrow.parquet as pq

    from saerec.intents.quality import planted_intent_recovery
    from saerec.intents.verdicts import CANNOT_TELL, copies_the_list, parse_summary, repeats_a_word

    table = pq.read_table(latents_file, columns=["latent", "words", "frequency"])
    frequency = table.column("frequency").to_numpy()
    order = np.lexsort((np.arange(len(frequency)), -frequency))[:count]
    words = [table.column("words")[int(i)].as_py() for i in order]
    planted = {p["name"]: p["words"] for p in json.loads(planted_file.read_text())} if planted_file else None
    out: dict[str, object] = {"latents": len(words), "source": str(latents_file)}
    lines = {}
    judge.word_ban(), judge.raw_summaries(words[:1])  # build the vocabulary map and the prompt's cache untimed
    for name, ban in (("off", False), ("on", True)):
        judge.no_repeat_words = ban
        start = time.perf_counter()
        raw = judge.raw_summaries(words)
        seconds = time.perf_counter() - start
        lines[name] = [next((line.strip() for line in text.splitlines() if line.strip()), "") for text in raw]
        summaries = [parse_summary(text, words=w) for text, w in zip(raw, words)]
        verdicts = judge.classify(summaries, words)
        kept = [w for w, v in zip(words, verdicts) if v == "Yes"]
        out[name] = {
            "repeated_word": round(float(np.mean([repeats_a_word(line) for line in lines[name]])), 3),
            "copied_list": round(float(np.mean([copies_the_list(line, w) for line, w in zip(lines[name], words)])), 3),
            "cannot_tell": sum(s == CANNOT_TELL for s in summaries),
            "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
            "planted_recovered": planted_intent_recovery(kept, planted)["recovered"] if planted else None,
            "summaries_per_s": round(len(words) / seconds, 2)}
        print(f"repetition control {name:3s} {json.dumps(out[name])}", flush=True)
    out["examples"] = [{"words": w[:8], "off": off, "on": on, "published": parse_summary(on, words=w)}
                       for w, off, on in zip(words, lines["off"], lines["on"]) if off != on][:12]
    for example in out["examples"]:
        print(f"  {', '.join(example['words'])}\n    off: {example['off']!r}  on: {example['on']!r}"
              f"  -> {example['published']!r}")
    return out


JUDGES = ("smollm2:likelihood", "smollm2:prompt", "qwen-0.5b:prompt", "qwen-1.5b:prompt")


def judge_source(name: str) -> str:
    """``smollm2`` = the default wheel; ``qwen-0.5b`` / ``qwen-1.5b`` = the GGUF files that
    ../shared/tools/fetch-judge-model.sh assembles in the judge cache; anything else is passed on
    as judge.model (a .gguf file, a folder or a hub id)."""
    from saerec.intents.judges import DEFAULT_LOCAL_MODEL, judge_cache_dir

    if name == "smollm2":
        return DEFAULT_LOCAL_MODEL
    if name in ("qwen-0.5b", "qwen-1.5b"):
        path = judge_cache_dir() / "judge-models" / name / f"{name}.gguf"
        if not path.exists():
            raise SystemExit(f"{path} not found: run ../shared/tools/fetch-judge-model.sh {name} first")
        return str(path)
    return name


def beauty(judge, latents_file: Path, count: int) -> dict[str, object]:
    """On the ``count`` most frequently firing latents of a Beauty explain output: the verdicts,
    and the held-out detection balanced accuracy of every latent the judge could summarise (the
    judge stage's own measure: the summary tells the latent's top texts from random ones)."""
    import numpy as np

    from saerec.intents.detection import detection_score
    from saerec.intents.verdicts import CANNOT_TELL

    rows = _top_latents(latents_file, count, ["latent", "words", "frequency", "top_texts", "random_texts"])
    words = [r["words"] for r in rows]
    start = time.perf_counter()
    summaries = judge.summarise(words)
    verdicts = judge.classify(summaries, words)
    scores = [detection_score(s, list(r["top_texts"]), list(r["random_texts"]), judge.detect,
                              judge.detection_threshold) if s != CANNOT_TELL else None
              for s, r in zip(summaries, rows)]
    seconds = time.perf_counter() - start
    found = [x for x in scores if x is not None]
    kept = [x for x, v in zip(scores, verdicts) if x is not None and v == "Yes"]
    return {"latents": len(rows), "verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
            "detection_latents": len(found),
            "detection_mean": round(float(np.mean(found)), 3) if found else None,
            "detection_quartiles": [round(float(q), 3) for q in np.quantile(found, [0.25, 0.5, 0.75])] if found else None,
            "detection_mean_kept": round(float(np.mean(kept)), 3) if kept else None,
            "latents_per_s": round(len(rows) / seconds, 3),
            "summaries": [{"latent": int(r["latent"]), "words": list(r["words"])[:8], "summary": s, "verdict": v}
                          for r, s, v in zip(rows, summaries, verdicts)]}


def demo(judge, latents_file: Path, planted_file: Path, per_intent: int, others: int) -> dict[str, object]:
    """Planted recovery on the demo, as a lower bound of what the judge stage would measure over
    every latent: only latents whose top words are one planted intent's can count (candidates),
    and a verdict depends on its latent alone, so judging the ``per_intent`` most frequently firing
    candidates of each planted intent gives a recovery the full run can only match or exceed. The
    ``others`` most frequent non-candidate latents are judged too: how many of them are kept."""
    import pyarrow.parquet as pq

    from saerec.intents.quality import planted_intent_recovery

    planted = {p["name"]: p["words"] for p in json.loads(planted_file.read_text())}
    table = pq.read_table(latents_file, columns=["latent", "words", "frequency"])
    rows = sorted(table.to_pylist(), key=lambda r: (-r["frequency"], r["latent"]))
    by_intent: dict[str, list[list[str]]] = {}
    rest = []
    for row in rows:
        owners = [name for name, words in planted.items()
                  if planted_intent_recovery([row["words"]], {name: words})["recovered"]]
        if owners:
            by_intent.setdefault(owners[0], []).append(row["words"])
        elif len(rest) < others:
            rest.append(row["words"])
    candidates = [w for lists in by_intent.values() for w in lists[:per_intent]]
    verdicts = judge.classify(judge.summarise(candidates + rest), candidates + rest)
    kept = [v == "Yes" for v in verdicts]
    return {"candidates": len(candidates), "kept_candidates": sum(kept[:len(candidates)]),
            "others": len(rest), "kept_others": sum(kept[len(candidates):]),
            "recovery": planted_intent_recovery([w for w, k in zip(candidates, kept) if k], planted)["recovery"],
            "recovery_if_all_kept": planted_intent_recovery(candidates, planted)["recovery"]}


def _words(latents_file: Path) -> list[str]:
    """Every word of an explain output's latents: the judge stage's null pool."""
    import pyarrow.parquet as pq

    return sorted({w for words in pq.read_table(latents_file, columns=["words"]).column("words").to_pylist() for w in words})


def _top_latents(latents_file: Path, count: int, columns: list[str]) -> list[dict[str, object]]:
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(latents_file, columns=columns)
    frequency = table.column("frequency").to_numpy()
    order = np.lexsort((np.arange(len(frequency)), -frequency))[:count]
    return table.take(order).to_pylist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", nargs="+", default=list(JUDGES),
                        help="model:scoring, model = smollm2, qwen-0.5b, qwen-1.5b (fetched GGUFs), a file, folder or hub id")
    parser.add_argument("--latents", type=int, default=32, help="word lists timed per judge")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beauty", type=Path, help="a Beauty explain stage's latents.parquet")
    parser.add_argument("--beauty-latents", type=int, default=40)
    parser.add_argument("--demo", type=Path, help="the demo's explain latents.parquet (with --planted)")
    parser.add_argument("--demo-per-intent", type=int, default=3, help="candidate demo latents judged per planted intent")
    parser.add_argument("--demo-others", type=int, default=16, help="non-candidate demo latents judged too")
    parser.add_argument("--summaries", type=Path, help="an explain stage's latents.parquet: measure only repeats")
    parser.add_argument("--planted", type=Path, help="prepare's planted_intents.json (with --summaries or --demo)")
    parser.add_argument("--domain", default="Amazon beauty products", help="judge.domain (the job's default)")
    parser.add_argument("--force", action="store_true", help="measure judges already in the output again")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.demo and not args.planted:
        parser.error("--demo needs --planted")
    results_dir = REPO / "bench" / "results"
    out = args.out or results_dir / ("judge_repeats.json" if args.summaries else "judge.json")

    import os

    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    import torch

    from saerec.data.demo import GENERIC, PLANTED
    from saerec.intents.judges import LocalJudge
    from saerec.intents.prompts import JudgePrompts

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    pool = sorted({w for words in PLANTED.values() for w in words} | set(GENERIC))
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.summaries:
        judge = LocalJudge(JudgePrompts.load(args.domain), batch_size=args.batch_size, null_pool=_words(args.summaries))
        results = {"threads": args.threads, "batch_size": args.batch_size,
                   **repeats(judge, args.summaries, args.planted, args.latents)}
        out.write_text(json.dumps(results, indent=2))
        return 0
    lists = [rng.sample(PLANTED[name], 8) + rng.sample(GENERIC, 7) if i % 2 else rng.sample(pool, 15)
             for i, name in zip(range(args.latents), list(PLANTED) * args.latents)]
    texts = [review(rng, rng.choice(list(PLANTED))) for _ in range(10)]
    earlier = json.loads(out.read_text()) if out.exists() else {}
    results: dict[str, object] = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                                  "batch_size": args.batch_size, "vllm_expected_settings": VLLM_SETTINGS,
                                  "judges": earlier.get("judges", {})}
    for spec in args.judges:
        name, _, scoring = spec.partition(":")
        if spec in results["judges"] and not args.force:
            print(f"{spec}: measured earlier (--force to measure again)")
            continue
        start = time.perf_counter()
        judge = LocalJudge(JudgePrompts.load(args.domain), model=judge_source(name), batch_size=args.batch_size,
                           scoring=scoring or "prompt", null_pool=pool)
        row: dict[str, object] = {"model": name, "scoring": judge.scoring,
                                  "model_load_s": round(time.perf_counter() - start, 1),
                                  "quality": quality(judge, random.Random(1)), "throughput": throughput(judge, lists, texts)}
        # Likelihood scoring compares coherence with random lists of the dataset's own latents'
        # words, as the judge stage does, so it gets a judge per dataset; prompt scoring reads no pool.
        def judge_for(latents_file: Path):
            if judge.scoring != "likelihood":
                return judge
            return LocalJudge(JudgePrompts.load(args.domain), model=judge_source(name), batch_size=args.batch_size,
                              scoring=judge.scoring, null_pool=_words(latents_file))

        if args.demo:
            row["demo"] = demo(judge_for(args.demo), args.demo, args.planted, args.demo_per_intent, args.demo_others)
        if args.beauty:
            row["beauty"] = beauty(judge_for(args.beauty), args.beauty, args.beauty_latents)
        results["judges"][spec] = row
        print(f"{spec:20s} {json.dumps({k: v for k, v in row.items() if k != 'beauty'})}", flush=True)
        if args.beauty:
            print(f"{'':20s} beauty {json.dumps({k: v for k, v in row['beauty'].items() if k != 'summaries'})}")
        out.write_text(json.dumps(results, indent=2))  # every finished judge is kept
    _table(results["judges"])
    print("vLLM (expected, not measured):")
    for key, value in VLLM_SETTINGS.items():
        print(f"  {key:32s} {value}")
    out.write_text(json.dumps(results, indent=2))
    return 0


def _table(judges: dict[str, dict[str, object]]) -> None:
    print(f"\n{'judge':20s} {'verdict AUC':>11} {'detect AUC':>10} {'lat/s':>6} {'demo rec':>8} "
          f"{'Beauty verdicts':32s} {'Beauty detection':>16}")
    for spec, row in judges.items():
        q, b, d = row["quality"], row.get("beauty", {}), row.get("demo", {})
        demo_cell = f"{d['recovery']:.2f}/{d['recovery_if_all_kept']:.2f}" if d else "-"
        print(f"{spec:20s} {q['verdict_auc']:11.3f} {q['detection_auc']:10.3f} {row['throughput']['latents_per_s']:6.2f} "
              f"{demo_cell:>8} {json.dumps(b.get('verdicts', {})):32s} {str(b.get('detection_mean')):>16}")
    beauty_rows = {spec: row["beauty"]["summaries"] for spec, row in judges.items() if "beauty" in row}
    if beauty_rows:
        print("\nBeauty summaries side by side (the ten most frequently firing latents):")
        first = next(iter(beauty_rows.values()))
        for i, latent in enumerate(first[:10]):
            print(f"  latent {latent['latent']}: {', '.join(latent['words'])}")
            for spec, summaries in beauty_rows.items():
                print(f"    {spec:20s} {summaries[i]['summary']!r} ({summaries[i]['verdict']})")


if __name__ == "__main__":
    raise SystemExit(main())
