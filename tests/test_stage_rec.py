"""train_rec and evaluate through the runner, on the tiny demo, with stand-in embed and judge outputs.

The judge and embed stages are upstream work of their own; here two small stages publish
tables of the same shape (random text vectors, six summarised intents) so the recommender
stages run end to end on real prepare output, real Ray Train, and real S3.
"""
from __future__ import annotations

import re
import signal
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from saerec import artifacts, restore, schemas
from saerec.config import ConfigError, load_config
from saerec.pipeline import Runner, Stage, StageContext, StageInput
from saerec.rec.metrics import POPULARITY_BUCKETS, hr_ndcg, popularity_buckets
from saerec.sae.model import SAEConfig, TopKSAE
from saerec.stages import evaluate, prepare, profile, train_rec
from saerec.storage import Store
from saerec.workers.sae_codes import encode_corpus
from tests.conftest import TINY_DEMO
from tests.test_logs import logged

DIM = 8
LATENTS = [3, 10, 11, 20, 21, 40]
SUMMARIES = ["fragrance and perfume", "acne treatment", "hair repair", "budget picks", "sensitive skin",
             "anti-aging routine"]
WORDS = [["perfume", "scent"], ["pimple", "spots", "acne"], ["repair", "split"], ["cheap", "deal"], ["gentle", "calm", "spots"],
         ["wrinkles", "serum"]]


def _stand_in_embed(ctx: StageContext) -> dict:
    ids = ctx.input("prepare").read_table("corpus", ["text_id"]).column("text_id")
    vectors = np.random.default_rng(0).normal(size=(len(ids), DIM)).astype(np.float32)
    table = pa.table({"text_id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
                      "tokens": pa.array(np.ones(len(ids), dtype=np.int32)),
                      "truncated": pa.array(np.zeros(len(ids), dtype=bool))}, schema=schemas.embedding_table_schema(DIM))
    ctx.output.write_table("embeddings/part-00000.parquet", table)
    return {"texts": len(ids)}


def _stand_in_judge(ctx: StageContext) -> dict:
    vectors = torch.randn(len(LATENTS), DIM, generator=torch.Generator().manual_seed(1))
    artifacts.write_intent_set(ctx.output, artifacts.IntentSet(vectors, np.array(LATENTS)))
    ctx.output.write_table(artifacts.FEATURES.name, pa.table({"latent": LATENTS, "summary": SUMMARIES, "words": WORDS,
                                                                "kept": [True] * len(LATENTS)}))
    return {"kept": len(LATENTS)}


def _stand_in_sae(ctx: StageContext) -> dict:
    torch.manual_seed(2)
    sae = TopKSAE(SAEConfig(d_in=DIM, n_latents=48, k=2, tied=False))
    artifacts.write_sae(ctx.output, *sae.to_bytes())
    return {"n_latents": 48}


def _stand_in_explain(ctx: StageContext) -> dict:
    """Publishes what profile reads of explain: the corpus' SAE codes, by explain's own encoding pass."""
    for _ in encode_corpus(restore.sae(ctx.input("train_sae")), ctx.input("embed"), ctx.output, 256, torch.device("cpu")):
        pass
    return {}


EMBED = Stage(name="embed", run=_stand_in_embed, inputs=("prepare",), sections=("embed",))
SAE = Stage(name="train_sae", run=_stand_in_sae, inputs=("embed",), sections=("sae",))
EXPLAIN = Stage(name="explain", run=_stand_in_explain, inputs=("embed", "train_sae"), sections=("explain",))
JUDGE = Stage(name="judge", run=_stand_in_judge, inputs=("embed",), sections=("judge",))
SMALL = [*TINY_DEMO, "rec.d=16", "rec.k=2", "rec.max_epochs=2", "rec.patience=2", "rec.seeds=[0]",
         "rec.batch_size=64", "evaluate.top_n=5", "evaluate.steering_query=acne"]


def _runner(uri: str, *overrides: str, endpoint: str | None = None) -> Runner:
    extra = [f"storage.endpoint_url={endpoint}"] if endpoint else []
    cfg = load_config(None, [f"storage.uri={uri}", *SMALL, *extra, *overrides])
    store = Store(cfg.storage.uri, cfg.storage.endpoint_url)
    store.check()
    runner = Runner(cfg, store)
    for stage in (prepare.STAGE, EMBED, SAE, EXPLAIN, JUDGE, profile.STAGE):
        runner.run_stage(stage)
    return runner


def test_train_evaluate_and_resume_on_s3(s3_server, s3_uri, ray_local):
    # s3_server first: Ray workers inherit the S3 credentials from the environment at ray.init.
    runner = _runner(s3_uri, "rec.models=[sasrec,saerec,kmeans,noPer]", endpoint=s3_server.endpoint)
    trained = runner.run_stage(train_rec.STAGE)
    out = trained["output_dir"]
    runs = runner.store.read_json(f"{out}/runs.json")["runs"]
    assert [r["name"] for r in runs] == ["sasrec-seed0", "saerec-seed0", "kmeans-seed0", "noPer-seed0"]
    assert all(1 <= r["best_epoch"] <= r["epochs"] <= 2 for r in runs)
    assert {f"models/{r['name']}.safetensors" for r in runs} <= set(trained["outputs"])
    assert trained["metrics"]["n_intents"] == len(LATENTS)

    evaluated = runner.run_stage(evaluate.STAGE)
    res = evaluated["output_dir"]
    metrics = runner.store.read_json(f"{res}/metrics.json")
    assert set(metrics["summary"]) == {"sasrec", "saerec", "kmeans", "noPer"}
    for run in metrics["runs"]:
        assert set(run["test"]) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (5, 10, 20)}
        assert 0.0 <= run["test"]["ndcg@20"] <= run["test"]["hr@20"] <= 1.0
    recs = runner.store.read_table(f"{res}/recommendations.parquet")
    assert recs.schema == schemas.RECOMMENDATIONS and recs.num_rows == 120
    rows = recs.to_pylist()
    for row in rows:
        assert len(set(row["items"])) == 5 and row["hit"] == (row["target"] in row["items"])
        assert len(row["personal_intents"]) == 2 and set(row["personal_intents"]) <= set(LATENTS)
        assert row["personal_summaries"] == [SUMMARIES[LATENTS.index(i)] for i in row["personal_intents"]]
        assert abs(sum(row["branch_weights"]) - 1.0) < 1e-4 and len(row["branch_weights"]) == 3
    assert len({tuple(r["public_intents"]) for r in rows}) == 1
    weights = [evaluated["metrics"][f"fusion_weight_{b}"] for b in ("self", "personal", "public")]
    assert abs(sum(weights) - 1.0) < 1e-4
    assert weights[1] == pytest.approx(sum(r["branch_weights"][1] for r in rows) / len(rows), rel=1e-5)
    study = runner.store.read_json(f"{res}/steering.json")
    assert study["matched_intents"] == [10] and study["model"] == "saerec-seed0"
    assert study["matching_items"] > 0 and study["users"] == 120
    assert {"flagged_before", "flagged_after", "users_changed", "mean_overlap"} <= set(study)

    again = runner.run_stage(train_rec.STAGE, force=True)
    rerun = runner.store.read_json(f"{again['output_dir']}/runs.json")["runs"]
    assert [r["trainer_restores"] for r in rerun] == [1] * 4
    assert [r["valid"] for r in rerun] == [r["valid"] for r in runs]


def test_unknown_model_is_named_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="rec.models: unknown model 'gru4rec'; allowed: sasrec, saerec"):
        load_config(None, [f"storage.uri={tmp_path}", "rec.models=[sasrec,gru4rec]"])
    with pytest.raises(ConfigError, match="sweep.ablations: unknown model 'full' \\(the full model is now called"):
        load_config(None, [f"storage.uri={tmp_path}", "sweep.ablations=[full]"])


def _kill_train_workers_after_first_checkpoint(train_dir, killed: list, stop: threading.Event) -> None:
    """SIGKILL this test's Ray Train worker processes once the controller has registered a checkpoint."""
    while not stop.is_set():
        if any(train_dir.glob("**/checkpoint_manager_snapshot.json")):
            for proc in psutil.Process().children(recursive=True):
                try:
                    if "RayTrainWorker" in " ".join(proc.cmdline()):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            if killed:
                return
        time.sleep(0.05)


def test_a_killed_train_worker_is_replaced_and_the_run_goes_on(tmp_path, ray_local):
    """Ray Train's failure config restarts the worker group; finished runs are not trained again."""
    runner = _runner(str(tmp_path / "out"), "rec.models=[sasrec]", "rec.seeds=[0,1]", "rec.max_epochs=15",
                     "rec.patience=15", "rec.max_failures=1")
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_train_workers_after_first_checkpoint,
                              args=(tmp_path / "out" / "demo" / "train_rec" / "_train", killed, stop), daemon=True)
    killer.start()
    try:
        trained = runner.run_stage(train_rec.STAGE)
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray Train worker was found to kill"
    runs = runner.store.read_json(f"{trained['output_dir']}/runs.json")["runs"]
    assert [r["name"] for r in runs] == ["sasrec-seed0", "sasrec-seed1"]
    assert [r["trainer_restores"] for r in runs] == [1, 1]
    for run in runs:
        assert [h["epoch"] for h in run["history"]] == list(range(1, run["epochs"] + 1))
        assert f"models/{run['name']}.safetensors" in trained["outputs"]
    attempts = [p.name for p in (tmp_path / "out" / "demo" / "train_rec").iterdir() if p.name.startswith("attempt-")]
    assert len(attempts) == 1


def test_a_paper_protocol_run_is_marked_in_every_manifest_and_metrics_file(tmp_path, ray_local):
    runner = _runner(str(tmp_path / "out"), "rec.models=[sasrec]", "evaluate.protocol=paper")
    with logged("saerec.train_progress") as lines:
        trained = runner.run_stage(train_rec.STAGE)
    evaluated = runner.run_stage(evaluate.STAGE)
    assert trained["metrics"]["protocol"] == evaluated["metrics"]["protocol"] == "paper"
    assert trained["config"]["evaluate"]["protocol"] == evaluated["config"]["evaluate"]["protocol"] == "paper"
    metrics = runner.store.read_json(f"{evaluated['output_dir']}/metrics.json")
    [run] = metrics["runs"]
    assert metrics["protocol"] == "paper"
    assert run["valid"] == pytest.approx(run["test"]), "under paper the selection set is the test set"
    # the driver printed one line per epoch, and what it said is what the run recorded
    [history] = [r["history"] for r in runner.store.read_json(f"{trained['output_dir']}/runs.json")["runs"]]
    pattern = (r"\[train_rec\] sasrec-seed0 \(run 1/1\) epoch (\d+)/2: loss ([\d.]+), valid ndcg@20 ([\d.]+), "
               r"best ([\d.]+) \(epoch (\d+)\), patience (\d+) left, [\d.]+ s/epoch")
    found = [re.fullmatch(pattern, line) for line in lines]
    assert len(found) == len(history) == 2 and all(found), lines
    for epoch, match in enumerate(found, start=1):
        best = max(history[:epoch], key=lambda h: h["valid_ndcg@20"])
        assert int(match[1]) == epoch and match[2] == f"{history[epoch - 1]['loss']:.4f}"
        assert match[3] == f"{history[epoch - 1]['valid_ndcg@20']:.4f}" and match[4] == f"{best['valid_ndcg@20']:.4f}"
        assert int(match[5]) == best["epoch"] and int(match[6]) == 2 - (epoch - best["epoch"])
    strict = _runner(str(tmp_path / "out"), "rec.models=[sasrec]")
    assert runner.is_published(train_rec.STAGE) and not strict.is_published(train_rec.STAGE), \
        "the protocol is in train_rec's fingerprint"


def test_profiles_pool_each_items_training_texts_and_grounded_lists_are_explained_exactly(tmp_path, ray_local):
    runner = _runner(str(tmp_path / "out"), "rec.models=[grounded, grounded-random, dense, bsarec-grounded]")
    prep, emb = StageInput(runner.store, runner.manifest("prepare")), StageInput(runner.store, runner.manifest("embed"))
    corpus = artifacts.dataset(prep, artifacts.CORPUS).to_table().to_pandas()
    splits = artifacts.read_table(prep, artifacts.INTERACTIONS).to_pandas()
    def pairs(frame) -> set[tuple[int, int]]:
        return {(int(u), int(i)) for u, i in frame[["user", "item"]].to_numpy()}

    held_out = pairs(splits[splits["split"] != "train"]) - pairs(splits[splits["split"] == "train"])
    reviewed = pairs(corpus[corpus["kind"] == "review"])
    assert held_out and reviewed and not held_out & reviewed, "no review of a valid or test interaction"

    profiles = artifacts.read_profiles(StageInput(runner.store, runner.manifest("profile")), "judged")
    assert {i for ids, _ in profiles.values() for i in ids} <= set(LATENTS), "profiles record SAE latent ids"
    profiles = artifacts.read_profiles(StageInput(runner.store, runner.manifest("profile")), "judged",
                                       np.array(LATENTS))
    sae = restore.sae(StageInput(runner.store, runner.manifest("train_sae")))
    vectors = artifacts.read_table(emb, artifacts.EMBEDDINGS, ["text_id", "vector"]).to_pandas()
    by_text = dict(zip(vectors["text_id"], vectors["vector"]))
    item = next(iter(profiles))
    texts = torch.tensor(np.stack([by_text[t] for t in corpus[corpus["item"] == item]["text_id"]]), dtype=torch.float32)
    values, latents = sae.encode(texts)
    dense = torch.zeros(len(texts), sae.n_latents).scatter(1, latents, values).mean(0)
    expected = {i: float(dense[latent]) for i, latent in enumerate(LATENTS) if dense[latent] > 0}
    ids, weights = profiles[item]
    assert dict(zip(ids, weights)) == pytest.approx(expected, rel=1e-5)
    n_items = int(splits["item"].max())
    text_vectors = artifacts.read_item_text_vectors(StageInput(runner.store, runner.manifest("profile")), n_items)
    assert torch.allclose(text_vectors[item], texts.mean(0), atol=1e-5), "dense control: the mean of the item's texts"

    trained = runner.run_stage(train_rec.STAGE)
    evaluated = runner.run_stage(evaluate.STAGE)
    assert evaluated["metrics"]["explained_model"] == "grounded-seed0"
    recs = runner.store.read_table(f"{evaluated['output_dir']}/recommendations.parquet").to_pylist()
    model = restore.rec_model(StageInput(runner.store, trained), artifacts.read_runs(
        StageInput(runner.store, trained))[0])
    assert model.profile_ids.shape[0] == trained["metrics"]["n_items"] + 1
    for row in recs[:10]:
        assert len(row["item_intents"]) == len(row["items"]) == 5
        for ids, names, share in zip(row["item_intents"], row["item_intent_summaries"], row["item_intent_share"]):
            assert set(ids) <= set(LATENTS) | {-1} and 0.0 <= share <= 1.0
            assert names == [SUMMARIES[LATENTS.index(i)] if i >= 0 else None for i in ids]
    study = runner.store.read_json(f"{evaluated['output_dir']}/steering.json")
    levels = study["dose_response"]
    assert study["kind"] == "grounded dose-response" and study["matched_summaries"] == ["acne treatment"]
    assert levels[0]["strength"] == 0.0 and levels[0]["users_changed"] == 0.0
    assert levels[0]["ndcg@5"] == pytest.approx(evaluated["metrics"]["grounded_test_ndcg@5"], abs=1e-6), \
        "strength 0 is the model's own test ranking"
    on_valid = {r["strength"]: r["ndcg@5"] for r in study["valid_dose_response"]}
    assert set(on_valid) == {r["strength"] for r in levels}, "the strength is chosen on a valid dose-response"
    labels = artifacts.read_item_categories(prep)
    assert study["category"] == "acne", "the query names a planted intent's category"
    listed = [item for row in recs for item in row["items"]]
    assert levels[0]["category_share"] == pytest.approx(
        sum("acne" in labels.get(i, []) for i in listed) / len(listed)), "before = the model's own test lists"
    assert all(0.0 <= r["category_share"] <= 1.0 for r in [*levels, *study["valid_dose_response"]])

    cheap = [r for r in study["valid_dose_response"][1:] if on_valid[0.0] - r["ndcg@5"] <= 0.01 * on_valid[0.0]]
    chosen = study["within_1pct_cost"]
    assert (chosen or {}).get("strength") == (cheap[-1]["strength"] if cheap else None), "chosen on valid cost only"
    if chosen:
        after = next(r for r in levels if r["strength"] == chosen["strength"])["category_share"]
        assert (chosen["category_share_before"], chosen["category_share_after"]) == (levels[0]["category_share"], after)
        assert evaluated["metrics"]["steering_category_share_after"] == after
    runs = artifacts.read_runs(StageInput(runner.store, trained))
    assert {r["variant"] for r in runs} == {"grounded", "grounded-random", "dense", "bsarec-grounded"}
    on_bsarec = restore.rec_model(StageInput(runner.store, trained),
                                     next(r for r in runs if r["variant"] == "bsarec-grounded"))
    assert on_bsarec.cfg.backbone == "bsarec" and "bsarec-grounded_test_ndcg@20" in evaluated["metrics"]
    metrics = runner.store.read_json(f"{evaluated['output_dir']}/metrics.json")
    chosen = max(runs, key=lambda r: r["valid"]["ndcg@20"])  # one seed each: its valid is the variant's mean
    assert metrics["selection"]["selected"] == evaluated["metrics"]["selected_model"] == chosen["variant"]
    assert evaluated["metrics"]["selected_valid_ndcg@20"] == chosen["valid"]["ndcg@20"]
    assert metrics["summary"]["dense"]["test"]["ndcg@20"]["std"] is None, "one seed: no std"
    per_user = runner.store.read_table(f"{evaluated['output_dir']}/per_user.parquet")
    assert per_user.schema == schemas.PER_USER and per_user.num_rows == len(runs) * len(recs)
    for run in runs:
        mine = per_user.filter(pc.equal(per_user.column("variant"), run["variant"]))
        mean_valid = float(pc.mean(mine.column("valid_ndcg@20")).as_py())
        assert mean_valid == pytest.approx(run["valid"]["ndcg@20"], abs=1e-6), \
            "evaluate's per-user valid ranks are the ones train_rec selected on"
    [compared] = metrics["comparisons"]
    assert (compared["a"], compared["b"]) == ("grounded", "grounded-random")
    assert compared["test"]["low"] <= compared["test"]["difference"] <= compared["test"]["high"]

    popular = metrics["by_popularity"]
    train_counts = np.bincount(splits[splits["split"] == "train"]["item"], minlength=n_items + 1)
    item_buckets, head_min = popularity_buckets(train_counts)
    targets = splits[splits["split"] == "test"].set_index("user")["item"]
    assert popular["head_min_train"] == head_min and popular["cold_max_train"] == 2
    sizes = {name: int((item_buckets[targets.to_numpy()] == i).sum()) for i, name in enumerate(POPULARITY_BUCKETS)}
    assert {name: b["test_users"] for name, b in popular["buckets"].items()} == sizes
    assert sum(sizes.values()) == len(recs) and sizes["head"] and sizes["tail"], "the demo has head and tail targets"
    assert {k: evaluated["metrics"][f"test_users_{k}"] for k in sizes} == sizes
    frame = per_user.to_pandas()
    frame["bucket"] = item_buckets[targets.loc[frame["user"]].to_numpy()]
    for variant, found in popular["models"].items():
        mine = frame[frame["variant"] == variant]
        for i, name in enumerate(POPULARITY_BUCKETS):
            ranks = mine[mine["bucket"] == i]["test_rank"].to_numpy()
            assert found[name]["users"] == len(ranks) == sizes[name]
            if len(ranks):
                assert found[name]["ndcg@20"]["mean"] == pytest.approx(hr_ndcg(ranks, [20])["ndcg@20"])
                assert found[name]["hr@10"]["n"] == 1
        overall = sum(found[b]["users"] * found[b]["ndcg@20"]["mean"] for b in sizes if sizes[b]) / len(recs)
        assert overall == pytest.approx(metrics["summary"][variant]["test"]["ndcg@20"]["mean"]), \
            "the buckets partition the test users"
    [by_bucket] = popular["comparisons"]
    assert (by_bucket["a"], by_bucket["b"]) == ("grounded", "grounded-random")
    assert {k: v["users"] for k, v in by_bucket["buckets"].items()} == {k: n for k, n in sizes.items() if n}
    for found in by_bucket["buckets"].values():
        assert found["low"] <= found["difference"] <= found["high"]

    # matching by top words: "spots" is in no summary; it is the 2nd word of latent 10 and the 3rd of latent 21
    for match, top_words, expected in (("summaries", 8, []), ("words", 2, [10]), ("words", 3, [10, 21]),
                                       ("both", 2, [10])):
        again = _runner(str(tmp_path / "out"), "rec.models=[grounded, grounded-random, dense, bsarec-grounded]",
                        "evaluate.steering_query=spots", f"evaluate.steering_match={match}",
                        f"evaluate.steering_top_words={top_words}")
        assert again.run_stage(train_rec.STAGE).get("skipped") is True, "steering settings do not retrain"
        steered = again.store.read_json(f"{again.run_stage(evaluate.STAGE)['output_dir']}/steering.json")
        assert steered["matched_intents"] == expected and steered["matched_by"] == match, (match, top_words)
        if not expected:
            assert steered["skipped"] == "no intent summary mentions 'spots'"
