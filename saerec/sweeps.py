"""Ray Tune sweeps: the study grid, the trial function, and the tables of their results.

One trial trains and tests one recommender variant in the same harness as every other trial
(same split, same seeds, model selection on valid, test read once), so rows are comparable.
The trials' read-only inputs (sequences, intent matrices) go to the object store once
(``tune.with_parameters``).

Resuming: Tune keeps each finished trial's result in its experiment state, and a sweep
restored after its driver died reruns only the unfinished trials. A trial keeps its own
resumable training state in one file (``TrialStates``), rewritten whole after an epoch, so a
rerun trial (after a killed driver, a killed worker or a lost node) continues from its last
saved epoch. Tune's own checkpoints are not used: after a killed driver its experiment state
can name a checkpoint that checkpoint rotation has already deleted, which fails the restore.

Nothing here knows about the run's storage layout: the caller passes paths and a pyarrow filesystem.
"""
from __future__ import annotations

import dataclasses
import io
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

VARIANTS = ("full", "noIde", "noPer", "noPub", "noFus", "noEMA", "kmeans", "random", "sasrec")
STUDIES = ("ablation", "sensitivity", "robustness", "judge")


@dataclass(frozen=True)
class TrialSpec:
    """One point of the grid; ``judge`` is ``""`` for the configured judge."""

    variant: str
    k: int
    review_drop: float
    judge: str
    seed: int
    studies: tuple[str, ...] = ()

    @property
    def trial_id(self) -> str:
        judge = self.judge.replace("/", "_") if self.judge else "judge"
        return f"{self.variant}-k{self.k}-drop{round(self.review_drop * 100)}-{judge}-seed{self.seed}"

    @property
    def intents_key(self) -> str | None:
        """Which intent matrix the trial needs (None: plain SASRec needs none)."""
        return intents_key(self.variant, self.review_drop, self.judge)


def intents_key(variant: str, review_drop: float, judge: str) -> str | None:
    """The intent set a variant reads: judged SAE latents, all SAE latents (noIde), k-means
    centroids, or random vectors shaped like the judged set (the control: does the text matter?)."""
    drop = f"drop{round(review_drop * 100)}"
    if variant == "sasrec":
        return None
    if variant == "kmeans":
        return f"kmeans@{drop}"
    if variant == "noIde":
        return f"all@{drop}"
    if variant == "random":
        return f"random@{drop}@{judge or 'configured'}"
    return f"judged@{drop}@{judge or 'configured'}"


def build_grid(variants: Sequence[str], ks: Sequence[int], review_drops: Sequence[float],
               judges: Sequence[str], seeds: Sequence[int], *, default_k: int,
               default_drop: float) -> list[TrialSpec]:
    """The union of the four studies, each a one-factor sweep around the full model's defaults.

    A trial that belongs to several studies (the full model at the default k, drop and judge
    is in all four) runs once and lists every study it serves. A non-empty ``ks`` or
    ``review_drops`` also gets the default point, so each curve passes through the main model;
    an empty one turns that study off. The judge study always holds the configured judge
    (``""``) beside the listed alternatives.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"sweep.ablations: unknown variant {unknown[0]!r}; allowed: {', '.join(VARIANTS)}")
    if not seeds:
        raise ValueError("sweep.seeds must list at least one seed")
    points: dict[tuple, list[str]] = {}

    def add(study: str, variant: str, k: int, drop: float, judge: str) -> None:
        for seed in seeds:
            studies = points.setdefault((variant, k, float(drop), judge, seed), [])
            if study not in studies:
                studies.append(study)

    for variant in variants:
        add("ablation", variant, default_k, default_drop, "")
    for k in sorted(set(ks) | {default_k}) if ks else []:
        add("sensitivity", "full", k, default_drop, "")
    for drop in sorted(set(review_drops) | {default_drop}) if review_drops else []:
        add("robustness", "full", default_k, drop, "")
    for judge in ["", *judges]:
        add("judge", "full", default_k, default_drop, judge)
    return [TrialSpec(*key, studies=tuple(studies)) for key, studies in points.items()]


@dataclass(frozen=True)
class SweepData:
    """What every trial reads: per-user item sequences (ids from 1) and the named intent matrices."""

    sequences: list[np.ndarray]
    n_items: int
    intents: dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrialSettings:
    """The recommender and optimisation settings shared by all trials.

    A trial saves its state after an epoch once ``checkpoint_seconds`` have passed since its last
    save: a killed trial loses at most that much work, and fast epochs do not flood storage.
    """

    d: int = 64
    blocks: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.5
    ema_beta: float = 0.9
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 20
    ks: tuple[int, ...] = (5, 10, 20)
    select_metric: str = "ndcg@20"
    mask_history: bool = True
    threads: int = 1
    use_gpu: bool = False
    checkpoint_seconds: float = 30.0


@dataclass(frozen=True)
class TrialStates:
    """One resumable training state per trial, as ``{directory}/{trial_id}.pt`` on a pyarrow filesystem."""

    filesystem: Any
    directory: str

    def path(self, trial_id: str) -> str:
        return posixpath.join(self.directory, f"{trial_id}.pt")

    def load(self, trial_id: str) -> dict[str, Any] | None:
        import pyarrow.fs as pafs

        path = self.path(trial_id)
        if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with self.filesystem.open_input_stream(path) as src:
            return torch.load(io.BytesIO(src.read()), map_location="cpu", weights_only=False)

    def save(self, trial_id: str, state: dict[str, Any]) -> None:
        """Write beside, then move into place: a reader never sees half a file."""
        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.path(trial_id)
        self.filesystem.create_dir(self.directory, recursive=True)
        with self.filesystem.open_output_stream(f"{path}.partial") as out:
            out.write(buf.getvalue())
        self.filesystem.move(f"{path}.partial", path)


def build_model(spec: TrialSpec, data: SweepData, settings: TrialSettings) -> torch.nn.Module:
    """The variant's model: SASRec, or SAERec over its intent set with the ablation switches."""
    from saerec.rec import EncoderConfig, IntentConfig, SAERec, SASRec, intent_config_for

    enc = EncoderConfig(n_items=data.n_items, d=settings.d, blocks=settings.blocks, heads=settings.heads,
                        max_len=settings.max_len, dropout=settings.dropout)
    key = spec.intents_key
    if key is None:
        return SASRec(enc)
    if key not in data.intents:
        raise KeyError(f"trial {spec.trial_id}: intent set {key!r} was not provided")
    if spec.variant in ("kmeans", "noIde", "random"):
        icfg = IntentConfig(k=spec.k, ema_beta=settings.ema_beta)
    else:
        icfg = intent_config_for(spec.variant, spec.k, settings.ema_beta)
    return SAERec(enc, data.intents[key], icfg)


def train_trial(config: dict[str, Any], data: SweepData, settings: TrialSettings, states: TrialStates) -> None:
    """Tune function trainable: fit one variant (resuming from its saved state), then test once."""
    from ray import tune

    from saerec.rec import FitConfig, final_test, fit, leave_one_out
    from saerec.rec.training import seed_everything

    spec = TrialSpec(**config["trial"])
    torch.set_num_threads(settings.threads)
    device = "cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu"
    split = leave_one_out(data.sequences, data.n_items, settings.max_len)
    seed_everything(spec.seed)
    model = build_model(spec, data, settings).to(device)
    fit_cfg = FitConfig(lr=settings.lr, weight_decay=settings.weight_decay, batch_size=settings.batch_size,
                        max_epochs=settings.max_epochs, patience=settings.patience,
                        select_metric=settings.select_metric, ks=settings.ks,
                        mask_history=settings.mask_history, seed=spec.seed)
    resume = states.load(spec.trial_id)
    resumed_from = resume["epoch"] if resume else 0
    last_saved = time.monotonic()

    def on_epoch(state: Any, snapshot: dict[str, Any]) -> None:
        nonlocal last_saved
        if time.monotonic() - last_saved >= settings.checkpoint_seconds:
            states.save(spec.trial_id, snapshot)
            last_saved = time.monotonic()
        tune.report({"done": False, **state.history[-1]})

    result = fit(model, split, fit_cfg, settings.max_len, device=device, resume=resume, on_epoch=on_epoch)
    test = final_test(model, result, split, settings.ks, settings.mask_history, device=device)
    tune.report({
        "done": True,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "resumed_from_epoch": resumed_from,
        "train_seconds": float(sum(h["train_seconds"] for h in result.history)),
        "n_intents": int(getattr(model, "n_intents", 0)),
        **{f"valid_{k}": v for k, v in result.best_valid.items()},
        **{f"test_{k}": v for k, v in test.items()},
    })


def trial_progress(total: int) -> Any:
    """A Tune callback printing one line per finished or failed trial: Tune's own reporter is
    off (``verbose=0``) because its status tables bury the job's stage lines."""
    from ray import tune

    class TrialProgress(tune.Callback):
        def __init__(self) -> None:
            self.finished = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.finished += 1
            result = trial.last_result or {}
            spec = TrialSpec(**trial.config["trial"])
            print(f"[sweep] trial {self.finished}/{total} {spec.trial_id}: {result.get('epochs', '?')} epochs, "
                  f"test ndcg@20 {result.get('test_ndcg@20', float('nan')):.4f}", flush=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"[sweep] trial {TrialSpec(**trial.config['trial']).trial_id} failed; Tune retries it from its "
                  "saved state up to sweep.max_failures times", flush=True)

    return TrialProgress()


@dataclass(frozen=True)
class SweepOutcome:
    """Finished trials' final metrics, trials that failed for good, and whether the sweep was resumed."""

    rows: list[dict[str, Any]]
    failed: list[tuple[str, str]]
    restored: bool


def run_sweep(trainable: Callable[..., None], specs: Sequence[TrialSpec], *, storage_path: str,
              storage_filesystem: Any, name: str, concurrency: int, resources: dict[str, float],
              max_failures: int = 2) -> SweepOutcome:
    """Run the grid on Ray Tune, or continue it when an earlier driver left its state in storage.

    Trials that crash (a killed worker, a lost node) are retried up to ``max_failures`` times,
    each retry resuming from the trial's saved state; one that still fails is reported in
    ``failed``, not silently dropped.
    """
    from ray import tune

    experiment = posixpath.join(storage_path, name)
    wrapped = tune.with_resources(trainable, resources)
    restored = tune.Tuner.can_restore(experiment, storage_filesystem=storage_filesystem)
    if restored:
        tuner = tune.Tuner.restore(experiment, trainable=wrapped, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=storage_filesystem)
    else:
        tuner = tune.Tuner(
            wrapped,
            param_space={"trial": tune.grid_search([_identity(s) for s in specs])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                failure_config=tune.FailureConfig(max_failures=max_failures), verbose=0,
                callbacks=[trial_progress(len(specs))]))
    grid = tuner.fit()
    studies = {s.trial_id: s.studies for s in specs}
    rows, failed = [], []
    for result in grid:
        spec = TrialSpec(**result.config["trial"])
        metrics = result.metrics or {}
        if result.error is not None or not metrics.get("done"):
            failed.append((spec.trial_id, str(result.error or "it stopped before reporting its test metrics")))
            continue
        rows.append({**metrics, **dataclasses.asdict(spec), "trial_id": spec.trial_id,
                     "studies": list(studies.get(spec.trial_id, ()))})
    return SweepOutcome(rows=rows, failed=failed, restored=restored)


def results_table(rows: Sequence[dict[str, Any]], ks: Sequence[int]) -> pa.Table:
    """One row per trial, sorted by trial id, with the valid score used for selection and every test metric."""
    from saerec.schemas import sweep_results_schema

    schema = sweep_results_schema(ks)
    ordered = sorted(rows, key=lambda r: r["trial_id"])
    return pa.table({name: [r[name] for r in ordered] for name in schema.names}, schema=schema)


def summary_table(results: pa.Table, ks: Sequence[int]) -> pa.Table:
    """Mean and standard deviation over seeds of every test metric, per study and setting."""
    metrics = [f"test_{m}@{k}" for k in ks for m in ("hr", "ndcg")]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in results.to_pylist():
        for study in row["studies"]:
            key = (study, row["variant"], row["k"], row["review_drop"], row["judge"])
            groups.setdefault(key, []).append(row)
    out: list[dict[str, Any]] = []
    for (study, variant, k, drop, judge), members in sorted(groups.items(), key=lambda kv: _study_order(kv[0])):
        entry: dict[str, Any] = {"study": study, "variant": variant, "k": k, "review_drop": drop,
                                 "judge": judge, "seeds": len(members)}
        for metric in metrics:
            values = np.array([m[metric] for m in members], dtype=np.float64)
            entry[f"{metric}_mean"] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return pa.Table.from_pylist(out)


def _identity(spec: TrialSpec) -> dict[str, Any]:
    """A trial's settings without its study labels, which are bookkeeping, not a parameter."""
    return {k: v for k, v in dataclasses.asdict(spec).items() if k != "studies"}


def _study_order(key: tuple) -> tuple:
    study, variant, k, drop, judge = key
    return (STUDIES.index(study), VARIANTS.index(variant), k, drop, judge)

