"""Benchmark: grounded items against SASRec, the paper's SAERec and the controls on Amazon Beauty.

Every cell (``variant/seed``) trains through the job's training path (``saerec.rec.runs``) on
the job's own published outputs, under the strict protocol (selection on valid NDCG@20, the test
item read once, after selection), with the job's ``rec`` settings from ``configs/beauty.yaml``
except ``--max-epochs`` and ``--patience``. A cell's JSON part and selected weights go to
``--work-dir/rec-parts``; a finished cell is not trained again.

Steps:
  python bench/rec.py --step chain                      # the job's prepare .. profile (reused when published)
  python bench/rec.py --step train --cells sasrec/0 grounded/0 grounded-random/0 ...
  python bench/rec.py --step steer --cell grounded/0 --query "nail polish" --category "Nail Polish" --match both
  python bench/rec.py --step steering --cell grounded/0   # every query steered on the cell -> one JSON
  python bench/rec.py --step report                     # -> bench/results/rec_beauty.json
  python bench/rec.py --step assess --cells sasrec/0 sasrec/1 sasrec/2 grounded/0 grounded/1 grounded/2
      # the saved cells tested as the job's evaluate does: the model chosen on valid over seeds, its ties,
      # paired bootstrap intervals over users, the popularity breakdown -> bench/results/headline_beauty.json

The SAE size study (``--sae-latents N``) runs the chain again from train_sae with N latents in
its own run (``beauty-sae<N>``, prepare and embed copied from the main run, the judge limited to
the 256 most frequent latents) and keeps its cells in ``rec-parts/sae<N>``; the report compares
``grounded-all`` (which reads every latent) across sizes, on valid first:
  python bench/rec.py --step chain --sae-latents 1024
  python bench/rec.py --step train --sae-latents 1024 --cells grounded-all/0
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import (ANCHORS, METRICS, Published, add_beauty_args, beauty_config, check_beauty_args,  # noqa: E402
                           each_cell, mean_std, part_path, read_parts, run_chain, seed_sized_run, sized_overrides,
                           steering_row, train_cell)

from bench.provenance import git_commit  # noqa: E402
from saerec import artifacts  # noqa: E402
from saerec.rec.comparisons import assess  # noqa: E402
from saerec.rec.attribution import explain_grounded  # noqa: E402
from saerec.rec import runs  # noqa: E402
from saerec.rec.variants import NAMES, label, restore_model, variant  # noqa: E402
from saerec.stages.evaluate import steering  # noqa: E402

BSAREC = ANCHORS["beauty"]["bsarec"]
PAPER = {"SASRec": {"hr@10": 0.0624, "hr@20": 0.0894, "ndcg@10": 0.0342, "ndcg@20": 0.0386},
         "SAERec": {"hr@10": 0.1055, "hr@20": 0.1427, "ndcg@10": 0.0643, "ndcg@20": 0.0737}}


def _settings(published: Published, args: argparse.Namespace):
    """The run's rec section (with this benchmark's epochs and patience, no checkpoints) and its evaluate section."""
    cfg = published.cfg
    rec = dataclasses.replace(cfg.rec, max_epochs=args.max_epochs or cfg.rec.max_epochs,
                              patience=args.patience or cfg.rec.patience, checkpoint_seconds=float("inf"))
    return rec, cfg.evaluate


def _cell(cell: str) -> tuple[str, int]:
    name, _, seed = cell.partition("/")
    variant(name)
    if not seed.isdigit():
        raise SystemExit(f"cell {cell!r}: write variant/seed, e.g. grounded/0")
    return name, int(seed)


def step_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    published = Published(args.config)
    data = published.sequences()
    rec, evaluation = _settings(published, args)
    split = runs.split(data.sequences, data.n_items, rec, evaluation)

    def train(cell: str, out: Path) -> None:
        name, seed = _cell(cell)
        intents, profiles = published.inputs_of([name], data.n_items, seed)
        train_cell(cell, name, seed, rec, evaluation, split, intents, profiles, data.n_items, out,
                   extra={"protocol": evaluation.protocol, "upstream": published.upstream()}, save_model=True)

    each_cell(args.cells, args.parts, train)


def _model_path(args: argparse.Namespace, cell: str) -> Path:
    return args.parts / f"{cell.replace('/', '__')}.pt"


def _load(args: argparse.Namespace, cell: str) -> torch.nn.Module:
    path = _model_path(args, cell)
    if not path.exists():
        raise SystemExit(f"{path} not found: train {cell} first (--step train --cells {cell})")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return restore_model(saved["spec"], saved["state"])


def _dataset(args: argparse.Namespace) -> str:
    """What a result JSON names as its data: the data folder and the config whose item text it used."""
    return f"{args.data_dir.name} (ICLRec 5-core), item text: {args.config_file.name}'s"


def _steer_prefix(cell: str) -> str:
    """The file-name prefix of a cell's steering parts (one per query)."""
    return f"steer__{cell.replace('/', '__')}__"


def step_steer(args: argparse.Namespace) -> None:
    """Steer a grounded cell exactly as the job's evaluate stage does (``evaluate.steering``): boost
    the intents matching ``--query`` (by summary, top words or either, ``--match``), the dose-response
    on valid and test, the strength chosen on valid, and with the run's item categories the share
    of top-20 items in ``--category``; plus ten explained recommendations."""
    torch.set_num_threads(args.threads)
    published = Published(args.config)
    data = published.sequences()
    model = _load(args, args.cell)
    rec, evaluation = _settings(published, args)
    split = runs.split(data.sequences, data.n_items, rec, evaluation)
    spec = torch.load(_model_path(args, args.cell), map_location="cpu", weights_only=False)["spec"]
    latents = (artifacts.read_intent_set(published["judge"]).latents if spec["intent_set"] == "judged"
               else np.arange(model.n_intents))  # grounded-all: intent i is SAE latent i
    summaries = artifacts.read_summaries(published["judge"])
    texts = artifacts.read_item_texts(published["prepare"], data.n_items)
    cfg = dataclasses.replace(evaluation, steering_query=args.query, steering_category=args.category,
                              steering_match=args.match, steering_strengths=args.strengths, top_n=20)
    words = artifacts.read_latent_words(published["judge"]) if args.match != "summaries" else None
    study = steering(model, {"name": args.cell, "spec": spec}, split.valid, split.test, latents, summaries, texts,
                     cfg, artifacts.read_item_categories(published["prepare"]), words)
    path = args.parts / f"{_steer_prefix(args.cell)}{args.query.replace(' ', '_')}.json"
    provenance = {"cell": args.cell, "command": " ".join(["python", *sys.argv]), "commit": git_commit()}
    if "skipped" in study:
        path.write_text(json.dumps({**provenance, **study}, indent=2))
        raise SystemExit(f"{args.cell}: {study['skipped']} (wrote {path})")
    names = [summaries.get(int(l)) for l in latents]
    users = np.random.default_rng(0).choice(len(split.test), size=10, replace=False)
    out = explain_grounded(model, split.test.inputs[users], split.test.lengths[users], 3, 3)
    examples = []
    for row, user in enumerate(users):
        history = split.test.inputs[user][:split.test.lengths[user]].tolist()
        examples.append({"user": int(split.test.users[user]), "last_items": [texts[i] for i in history[-3:]],
                         "recommended": [{"item": texts[int(item)], "intent_share": float(out["intent_share"][row, j]),
                                          "intents": [{"summary": names[int(i)], "contribution": float(c)}
                                                      for i, c in zip(out["intents"][row, j], out["contributions"][row, j])
                                                      if i >= 0]}
                                         for j, item in enumerate(out["items"][row])]})
    result = {**provenance, **study, "examples": examples}
    path.write_text(json.dumps(result, indent=2))
    print(f"{args.cell}: steering toward {len(study['matched_intents'])} intents matching {args.query!r} "
          f"by {args.match} ({study['items_carrying']} items carry one)"
          + (f"; category {study['category']!r}: {study['category_items']} items" if "category" in study else ""))
    print(f"{'strength':>8} {'carrying':>9} {'category':>9} {'NDCG@20':>8} {'HR@20':>7} {'changed':>8}")
    for r in study["dose_response"]:
        print(f"{r['strength']:8.2f} {r['carrying_share']:9.4f} {r.get('category_share', float('nan')):9.4f} "
              f"{r['ndcg@20']:8.4f} {r['hr@20']:7.4f} {r['users_changed']:8.3f}")
    print(f"chosen on valid (at most 1 % of valid NDCG@20): {study['within_1pct_cost']}\nwrote {path}")


def step_steering(args: argparse.Namespace) -> None:
    """Every query steered on ``--cell`` (its ``--step steer`` parts) in one JSON, a line per query."""
    parts = [json.loads(p.read_text()) for p in sorted(args.parts.glob(f"{_steer_prefix(args.cell)}*.json"))]
    if not parts:
        raise SystemExit(f"no steering of {args.cell} in {args.parts}: run --step steer --cell {args.cell} first")
    rows = [{**steering_row(part), "matched_by": part.get("matched_by"), "command": part.get("command"),
             "commit": part.get("commit")} for part in parts]
    rises = [r["category_share_rise"] for r in rows if r.get("category_share_rise") is not None]
    out = {"dataset": _dataset(args), "cell": args.cell,
           "command": " ".join(["python", *sys.argv]), "commit": git_commit(), "steering": rows,
           "steering_queries_rising_20pct": sum(r >= 0.2 for r in rises)}
    args.steering_out.write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(f"{r['query']!r:14} -> {r.get('category')!r:14} strength {r.get('strength')} valid cost "
              f"{r.get('valid_cost')} category share {r.get('category_share_before')} -> "
              f"{r.get('category_share_after')} {r.get('skipped', '')}")
    print(f"{out['steering_queries_rising_20pct']} of {len(rows)} queries rise by 20 % or more; wrote {args.steering_out}")


def step_assess(args: argparse.Namespace) -> None:
    """Test the saved ``--cells`` once each and compare them exactly as the job's evaluate stage does
    (``saerec.rec.comparisons.assess``): the model chosen by mean valid NDCG@20 over seeds, the
    models it ties with, paired bootstrap intervals of per-user NDCG@20 (seeds pooled per user), on
    valid and test, and the test metrics by popularity of the held-out item."""
    torch.set_num_threads(args.threads)
    published = Published(args.config)
    data = published.sequences()
    rec, evaluation = _settings(published, args)
    split = runs.split(data.sequences, data.n_items, rec, evaluation)
    parts = {cell: json.loads(part_path(args.parts, cell).read_text()) for cell in args.cells
             if part_path(args.parts, cell).exists()}
    missing = [cell for cell in args.cells if cell not in parts]
    if missing:
        raise SystemExit(f"not trained yet: {', '.join(missing)} (--step train --cells {' '.join(missing)})")
    cells = [({"name": cell, "variant": row["variant"], "seed": row["seed"], "best_epoch": row["best_epoch"],
               "epochs": row["epochs"], "mean_epoch_seconds": row["mean_epoch_seconds"], "valid": row["selection"]},
              _load(args, cell)) for cell, row in parts.items()]
    users = np.asarray(data.users)[split.test.users]
    _, assessed = assess(cells, split, users, data.n_items, evaluation.ks, evaluation.mask_history,
                         also_compare=[tuple(args.pair)])
    dataset = args.data_dir.name.lower()
    result = {"dataset": _dataset(args),
              "protocol": evaluation.protocol, "command": " ".join(["python", *sys.argv]), "commit": git_commit(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "trained_by": {cell: {"upstream": row.get("upstream"), "wall_seconds": row["wall_seconds"],
                                    "threads": row["threads"], "settings": row["settings"]["rec"]}
                             for cell, row in parts.items()},
              "selected_on_valid": assessed["selection"]["selected"],
              "best_epochs": {name: [row["best_epoch"] for row in parts.values() if row["variant"] == name]
                              for name in assessed["summary"]},
              **assessed, "anchors": {**ANCHORS.get(dataset, {}), **({"paper": PAPER} if dataset == "beauty" else {})}}
    args.assess_out.write_text(json.dumps(result, indent=1) + "\n")
    selection = assessed["selection"]
    print(f"{'model':12} {'seeds':>5} {'valid N@20':>16} " + " ".join(f"{'test ' + m:>16}" for m in METRICS))
    def shown(found: dict[str, Any]) -> str:
        return f"{found['mean']:.4f}" + (f"±{found['std']:.4f}" if found["std"] is not None else "")

    for name, s in assessed["summary"].items():
        cells = " ".join(f"{shown(s['test'][m]):>16}" for m in METRICS)
        print(f"{name:12} {len(s['seeds']):5d} {shown(s['valid']):>16} {cells}")
    print(f"chosen on valid: {selection['selected']} (ties: {[t['model'] for t in selection['ties']] or 'none'})")
    for c in assessed["comparisons"]:
        for split_name in ("valid", "test"):
            found = c[split_name]
            print(f"{c['a']} - {c['b']} {split_name} {c['metric']}: {found['difference']:+.4f} "
                  f"[{found['low']:+.4f}, {found['high']:+.4f}] over {found['users']} users")
    print(f"wrote {args.assess_out}")


def _beats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Whether ``a``'s mean beats ``b``'s by more than 2 sample std (the larger of the two) on every
    metric; never with a single seed on either side (no spread, so no claim: margins are None)."""
    seeds = [a[METRICS[0]]["n"], b[METRICS[0]]["n"]]
    if min(seeds) < 2:
        return {"all_beyond_2std": False, "margin_minus_2std": {m: None for m in METRICS}, "seeds": seeds}
    margins = {m: a[m]["mean"] - b[m]["mean"] - 2 * max(a[m]["std"], b[m]["std"]) for m in METRICS}
    return {"all_beyond_2std": all(v > 0 for v in margins.values()), "margin_minus_2std": margins, "seeds": seeds}


def step_report(args: argparse.Namespace) -> None:
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows = {**earlier.get("runs", {}), **read_parts(args.parts)}  # cells of earlier sessions stay, new parts win
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in rows.values():
        by_variant.setdefault(row["variant"], []).append(row)
    summary = {}
    for name in [n for n in NAMES if n in by_variant]:
        runs = sorted(by_variant[name], key=lambda r: r["seed"])
        summary[name] = {"label": label(name), "seeds": [r["seed"] for r in runs],
                         "best_epochs": [r["best_epoch"] for r in runs], "epochs": [r["epochs"] for r in runs],
                         "n_intents": sorted({r["n_intents"] for r in runs}),
                         "epoch_seconds": float(np.mean([r["mean_epoch_seconds"] for r in runs])),
                         "valid_ndcg@20": float(np.mean([r["selection"]["ndcg@20"] for r in runs])),
                         **mean_std(runs)}
    grounded = [n for n in summary if variant(n).grounded and variant(n).intent_set in ("judged", "all")]
    best = max(grounded, key=lambda n: summary[n]["valid_ndcg@20"], default=None)
    targets: dict[str, Any] = {"best_grounded_on_valid": best}
    if "sasrec" in summary:  # every grounded variant, not only the best on valid (they are close there)
        targets["vs_sasrec"] = {n: _beats(summary[n], summary["sasrec"]) for n in summary
                                if variant(n).model in ("grounded", "dense-text")}
    if "grounded" in summary and "grounded-random" in summary:
        targets["judged_vs_random_profiles"] = _beats(summary["grounded"], summary["grounded-random"])
    if best and "dense" in summary:
        targets["best_grounded_minus_dense"] = {m: summary[best][m]["mean"] - summary["dense"][m]["mean"] for m in METRICS}
    if best:
        targets["best_grounded_minus_bsarec"] = {m: summary[best][m]["mean"] - BSAREC[m] for m in METRICS}
    new_steering = [json.loads(p.read_text()) for p in sorted(args.parts.glob("steer__*.json"))]
    steering = {(s["cell"], s["query"]): s for s in [*earlier.get("steering", []), *new_steering]}
    examples = new_steering[0]["examples"] if new_steering else earlier.get("example_explanations", [])
    out = {"dataset": "Amazon Beauty (ICLRec 5-core, item titles as text)", "protocol": "strict",
           "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "summary": summary, "targets": targets, "runs": rows,
           "steering": [{k: s[k] for k in s if k != "examples"} for s in steering.values()],
           "example_explanations": examples,
           "bsarec": BSAREC, "paper": PAPER, "commit": git_commit(), "commands": [*earlier.get("commands", []),
                                                          *[c for c in args.commands or [] if c not in earlier.get("commands", [])]]}
    out["sae_sizes"] = _sae_sizes(args, earlier.get("sae_sizes", {}), rows)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"{'variant':18} {'seeds':>5} {'intents':>8} {'best ep':>9} {'s/ep':>5} " + " ".join(f"{m:>15}" for m in METRICS))
    for name, s in summary.items():
        cells = " ".join(f"{s[m]['mean']:.4f}±{s[m]['std']:.4f}" if s[m]["std"] is not None else f"{s[m]['mean']:.4f}"
                         for m in METRICS)
        print(f"{name:18} {len(s['seeds']):5d} {','.join(map(str, s['n_intents'])):>8} "
              f"{','.join(map(str, s['best_epochs'])):>9} {s['epoch_seconds']:5.0f} {cells}")
    print(f"{'BSARec (published)':18} " + " " * 31 + " ".join(f"{BSAREC[m]:15.4f}" for m in METRICS))
    print(json.dumps(targets, indent=2))
    print(f"\nSAE size study, {SIZE_VARIANT} (selection on valid NDCG@20)\n{'latents':>8} {'seeds':>5} "
          f"{'valid N@20':>10} {'test N@20':>10} {'test H@20':>10} {'best ep':>8}")
    for size, cells in out["sae_sizes"].items():
        runs = list(cells.values())
        print(f"{size:>8} {len(runs):5d} {np.mean([r['selection']['ndcg@20'] for r in runs]):10.4f} "
              f"{np.mean([r['test']['ndcg@20'] for r in runs]):10.4f} {np.mean([r['test']['hr@20'] for r in runs]):10.4f} "
              f"{','.join(str(r['best_epoch']) for r in runs):>8}")
    print(f"wrote {args.out}")


SIZE_VARIANT = "grounded-all"  # reads every latent, so it sees the whole dictionary


def _sae_sizes(args: argparse.Namespace, earlier: dict[str, dict[str, Any]],
               main_rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``SIZE_VARIANT``'s cells by dictionary size: the main chain's (its size is the sizing rule's)
    and every ``rec-parts/sae<N>`` folder's; earlier sessions' cells stay unless trained again."""
    sizes: dict[str, dict[str, Any]] = {k: dict(v) for k, v in earlier.items()}
    for folder in sorted((args.work_dir / "rec-parts").glob("sae*")):
        for cell, row in read_parts(folder).items():
            if row["variant"] == SIZE_VARIANT:
                sizes.setdefault(str(row["n_intents"]), {})[cell] = row
    for cell, row in main_rows.items():
        if row["variant"] == SIZE_VARIANT:
            sizes.setdefault(str(row["n_intents"]), {}).setdefault(cell, row)
    return dict(sorted(sizes.items(), key=lambda kv: int(kv[0])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", choices=("chain", "train", "steer", "steering", "report", "assess"), required=True)
    add_beauty_args(p)
    p.add_argument("--parts", type=Path, default=None, help="per-cell parts (default: work dir/rec-parts)")
    p.add_argument("--cells", nargs="+", default=["sasrec/0", "grounded/0"], help="variant/seed ...")
    p.add_argument("--cell", default="grounded/0", help="the trained grounded cell to steer")
    p.add_argument("--query", default="skin", help="steer toward the intents whose summary (or top words) has this")
    p.add_argument("--category", default=None,
                   help="--step steer: the item category the query targets (default: the category named like it)")
    p.add_argument("--match", choices=("summaries", "words", "both"), default="summaries",
                   help="--step steer: match the query in the intents' summaries, top words or either")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0])
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--commands", nargs="*", help="the commands that produced the parts, stored in the JSON")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rec_beauty.json")
    p.add_argument("--pair", nargs=2, default=["grounded", "sasrec"], metavar=("A", "B"),
                   help="--step assess: also compare A - B paired over users, whichever model valid chooses")
    p.add_argument("--steering-out", type=Path, default=REPO / "bench" / "results" / "steering_beauty.json",
                   help="--step steering: every query steered on --cell, one JSON")
    p.add_argument("--assess-out", type=Path, default=REPO / "bench" / "results" / "headline_beauty.json")
    p.add_argument("--config-file", type=Path, default=REPO / "configs" / "beauty.yaml",
                   help="the job config the chain and cells use, e.g. configs/beauty-titles.yaml, or "
                        "configs/sports.yaml with --data-dir at the Sports folder")
    p.add_argument("--sae-latents", type=int, default=None,
                   help="the SAE size study: a run with this many SAE latents (chain, train, steer)")
    args = p.parse_args()
    check_beauty_args(args)
    if args.sae_latents is not None and (args.sae_latents < 2 or args.step == "report"):
        raise SystemExit("--sae-latents takes a size >= 2, with --step chain, train or steer "
                         "(the report covers every size)")
    args.config = beauty_config(args.data_dir, args.work_dir, sized_overrides(args.sae_latents), args.config_file)
    args.parts = args.parts or args.work_dir / "rec-parts" / (f"sae{args.sae_latents}" if args.sae_latents else "")
    if args.step == "chain":
        seed_sized_run(beauty_config(args.data_dir, args.work_dir, config_file=args.config_file), args.config)
        run_chain(args.config)
    else:
        {"train": step_train, "steer": step_steer, "steering": step_steering, "report": step_report,
         "assess": step_assess}[args.step](args)


if __name__ == "__main__":
    main()
