"""Dead ends found before sampling (ecd2g_fast/sampling/outflow.py) and the experiment runner's check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast import cli
from ecd2g_fast.experiments import runner
from ecd2g_fast.sampling import DeadEnds, check_no_dead_ends, find_dead_ends

# K = 3, D = 1, L = 2. I_0(z, w) = 1 everywhere except out of (0, 1), I_1(z, w) = 1 except out of
# (1, 2). So (1, 2) has no positive outflow (nothing forward, and its backward out-currents
# -I_0(w, 2) = -1 are negative) and every start reaches it; (0, 1) has none either, but no walk
# from (0, 0) or (0, 2) enters it (the backward out-currents -I_0(1, w) into it are 0).
TABLE = torch.ones((2, 3, 3), dtype=torch.float64)
TABLE[0, 1] = 0.0
TABLE[1, 2] = 0.0


def table_field(table: torch.Tensor = TABLE) -> E.StateField:
    c = E.Circuit(table.shape[1], 1, table.shape[0])
    return E.StateField(c, lambda layer, z, w: table[layer][z[:, 0]][:, w[:, 0]])


def exact_as_state_field(c: E.Circuit, p: torch.Tensor, q: torch.Tensor) -> E.StateField:
    """The exact currents behind the generic (non-acyclic) StateField interface."""
    currents = c.currents(p, q)
    return E.StateField(c, lambda layer, z, w: currents[layer][c.flatten(z)][:, c.flatten(w)])


def test_reachable_dead_end_is_reported_with_its_layer_and_state():
    field = table_field()
    start = torch.tensor([True, False, True])
    found = find_dead_ends(field, "bidirectional", start)
    assert isinstance(found, DeadEnds) and len(found) == 1
    assert found.layers.tolist() == [1] and found.states.tolist() == [[2]] and found.index.tolist() == [2]
    assert found.layers.dtype == found.index.dtype == found.states.dtype == torch.int64
    # the unreachable dead end (0, 1) is neither reached nor evaluated
    assert not bool(found.reachable[0, 1]) and bool(torch.isnan(found.outflow[0, 1]))
    assert found.num_reachable == 2 + 3 + 3 and found.outflow[1, 2] == 0
    assert found.outflow[0, 0] == 3 and found.outflow[2, 0] == 2  # three forward edges; sink = inflow
    with pytest.raises(
        E.FieldError, match=r"1 reachable vertex with no positive outflow.*layer 1, state \(2,\)"
    ):
        check_no_dead_ends(field, "bidirectional", start)
    # a pmf as the start: its support
    weights = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    assert find_dead_ends(field, "bidirectional", weights).layers.tolist() == [1]
    # the walk agrees: it is stranded exactly there
    x0 = torch.tensor([[0], [2]] * 50)
    with pytest.raises(E.FieldError, match=r"no positive outflow at layer 1, state \(2,\)"):
        E.sample(field, x0, generator=0)


def test_unreachable_dead_end_is_not_reported_but_all_vertices_evaluates_it():
    table = TABLE.clone()
    table[1, 2] = 1.0  # only the dead end at (0, 1) is left, which walkers from 0 and 2 never enter
    field = table_field(table)
    start = torch.tensor([True, False, True])
    found = check_no_dead_ends(field, "bidirectional", start)
    assert len(found) == 0 and not found
    assert "no dead end among 8 reachable vertices" in found.describe()
    everything = find_dead_ends(field, "bidirectional", start, all_vertices=True)
    assert len(everything) == 0 and bool(torch.isfinite(everything.outflow).all())
    assert bool(((everything.outflow <= 0) & ~everything.reachable)[0, 1])
    E.sample(field, torch.tensor([[0], [2]] * 50), generator=0)  # no walker stranded
    # starting everywhere, (0, 1) is a start and reported
    found = find_dead_ends(field)
    assert found.layers.tolist() == [0] and found.states.tolist() == [[1]]


def test_forward_mode_counts_forward_edges_only_and_stops_at_layer_L():
    table = torch.ones((2, 3, 3), dtype=torch.float64)
    table[0, 0] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # (0, 0) -> (1, 2) only
    table[0, 1, 2] = -1.0  # current flows back from (1, 2) to (0, 1)
    table[1, 2] = 0.0  # nothing forward out of (1, 2)
    field = table_field(table)
    start = torch.tensor([True, False, False])
    # forward-only: (1, 2) is a dead end; layer L is never evaluated (walkers stop there)
    found = find_dead_ends(field, "forward", start)
    assert found.layers.tolist() == [1] and found.states.tolist() == [[2]]
    assert found.reachable.tolist() == [[True, False, False], [False, False, True], [False, False, False]]
    assert bool(torch.isnan(found.outflow[2]).all())
    with pytest.raises(E.FieldError, match=r"no positive outflow at layer 1, state \(2,\)"):
        E.sample(field, torch.tensor([[0]] * 20), "forward", generator=0)
    # bidirectional: it leaves backwards to (0, 1), from where everything is reachable
    both = find_dead_ends(field, "bidirectional", start)
    assert len(both) == 0 and both.num_reachable == 2 + 3 + 3 and not bool(both.reachable[0, 2])
    assert both.outflow[1, 2] == 1 and both.outflow[2, 2] == 2  # one backward edge; sink = inflow
    E.sample(field, torch.tensor([[0]] * 20), "bidirectional", generator=0)


def test_exact_fields_have_no_dead_ends():
    c = E.Circuit(4, 2, 3)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(16, dtype=torch.float64, generator=g)
    q = torch.rand(16, dtype=torch.float64, generator=g)
    p[[3, 7]] = 0.0
    q[:5] = 0.0
    p, q = p / p.sum(), q / q.sum()
    for field in (E.ExactField(c, p, q), exact_as_state_field(c, p, q)):
        for mode in ("bidirectional", "forward"):
            assert len(check_no_dead_ends(field, mode, p)) == 0
            assert len(find_dead_ends(field, mode)) == 0


def test_bad_arguments_and_non_finite_currents():
    field = table_field()
    with pytest.raises(ValueError, match="mode must be one of"):
        find_dead_ends(field, "sideways")
    with pytest.raises(ValueError, match=r"start must have shape \(3,\)"):
        find_dead_ends(field, start=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="start must be a bool mask or floating-point weights"):
        find_dead_ends(field, start=torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="start weights must be finite and non-negative"):
        find_dead_ends(field, start=torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(TypeError, match="all_vertices must be a bool"):
        find_dead_ends(field, all_vertices=1)
    with pytest.raises(TypeError, match="field must be an ecd2g_fast Field"):
        find_dead_ends(object())
    table = TABLE.clone()
    table[1, 0, 1] = float("nan")
    with pytest.raises(E.FieldError, match=r"non-finite current at layer 1, state \(0,\)"):
        find_dead_ends(table_field(table))


# ----------------------------------------------------------------------------- the runner's check
def test_runner_checks_a_current_field_before_sampling(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["run", "uniform-to-gaussian-1d", "--out", str(out), "--num-categories", "3", "--num-layers", "2",
            "--steps", "300", "--batch-size", "64", "--num-samples", "300", "--quiet", "--device", "cpu"]  # fmt: skip
    assert cli.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "current" and metrics["dead_end_check"] == "passed"
    assert metrics["dead_end_check_seconds"] >= 0
    samples = np.load(out / "samples.npy")

    # a field with a reachable dead end is reported before any walk, and the folder keeps its files
    def no_walk(*args, **kwargs):
        raise AssertionError("sampled a field with a dead end")

    monkeypatch.setattr(runner, "sample", no_walk)
    run = runner.Run.of_folder(out)
    with pytest.raises(E.FieldError, match=r"StateField would strand walkers: .*layer 1, state \(2,\)"):
        runner.sample_stage(run, table_field(), progress=False, log=lambda message: None)
    np.testing.assert_array_equal(np.load(out / "samples.npy"), samples)

    # potential fields are not checked; a check that would cost more than the walk is skipped
    logged: list[str] = []
    potential = E.PotentialNet(run.circuit).field()
    assert runner.dead_end_stage(run, potential, 300)["dead_end_check"].startswith("skipped: potential")
    skipped = runner.dead_end_stage(run, table_field(), 2, log=logged.append)
    assert skipped == {"dead_end_check": "skipped: M > num_samples", "dead_end_check_seconds": None}
    assert "dead-end check skipped" in logged[0]
