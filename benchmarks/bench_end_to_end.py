"""End to end: sampling the paper's 2D experiment (train, then sample 256 and 1,000,000 states).

Group **sample-2d**: ``Limits.sample_sizes`` (256 and 1,000,000) samples on the circuit of
:mod:`benchmarks.bench_training`'s train-2d (``K = 32``, ``L = 10``), walkers started from the
moons pmf, bidirectional walk; with a CurrentNet trained by train-2d (``Limits.train_steps``
steps; backends ``"torch"``, the plain-torch reference, and ``"cpp"``), and with the
:class:`~ecd2g_fast.ExactField` of the two pmfs (``"torch"``, ``"cpp"``: compiled O(M) move,
``"potential"``: O(log M) tables with the compiled draw, ``"potential-torch"``: the same tables
drawn in plain torch). One :func:`ecd2g_fast.sample` call is timed; the CurrentNet field's cached
sink currents are dropped before every call, so a time is what one fresh call costs. Paper:
256 samples in 0.13 s.

Check before timing (:func:`check_sampling`): the terminal states pass a chi-square test
(:func:`ecd2g_fast.metrics.chi_square_test`, false-failure rate about 1e-6; little power at 256
samples, a strong test at 10**6) against the exact output law: the target pmf for the
ExactField; for a CurrentNet the :func:`~ecd2g_fast.exact_output_distribution` of the learned
field, computed only where ``Limits.statistical_currentnet`` is set because it costs ~80 s on a
2-core CPU (otherwise every walker must have terminated in a valid state). Cases above the
sampler's cost caps are skipped with the reason (:func:`benchmarks.bench_sampler.skip_reason`).

Run: ``python -m benchmarks.report --cases sample-2d``, ``python -m benchmarks.bench_end_to_end``
(a table, rows appended to ``benchmarks/results/end_to_end.jsonl``), or under pytest-benchmark
with ``make bench``; on a shared CPU prefix pytest with ``OMP_NUM_THREADS=1`` (two torch threads
on a loaded 2-core machine were 5-50x slower).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

import ecd2g_fast as E
from ecd2g_fast.fields import Field

from . import cases, runner
from .bench_sampler import BACKENDS, NOTES, move_words, run_backend, skip_reason, walk_neighbours
from .bench_training import K2, L2, Paper2D, paper_2d_data, trained_currentnet
from .cases import Case, Limits, Prepared

#: The paper's time for sampling 256 2D samples (one A100).
PAPER_SAMPLE_256_SECONDS = 0.13


def sampling_field(kind: str, data: Paper2D, steps: int) -> Field:
    """``"exact"``: the ExactField of the two pmfs; ``"current-net"``: the trained CurrentNet's field."""
    if kind == "exact":
        return E.ExactField(data.circuit, data.p, data.q)
    return trained_currentnet(str(data.device), steps).field


def start_states(data: Paper2D, walkers: int, seed: int = 0) -> torch.Tensor:
    """``(walkers, 2)`` int64 states drawn from the moons pmf, on the data's device."""
    g = torch.Generator().manual_seed(seed)
    index = torch.multinomial(data.p.cpu(), walkers, replacement=True, generator=g)
    return data.circuit.index_state(index).to(data.device)


_LAWS: dict[int, tuple[Field, torch.Tensor]] = {}


def output_law(kind: str, field: Field, data: Paper2D) -> torch.Tensor:
    """``(M,)`` float64 exact law of the walk's output: ``q`` for the ExactField, the propagated
    law (:func:`~ecd2g_fast.exact_output_distribution`) of a CurrentNet field, cached per field."""
    if kind == "exact":
        return data.q
    hit = _LAWS.get(id(field))
    if hit is None or hit[0] is not field:
        hit = (field, E.exact_output_distribution(field, data.p, mode="bidirectional").pmf)
        _LAWS[id(field)] = hit
    return hit[1]


def check_sampling(
    kind: str, backend: str, field: Field, data: Paper2D, terminal: torch.Tensor, statistical: bool
) -> str:
    """Check one run's ``(B,)`` int64 flat terminal states (module docstring)."""
    M = data.circuit.num_states
    what = f"sample-2d {kind} {backend} B={terminal.numel()}"
    if terminal.dtype != torch.int64 or int(terminal.min()) < 0 or int(terminal.max()) >= M:
        raise AssertionError(f"{what}: terminal states outside [0, M); not timed")
    if kind == "current-net" and not statistical:
        return "all walkers terminated in valid states (no statistical test: exact law too costly here)"
    counts = torch.bincount(terminal.cpu(), minlength=M)
    return cases.check_counts(counts, output_law(kind, field, data), what)


def currentnet_walk_flops(field, walkers: int) -> float:
    """Lower-bound FLOPs of one walk: ``2 x`` the MACs of the MLP body (the first layer is
    shared per walker and state) for ``2 M`` neighbours per move and ``L`` moves per walker."""
    c = field.circuit
    return 2.0 * cases.mlp_macs(field.net.body) * walkers * 2 * c.num_states * c.num_layers


def _prepare(kind: str, name: str, walkers: int, device: str, limits: Limits) -> Prepared:
    data = paper_2d_data(device)
    field = sampling_field(kind, data, limits.train_steps)
    x0 = start_states(data, walkers)
    statistical = kind == "exact" or limits.statistical_currentnet
    # the check run is also the warm-up; CurrentNet walks are checked on 32 walkers when no
    # statistical test is run (CPU: cost), else on 16384 to 65536 walkers
    if kind == "current-net" and not statistical:
        check_x0 = x0[:32]
    elif kind == "current-net":
        check_x0 = start_states(data, max(min(walkers, 65536), 16384), seed=5)
    else:
        check_x0 = x0
    mean_moves = bytes_moved = None
    if name == "potential":
        g = torch.Generator(data.device).manual_seed(1)
        states, moves = E.sample(field, check_x0, backend="potential", return_moves=True, generator=g)
        terminal = data.circuit.state_index(states)
        mean_moves = float(moves.double().mean())
        bytes_moved = 8.0 * walkers * mean_moves * (move_words(data.circuit.num_states) + 8)
    else:
        terminal = run_backend(name, field, check_x0)
    flops = currentnet_walk_flops(field, walkers) if kind == "current-net" else None
    return Prepared(
        functools.partial(run_backend, name, field, x0),
        check_sampling(kind, name, field, data, terminal, statistical),
        params={"mean_moves": mean_moves},
        flops=flops,
        flops_dtype="fp32" if flops else None,
        bytes_moved=bytes_moved,
        bytes_note=NOTES["bytes"]["potential"] if bytes_moved else None,
    )


def sample_cases(device: torch.device, limits: Limits) -> Iterator[Case]:
    """Every backend of each field kind at each sample size."""
    circuit = E.Circuit(K2, 2, L2)  # for the cost caps only: no data drawn here
    for kind, names in BACKENDS.items():
        for walkers in limits.sample_sizes:
            figure = f"sample-2d {kind} B={walkers}"
            params = {"field": kind, "walkers": walkers, "K": K2, "D": 2, "L": L2, "mode": "bidirectional"}
            params["train_steps"] = limits.train_steps if kind == "current-net" else None
            paper = PAPER_SAMPLE_256_SECONDS if (kind, walkers) == ("current-net", 256) else None
            common = {"unit": "samples/s", "work": walkers, "params": params, "paper_seconds": paper}
            for name in names:
                prepare = functools.partial(_prepare, kind, name, walkers, str(device), limits)
                why = skip_reason(kind, name, walk_neighbours(circuit, walkers), device, limits, "walk")
                yield Case("sample-2d", figure, name, prepare, skip=why, **common)


GROUPS = {"sample-2d": sample_cases}

#: pytest-benchmark (``make bench``): every case of GROUPS, parametrized by benchmarks/conftest.py.
test_bench = runner.run_benchmark


if __name__ == "__main__":
    runner.main(GROUPS, __doc__.split("\n\n")[0], "end_to_end")
