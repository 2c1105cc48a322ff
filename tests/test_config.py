import dataclasses
import importlib.util
import logging
import re
from pathlib import Path

import pytest

from saerec.config import Config, ConfigError, load_config, result_settings
from saerec.data.inputs import check_inputs
from saerec.sae.sizing import num_latents

REPO = Path(__file__).resolve().parents[1]


def test_demo_file_differs_from_the_paper_defaults_only_in_what_makes_it_quick_and_its_new_arrivals():
    demo, defaults = load_config(REPO / "configs" / "demo.yaml").to_dict(), load_config().to_dict()
    assert demo["data"]["source"] == "demo"
    changed = {f"{section}.{key}" for section, values in demo.items() if isinstance(values, dict)
               for key, value in values.items() if value != defaults[section][key]}
    assert changed == {"judge.concurrency", "sweep.review_drops", "evaluate.steering_query",
                       "evaluate.steering_category", "data.demo"}
    assert demo["sweep"]["review_drops"] == [] and demo["judge"]["concurrency"] == 2
    assert demo["data"]["demo"] == {**defaults["data"]["demo"], "new_items": 0.1}


def test_beauty_config_loads_and_overrides_apply():
    cfg = load_config(REPO / "configs" / "beauty.yaml", ["data.path=/x/beauty", "sae.k=16", "rec.seeds=[0,1,2]"])
    assert cfg.data.source == "sequences"
    assert cfg.data.path == "/x/beauty"
    assert cfg.sae.k == 16
    assert cfg.rec.seeds == [0, 1, 2]


def test_sports_config_reads_the_shared_sports_folder_and_sizes_its_sae_by_rule(data_dir):
    folder = data_dir / "sports"
    cfg = load_config(REPO / "configs" / "sports.yaml", [f"data.path={folder}"])
    assert (cfg.run.name, cfg.data.source, cfg.data.text) == ("sports", "sequences", "items")
    assert cfg.judge.domain == "Amazon sports and outdoors products"
    check_inputs(cfg.data)
    assert cfg.sae.n_latents is None, "the SAE is sized from the corpus"
    texts = (folder / "items.tsv").read_text().splitlines()[1:]
    assert len(texts) == 18357 and num_latents(len(texts)) == 512, "18,357 item texts: 2^round(8.6) latents"


@pytest.mark.parametrize("override, named", [
    ("sae.kk=3", "sae.kk"),
    ("sea.k=3", "sea"),
    ("sae.k=abc", "sae.k"),
    ("data.review_drop=1.5", "data.review_drop"),
    ("data.source=csv", "data.source"),
    ("rec.seeds=[0,x]", "rec.seeds[1]"),
    ("rec.dropout=-0.1", "rec.dropout"),
])
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


@pytest.fixture(scope="module")
def job():
    """The job's entry point, ``jobs/full_pipeline.py``, imported in this process."""
    spec = importlib.util.spec_from_file_location("full_pipeline_job", REPO / "jobs" / "full_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HTTP = ["judge.backend=http", "judge.model=m", "judge.base_url=http://127.0.0.1:9/v1"]


@pytest.mark.parametrize("overrides, message", [
    (["rec.seeds=[]"], "rec.seeds must list at least one seed"),
    (["rec.seeds=[1, 1]"], "rec.seeds lists seed 1 twice"),
    (["rec.seeds=[-1]"], "rec.seeds: got -1; allowed range [0, inf]"),
    (["rec.d=10", "rec.heads=4"], "rec.d=10 must be divisible by rec.heads=4"),
    (["judge.keep=[]"], "judge.keep must be a non-empty subset of ('Yes', 'Probably', 'Maybe', 'No'), got []"),
    (['judge.keep=["yes"]'], "judge.keep must be a non-empty subset of ('Yes', 'Probably', 'Maybe', 'No'), "
                             "got ['yes'] (verdicts are case-sensitive: did you mean 'Yes'?)"),
    (['judge.keep=["Cannot Tell"]'], "judge.keep must be a non-empty subset"),
    (["evaluate.ks=[0]"], "evaluate.ks: got 0; allowed range [1, inf]"),
    (["evaluate.ks=[5, 5]"], "evaluate.ks lists cut-off 5 twice"),
    (["evaluate.ks=[]"], "evaluate.ks must list at least one cut-off"),
    (['evaluate.steering_query="  "'], "evaluate.steering_query is blank"),
    (['evaluate.steering_category=""'], "evaluate.steering_category is blank"),
    (["evaluate.steering_strengths=[0.5, -1]"], "evaluate.steering_strengths: got -1.0; allowed range [0.0, inf]"),
    (["rec.seeds=[0, 1"], "--set 'rec.seeds=[0, 1': the value is not valid YAML"),
    (["judge.domain={x: [}"], "--set 'judge.domain={x: [}': the value is not valid YAML"),
    (["judge.backend=http"], "judge.model is required for judge.backend='http'"),
    (["judge.backend=http", "judge.model=m"], "judge.base_url is required for judge.backend='http'"),
    (["judge.backend=vllm", "judge.num_gpus_per_actor=0"],
     "judge.num_gpus_per_actor must be > 0 for judge.backend='vllm'"),
    (["judge.device=cuda", "judge.num_gpus_per_actor=0"], "judge.device='cuda' needs judge.num_gpus_per_actor > 0"),
    ([*HTTP, "judge.prescreen=1.0"], "judge.prescreen needs judge.backend=local"),
    ([*HTTP, "judge.summary_model=s"], "judge.summary_model needs judge.backend=local"),
    ([*HTTP, "judge.summary_candidates=2"], "judge.summary_candidates needs judge.backend=local"),
    (["judge.summary_candidates=2"], "judge.detection_encoder='minilm' is the encoder that chooses the summaries "
                                     "(embed.model='minilm', judge.summary_candidates=2), so detection would partly "
                                     "score its own choice; set judge.detection_encoder=mpnet"),
    (["judge.summary_candidates=4", "embed.model=default", "judge.detection_encoder=MiniLM"],
     "judge.detection_encoder='MiniLM' is the encoder that chooses the summaries (embed.model='default'"),
    (["embed.device=cuda"], "embed.device='cuda' needs embed.num_gpus_per_actor > 0"),
    (["sae.n_latents=16", "sae.k=32"], "sae.k=32 exceeds sae.n_latents=16"),
    (["data.demo.min_length=8", "data.demo.max_length=6"], "data.demo.min_length=8 exceeds data.demo.max_length=6"),
    (["rec.models=[sasrec, kmeans]", "rec.kmeans_clusters=4", "rec.k=5"],
     "rec.k=5 exceeds rec.kmeans_clusters=4, the intents that kmeans (rec.models) attends to"),
    (["rec.models=[sasrec]", "rec.kmeans_clusters=4", "rec.k=5"],
     "rec.k=5 exceeds rec.kmeans_clusters=4, the intents that kmeans (sweep.ablations) attends to"),
    (["sweep.seeds=[]"], "sweep.seeds must list at least one seed"),
    (["sweep.ks=[3, 0]"], "sweep.ks: got 0; allowed range [1, inf]"),
    (["sweep.review_drops=[0.1, 1.0]"], "sweep.review_drops: got 1.0; allowed range [0.0, 1.0)"),
    (["sweep.ablations=[saerec, noFoo]"], "sweep.ablations: unknown model 'noFoo'"),
    (['sweep.judges=["vllm:"]'], "sweep.judges[0]: 'vllm:' names no model"),
    (['sweep.judges=["qwen", "http:m"]'],
     "sweep.judges[1]='http:m': judge.base_url is required for judge.backend='http'"),
    (['sweep.judges=["vllm:m"]', "judge.prescreen=1.0"],
     "sweep.judges[0]='vllm:m': judge.prescreen needs judge.backend=local"),
    (["rec.tuned.bsarec.max_len=20"], "rec.tuned.bsarec.max_len: not a tunable setting"),
    (["rec.from_study=nowhere"], "rec.from_study=nowhere: run 'nowhere' has no published sweep in "),
])
def test_bad_combinations_stop_the_job_before_ray_starts(job, tmp_path, monkeypatch, overrides, message):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for a config that cannot run")

    monkeypatch.setattr(job, "init_ray", no_ray)
    errors = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: errors.append(record.getMessage())
    logging.getLogger("saerec.job").addHandler(handler)
    try:
        out = tmp_path / "out"
        code = job.main(["--set", f"storage.uri={out}", *[a for o in overrides for a in ("--set", o)]])
    finally:
        logging.getLogger("saerec.job").removeHandler(handler)
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
    assert not out.exists(), "nothing is written for a config that cannot run"


@pytest.mark.parametrize("overrides", [
    [],  # one greedy summary: no encoder chooses it
    ["judge.summary_candidates=4", "judge.detection_encoder=mpnet"],
    ["judge.summary_candidates=4", "judge.detection_scoring=judge"],
    ["judge.summary_candidates=4", "judge.detection=false"],
    ["judge.summary_candidates=4", "embed.model=/models/p5", "embed.kind=t5"],  # MiniLM detects, P5 chooses
])
def test_detection_by_an_encoder_that_does_not_choose_the_summaries_is_accepted(overrides):
    cfg = load_config(None, overrides)
    assert cfg.judge.detection_encoder in ("minilm", "mpnet")


def test_bad_file_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_int_accepted_where_float_expected():
    assert load_config(None, ["data.review_drop=0"]).data.review_drop == 0.0
    assert isinstance(Config().data.review_drop, float)


def test_exponent_numbers_are_floats_though_yaml_reads_them_as_strings():
    assert load_config(None, ["rec.lr=5e-4"]).rec.lr == 5e-4
    assert load_config(None, ["judge.prescreen=-1e9"]).judge.prescreen == -1e9
    with pytest.raises(ConfigError, match="rec.lr"):
        load_config(None, ["rec.lr=1e"])


def resource_keys(section: object, prefix: str) -> set[str]:
    keys = set()
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            keys |= resource_keys(value, f"{prefix}{f.name}.")
        elif f.metadata.get("resource"):
            keys.add(prefix + f.name)
    return keys


def test_readme_lists_exactly_the_keys_left_out_of_fingerprints():
    cfg = Config()
    marked = set().union(*(resource_keys(getattr(cfg, f.name), f"{f.name}.") for f in dataclasses.fields(cfg)
                           if dataclasses.is_dataclass(getattr(cfg, f.name))))
    readme = (REPO / "README.md").read_text()
    paragraph = readme[readme.index("Nor are the resource keys"):].split("\n\n")[0]
    assert set(re.findall(r"`([a-z_]+\.[a-z_.]+)`", paragraph)) == marked
    assert "judge.concurrency" in marked and "judge.model" not in marked
    assert "model" in result_settings(cfg.judge) and "concurrency" not in result_settings(cfg.judge)


# rec keys that train_rec or the sweep read themselves; every other rec key is a model or fit setting.
REC_RUN_KEYS = {"models", "seeds", "num_workers", "use_gpu", "kmeans_clusters", "max_failures", "checkpoint_seconds",
                "tuned", "from_study"}  # the last two: per-model values of the keys tested here (rec.for_model)


def test_tuned_settings_are_checked_per_model_and_applied_by_for_model():
    cfg = load_config(None, ["rec.tuned.bsarec.lr=5e-4", "rec.tuned.bsarec.bsarec_c=3", "rec.tuned.sasrec={d: 32}"])
    assert (cfg.rec.for_model("bsarec").lr, cfg.rec.for_model("bsarec").bsarec_c) == (5e-4, 3)
    assert cfg.rec.for_model("sasrec").d == 32 and cfg.rec.for_model("grounded") == cfg.rec.for_model("dense")
    assert cfg.rec.for_model("bsarec").tuned == {} and cfg.rec.for_model("grounded").lr == cfg.rec.lr
    for bad, message in [("rec.tuned.sasrec.max_len=20", "rec.tuned.sasrec.max_len: not a tunable setting"),
                         ("rec.tuned.nope.lr=0.1", "rec.tuned: unknown model 'nope'"),
                         ("rec.tuned.sasrec.lr=-1", r"rec.tuned.sasrec.lr: got -1.0; allowed range"),
                         ("rec.tuned.sasrec.d=oops", "rec.tuned.sasrec.d: got 'oops'"),
                         ("rec.tuned.sasrec={d: 30, heads: 4}", "rec.tuned.sasrec: rec.d=30 must be divisible by rec.heads=4"),
                         ("rec.tuned.sasrec=3", "rec.tuned.sasrec: got 3; expected a mapping"),
                         ("sweep.search_models=[sasrec,sasrec]", "lists model 'sasrec' twice"),
                         ("sweep.search_models=[tvrec]", "sweep.search_models: unknown model 'tvrec'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])


def test_every_rec_model_setting_reaches_the_model_or_fit_config_by_its_name():
    """One declaration per recommender setting: a rec key that is not one the stages read themselves
    is carried into EncoderConfig, IntentConfig or FitConfig under its own name, with its value."""
    rec = load_config(None, ["rec.d=12", "rec.heads=3", "rec.blocks=3", "rec.max_len=7", "rec.dropout=0.25",
                             "rec.k=3", "rec.ema_beta=0.5", "rec.lr=0.02", "rec.weight_decay=0.01",
                             "rec.batch_size=32", "rec.max_epochs=4", "rec.patience=3", "rec.prefix_augment=true",
                             "rec.bsarec_alpha=0.4", "rec.bsarec_c=3"]).rec
    evaluate = load_config(None, ["evaluate.ks=[1, 50]", "evaluate.mask_history=false"]).evaluate
    built = {**vars(rec.encoder(9)), **vars(rec.intent()), **vars(rec.fit(evaluate, seed=7))}
    model_keys = {f.name for f in dataclasses.fields(rec)} - REC_RUN_KEYS
    assert {key: built.get(key) for key in model_keys} == {key: getattr(rec, key) for key in model_keys}
    assert (built["n_items"], built["seed"], built["ks"], built["mask_history"]) == (9, 7, (1, 5, 10, 20, 50), False)
    assert built["select_metric"] == "ndcg@20" and built["backbone"] == "sasrec"
