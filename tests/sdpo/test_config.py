"""The one settings parser (``sdpo.config``): config files, ``--set KEY=VALUE`` and form fields read numbers as
a user means them; and the upper limits every entry point shares."""

from __future__ import annotations

import math

import pytest

from sdpo.config import (
    ConfigError,
    apply_overrides,
    check_limits,
    compose_config,
    load_yaml,
    parse_value,
    read_config_file,
)


@pytest.mark.parametrize("text, value", [
    ("1e-5", 1e-5), ("1E-5", 1e-5), ("-1e-5", -1e-5), ("1.0e-6", 1e-6), ("5e-2", 0.05), (".5", 0.5), ("-.5", -0.5),
    ("5.", 5.0), ("2.5", 2.5), ("1_000", 1000), ("1e3", 1000), ("1E+3", 1000), ("1e12", 10**12), ("010", 10),
    ("-2", -2), ("0", 0), ("true", True), ("False", False), ("null", None), ("~", None), ("", None), ("  ", None),
    ("[1, 2]", [1, 2]), ("[q_proj, v_proj]", ["q_proj", "v_proj"]), ("{a: 1e-5}", {"a": 1e-5}),
    ("'1e-5'", "1e-5"), ('"0.5"', "0.5"), ("ema", "ema"), ("yes", "yes"), ("off", "off"), ("1:30", "1:30"),
    ("2025-02-01", "2025-02-01"), ("#3", "#3"), ("Question: {x}", "Question: {x}"), (" lora ", "lora"),
])
def test_values_are_read_as_a_user_means_them(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value), (text, got)


def test_non_finite_and_huge_numbers_stay_visible_to_the_checks():
    assert parse_value("1e400") == math.inf  # not a 400-digit integer
    assert parse_value(".inf") == math.inf and parse_value("-.inf") == -math.inf
    assert math.isnan(parse_value(".nan"))
    assert parse_value(7) == 7  # values that are not text pass through


def test_overrides_nest_and_name_what_is_wrong():
    base = {"lr": 1.0, "self_distillation": {"alpha": 0.5, "mode": "logit"}}
    out = apply_overrides(base, ["lr=1e-5", "self_distillation.alpha=1", "lora_target_modules=[q_proj]"])
    assert out == {"lr": 1e-5, "self_distillation": {"alpha": 1, "mode": "logit"}, "lora_target_modules": ["q_proj"]}
    assert base["lr"] == 1.0  # the input is not changed
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError) as e:
        apply_overrides({"lr": 1.0}, ["lr.x=1"])
    assert e.value.field == "lr.x" and "lr is not a mapping" in str(e.value)


def test_yaml_documents_use_the_same_rules(tmp_path):
    assert load_yaml("lr: 1e-5\nn: 1_000\nflag: yes\nsd:\n  alpha: .5\n") == {
        "lr": 1e-5, "n": 1000, "flag": "yes", "sd": {"alpha": 0.5}}
    assert load_yaml("") == {} and load_yaml("# only a comment\n") == {}
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml("- a\n- b\n", field="extra settings")
    with pytest.raises(ConfigError) as e:
        load_yaml("a: [1,\n", field="extra settings")
    assert e.value.field == "extra settings" and "not valid YAML" in str(e.value)
    with pytest.raises(ConfigError, match="file not found"):
        read_config_file(tmp_path / "missing.yaml")


def test_shipped_configs_read_as_before():
    """The configs/ files mean the same with this parser as with YAML 1.1 (none relies on its quirks)."""
    from pathlib import Path

    import yaml

    for path in sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")):
        assert read_config_file(path) == yaml.safe_load(path.read_text()), path.name


def test_compose_config_later_pieces_win():
    out = compose_config({"strategy": "sdpo", "budget": 4}, [("budget", "1e1"), ("n", ""), ("lr", "1E-5")],
                         "lr: 2e-5\nself_distillation:\n  alpha: 1\n", fixed={"strategy": "best_of_k"})
    assert out == {"strategy": "best_of_k", "budget": 10, "lr": 2e-5, "self_distillation": {"alpha": 1}}
    with pytest.raises(ConfigError) as e:
        compose_config({}, (), "[1]", text_field="extra settings")
    assert e.value.field == "extra settings"


def test_limits_name_the_first_field_over_its_limit():
    class Cfg:
        budget, n, self_distillation = 10**12, 10**9, {"max_reprompt_len": 10**9}

    with pytest.raises(ConfigError) as e:
        check_limits(Cfg())
    assert e.value.field == "budget" and "got 1000000000000; must be <= 100000" in str(e.value)
    Cfg.budget, Cfg.n = 8, 2.5  # not a whole number: left to the type check
    with pytest.raises(ConfigError) as e:
        check_limits(Cfg())
    assert e.value.field == "self_distillation.max_reprompt_len"
