"""The high-dimensional experiments through the ``ecd2g`` entry point, in tiny configurations.

A ``bernoulli-mixture`` run at ``D = 8``, ``L = 4`` with a tiny network trains, walks and is
judged in a few seconds; the presets' resolution, the run folder's resume and the option errors
are checked without a full-size run (ecd2g_fast/experiments/highdim_stages.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecd2g_fast import cli
from ecd2g_fast.experiments import highdim_stages, runner
from ecd2g_fast.experiments.configs import EXPERIMENTS
from ecd2g_fast.experiments.folder import RunFolder
from ecd2g_fast.hamming import HammingCircuit
from ecd2g_fast.training import Trainer, load_checkpoint

pytest.importorskip("matplotlib")

TINY = [
    *("--dim", "8", "--num-layers", "4", "--steps", "30", "--batch-size", "64", "--num-queries", "64"),
    *("--model-kwargs", '{"width": 32, "depth": 1}', "--num-samples", "50", "--quiet", "--device", "cpu"),
]  # fmt: skip
FILES = (
    "config.json",
    "checkpoint.pt",
    "run.json",
    "samples.npy",
    "source_samples.npy",
    "metrics.json",
    "loss.png",
    "samples.png",
    "marginals.png",
)
MIXTURE_METRICS = ("marginal_tv", "correlation_error", "loglik", "loglik_gap", "coverage_tv")
SAMPLING_KEYS = (
    "num_walkers",
    "num_samples",
    "finished_fraction",
    "max_moves",
    "mean_moves",
    "bridged_dead_ends",
    "sample_seconds",
    "moves_per_second",
    "seconds_per_walker_move",
    "peak_memory_bytes",
    "train_seconds",
    "model",
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (conftest.one_thread)."""


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_tiny_mixture_run_then_sample_and_evaluate_again(tmp_path):
    out = tmp_path / "mixture"
    assert cli.main(["run", "bernoulli-mixture-64", "--out", str(out), *TINY]) == 0
    for name in FILES:
        assert (out / name).is_file(), f"missing {name}"
    metrics = _metrics(out)
    for key in (*SAMPLING_KEYS, *MIXTURE_METRICS, *(f"{m}_floor" for m in MIXTURE_METRICS)):
        assert key in metrics, f"metrics.json lacks {key}"
    assert "tv" not in metrics and metrics["model"] == "hamming" and metrics["num_walkers"] == 50
    assert metrics["reference_size"] == 20_000 and metrics["floor_size"] == metrics["num_samples"]
    config = json.loads((out / "config.json").read_text())
    assert (config["num_categories"], config["dim"], config["R"]) == (2, 8, None)
    samples = np.load(out / "samples.npy")
    assert samples.shape == (metrics["num_samples"], 8) and samples.dtype == np.int64
    assert samples.min() >= 0 and samples.max() <= 1
    assert np.load(out / "source_samples.npy").shape == (50, 8)
    # the folder's stages again, with other sampling settings
    assert (
        cli.main(["sample", "--out", str(out), "--num-samples", "30", "--max-moves", "200", "--quiet"]) == 0
    )
    resampled = _metrics(out)
    assert resampled["num_walkers"] == 30 and resampled["max_moves"] == 200
    assert "marginal_tv" not in resampled and resampled["train_steps"] == 30  # the old evaluation is gone
    assert cli.main(["evaluate", "--out", str(out), "--quiet"]) == 0
    assert _metrics(out)["floor_size"] == resampled["num_samples"]


def test_an_interrupted_highdim_training_resumes_bit_identically(tmp_path, monkeypatch):
    args = [*TINY, "--seed", "3", "--checkpoint-every", "5"]
    original = Trainer.step

    def interrupted(self):
        if self.step_count == 12:
            raise KeyboardInterrupt
        return original(self)

    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    with monkeypatch.context() as m:
        m.setattr(Trainer, "step", interrupted)
        assert cli.main(["train", "bernoulli-mixture-64", "--out", str(resumed), *args]) == 130
    assert load_checkpoint(resumed / "checkpoint.pt.partial")["step"] == 10
    assert cli.main(["train", "bernoulli-mixture-64", "--out", str(resumed), *args, "--resume"]) == 0
    assert cli.main(["train", "bernoulli-mixture-64", "--out", str(whole), *args]) == 0
    a, b = load_checkpoint(resumed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert torch.equal(a["losses"], b["losses"])  # the mixture's fresh draws resumed too
    for key, tensor in b["ema_model"].items():
        assert torch.equal(a["ema_model"][key], tensor), key


@pytest.mark.parametrize(
    ("preset", "K", "D"),
    [("bernoulli-mixture-64", 2, 64), ("digits-64", 17, 64), ("binary-digits-64", 2, 64), ("bernoulli-mixture-256", 2, 256)],
)  # fmt: skip
def test_presets_resolve_to_hamming_runs(tmp_path, capsys, preset, K, D):
    run = runner.Run.resolve(EXPERIMENTS[preset], tmp_path)
    assert isinstance(run.circuit, HammingCircuit) and run.hamming
    assert (run.circuit.num_categories, run.circuit.dim, run.circuit.num_layers) == (K, D, 64)
    assert run.circuit.R == pytest.approx(0.1 * D * (K - 1))  # R none: the Hamming circuit's default
    assert run.config.train.model == "hamming" and run.source.name == f"uniform(K={K}, D={D})"
    assert runner.pipeline(run).sample_stage is highdim_stages.sample_stage
    assert cli.main(["list"]) == 0
    assert preset in capsys.readouterr().out


def test_grid_runs_keep_the_grid_pipeline(tmp_path):
    run = runner.Run.resolve(EXPERIMENTS["moons-to-swissroll-2d"], tmp_path)
    assert not run.hamming and runner.pipeline(run).sample_stage is runner.grid_sample_stage


def test_digits_metrics_of_held_out_images_sit_near_the_floor(tmp_path):
    """The evaluate stage of a K = 17 digits run, fed real held-out images as its samples."""
    with RunFolder(tmp_path / "digits").locked() as folder:
        run = runner.Run.resolve(EXPERIMENTS["digits-64"], folder)
        images = run.target.held_out_states[:200].numpy()
        metrics = runner.evaluate_stage(run, samples=images, progress=False, log=lambda message: None)
    assert metrics["classifier_accuracy"] > 0.8 and metrics["crossfit_accuracy"] > 0.8
    for key in ("marginal_tv", "correlation_error", "label_tv", "label_tv_crossfit"):
        assert metrics[key] < 2 * metrics[f"{key}_floor"] + 0.05, key
    assert metrics["memorisation_samples_mean"] == pytest.approx(
        metrics["memorisation_held_out_mean"], rel=0.2
    )
    assert metrics["class_margin_samples_mean"] == pytest.approx(
        metrics["class_margin_held_out_mean"], rel=0.2
    )
    assert (folder / "samples.png").is_file() and (folder / "marginals.png").is_file()


@pytest.mark.parametrize(
    ("preset", "extra", "message"),
    [
        ("bernoulli-mixture-64", ["--source", "moons"], "source must be 'uniform'"),
        ("bernoulli-mixture-64", ["--model", "potential"], "model must be 'hamming'"),
        ("bernoulli-mixture-64", ["--num-categories", "3"], "num_categories must be 2"),
        ("digits-64", ["--dim", "32"], "dim must be 64"),
        ("uniform-to-gaussian-1d", ["--model", "hamming"], "needs a high-dimensional target"),
        ("uniform-to-gaussian-1d", ["--R", "none"], "--R"),
        ("custom", ["--source", "digits", "--target", "uniform"], "give it as --target"),
    ],
    ids=["source", "model", "K", "D", "hamming-on-grid", "R-none-on-grid", "highdim-source"],
)
def test_inconsistent_options_fail_with_one_line_naming_the_option(tmp_path, capsys, preset, extra, message):
    args = ["run", preset, "--out", str(tmp_path / "x"), "--quiet", "--device", "cpu", *extra]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_presets_keep_the_hamming_recipe_model_settings():
    """A preset sets the network's size but keeps the recipe's other model settings (its layer encoding)."""
    from ecd2g_fast.experiments.configs import EXPERIMENTS
    from ecd2g_fast.training import TrainConfig

    recipe = TrainConfig.recipe("default", model="hamming")
    for name in ("bernoulli-mixture-64", "digits-64", "binary-digits-64", "bernoulli-mixture-256"):
        train = EXPERIMENTS[name].train
        assert {k: train.model_kwargs[k] for k in recipe.model_kwargs} == recipe.model_kwargs
        assert (train.queries, train.ratio_weight, train.grad_clip) == (
            recipe.queries,
            recipe.ratio_weight,
            recipe.grad_clip,
        )
