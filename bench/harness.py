"""What the Beauty benchmarks share: the job's own stages as inputs, and one JSON part per trained cell.

The chain is the job itself (``configs/beauty.yaml`` with ``data.path`` and ``storage.uri``
pointed at the benchmark's folders), so a benchmark trains on exactly what a user's run
publishes. Cells train through the job's training path (``saerec.rec.runs.train_run``) with the
intent sets and item profiles built the way train_rec builds them (``saerec.rec.variants``). A
finished cell's part is never trained again, so a killed benchmark resumes where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.provenance import git_commit
from bench.shared_data import shared_data_dir
from saerec import artifacts, restore
from saerec.config import Config, EvaluateSection, RecSection, load_config
from saerec.pipeline import Runner, StageInput
from saerec.rec import evaluate, stats
from saerec.rec.runs import selection_ks, train_run
from saerec.rec.variants import build_inputs, variant
from saerec.runtime import init_ray
from saerec.storage import Store

REPO = Path(__file__).resolve().parents[1]
WORK_DIR = REPO / "saerec-output" / "bench-beauty"
CHAIN = ("prepare", "embed", "train_sae", "explain", "judge", "profile")
METRICS = ("hr@10", "hr@20", "ndcg@10", "ndcg@20")


# Published strict-protocol numbers on the same ICLRec splits, no text: TV-Rec's output/*_best.log,
# BSARec's paper. Keyed by dataset (the folder name of its data), then model.
ANCHORS = {"beauty": {"tv-rec": {"hr@10": 0.1017, "hr@20": 0.1403, "ndcg@10": 0.0608, "ndcg@20": 0.0705},
                      "bsarec": {"hr@10": 0.1008, "hr@20": 0.1373, "ndcg@10": 0.0611, "ndcg@20": 0.0703}},
           "sports": {"tv-rec": {"hr@10": 0.0635, "hr@20": 0.0880, "ndcg@10": 0.0363, "ndcg@20": 0.0425}}}


def beauty_config(data_dir: Path, work_dir: Path, overrides: list[str] | None = None,
                  config_file: Path = REPO / "configs" / "beauty.yaml") -> Config:
    """The job's config for a benchmark (``configs/beauty.yaml`` unless another dataset's or text's
    config is named), its data at ``data_dir`` and its storage under ``work_dir/pipeline``."""
    return load_config(config_file,
                       [f"data.path={data_dir.resolve()}", f"storage.uri={(work_dir / 'pipeline').resolve()}",
                        *(overrides or [])])


SEEDED_STAGES = ("prepare", "embed")  # what an SAE size study shares with the main chain


def sized_overrides(n_latents: int | None, judge_latents: int | None = 256) -> list[str]:
    """The config of an SAE size study: its own run (``beauty-sae<N>``) with ``sae.n_latents=N``;
    the judge reads only the ``judge_latents`` most frequent latents (None: every one), since
    the study's variants read every latent and a full judge of thousands would take hours."""
    if n_latents is None:
        return []
    return [f"sae.n_latents={n_latents}", f"run.name=beauty-sae{n_latents}",
            *([f"judge.max_latents={judge_latents}"] if judge_latents else [])]


def seed_sized_run(main: Config, sized: Config, stages: tuple[str, ...] = SEEDED_STAGES) -> None:
    """Copy the main chain's published ``stages`` (prepare and embed) into a sized run, so that it
    re-runs only what follows (a run folder is relocatable; the fingerprints match)."""
    if sized.run.name == main.run.name:
        return
    main_store, sized_store = Store(main.storage.uri), Store(sized.storage.uri)
    for stage in stages:
        source, target = Path(main_store.join(main.run.name, stage)), Path(sized_store.join(sized.run.name, stage))
        if target.exists():
            continue
        if Runner(main, main_store).manifest(stage) is None:
            raise SystemExit(f"stage {stage} of run {main.run.name} is not published: run --step chain first")
        shutil.copytree(source, target)


def run_chain(cfg: Config, stages: tuple[str, ...] = CHAIN) -> None:
    """Run (or reuse) the job's stages up to the profiles."""
    init_ray(None, None)
    store = Store(cfg.storage.uri)
    store.check()
    runner = Runner(cfg, store)
    for name in stages:
        start = time.time()
        manifest = runner.run_stage(importlib.import_module(f"saerec.stages.{name}").STAGE)
        print(f"[{name}] {'reused' if manifest.get('skipped') else f'{time.time() - start:.0f}s'}", flush=True)


class Published:
    """The chain's published stages, opened on first use (a SASRec cell needs prepare only)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = Store(cfg.storage.uri)
        self.runner = Runner(cfg, self.store)
        self._open: dict[str, StageInput] = {}

    def __getitem__(self, stage: str) -> StageInput:
        if stage not in self._open:
            manifest = self.runner.manifest(stage)
            if manifest is None:
                raise SystemExit(f"stage {stage} is not published under {self.cfg.storage.uri}: run --step chain first")
            self._open[stage] = StageInput(self.store, manifest)
        return self._open[stage]

    def upstream(self) -> dict[str, str]:
        """The fingerprint of every published stage read so far: what a cell records as its inputs, so
        cells trained on different chains (another judge, another SAE) can be told apart."""
        return {stage: found.manifest["fingerprint"] for stage, found in sorted(self._open.items())}

    def sequences(self) -> artifacts.Sequences:
        return artifacts.read_sequences(self["prepare"])

    def inputs_of(self, names: list[str], n_items: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The intent sets and item profiles the variants ``names`` read, as train_rec builds them."""
        return build_inputs(names, n_items, seed, restore.sources(self, n_items), self.cfg.rec.kmeans_clusters)


def train_cell(cell: str, name: str, seed: int, rec: RecSection, evaluation: EvaluateSection, split: Any,
               intents: dict[str, torch.Tensor],
               profiles: dict[str, Any], n_items: int, out: Path, extra: dict[str, Any] | None = None,
               save_model: bool = False) -> dict[str, Any]:
    """Train one cell, test it once and write its part (and with ``save_model`` its selected
    weights and spec beside it, ``.pt``, for later steering and explanation)."""
    found = variant(name)
    start = time.time()

    def progress(metrics: dict, _snapshot: dict | None) -> None:
        print(f"{cell} epoch {metrics['epoch']} loss {metrics['loss']:.3f} selection ndcg@20 "
              f"{metrics['valid_ndcg@20']:.4f} ({metrics['train_seconds']:.0f}s)", flush=True)

    trained = train_run(name, seed, rec, evaluation, split, intents.get(found.intent_set), n_items=n_items,
                        profiles=profiles.get(found.intent_set) if found.grounded else None, on_epoch=progress)
    result = trained.result
    row = {"cell": cell, "variant": name, "seed": seed, "best_epoch": result.best_epoch,
           "epochs": len(result.history), "mean_epoch_seconds": result.mean_epoch_seconds,
           "wall_seconds": round(time.time() - start, 1), "n_intents": int(getattr(trained.model, "n_intents", 0)),
           "selection": result.best_valid,
           "test": evaluate(trained.model, split.test, selection_ks(evaluation.ks), evaluation.mask_history),
           "settings": {"rec": dataclasses.asdict(rec), "evaluate": dataclasses.asdict(evaluation)},
           "threads": torch.get_num_threads(), "commit": git_commit(), **(extra or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    if save_model:
        torch.save({"spec": trained.spec, "state": trained.model.state_dict()}, out.with_suffix(".pt"))
    out.write_text(json.dumps(row, indent=2))
    print(json.dumps({k: row[k] for k in ("cell", "best_epoch", "epochs", "test")}), flush=True)
    return row


def read_parts(folder: Path) -> dict[str, dict[str, Any]]:
    """The trained cells' parts (other JSON files in the folder, e.g. steering studies, are not cells)."""
    rows = (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
    return {row["cell"]: row for row in rows if "best_epoch" in row}


def mean_std(rows: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, Any]]:
    """Per test metric over the cells' seeds: mean, sample std (None for one seed) and n."""
    return {m: stats.mean_std([r["test"][m] for r in rows]) for m in metrics}


def spread(values: Any) -> dict[str, Any]:
    """How many scores, their mean and quartiles (None when there are none): detection tables."""
    found = np.array([v for v in values if v is not None], dtype=float)
    return {"latents": int(len(found)), "mean": round(float(found.mean()), 4) if len(found) else None,
            "quartiles": [round(float(q), 3) for q in np.quantile(found, [0.25, 0.5, 0.75])] if len(found) else None}


def part_path(folder: Path, cell: str) -> Path:
    return folder / f"{cell.replace('/', '__')}.json"


def each_cell(cells: list[str], folder: Path, train: Callable[[str, Path], None]) -> None:
    """Train the cells whose part is missing, in order."""
    for cell in cells:
        out = part_path(folder, cell)
        if out.exists():
            print(f"{cell}: done earlier ({out})", flush=True)
            continue
        train(cell, out)


def add_beauty_args(p: argparse.ArgumentParser) -> None:
    """The data and work folders every Beauty benchmark takes (one chain serves them all)."""
    data = shared_data_dir()
    p.add_argument("--data-dir", type=Path, default=data / "beauty" if data else None,
                   help="folder with the ICLRec sequences.txt and items.tsv (default: SAEREC_DATA_DIR/beauty)")
    p.add_argument("--work-dir", type=Path, default=WORK_DIR,
                   help="the job's outputs go to WORK_DIR/pipeline, shared by bench/rec.py and bench/protocol.py")


def check_beauty_args(args: argparse.Namespace) -> None:
    if args.data_dir is None or not (args.data_dir / "sequences.txt").exists():
        raise SystemExit("--data-dir must hold sequences.txt and items.tsv (the ICLRec Beauty layout)")


def steering_row(study: dict[str, Any]) -> dict[str, Any]:
    """One query's steering study (``evaluate.steering``'s output) in a line: the strength chosen on
    valid and what it does on test, or why nothing was steered."""
    row = {"query": study.get("query"), "category": study.get("category"),
           "matched_intents": len(study.get("matched_intents", []))}
    chosen = study.get("within_1pct_cost")
    if "skipped" in study or "category_skipped" in study or not chosen:
        return {**row, "skipped": study.get("skipped") or study.get("category_skipped")
                or "no strength costs at most 1 % of valid NDCG@20"}
    return {**row, "strength": chosen["strength"], "valid_cost": chosen["valid_ndcg@20_cost"],
            "test_cost": chosen["test_ndcg@20_cost"], "category_items": study.get("category_items"),
            "category_share_before": chosen["category_share_before"],
            "category_share_after": chosen["category_share_after"],
            "category_share_rise": chosen["category_share_rise"],
            "valid_dose_response": study["valid_dose_response"], "test_dose_response": study["dose_response"]}
