"""The code's layout rules: stages never import each other (statically or by a name computed at run
time), file names live only in saerec.artifacts, and model variants are named only in the variant registry."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from saerec import artifacts
from saerec.rec.variants import NAMES, VARIANTS
from saerec.stages import STAGE_ORDER

SAEREC = Path(__file__).resolve().parents[1] / "saerec"
STAGE_FILES = sorted((SAEREC / "stages").glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_stage_imports_another_stage():
    stage_modules = {f"saerec.stages.{name}" for name in STAGE_ORDER}
    offenders = {path.name: sorted(_imported_modules(path) & stage_modules) for path in STAGE_FILES}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_no_stage_imports_ray():
    """Stages orchestrate: Ray actors, tasks, train loops and Tune trials live in saerec/workers."""
    offenders = {path.name: sorted(m for m in _imported_modules(path) if m == "ray" or m.startswith("ray."))
                 for path in STAGE_FILES}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_the_import_rule_would_catch_an_offender(tmp_path):
    offender = tmp_path / "bad.py"
    offender.write_text("from saerec.stages.explain import something\nfrom saerec.stages import judge\n"
                        "import ray\nfrom ray import tune\n")
    assert {"saerec.stages.explain", "saerec.stages.judge", "ray", "ray.tune"} <= _imported_modules(offender)


def _dynamic_stage_imports(path: Path) -> list[str]:
    """Where ``path`` may load a stage by a name it computes: every ``load_stage`` (imported or called,
    under any alias), and ``importlib.import_module`` / ``__import__`` calls unless they name a fixed
    module that is not a stage."""
    stage_modules = {f"saerec.stages.{name}" for name in STAGE_ORDER}
    tree = ast.parse(path.read_text())
    aliases = {"load_stage", "import_module", "__import__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("saerec.stages", "importlib"):
            aliases.update(a.asname for a in node.names if a.asname and a.name in ("load_stage", "import_module"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "saerec.stages" and \
                any(a.name == "load_stage" for a in node.names):
            found.append(f"line {node.lineno}: imports load_stage")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name not in aliases:
            continue
        first = node.args[0] if node.args else None
        fixed = isinstance(first, ast.Constant) and isinstance(first.value, str)
        if name in ("import_module", "__import__") and fixed and first.value not in stage_modules:
            continue
        found.append(f"line {node.lineno}: {name}(...)")
    return found


def test_no_stage_loads_another_stage_dynamically():
    offenders = {path.name: _dynamic_stage_imports(path) for path in STAGE_FILES if path.name != "__init__.py"}
    assert {name: calls for name, calls in offenders.items() if calls} == {}


def test_the_dynamic_import_rule_would_catch_an_offender(tmp_path):
    offender = tmp_path / "bad.py"
    offender.write_text("import importlib\nfrom importlib import import_module as im\n"
                        "from saerec.stages import load_stage as stage_named\n"
                        "def run(name):\n"
                        "    stage_named(name)\n"
                        "    importlib.import_module(f'saerec.stages.{name}')\n"
                        "    im('saerec.stages.judge')\n"
                        "    __import__(name)\n"
                        "    importlib.import_module('json')\n")
    assert _dynamic_stage_imports(offender) == ["line 3: imports load_stage", "line 5: stage_named(...)",
                                                "line 6: import_module(...)", "line 7: im(...)",
                                                "line 8: __import__(...)"]


def _string_literals(path: Path) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_published_file_names_are_spelled_only_in_artifacts():
    names = {a.name for a in artifacts.LAYOUT if "." in a.name}  # folder names ("corpus/") are common words
    pattern = re.compile(r"^(%s)$" % "|".join(map(re.escape, names)))
    spelled = {p.relative_to(SAEREC).as_posix(): sorted({s for s in _string_literals(p) if pattern.match(s)})
               for p in SAEREC.rglob("*.py") if p.name != "artifacts.py"}
    internal = {"stages/train_sae.py": ["sae.safetensors"],  # the Ray Train checkpoint's own file
                "data/demo.py": ["planted_intents.json"]}  # the generator's raw file, beside its reviews
    assert {k: v for k, v in spelled.items() if v and internal.get(k) != v} == {}


def test_every_artifact_belongs_to_a_stage_and_has_a_unique_name():
    assert {a.stage for a in artifacts.LAYOUT} <= set(STAGE_ORDER)
    keys = [(a.stage, a.name) for a in artifacts.LAYOUT]
    assert len(keys) == len(set(keys))


def test_variant_names_are_spelled_only_in_the_registry_and_config_defaults():
    def spelled_in(path: Path) -> list[str]:
        where = path.relative_to(SAEREC).as_posix()
        # "saerec" is also the package's name (versions, cache folder); as a model name it could
        # only appear where models are handled.
        names = NAMES if where.startswith(("stages/", "rec/")) or where in ("tuning.py", "render.py") else \
            tuple(n for n in NAMES if n != "saerec")
        return sorted({s for s in _string_literals(path) if s in names})

    # rec/sasrec.py is the home of the backbone names, which are also the plain variants' names.
    allowed = {"rec/variants.py", "config.py", "rec/sasrec.py"}
    spelled = {p.relative_to(SAEREC).as_posix(): spelled_in(p)
               for p in SAEREC.rglob("*.py") if p.relative_to(SAEREC).as_posix() not in allowed}
    assert {k: v for k, v in spelled.items() if v} == {}
    assert all(v.label for v in VARIANTS.values())
