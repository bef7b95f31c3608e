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
