"""Ray Tune trials of the sweep: the trial function, its resumable state, and the Tune run of a grid.

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

A trial trains through ``saerec.rec.runs.train_run``, the same path as train_rec, with the same
``rec`` and ``evaluate`` sections; only the trial's variant and k differ per study point. The grid
and the tables of results are ``saerec.tuning``'s.

Nothing here knows about the run's storage layout: the caller passes paths and a pyarrow filesystem.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pyarrow.fs as pafs
import torch
from ray import tune

from saerec.rec import metrics, runs
from saerec.rec.grounded import ItemProfiles
from saerec.rec.variants import variant
from saerec.tuning import SearchSpec, TrialSpec

if TYPE_CHECKING:
    from saerec.config import EvaluateSection, RecSection

log = logging.getLogger(__name__)
FINISHED = "trial_finished"  # a search trial's own end marker: Tune fills its reserved "done" key itself


@dataclass(frozen=True)
class SweepData:
    """What every trial reads: per-user item sequences (ids from 1), the named intent matrices and,
    for the grounded variants, the items' profiles over them (same keys)."""

    sequences: list[np.ndarray]
    n_items: int
    intents: dict[str, torch.Tensor]
    profiles: dict[str, ItemProfiles] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class TrialResources:
    """How a trial runs (not what it computes): its torch threads and whether it uses a GPU."""

    threads: int = 1
    use_gpu: bool = False


@dataclass(frozen=True)
class TrialStates:
    """One resumable training state per trial, as ``{directory}/{trial_id}.pt`` on a pyarrow filesystem."""

    filesystem: Any
    directory: str

    def path(self, trial_id: str) -> str:
        return posixpath.join(self.directory, f"{trial_id}.pt")

    def load(self, trial_id: str) -> dict[str, Any] | None:
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


def _train(trial_id: str, name: str, seed: int, intents_key: str | None, rec: RecSection, data: SweepData,
           evaluate: EvaluateSection, states: TrialStates, resources: TrialResources, marker: str
           ) -> tuple[runs.TrainedRun, dict[str, Any] | None, Any, str]:
    """What both kinds of trial do to train: threads and device, the split, the trial's intents and
    profiles, resuming from its saved state and saving it, and a Tune report per epoch with ``marker``
    False. Returns the trained run, the state it resumed from, the split and the device."""
    torch.set_num_threads(resources.threads)
    device = "cuda" if resources.use_gpu and torch.cuda.is_available() else "cpu"
    split = runs.split(data.sequences, data.n_items, rec, evaluate)
    intents = None if intents_key is None else data.intents.get(intents_key)
    if intents_key is not None and intents is None:
        raise KeyError(f"trial {trial_id}: intent set {intents_key!r} was not provided")
    resume = states.load(trial_id)

    def on_epoch(epoch: dict[str, Any], snapshot: dict[str, Any] | None) -> None:
        if snapshot is not None:
            states.save(trial_id, snapshot)
        tune.report({marker: False, **epoch})

    profiles = data.profiles.get(intents_key) if variant(name).grounded else None
    trained = runs.train_run(name, seed, rec, evaluate, split, intents, n_items=data.n_items, profiles=profiles,
                             device=device, resume=resume, on_epoch=on_epoch)
    return trained, resume, split, device


def train_trial(config: dict[str, Any], data: SweepData, rec: RecSection, evaluate: EvaluateSection,
                states: TrialStates, resources: TrialResources = TrialResources()) -> None:
    """Tune function trainable: train one variant (resuming from its saved state), then test once.

    ``rec`` holds the sweep's epochs and patience; the trial sets its own variant and k on it, so the
    section's checks apply to the model this trial trains.
    """
    spec = TrialSpec(**config["trial"])
    rec = dataclasses.replace(rec, models=[spec.variant], k=spec.k)
    trained, resume, split, device = _train(spec.trial_id, spec.variant, spec.seed, spec.intents_key, rec, data,
                                            evaluate, states, resources, "done")
    result = trained.result
    test = metrics.evaluate(trained.model, split.test, runs.selection_ks(evaluate.ks), evaluate.mask_history,
                            device=device)
    tune.report({
        "done": True,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "resumed_from_epoch": resume["epoch"] if resume else 0,
        "train_seconds": float(sum(h["train_seconds"] for h in result.history)),
        "n_intents": int(getattr(trained.model, "n_intents", 0)),
        **{f"valid_{k}": v for k, v in result.best_valid.items()},
        **{f"test_{k}": v for k, v in test.items()},
    })


def train_search_trial(config: dict[str, Any], data: SweepData, rec: RecSection, evaluate: EvaluateSection,
                       states: TrialStates, resources: TrialResources = TrialResources()) -> None:
    """Tune function trainable of the search study: train one model at one configuration (resuming from
    its saved state), reporting every epoch's valid metrics so the scheduler can stop it early. It
    reads no test data: the study chooses on valid, and train_rec and evaluate test the choice."""
    spec = SearchSpec(**config["trial"])
    rec = dataclasses.replace(rec, models=[spec.model], **dict(spec.params))
    result = _train(spec.trial_id, spec.model, spec.seed, spec.intents_key, rec, data, evaluate, states, resources,
                    FINISHED)[0].result
    tune.report({FINISHED: True, "epochs": len(result.history), "best_epoch": result.best_epoch,
                 "train_seconds": float(sum(h["train_seconds"] for h in result.history)),
                 f"best_{runs.SELECT_METRIC}": result.best_valid[runs.SELECT_METRIC],
                 **{f"valid_{k}": v for k, v in result.best_valid.items()}})


def trainable(data: SweepData, rec: RecSection, evaluate: EvaluateSection, states: TrialStates,
              resources: TrialResources, search: bool = False) -> Callable[..., None]:
    """``train_trial`` (or, with ``search``, ``train_search_trial``) with the sweep's data put once in
    Ray's object store, as Tune runs it."""
    return tune.with_parameters(train_search_trial if search else train_trial, data=data, rec=rec,
                                evaluate=evaluate, states=states, resources=resources)


def asha(grace_epochs: int, max_epochs: int) -> Any:
    """Asynchronous successive halving on each epoch's best valid score so far: at rungs of
    ``grace_epochs`` times powers of 3 epochs, a trial in the bottom two thirds of those that reached
    the rung stops; the rest go on to early stopping or ``max_epochs``."""
    return tune.schedulers.ASHAScheduler(time_attr="training_iteration", metric=f"best_{runs.SELECT_METRIC}",
                                         mode="max", max_t=max_epochs + 1, grace_period=grace_epochs,
                                         reduction_factor=3)


def _spec(config: dict[str, Any]) -> TrialSpec | SearchSpec:
    """The spec a Tune trial runs, from its config (search trials carry a ``params`` entry)."""
    trial = config["trial"]
    return SearchSpec(**trial) if "params" in trial else TrialSpec(**trial)


def trial_progress(total: int) -> Any:
    """A Tune callback printing one line per finished or failed trial: Tune's own reporter is
    off (``verbose=0``) because its status tables bury the job's stage lines."""
    class TrialProgress(tune.Callback):
        def __init__(self) -> None:
            self.finished = 0

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.finished += 1
            result = trial.last_result or {}
            spec = _spec(trial.config)
            if isinstance(spec, SearchSpec):
                how = "finished" if result.get(FINISHED) else "stopped early"
                log.info(f"[sweep] trial {self.finished}/{total} {spec.trial_id}: {how} after "
                         f"{result.get('training_iteration', '?')} reports, best valid ndcg@20 "
                         f"{result.get('best_ndcg@20', float('nan')):.4f}")
                return
            log.info(f"[sweep] trial {self.finished}/{total} {spec.trial_id}: {result.get('epochs', '?')} epochs, "
                  f"test ndcg@20 {result.get('test_ndcg@20', float('nan')):.4f}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log.warning(f"[sweep] trial {_spec(trial.config).trial_id} failed; Tune retries it from its "
                  "saved state up to sweep.max_failures times")

    return TrialProgress()


@dataclass(frozen=True)
class SweepOutcome:
    """Finished trials' final metrics, trials that failed for good, and whether the sweep was resumed."""

    rows: list[dict[str, Any]]
    failed: list[tuple[str, str]]
    restored: bool


def run_sweep(trainable: Callable[..., None], specs: Sequence[TrialSpec | SearchSpec], *, storage_path: str,
              storage_filesystem: Any, name: str, concurrency: int, resources: dict[str, float],
              max_failures: int = 2, scheduler: Any = None) -> SweepOutcome:
    """Run the grid on Ray Tune, or continue it when an earlier driver left its state in storage.

    Trials that crash (a killed worker, a lost node) are retried up to ``max_failures`` times,
    each retry resuming from the trial's saved state; one that still fails is reported in
    ``failed``, not silently dropped. With a ``scheduler`` (the search study's ASHA), a trial it
    stops is a result: its row holds its last report and ``stopped_early``.
    """
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
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True, scheduler=scheduler),
            run_config=tune.RunConfig(
                name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                failure_config=tune.FailureConfig(max_failures=max_failures), verbose=0,
                callbacks=[trial_progress(len(specs))]))
    grid = tuner.fit()
    studies = {s.trial_id: getattr(s, "studies", ()) for s in specs}
    rows, failed = [], []
    for result in grid:
        spec = _spec(result.config)
        metrics = result.metrics or {}
        finished = bool(metrics.get(FINISHED if isinstance(spec, SearchSpec) else "done"))
        stopped = scheduler is not None and result.error is None and bool(metrics) and not finished
        if not stopped and (result.error is not None or not finished):
            failed.append((spec.trial_id, str(result.error or "it stopped before reporting its test metrics")))
            continue
        rows.append({**metrics, **dataclasses.asdict(spec), "trial_id": spec.trial_id, "stopped_early": stopped,
                     "studies": list(studies.get(spec.trial_id, ()))})
    return SweepOutcome(rows=rows, failed=failed, restored=restored)


def _identity(spec: TrialSpec) -> dict[str, Any]:
    """A trial's settings without its study labels, which are bookkeeping, not a parameter."""
    return {k: v for k, v in dataclasses.asdict(spec).items() if k != "studies"}
