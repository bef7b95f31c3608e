"""Settings declared once: TrainConfig / ExperimentConfig validation, JSON round trip, CLI options."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from ecd2g_fast import cli
from ecd2g_fast.experiments import EXPERIMENTS, ExperimentConfig
from ecd2g_fast.settings import Settings, add_options, integer, optional, options_from_args, setting
from ecd2g_fast.training import TrainConfig


def test_train_config_json_round_trip():
    config = TrainConfig(
        model="potential", num_queries=7, ema_decay=None, model_kwargs={"hidden": [8]}, amp=False
    )
    text = json.dumps(config.to_json())
    assert TrainConfig.from_json(json.loads(text)) == config
    for preset in EXPERIMENTS.values():
        again = ExperimentConfig.from_json(json.loads(json.dumps(preset.to_json())))
        assert again == preset and isinstance(again.train, TrainConfig)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(steps=0), ValueError, "steps must be >= 1"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
        (dict(model="flow"), ValueError, "model must be one of 'current', 'potential'"),
        (dict(lr=float("inf")), ValueError, "lr must be finite"),
        (dict(ema_decay=1.0), ValueError, "ema_decay"),
        (dict(targets_backend="gpu"), ValueError, "targets_backend must be one of"),
        (dict(amp="yes"), TypeError, "amp must be a bool"),
        (dict(model_kwargs=[1]), TypeError, "model_kwargs must be a dict"),
        (dict(nonesuch=1), TypeError, "unknown TrainConfig setting"),
    ],
)
def test_train_config_is_validated_once_on_construction(changes, error, match):
    with pytest.raises(error, match=match):
        TrainConfig().replace(**changes)


def test_from_json_rejects_unknown_settings():
    with pytest.raises(TypeError, match="unknown TrainConfig setting.*lr_typo"):
        TrainConfig.from_json({"lr_typo": 0.1})
    with pytest.raises(TypeError, match="must be an object"):
        ExperimentConfig.from_json([1])


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_resume_key_leaves_out_what_may_change_on_resume():
    key = TrainConfig().resume_key()
    assert {"model", "batch_size", "lr", "seed", "model_kwargs"} <= set(key)
    assert not {"steps", "amp", "targets_backend", "checkpoint_every"} & set(key)


def test_every_training_setting_is_a_command_line_option():
    parser = cli.build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # the `run` sub-command
    flags = {option for action in run._actions for option in action.option_strings}
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in flags, field.name


def test_command_line_options_reach_the_config():
    args = cli.build_parser().parse_args(
        ["run", "uniform-to-gaussian-1d", "--lr", "0.05", "--ema-decay", "none", "--num-queries", "9",
         "--model-kwargs", '{"hidden": [4, 4]}', "--amp", "false", "--mode", "forward"]
    )  # fmt: skip
    config = cli._config_from_args(args)
    preset = EXPERIMENTS["uniform-to-gaussian-1d"]
    assert config.train == preset.train.replace(
        lr=0.05, ema_decay=None, num_queries=9, model_kwargs={"hidden": [4, 4]}, amp=False
    )
    assert config.mode == "forward" and config.num_layers == preset.num_layers


@pytest.mark.parametrize("option", [["--lr", "-1"], ["--queries", "importance"], ["--model-kwargs", "[1]"]])
def test_bad_option_values_are_usage_errors(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "uniform-to-gaussian-1d", *option])
    assert exit_info.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_a_new_setting_is_one_field():
    @dataclasses.dataclass(frozen=True)
    class Tiny(Settings):
        width: int = setting(3, "a width", check=integer(1))
        depth: int | None = setting(None, "a depth", check=optional(integer(0)))

    parser = argparse.ArgumentParser()
    add_options(parser, Tiny)
    args = parser.parse_args(["--depth", "4"])
    assert options_from_args(args, Tiny) == {"depth": 4}
    assert Tiny().replace(**options_from_args(args, Tiny)) == Tiny(depth=4)
    assert Tiny.from_json(Tiny(width=5).to_json()) == Tiny(width=5)
    with pytest.raises(ValueError, match="width must be >= 1"):
        Tiny(width=0)


# ---------------------------------------------------------------------------- recipes
def test_defaults_are_the_measured_recipe_of_the_current_network():
    """TrainConfig's defaults are RECIPES["default"] for the current network (benchmarks/results/sweep/)."""
    assert TrainConfig() == TrainConfig.recipe("default")
    default = TrainConfig()
    assert (default.model, default.optimizer, default.lr, default.lr_schedule) == (
        "current",
        "adam",
        3e-3,
        "cosine",
    )
    assert (default.steps, default.batch_size, default.num_queries) == (10_000, 16_384, 512)
    assert default.model_kwargs == {"encoding": "onehot"} and default.ema_decay == 0.999


def test_every_recipe_sets_every_recipe_setting_for_every_model():
    from ecd2g_fast.hamming import HammingCircuit
    from ecd2g_fast.training.config import CIRCUIT_MODELS, MODELS, RECIPE_SETTINGS, RECIPES

    assert set(RECIPES) == {"default", "paper"}
    # the paper's recipe is for the paper's (complete) circuit; the default one covers every model
    assert set(RECIPES["default"].settings) == set(MODELS)
    assert set(RECIPES["paper"].settings) == set(MODELS) - set(CIRCUIT_MODELS[HammingCircuit])
    for recipe in RECIPES.values():
        for model, values in recipe.settings.items():
            assert set(values) == set(RECIPE_SETTINGS) and values["model"] == model
            TrainConfig(**values)  # valid


def test_paper_recipe_is_the_papers_algorithm_and_budget():
    paper = TrainConfig.recipe("paper")
    assert paper.model == "current" and paper.model_kwargs == {"encoding": "scaled"}
    assert (paper.optimizer, paper.lr, paper.lr_schedule, paper.warmup_steps) == ("sgd", 0.01, "constant", 0)
    assert (paper.steps, paper.batch_size, paper.queries_per_step, paper.queries) == (
        5000,
        256,
        256,
        "uniform",
    )
    assert paper.ema_decay is None
    assert TrainConfig.recipe("paper", model="potential").model == "potential"


def test_with_recipe_keeps_the_settings_outside_the_recipe():
    config = TrainConfig(seed=7, amp=False, checkpoint_every=3, lr=0.5, model="potential")
    paper = config.with_recipe("paper")
    assert (paper.seed, paper.amp, paper.checkpoint_every) == (7, False, 3)
    assert paper.lr == 0.01 and paper.model == "current"
    # the default recipe has no model of its own: the configuration's is kept
    assert config.with_recipe("default") == TrainConfig.recipe("default", model="potential").replace(
        seed=7, amp=False, checkpoint_every=3
    )
    with pytest.raises(ValueError, match="recipe must be one of 'default', 'paper'"):
        config.with_recipe("fast")
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig.recipe("paper", model="flow")


def _config(argv):
    return cli._config_from_args(cli.build_parser().parse_args(["run", *argv]))


def test_recipe_option_sets_many_settings_and_explicit_options_override_it():
    config = _config(["moons-to-swissroll-2d", "--recipe", "paper"])
    assert config.recipe == "paper" and config.train == TrainConfig.recipe("paper")
    config = _config(["moons-to-swissroll-2d", "--recipe", "paper", "--steps", "7", "--model", "potential"])
    assert config.train == TrainConfig.recipe("paper", model="potential", steps=7)
    assert _config(["uniform-to-gaussian-1d", "--recipe", "default"]).train == TrainConfig()
    with pytest.raises(SystemExit):
        _config(["uniform-to-gaussian-1d", "--recipe", "fast"])


def test_presets_use_the_measured_recipe_per_model():
    assert EXPERIMENTS["uniform-to-gaussian-1d"].train == TrainConfig()
    for name in ("moons-to-swissroll-2d", "noise-to-swissroll-2d"):
        assert EXPERIMENTS[name].recipe == "default"
        assert EXPERIMENTS[name].train == TrainConfig.recipe("default", model="potential")
    # another --model takes that model's measured settings; single options still override
    assert _config(["moons-to-swissroll-2d", "--model", "current"]).train == TrainConfig()
    config = _config(["moons-to-swissroll-2d", "--model", "current", "--queries", "data"])
    assert config.train == TrainConfig(queries="data")
    assert _config(["uniform-to-gaussian-1d", "--model", "potential"]).train == TrainConfig.recipe(
        "default", model="potential"
    )


def test_model_kwargs_without_an_encoding_get_the_default_encoding():
    from ecd2g_fast import Circuit

    circuit = Circuit(6, 2, 3)
    assert TrainConfig(model_kwargs={"hidden": [8]}).build_model(circuit).encoding.kind == "onehot"
    assert TrainConfig.recipe("paper").build_model(circuit).encoding.kind == "scaled"
