"""A stage's fingerprint covers its code: editing a module it runs re-runs it and what depends on it;
editing unrelated code re-runs nothing."""
from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from saerec.config import load_config
from saerec.pipeline import Runner, Stage, stage_code
from saerec.stages import load_stage
from saerec.storage import Store


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package ``toycode`` with two stages: ``first`` runs ``helper``, ``second`` reads ``first``'s
    output; ``unrelated`` is imported by neither."""
    root = tmp_path / "src" / "toycode"
    root.mkdir(parents=True)
    files = {
        "__init__.py": "",
        "helper.py": "def value():\n    return 1\n",
        "unrelated.py": "def other():\n    return 2\n",
        "first.py": """
            from saerec.pipeline import Stage
            from .helper import value

            def run(ctx):
                ctx.output.write_json("value.json", {"value": value()})
                return {"value": value()}

            STAGE = Stage(name="first", run=run, sections=("data",))
            """,
        "second.py": """
            from saerec.pipeline import Stage

            def run(ctx):
                return {"double": 2 * ctx.input("first").read_json("value.json")["value"]}

            STAGE = Stage(name="second", run=run, inputs=("first",), sections=("data",))
            """,
    }
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield root
    for name in [m for m in sys.modules if m == "toycode" or m.startswith("toycode.")]:
        del sys.modules[name]


def _stages() -> tuple[Stage, Stage]:
    return importlib.import_module("toycode.first").STAGE, importlib.import_module("toycode.second").STAGE


def test_editing_a_stages_code_reruns_it_and_its_dependents_and_unrelated_edits_rerun_nothing(toy_package, tmp_path):
    first, second = _stages()
    assert sorted(stage_code(first)) == ["toycode.first", "toycode.helper"]
    cfg = load_config(None, [f"storage.uri={tmp_path / 'out'}"])
    runner = Runner(cfg, Store(cfg.storage.uri))
    assert not runner.run_stage(first).get("skipped") and not runner.run_stage(second).get("skipped")
    assert runner.run_stage(first).get("skipped") and runner.run_stage(second).get("skipped"), "same code: reused"

    (toy_package / "unrelated.py").write_text("def other():\n    return 3\n")
    assert runner.run_stage(first).get("skipped") and runner.run_stage(second).get("skipped"), \
        "code neither stage imports changed: nothing re-runs"

    (toy_package / "helper.py").write_text("def value():\n    return 5\n")
    rerun = runner.run_stage(first)
    assert not rerun.get("skipped"), "first runs helper, which changed"
    assert rerun["metrics"]["value"] == 1, "this process still holds the old helper; the fingerprint reads the files"
    downstream = runner.run_stage(second)
    assert not downstream.get("skipped"), "second reads first, whose fingerprint changed"


def test_the_real_stages_cover_the_modules_they_run_and_not_the_others():
    evaluate, train_sae, judge = (stage_code(load_stage(n)) for n in ("evaluate", "train_sae", "judge"))
    assert {"saerec.stages.evaluate", "saerec.rec.metrics", "saerec.rec.stats", "saerec.rec.attribution"} <= set(evaluate)
    assert not any(m.startswith(("saerec.intents", "saerec.sae.training", "saerec.stages.judge")) for m in evaluate)
    assert not any(m.startswith(("saerec.rec", "saerec.intents")) for m in train_sae), \
        "a recommender change does not re-run the SAE"
    assert "saerec.intents:templates/likelihood.yaml" in judge, "the judge's prompt templates are its code too"
    for code in (evaluate, train_sae, judge):
        assert "saerec.pipeline" not in code and "saerec.storage" not in code, "the runner is not stage code"
    assert stage_code(load_stage("evaluate")) == evaluate, "same files, same hashes"
