import dataclasses
import re
from pathlib import Path

import pytest

from saerec.config import Config, ConfigError, load_config, result_settings

REPO = Path(__file__).resolve().parents[1]


def test_demo_file_differs_from_the_paper_defaults_only_in_what_makes_it_quick():
    demo, defaults = load_config(REPO / "configs" / "demo.yaml").to_dict(), load_config().to_dict()
    assert demo["data"]["source"] == "demo"
    changed = {f"{section}.{key}" for section, values in demo.items() if isinstance(values, dict)
               for key, value in values.items() if value != defaults[section][key]}
    assert changed == {"judge.concurrency", "sweep.review_drops", "evaluate.steering_query"}
    assert demo["sweep"]["review_drops"] == [] and demo["judge"]["concurrency"] == 2


def test_beauty_config_loads_and_overrides_apply():
    cfg = load_config(REPO / "configs" / "beauty.yaml", ["data.path=/x/beauty", "sae.k=16", "rec.seeds=[0,1,2]"])
    assert cfg.data.source == "sequences"
    assert cfg.data.path == "/x/beauty"
    assert cfg.sae.k == 16
    assert cfg.rec.seeds == [0, 1, 2]


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
