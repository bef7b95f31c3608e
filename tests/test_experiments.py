"""The experiments end to end through the ``ecd2g`` entry point, in tiny configurations.

Each shipped experiment runs in-process (``ecd2g_fast.cli.main``) with few steps, a small grid
and few samples, and must write every output file. The data sets' exact pmfs and the exact output
law of learned fields are checked against long sampling runs (chi-square, false-failure rate
about 1e-6 per test, see ``tests/testing.py``).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast import cli
from ecd2g_fast import metrics as M
from ecd2g_fast.experiments import datasets, evaluation
from ecd2g_fast.models import PotentialNet

from .testing import assert_samples_follow

pytest.importorskip("matplotlib")

COMMON_FILES = (
    "config.json",
    "checkpoint.pt",
    "samples.npy",
    "source_samples.npy",
    "metrics.json",
    "histograms.png",
    "loss.png",
)
METRIC_KEYS = (
    "tv",
    "tv_floor",
    "tv_floor_vs_pmf",
    "tv_exact",
    "kl",
    "kl_floor",
    "js",
    "js_floor",
    "num_samples",
    "train_seconds",
    "sample_seconds",
    "samples_per_second",
    "device",
    "model",
    "mode",
    "backend",
)
TINY = ["--steps", "20", "--batch-size", "64", "--num-samples", "600", "--quiet", "--device", "cpu"]


def _run(args: list[str]) -> None:
    assert cli.main(args) == 0


def _check_outputs(out, extra_files=(), dim=None):
    for name in (*COMMON_FILES, *extra_files):
        assert (out / name).is_file(), f"missing {name}"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, f"metrics.json lacks {key}"
    samples = np.load(out / "samples.npy")
    config = json.loads((out / "config.json").read_text())
    assert samples.shape == (metrics["num_samples"], config["dim"])
    assert samples.dtype == np.int64
    assert 0 <= samples.min() and samples.max() < config["num_categories"]
    if dim is not None:
        assert config["dim"] == dim
    for key in ("tv", "tv_floor", "js"):
        assert 0.0 <= metrics[key] <= 1.0
    return metrics


# ---------------------------------------------------------------------------- shipped experiments
def test_uniform_to_gaussian_1d(tmp_path):
    out = tmp_path / "gauss"
    # a CurrentNet after a handful of steps may leave a vertex with no positive outflow (a trap):
    # 300 steps (about a second) give a usable field
    _run(["run", "uniform-to-gaussian-1d", "--out", str(out), "--num-categories", "12", "--num-layers", "3", *TINY,
          "--steps", "300"])  # fmt: skip
    metrics = _check_outputs(out, ("current_flow.png",), dim=1)
    assert metrics["model"] == "current" and metrics["mode"] == "bidirectional"
    assert metrics["tv_exact"] is not None and metrics["exact_error"] is None


@pytest.mark.parametrize("experiment", ["moons-to-swissroll-2d", "noise-to-swissroll-2d"])
def test_2d_experiments(tmp_path, experiment):
    out = tmp_path / experiment
    _run(
        [
            "run",
            experiment,
            "--out",
            str(out),
            "--num-categories",
            "8",
            "--num-layers",
            "3",
            "--num-queries",
            "32",
            *TINY,
        ]
    )
    metrics = _check_outputs(out, ("exact_output.png",), dim=2)
    assert metrics["model"] == "potential"
    assert metrics["backend_selected"] in ("potential", "cpp", "torch")
    assert metrics["tv_exact"] is not None


def test_custom_experiment_from_npy_and_csv_files(tmp_path):
    rng = np.random.default_rng(0)
    source = rng.integers(0, 3, size=(200, 2))
    target = rng.integers(3, 6, size=(200, 2))
    np.save(tmp_path / "source.npy", source)
    lines = ["a,b"] + [f"{x},{y}" for x, y in target]
    (tmp_path / "target.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "custom"
    _run(
        [
            "run", "custom", "--source", str(tmp_path / "source.npy"), "--target", str(tmp_path / "target.csv"),
            "--num-categories", "6", "--num-layers", "2", "--model", "potential", "--out", str(out), *TINY,
        ]
    )  # fmt: skip
    metrics = _check_outputs(out, dim=2)
    assert metrics["target_pmf"] == "empirical law of the target file"


def test_train_sample_evaluate_subcommands(tmp_path):
    out = tmp_path / "stages"
    base = ["--num-categories", "10", "--num-layers", "2", "--out", str(out), "--quiet", "--device", "cpu"]
    _run(["train", "uniform-to-gaussian-1d", "--steps", "100", "--batch-size", "32", *base])
    assert (out / "checkpoint.pt").is_file() and not (out / "samples.npy").exists()
    _run(
        [
            "sample",
            "--out",
            str(out),
            "--mode",
            "forward",
            "--backend",
            "torch",
            "--num-samples",
            "300",
            "--quiet",
        ]
    )
    assert np.load(out / "samples.npy").shape == (300, 1)
    _run(["evaluate", "--out", str(out), "--quiet"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "forward" and metrics["backend"] == "torch" and metrics["num_samples"] == 300
    assert json.loads((out / "config.json").read_text())["mode"] == "forward"


def test_list_and_usage_errors(tmp_path, capsys):
    assert cli.main(["list"]) == 0
    assert "moons-to-swissroll-2d" in capsys.readouterr().out
    assert cli.main(["run", "custom", "--source", "moons", "--out", str(tmp_path / "x"), "--quiet"]) == 1
    assert "--target" in capsys.readouterr().err
    assert (
        cli.main(["run", "custom", "--source", str(tmp_path / "nope.npy"), "--target", "moons", "--quiet"])
        == 1
    )
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["evaluate", "--out", str(tmp_path / "empty"), "--quiet"]) == 1
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "moons-to-swissroll-2d", "--steps", "0"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------- data sets
@pytest.mark.parametrize(
    "make", [datasets.moons, datasets.swiss_roll, datasets.circles], ids=["moons", "swissroll", "circles"]
)
def test_curve_pmf_matches_samples(make):
    dist = make(16)
    pmf = dist.pmf()
    assert pmf.shape == (256,) and abs(pmf.sum() - 1) < 1e-12
    counts = M.histogram(dist.sample(400_000, np.random.default_rng(3)), 16)
    assert_samples_follow(torch.from_numpy(counts), torch.from_numpy(pmf))


def test_checkerboard_pmf():
    board = datasets.Checkerboard(8)
    pmf = board.pmf().reshape(8, 8)
    dark = np.add.outer(np.arange(8) // 2, np.arange(8) // 2) % 2 == 0
    np.testing.assert_allclose(pmf[dark], 1 / 32)
    assert not pmf[~dark].any()
    counts = M.histogram(board.sample(100_000, np.random.default_rng(5)), 8)
    assert_samples_follow(torch.from_numpy(counts), torch.from_numpy(board.pmf()))
    with pytest.raises(ValueError, match="squares"):
        datasets.Checkerboard(3, squares=4)


def test_new_named_data_sets_are_usable_by_name():
    from ecd2g_fast.experiments.configs import NAMED_DATASETS, make_distribution

    for name in ("circles", "checkerboard"):
        assert NAMED_DATASETS[name] == 2
        assert make_distribution(name, 12, 2).pmf().shape == (144,)
        with pytest.raises(ValueError, match="2D data set"):
            make_distribution(name, 12, 1)


def test_gaussian_and_uniform_pmfs():
    gauss = datasets.DiscretisedGaussian1D(50)
    x = np.arange(50)
    expected = np.exp(-0.5 * ((x - 24.5) / 5.0) ** 2)
    np.testing.assert_allclose(gauss.pmf(), expected / expected.sum(), rtol=1e-14)
    np.testing.assert_allclose(datasets.UniformGrid(4, 2).pmf(), np.full(16, 1 / 16))


def test_load_states_csv_header_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n2\n3\n")
    np.testing.assert_array_equal(datasets.load_states(tmp_path / "a.csv"), [[1], [2], [3]])
    (tmp_path / "b.csv").write_text("1.5,2\n")
    with pytest.raises(ValueError, match="integer"):
        datasets.load_states(tmp_path / "b.csv", name="--source")
    (tmp_path / "c.txt").write_text("1\n")
    with pytest.raises(ValueError, match=".npy or .csv"):
        datasets.load_states(tmp_path / "c.txt")
    with pytest.raises(FileNotFoundError, match="--target"):
        datasets.load_states(tmp_path / "missing.npy", name="--target")


# ---------------------------------------------------------------------------- exact output law
def test_exact_output_law_of_a_learned_current_field_matches_sampling(tmp_path):
    out = tmp_path / "learned"
    _run(["train", "uniform-to-gaussian-1d", "--num-categories", "9", "--num-layers", "3", "--steps", "300",
          "--batch-size", "64", "--out", str(out), "--quiet", "--device", "cpu"])  # fmt: skip
    field = E.training.load_field(out / "checkpoint.pt", "cpu")
    p = torch.full((9,), 1 / 9, dtype=torch.float64)
    law = E.exact_output_distribution(field, p, "bidirectional")
    x0 = torch.randint(0, 9, (40_000, 1), generator=torch.Generator().manual_seed(4))
    states = E.sample(field, x0, "bidirectional", generator=torch.Generator().manual_seed(5))
    assert_samples_follow(torch.bincount(states[:, 0], minlength=9), law.pmf)


def test_potential_net_field_projects_negative_densities_and_never_traps_a_walker():
    circuit = E.Circuit(5, 2, 3)
    torch.manual_seed(0)
    net = PotentialNet(circuit, hidden=(16, 16))
    with torch.no_grad():
        net.body[-1].weight.mul_(200.0)  # densities far outside [-1, inf): negative "pmfs"
    field = net.field()
    info = evaluation.density_projection_info(field)
    assert info["density_projection"] and info["negative_source_mass"] > 0
    p, q = field.densities()
    assert bool((p >= 0).all()) and bool((q >= 0).all()) and bool((p == 0).any())
    law = E.exact_output_distribution(field, p, "bidirectional")
    np.testing.assert_allclose(law.pmf.numpy(), q.numpy(), atol=1e-12)  # exact from the projected p
    # start everywhere, also where the projected p is 0: every walk ends, and follows its exact law
    uniform = torch.full((25,), 1 / 25, dtype=torch.float64)
    law_uniform = E.exact_output_distribution(field, uniform, "bidirectional")
    x0 = circuit.index_state(torch.arange(25).repeat(4000))
    states = E.sample(field, x0, generator=torch.Generator().manual_seed(7))
    assert_samples_follow(torch.from_numpy(M.histogram(states, 5)), law_uniform.pmf)


def test_run_without_matplotlib_skips_figures_and_keeps_everything_else(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "no-plots"
    _run(["run", "moons-to-swissroll-2d", "--out", str(out), "--num-categories", "6", "--num-layers", "2",
          "--num-queries", "16", "--steps", "10", "--batch-size", "32", "--num-samples", "200", "--device", "cpu"])  # fmt: skip
    for name in ("config.json", "checkpoint.pt", "samples.npy", "source_samples.npy", "metrics.json"):
        assert (out / name).is_file(), f"missing {name}"
    assert not list(out.glob("*.png"))
    err = capsys.readouterr().err
    assert err.count("matplotlib is not installed: figures skipped") == 1
    assert "tv_exact" in json.loads((out / "metrics.json").read_text())
