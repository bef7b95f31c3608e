"""The digits splice benchmark (benchmarks/digits_splice.py) on a tiny binary-digits run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from benchmarks import digits_splice
from ecd2g_fast import cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn")

TINY_DIGITS = [
    *("--num-layers", "4", "--steps", "20", "--batch-size", "64", "--num-queries", "64"),
    *("--model-kwargs", '{"width": 32, "depth": 1, "layer_encoding": "smooth", "sink": "learned"}'),
    *("--num-samples", "20", "--quiet", "--device", "cpu"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (conftest.one_thread)."""


@pytest.mark.parametrize("K", [2, 17])
def test_noised_states_differ_in_exactly_the_asked_coordinates(K):
    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, K, (50, 64), generator=g)
    for flips in (0, 1, 8):
        changed = digits_splice.noised(states, flips, K, g)
        assert ((changed != states).sum(1) == flips).all()
        assert changed.min() >= 0 and changed.max() < K and changed.dtype == states.dtype


def test_splice_walks_below_a_layer_end_on_training_images(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "digits"
    assert cli.main(["run", "binary-digits-64", "--out", str(out), *TINY_DIGITS]) == 0
    monkeypatch.setattr(digits_splice, "RESULTS", tmp_path / "splice.jsonl")
    monkeypatch.setattr(digits_splice, "SUMMARY", tmp_path / "splice.md")
    monkeypatch.setattr(digits_splice, "RISES_FIGURE", tmp_path / "rises.png")
    argv = [str(out), "tiny", "--splice", "2", "--inflow", "--walkers", "12", "--noise-flips", "0", "5"]
    row = digits_splice.main(
        [*argv, "--sharpen", "1.5", "--sharpen-from", "3", "--rises", "2", "4", "--quiet"]
    )
    (splice,) = row["splices"]
    below, above = splice["learned_below"], splice["learned_above"]
    # the training images' exact field from layer 2 on: every finished walker is a training image
    assert below["finished"] == 12 and below["memorisation"]["samples_mean"] == 0
    assert below["memorisation"]["samples_exact_copies"] == 1
    for walk in (below, above, row["network_samples"], row["inflow_walk"], row["sharpened"]["1.5"]):
        assert sum(walk["label_histogram"]) == pytest.approx(1.0)
        assert 0 <= walk["label_tv_crossfit"] <= 1 and walk["label_tv_crossfit_floor"] > 0
    # on training images the margin is the distance to the nearest image of another digit
    assert below["class_margin"]["samples_mean"] > below["class_margin"]["held_out_mean"]
    rise = row["rises"]["4"]
    assert rise["network"]["distance"] == rise["training_images_field"]["distance"] > 0
    # the training images' own field peaks at the images
    assert (
        rise["training_images_field"]["rise"] > 0 and rise["training_images_field"]["rise_per_coordinate"] > 0
    )
    clean, noisy = row["noised_images"]["0"], row["noised_images"]["5"]
    assert clean["memorisation"]["samples_mean"] == 0 and noisy["memorisation"]["samples_mean"] > 0
    assert row["network_samples"]["num_samples"] == 20 and row["run_config"]["num_layers"] == 4
    assert json.loads((tmp_path / "splice.jsonl").read_text())["tag"] == "tiny"
    table = (tmp_path / "splice.md").read_text()
    assert "learned below 2, training images' field above" in table and "left by its inflow" in table
    assert "| tiny | 4 |" in table and (tmp_path / "rises.png").stat().st_size > 0  # the rises
    with pytest.raises(ValueError, match="--splice"):
        digits_splice.main([str(out), "bad", "--splice", "5", "--quiet"])
    assert (
        digits_splice.main([str(out), "no-walks", "--splice", "--quiet"])["sharpened"] == {}
    )  # 48 > L unused
    with pytest.raises(ValueError, match="--rises"):
        digits_splice.main([str(out), "bad", "--splice", "--rises", "5", "--quiet"])
    with pytest.raises(ValueError, match="--sharpen-from"):
        digits_splice.main([str(out), "bad", "--splice", "--sharpen", "2", "--sharpen-from", "0", "--quiet"])


def test_sharpened_field_scales_the_network_output_from_its_layer_on():
    import ecd2g_fast as E
    from ecd2g_fast.hamming import HammingNetField
    from ecd2g_fast.hamming.model import HammingNet

    circuit = E.HammingCircuit(2, 6, 4)
    torch.manual_seed(0)
    field = HammingNetField(HammingNet(circuit, width=16, depth=1, sink="learned"))
    g = torch.Generator().manual_seed(1)
    layer, z = torch.arange(5), torch.randint(0, 2, (5, 6), generator=g)
    with torch.no_grad():
        s = field.log_field(layer, z)
        f = s - field.tables.log_norm[layer]
        sharp = digits_splice.SharpenedField(field, 2.0, 3).log_field(layer, z)
        torch.testing.assert_close(sharp[:3], s[:3], rtol=0, atol=0)
        torch.testing.assert_close(sharp[3:], field.tables.log_norm[layer[3:]] + 2 * f[3:])
        backward = torch.rand(5, 7, generator=g, dtype=torch.float64)
        torch.testing.assert_close(
            digits_splice.SharpenedField(field, 2.0, 3).sink_over_rho(z, backward),
            field.sink_over_rho(z, backward),
            rtol=0,
            atol=0,
        )


def test_rises_are_the_mean_log_field_differences():
    import ecd2g_fast as E
    from ecd2g_fast.hamming import DataLogField

    circuit = E.HammingCircuit(2, 6, 4)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 2, (5, 6), generator=g)
    field = DataLogField(circuit, data)
    start = torch.randint(0, 2, (8, 6), generator=g)
    end = digits_splice.nearest_rows(start, data)
    assert torch.equal((start != end).sum(1), ((start[:, None] != data[None]).sum(-1)).min(1).values)
    out = digits_splice.rises(field, 3, start, end)
    layer = torch.full((8,), 3)
    rise = field.log_field(layer, end) - field.log_field(layer, start)
    distance = (start != end).sum(1)
    assert out["rise"] == pytest.approx(float(rise.mean()))
    assert out["distance"] == pytest.approx(float(distance.double().mean()))
    apart = distance > 0
    assert out["rise_per_coordinate"] == pytest.approx(float((rise[apart] / distance[apart]).mean()))


def test_walks_that_read_neighbour_values_refuse_a_ratio_head(tmp_path, monkeypatch):
    """A ratio head's walk does not read the network's values at neighbour states, so the splices,
    the sharpened walks and ``--rises`` refuse such a run, naming the head; its own samples and
    its inflow walk are still scored."""
    out = tmp_path / "digits"
    model = TINY_DIGITS.index("--model-kwargs") + 1
    ratios = [
        *TINY_DIGITS[:model],
        TINY_DIGITS[model].replace("}", ', "head": "ratios"}'),
        *TINY_DIGITS[model + 1 :],
    ]
    assert cli.main(["run", "binary-digits-64", "--out", str(out), *ratios]) == 0
    monkeypatch.setattr(digits_splice, "RESULTS", tmp_path / "splice.jsonl")
    monkeypatch.setattr(digits_splice, "SUMMARY", tmp_path / "splice.md")
    for extra in (
        ["--splice", "2"],
        ["--splice", "--sharpen", "2", "--sharpen-from", "3"],
        ["--splice", "--rises", "2"],
    ):
        with pytest.raises(ValueError, match="head='ratios'"):
            digits_splice.main([str(out), "bad", *extra, "--walkers", "4", "--quiet"])
    row = digits_splice.main([str(out), "ok", "--splice", "--inflow", "--walkers", "4", "--quiet"])
    assert row["inflow_walk"]["num_samples"] == 4 and row["network_samples"]["num_samples"] == 20
