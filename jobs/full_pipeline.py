"""Run the SAERec pipeline: prepare -> embed -> train_sae -> explain -> judge -> profile -> train_rec
-> evaluate -> sweep -> report.

Locally (``python jobs/full_pipeline.py``) it starts Ray on 127.0.0.1 and runs the demo with local
storage; on a cluster (``ray job submit -- python jobs/full_pipeline.py --config ...``) it joins the
cluster. Stages whose inputs and config are unchanged since their last published run are skipped.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saerec.config import ConfigError, load_config  # noqa: E402
from saerec.data.inputs import check_inputs  # noqa: E402
from saerec.data.records import DataError  # noqa: E402
from saerec.intents.models import check_models  # noqa: E402
from saerec.logs import show_job_messages  # noqa: E402
from saerec.pipeline import Runner, StageError, summarise  # noqa: E402
from saerec.runlock import RunLock, RunLockError  # noqa: E402
from saerec.runtime import RayStartError, cluster_address, init_ray  # noqa: E402
from saerec.stages import STAGE_ORDER, load_stage  # noqa: E402
from saerec.storage import Store, StorageError  # noqa: E402

KNOWN_ERRORS = (ConfigError, DataError, RayStartError, RunLockError, StageError, StorageError)
INTERRUPTED = "interrupted; published stages are kept, re-run to resume"
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
log = logging.getLogger("saerec.job")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python jobs/full_pipeline.py --config configs/beauty.yaml "
               "--set data.path=/data/beauty --until embed")
    parser.add_argument("--config", default=str(DEMO_CONFIG),
                        help="YAML run config (default: the demo, configs/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set sae.k=16 (repeatable)")
    parser.add_argument("--stages", help=f"comma-separated stages to run (of: {', '.join(STAGE_ORDER)})")
    parser.add_argument("--until", choices=STAGE_ORDER, help="run the stages up to and including this one")
    parser.add_argument("--force", action="store_true", help="re-run the selected stages even if published")
    parser.add_argument("--wait-lock", action="store_true",
                        help="if another job holds this run, wait for it to finish instead of failing")
    return parser.parse_args(argv)


def select_stages(stages: str | None, until: str | None) -> list[str]:
    """The stages to run, in pipeline order; a selection that leaves none is an error, not a no-op."""
    names = list(STAGE_ORDER)
    if until:
        names = names[: names.index(until) + 1]
    if stages is not None:
        wanted = [s.strip() for s in stages.split(",") if s.strip()]
        if not wanted:
            raise ConfigError(f"--stages {stages!r} names no stage; stages are: {', '.join(STAGE_ORDER)}")
        unknown = [s for s in wanted if s not in STAGE_ORDER]
        if unknown:
            raise ConfigError(f"--stages: unknown stage {unknown[0]!r}; stages are: {', '.join(STAGE_ORDER)}")
        names = [s for s in names if s in wanted]
        if not names:
            raise ConfigError(f"--stages {','.join(wanted)} with --until {until} selects no stage: "
                              f"{'they come' if len(wanted) > 1 else 'it comes'} after {until}; drop --until "
                              "or name a stage up to it")
    return names


def _interrupted(exc: BaseException) -> bool:
    """Whether Ctrl-C caused ``exc``: a KeyboardInterrupt, or an error Ray raised while handling one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    show_job_messages()
    lock: RunLock | None = None
    try:
        cfg = load_config(args.config, args.overrides)
        names = select_stages(args.stages, args.until)
        check_models(cfg, names)
        store = Store(cfg.storage.uri, cfg.storage.endpoint_url)
        if cfg.rec.from_study is not None:  # before the storage check, which creates the run's storage
            from saerec.tuning import with_study  # imports torch, so only when a study is read

            cfg = with_study(cfg, store)
            log.info(f"rec.from_study={cfg.rec.from_study}: per-model settings {cfg.rec.tuned}")
        store.check()
        log.info(f"saerec run {cfg.run.name!r}: stages {', '.join(names)}; outputs in "
                 f"{store.uri(store.join(cfg.run.name))}")
        lock = RunLock(store, cfg.run.name)  # assigned before acquire: a Ctrl-C inside it still releases
        lock.acquire(wait=args.wait_lock)
        runner = Runner(cfg, store)
        if "prepare" in names and (args.force or not runner.is_published(load_stage("prepare"))):
            check_inputs(cfg.data)  # seconds, where Ray's start-up takes tens of them
        log.info(init_ray(cluster_address(cfg.ray.address), cfg.ray.num_cpus))
        for name in names:
            lock.check()
            start = time.time()
            manifest = runner.run_stage(load_stage(name), force=args.force)
            if manifest.get("skipped"):
                log.info(f"[{name}] skipped: published output matches (use --force to re-run)")
            else:
                log.info(f"[{name}] done in {time.time() - start:.1f}s: {summarise(manifest['metrics'])}")
    except BaseException as exc:
        if _interrupted(exc):
            log.error(INTERRUPTED)
            return 130
        if isinstance(exc, KNOWN_ERRORS):
            log.error(f"error: {exc}")
            return 2
        raise
    finally:
        if lock is not None:
            lock.release()
    log.info("all selected stages are published.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
