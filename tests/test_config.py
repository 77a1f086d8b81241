"""The experiment schema: defaults, overrides, and one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pareto.config import ConfigError, config_from_dict, dump_config, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_loads_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert cfg.k == 3 and set(cfg.methods.enabled()) == {"panacea", "per_weight_dpo"}
    path = tmp_path / "again.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_overrides_are_parsed_as_yaml_values() -> None:
    cfg = config_from_dict({}, ["methods.panacea.lr=5e-4", "objectives=[helpful, concise]", "seed=7"])
    assert cfg.methods.panacea.lr == 5e-4 and cfg.objectives == ["helpful", "concise"] and cfg.seed == 7


@pytest.mark.parametrize(
    ("data", "overrides", "field", "hint"),
    [
        ({"learning_rate": 1}, [], "learning_rate", "unknown key"),
        ({"methods": {"panacea": {"lr": "fast"}}}, [], "methods.panacea.lr", "valid number"),
        ({}, ["seed=-1"], "seed", "greater than or equal"),
        ({"evaluation": {"reference_point": [0, 0]}}, [], "evaluation.reference_point", "one value per objective"),
        ({"objectives": ["helpful", "funny"]}, [], "objectives", "not an objective of task"),
        ({"task": {"name": "nope"}}, [], "task.name", "unknown task"),
        ({"methods": {"panacea": None, "per_weight_dpo": {"weights": [[0.5, 0.5, 0.5]]}}}, [],
         "methods.per_weight_dpo.weights.0", "normalise"),
        ({"methods": {"panacea": None, "per_weight_dpo": {"weights": [[1.2, -0.2, 0.0]]}}}, [],
         "methods.per_weight_dpo.weights.0", "non-negative"),
        ({"methods": {"panacea": None, "per_weight_dpo": {"weights": [[0.5, 0.5]]}}}, [],
         "methods.per_weight_dpo.weights.0", "one weight per objective"),
        ({"methods": {"panacea": None, "per_weight_dpo": {"weights": [[float("nan"), 0.5, 0.5]]}}}, [],
         "methods.per_weight_dpo.weights.0", "finite"),
        ({"methods": {"panacea": None}}, [], "methods", "enable at least one method"),
        ({"resources": {"num_cpus": 1, "cpus_per_task": 2}}, [], "resources.cpus_per_task", "lower it"),
        ({}, ["nonsense"], "--set", "KEY=VALUE"),
    ],
)
def test_errors_are_one_line_and_name_the_field(data, overrides, field, hint) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, overrides)
    message = str(err.value)
    assert "\n" not in message
    assert field in message and hint in message


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(ConfigError, match="safe_load"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_digest_depends_only_on_named_sections() -> None:
    a = config_from_dict({})
    b = config_from_dict({}, ["methods.panacea.lr=1e-2"])
    c = config_from_dict({}, ["model.tiny.sft_epochs=9"])
    assert a.digest("seed", "task", "model") == b.digest("seed", "task", "model")
    assert a.digest("seed", "task", "model") != c.digest("seed", "task", "model")
