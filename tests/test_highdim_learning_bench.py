"""The measurements of benchmarks/highdim_learning.py on the exact field, where their values are
known: no field error, slope 1, a gap anatomy that matches exact draws; and a flattened field
and noisy samples are caught."""

from __future__ import annotations

import pytest
import torch

import ecd2g_fast as E
from benchmarks import highdim_learning as bench
from ecd2g_fast.experiments.highdim import BernoulliMixture
from ecd2g_fast.hamming.log_field import ProductMixtureLogField


def _mixture_and_field(layers: int = 8) -> tuple[BernoulliMixture, ProductMixtureLogField]:
    mixture = BernoulliMixture.make(bench.DIM, 10, seed=0)
    return mixture, bench.exact_field(mixture, E.HammingCircuit(2, bench.DIM, layers))


def test_the_exact_field_has_no_error_and_slope_one_and_a_flattened_one_is_seen():
    mixture, exact = _mixture_and_field()
    g = torch.Generator().manual_seed(0)
    data = mixture.sample(200, g)[0]
    rows = bench.field_errors(exact, exact, data, g)
    assert {row["layer"] for row in rows} == {0, 5, 6, 7, 8}  # every 8th and the last four
    for row in rows:
        assert row["sd"] == row["walk_sd"] == row["noise_sd"] == 0.0
        if row["layer"] < 8:
            assert row["step_sd"] == row["correction_sd"] == row["noise_step_sd"] == 0.0
    slopes = bench.field_slopes(exact, exact, data, g)
    assert slopes.keys() == {"7", "8"}
    assert all(abs(v - 1) < 1e-9 for v in slopes.values())

    class Flat(ProductMixtureLogField):
        def log_field(self, layer, z):
            return 0.7 * super().log_field(layer, z)

    flat = Flat(exact.circuit, torch.stack([1 - mixture.theta, mixture.theta], -1), mixture.weights)
    assert all(abs(v - 0.7) < 1e-9 for v in bench.field_slopes(flat, exact, data, g).values())
    assert all(row["noise_sd"] > 0 for row in bench.field_errors(flat, exact, data, g))


def test_gap_anatomy_of_exact_draws_and_of_noisy_ones():
    """Exact draws: about 1 % in the data's 1 % tail, a median gap near 0, noise bits as the flip
    probabilities say, component shares near the weights (and all in one for one component's samples). Half of the samples replaced by uniform noise: the tail share and the
    flips jump."""
    mixture, _ = _mixture_and_field()
    g = torch.Generator().manual_seed(1)
    reference, samples = mixture.sample(20_000, g)[0], mixture.sample(4000, g)[0]
    anatomy = bench.gap_anatomy(samples, reference, mixture)
    assert anatomy["tail"] < 0.02
    assert abs(anatomy["quantiles"]["0.5"]) < 1.5
    assert anatomy["quantiles"]["0.1"] < anatomy["quantiles"]["0.5"] < anatomy["quantiles"]["0.9"]
    expected_flips = float(torch.minimum(mixture.theta, 1 - mixture.theta).sum(1) @ mixture.weights)
    assert abs(anatomy["flips"] - expected_flips) < 0.05 * expected_flips
    shares = torch.tensor(anatomy["component_shares"], dtype=torch.float64)
    assert abs(float(shares.sum()) - 1) < 1e-12
    assert float((shares - mixture.weights).abs().max()) < 0.03  # 4000 draws: se <= 0.007
    one_mode = bench.gap_anatomy(samples[mixture.components(samples) == 0], reference, mixture)
    assert one_mode["component_shares"][0] == 1.0
    noisy = samples.clone()
    noisy[::2] = torch.randint(0, 2, noisy[::2].shape, generator=g)
    worse = bench.gap_anatomy(noisy, reference, mixture)
    assert worse["tail"] > 0.45 and worse["flips"] > anatomy["flips"] + 5
    assert worse["standard_error"] > 2 * anatomy["standard_error"] > 0


def test_spliced_and_flattened_fields_take_each_part_from_the_right_field():
    mixture, exact = _mixture_and_field()
    g = torch.Generator().manual_seed(2)
    data = mixture.sample(200, g)[0]
    flat = bench.FlattenedField(exact, 0.5, 6, data, g)
    z = torch.randint(0, 2, (9, bench.DIM), generator=g)
    layer = torch.arange(9)
    with torch.no_grad():
        s_exact, s_flat = exact.log_field(layer, z), flat.log_field(layer, z)
        torch.testing.assert_close(s_flat[:6], s_exact[:6], rtol=0, atol=0)
        assert bool((s_flat[6:] != s_exact[6:]).all())
        spliced = bench.SplicedField(exact, flat, 7).log_field(layer, z)
        torch.testing.assert_close(spliced, torch.cat([s_exact[:7], s_flat[7:]]), rtol=0, atol=0)
    slopes = bench.field_slopes(flat, exact, data, g)
    assert all(abs(v - 0.5) < 1e-9 for v in slopes.values())
    assert bench.SplicedField(exact, flat, 7).bridge_dead_ends
    # walkers leave by the upper field's sink (a learned head's, here a stand-in constant)
    flat.sink_over_rho = lambda states, backward: torch.full((states.shape[0],), 0.25, dtype=torch.float64)
    backward = torch.rand(9, bench.DIM + 1, generator=g, dtype=torch.float64)
    assert bench.SplicedField(exact, flat, 7).sink_over_rho(z, backward).tolist() == [0.25] * 9
    inflow = bench.SplicedField(flat, exact, 7).sink_over_rho(z, backward)
    torch.testing.assert_close(inflow, -backward.sum(1), rtol=0, atol=0)


def test_sink_errors_are_zero_for_the_exact_field_and_see_a_flattened_one(monkeypatch):
    """The exact field's r is a posterior in [0, 1], near 0 at noise states; a field flattened at
    layer L lets walkers leave at noise states: its r there is too large."""
    monkeypatch.setattr(bench, "PROBE_STATES", 128)  # each state costs 2 N + 1 exact evaluations
    mixture, exact = _mixture_and_field()
    g = torch.Generator().manual_seed(3)
    data = mixture.sample(200, g)[0]
    errors = bench.sink_errors(exact, exact, data, torch.Generator().manual_seed(3))
    for part in ("walk", "far", "noise"):
        assert errors[part]["abs_error"] == 0.0 and 0 < errors[part]["r"] <= 1
        assert errors[part]["exit"] == errors[part]["exit_exact"]
    assert errors["noise"]["r"] < errors["far"]["r"] < 0.1 < errors["walk"]["r"]
    flat = bench.FlattenedField(exact, 0.8, 7, data, g)
    flattened = bench.sink_errors(flat, exact, data, torch.Generator().manual_seed(3))
    for part in ("far", "noise"):
        assert flattened[part]["r_exact"] == errors[part]["r_exact"]
        assert flattened[part]["exit"] > 2 * flattened[part]["exit_exact"]


def test_the_exact_sink_of_the_exact_field_is_its_own_inflow():
    """ExactSinkField puts q(z) over the field's rho_L(z) at layer L: for the exact field that is its
    own Kirchhoff sink, and nothing else changes."""
    mixture, exact = _mixture_and_field()
    z = mixture.sample(16, torch.Generator().manual_seed(4))[0]
    layer = torch.tensor([8] * 12 + [7, 6, 0, 5])
    with torch.no_grad():
        mine = bench.ExactSinkField(exact, mixture.log_likelihood).outlet_currents(layer, z, "bidirectional")
        theirs = exact.outlet_currents(layer, z, "bidirectional")
    torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)
    assert bool((mine[:12, -1] > 0).all()) and bool((mine[12:, -1] == 0).all())


def test_trace_of_the_exact_field_ends_on_the_data_and_its_exit_shares_are_its_own():
    mixture, exact = _mixture_and_field()
    g = torch.Generator().manual_seed(5)
    reference = mixture.sample(5000, g)[0]
    assert bench.trace_layers(64) == [32, 48, 56, 60, 62, 64] and bench.trace_layers(8) == [4, 6, 7, 8]
    trace = bench.trace_walk(exact, exact, mixture, reference, walkers=40, max_moves=200, seed=0)
    assert trace["finished"] == 40 and trace["tail_share"] < 0.1
    rest = trace["rest"]
    assert rest["walkers"] + trace["tail"]["walkers"] == 40
    assert rest["exit_share"] == rest["exact_exit_share"] > 0
    assert rest["visits_to_L"] >= 1
    reach = [rest["reach_distance"][str(l)] for l in bench.trace_layers(8)]
    assert reach[0] > reach[-1] > rest["end_distance"] - 3  # walkers approach the data towards L


def test_component_errors_are_zero_for_the_exact_field_and_see_a_field_that_favours_heavy_modes(
    monkeypatch,
):
    """A field whose S_L adds 0.5 log w of the state's most likely component (heavy modes'
    peaks raised) gets a field slope of 0.5 on the log-weights at clean draws; the exact one 0."""
    monkeypatch.setattr(bench, "PROBE_STATES", 32)
    mixture, exact = _mixture_and_field()
    errors = bench.component_errors(exact, exact, mixture, torch.Generator().manual_seed(6))
    assert set(errors) == {str(k) for k in bench.COMPONENT_DISTANCES}
    for part in errors.values():
        assert part["field"] == part["sink"] == [0.0] * 10
        assert part["field_slope"] == part["sink_slope"] == 0.0

    class FavoursHeavy(ProductMixtureLogField):
        def log_field(self, layer, z):
            bonus = 0.5 * mixture.weights.log()[mixture.components(z)]
            return super().log_field(layer, z) + torch.where(layer == self.circuit.num_layers, bonus, 0.0)

    heavy = FavoursHeavy(exact.circuit, torch.stack([1 - mixture.theta, mixture.theta], -1), mixture.weights)
    errors = bench.component_errors(heavy, exact, mixture, torch.Generator().manual_seed(6))
    assert abs(errors["0"]["field_slope"] - 0.5) < 0.02
    assert errors["0"]["sink_slope"] != 0.0  # the inflow sink moves with the field


def test_diagnostic_fields_that_read_neighbour_values_refuse_a_ratio_head():
    """SplicedField (on either side) reads a network's values at neighbour states, which a ratio
    head's walk does not: refused, naming the head; ExactSinkField walks the network's own outlets."""
    from ecd2g_fast.hamming import HammingNet

    mixture, exact = _mixture_and_field()
    ratio = HammingNet(exact.circuit, width=8, depth=1, head="ratios").field()
    scalar = HammingNet(exact.circuit, width=8, depth=1).field()
    for below, above in ((exact, ratio), (ratio, exact)):
        with pytest.raises(ValueError, match="head='ratios'"):
            bench.SplicedField(below, above, 4)
    bench.SplicedField(exact, scalar, 4)
    assert bench.ExactSinkField(ratio, mixture.log_likelihood).field is ratio
