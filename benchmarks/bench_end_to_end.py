"""The paper's end-to-end configurations, and one move of the sampler, for every backend.

Workloads (functions here; ``report.py`` imports them, the pytest cases below run them):

* **train-2d** (paper §5.2, Appendix B): moons -> swiss roll on the ``K x K`` grid of the package's
  preset ``moons-to-swissroll-2d`` (``K = 32``, ``L = 10``; the paper's ``K`` and ``L`` were lost
  from its text), the paper's network (:class:`~ecd2g_fast.CurrentNet`, 128-128-128) and budget:
  5000 SGD steps of batch 256, uniform queries; :func:`ecd2g_fast.train` with
  ``backend="auto"`` against ``backend="reference"`` (the plain-torch pairwise target pass), the
  whole call timed. The data are ``2**20`` samples of each distribution drawn beforehand and held
  on the device (the trainer draws batches from them). Paper: 2 minutes on one A100.
* **sample-2d**: 256 and 1,000,000 samples on the same circuit, walkers started from the moons
  pmf, bidirectional walk; with a CurrentNet trained by train-2d (backends ``"torch"``, the
  plain-torch reference, and ``"cpp"``), and with the :class:`~ecd2g_fast.ExactField` of the two
  pmfs (``"torch"``, ``"cpp"``: compiled O(M) move, ``"potential"``: O(log M) tables with the
  compiled draw, ``"potential-torch"``: the same tables drawn in plain torch). The CurrentNet
  field's cached sink currents are dropped before every call, so a time is what one fresh
  ``sample`` call costs. Paper: 256 samples in 0.13 s.
* **move**: one move of ``B`` walkers (``B`` in {256, 65536}) at uniformly drawn vertices
  ``(l, z)``, ``M`` in {50 (1D, K = 50), 2500 (2D, 50 x 50), 65536 (2D, 256 x 256)}, ``L = 10``,
  for the ExactField of uniform -> discretised Gaussian pmfs and for a CurrentNet with random
  weights (its output bias set to +1 so that every vertex has outflow; weights do not change
  the cost of a move). ``bench_sampler.py`` times whole walks on a 12 x 12 grid only, so these
  cases live here. Table building (``"potential"``) is set-up, not part of the move.

Checks before timing (a case that fails is not timed): training: 20 steps with ``"auto"`` and
with ``"reference"`` from the same seed give the same losses (rtol 1e-3); sampling: a Pearson
chi-square test (false-failure rate 1e-6; outcomes of expected count < 5 pooled with their
index neighbours; little power at 256 samples, a strong test at 10**6) of the sampled
states against the exact output law (the target pmf for the ExactField; for a CurrentNet the
:func:`~ecd2g_fast.exact_output_distribution` of the learned field, computed only where
``Limits.statistical_currentnet`` is set because it costs ~80 s on a 2-core CPU; otherwise
every walker must have terminated in a valid state); move: every drawn outlet has a positive
out-current, and outlets drawn by many walkers at one vertex pass the chi-square test against
the normalised out-currents of that vertex.

Sizes are capped per device by :class:`Limits` (cases above a cap are skipped with the reason).
Environment (pytest): ``ECD2G_BENCH_QUICK=1`` (default on the CPU) uses the CPU cost caps, and
``ECD2G_BENCH_TRAIN_STEPS`` replaces the paper's 5000 training steps (default: 100 when quick on
the CPU, a shortened run and not the paper's configuration; 5000 otherwise).
``pytest benchmarks/bench_end_to_end.py --benchmark-only`` runs the cases; on a shared CPU prefix
it with ``OMP_NUM_THREADS=1`` (two torch threads on a loaded 2-core machine were 5-50x slower).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import ecd2g_fast as E
from ecd2g_fast import _extension
from ecd2g_fast.experiments import EXPERIMENTS
from ecd2g_fast.experiments.datasets import moons, swiss_roll
from ecd2g_fast.fields import Field, PotentialField
from ecd2g_fast.models import CurrentNetField
from ecd2g_fast.sampling import cpp as sampling_cpp
from ecd2g_fast.sampling import potential as sampling_potential
from ecd2g_fast.sampling.reference import default_chunk_size, draw_outlets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampler import run_backend  # the sampler benchmark's backend runner

PRESET = EXPERIMENTS["moons-to-swissroll-2d"]
K2, L2 = PRESET.num_categories, PRESET.num_layers
TRAIN_STEPS, TRAIN_BATCH = 5000, 256
#: Paper figures (one A100): training the 2D experiment, and sampling 256 2D samples.
PAPER_TRAIN_SECONDS = 120.0
PAPER_SAMPLE_256_SECONDS = 0.13
DATA_SAMPLES = 2**20
SAMPLE_SIZES = (256, 1_000_000)
SAMPLE_BACKENDS = {
    "exact": ("torch", "cpp", "potential", "potential-torch"),
    "current-net": ("torch", "cpp"),
}
#: M -> (K, D) of the move cases.
MOVE_GRIDS = {50: (50, 1), 2500: (50, 2), 65536: (256, 2)}
MOVE_WALKERS = (256, 65536)
MOVE_LAYERS = 10
MOVE_BACKENDS = SAMPLE_BACKENDS
TRAIN_BACKENDS = ("auto", "reference")
#: Chi-square critical value quantile: false failure about 1e-6 (Wilson-Hilferty).
CHI_SQUARE_Z = 4.753


# ----------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """Work caps of one run; a case above a cap is skipped, with the reason, never estimated.

    Costs are counted in units that track time on each path: ``net_pairs`` (walker x neighbour
    pairs through the CurrentNet's MLP), ``dense_currents`` (float64 currents built by the
    plain-torch walk), ``compiled_currents`` (currents computed on the fly by the compiled O(M)
    move). A walk costs about ``(L + 1)`` moves of ``2 M`` neighbours per walker.

    Attributes:
        train_steps: steps of the train-2d case (the paper's 5000 unless shortened).
        move_walkers: the ``B`` of the move cases.
        max_net_pairs, max_dense_currents, max_compiled_currents: the caps (walks).
        max_move_net_pairs: the ``net_pairs`` cap of one move (and its chi-square test).
        max_reference_target_work: ``Q B D`` cap of the pairwise reference target pass.
        statistical_currentnet: check CurrentNet sampling against its exact output law.
        repeats: timed calls of short cases (long ones stop at ``max_time``).
        max_time: stop timing a case after this many seconds of timed calls.
    """

    train_steps: int = TRAIN_STEPS
    move_walkers: tuple[int, ...] = MOVE_WALKERS
    max_net_pairs: float = 2.0**36
    max_move_net_pairs: float = 2.0**36
    max_dense_currents: float = 2.0**36
    max_compiled_currents: float = 2.0**40
    max_reference_target_work: float = 2.0**34
    statistical_currentnet: bool = True
    repeats: int = 5
    max_time: float = 20.0

    @classmethod
    def for_run(cls, device: torch.device | str, quick: bool) -> Limits:
        """CUDA: the full workloads (``quick``: 100 training steps, fewer repeats). CPU: caps
        measured on a 2-core machine with one torch thread; ``quick`` keeps every case to about
        30 s and the whole report to about 3-5 minutes (the 5000 training steps take ~15 s
        with one thread, several minutes with two threads on a loaded 2-core machine)."""
        if torch.device(device).type == "cuda":
            return cls(train_steps=100 if quick else TRAIN_STEPS, repeats=3 if quick else 5)
        if quick:
            # 2-core CPU: ~3e5 net pairs/s, ~1.2e7 dense currents/s, ~3e8 compiled currents/s
            return cls(
                move_walkers=MOVE_WALKERS,
                max_net_pairs=2.0**23,
                max_move_net_pairs=2.0**21,
                max_dense_currents=2.0**26,
                max_compiled_currents=2.0**31,
                max_reference_target_work=2.0**27,
                statistical_currentnet=False,
                repeats=3,
                max_time=5.0,
            )
        return cls(
            max_net_pairs=2.0**27,
            max_move_net_pairs=2.0**25,
            max_dense_currents=2.0**30,
            max_compiled_currents=2.0**35,
            max_reference_target_work=2.0**30,
            statistical_currentnet=False,
            max_time=60.0,
        )

    @classmethod
    def from_env(cls, device: torch.device | str) -> Limits:
        """pytest's limits: ``ECD2G_BENCH_QUICK`` (default 1 on the CPU, 0 on CUDA) and
        ``ECD2G_BENCH_TRAIN_STEPS`` (default 5000; 100 when quick on the CPU, where pytest runs
        with torch's default threads, which a loaded 2-core machine slows down many times)."""
        cpu = torch.device(device).type == "cpu"
        quick = os.environ.get("ECD2G_BENCH_QUICK", "1" if cpu else "0") == "1"
        limits = cls.for_run(device, quick)
        steps = os.environ.get("ECD2G_BENCH_TRAIN_STEPS", "100" if quick and cpu else "")
        return replace(limits, train_steps=int(steps)) if steps else limits


def _walk_moves(circuit: E.Circuit) -> int:
    return circuit.num_layers + 1


def sample_skip_reason(
    kind: str, backend: str, walkers: int, circuit: E.Circuit, device, limits: Limits
) -> str | None:
    """Why a sampling case (``kind`` field, ``backend``, ``walkers``) is not run, or None."""
    device = torch.device(device)
    if backend in ("cpp", "potential") and not _extension.has_device_kernels(device):
        return _extension.device_unavailable_reason(device)
    neighbours = walkers * 2 * circuit.num_states * _walk_moves(circuit)
    return _cost_reason(kind, backend, neighbours, limits, "walk")


def move_skip_reason(
    kind: str, backend: str, walkers: int, num_states: int, device, limits: Limits
) -> str | None:
    """Why a move case is not run, or None."""
    device = torch.device(device)
    if backend in ("cpp", "potential") and not _extension.has_device_kernels(device):
        return _extension.device_unavailable_reason(device)
    return _cost_reason(
        kind,
        backend,
        walkers * 2 * num_states,
        replace(limits, max_net_pairs=limits.max_move_net_pairs),
        "move",
    )


def _cost_reason(kind: str, backend: str, neighbours: float, limits: Limits, what: str) -> str | None:
    if kind == "current-net":
        if neighbours > limits.max_net_pairs:
            return f"{what} needs ~{neighbours:.1e} CurrentNet pair evaluations > cap {limits.max_net_pairs:.1e} on this device"
        return None
    if backend == "torch" and neighbours > limits.max_dense_currents:
        return f"plain-torch {what} builds ~{neighbours:.1e} currents > cap {limits.max_dense_currents:.1e} on this device"
    if backend == "cpp" and neighbours > limits.max_compiled_currents:
        return f"O(M) compiled {what} computes ~{neighbours:.1e} currents > cap {limits.max_compiled_currents:.1e} on this device"
    return None


# ----------------------------------------------------------------------------- statistics
def pooled_cells(expected: torch.Tensor, min_expected: float = 5.0) -> torch.Tensor:
    """``(N,)`` int64 cell label of each outcome: outcomes with expected count ``>= min_expected``
    keep a cell of their own; the others, in index order (neighbouring states), are merged into
    runs of total expected count ``>= min_expected`` (a short last run joins the one before)."""
    labels = torch.empty(expected.numel(), dtype=torch.int64)
    label, run = 0, 0.0
    small = []
    for i, e in enumerate(expected.tolist()):
        if e >= min_expected:
            labels[i] = label
            label += 1
            continue
        small.append(i)
    runs: list[list[int]] = [[]]
    for i in small:
        runs[-1].append(i)
        run += float(expected[i])
        if run >= min_expected:
            runs.append([])
            run = 0.0
    if len(runs) > 1 and run < min_expected:
        runs[-2].extend(runs.pop())
    for members in runs:
        if members:
            labels[members] = label
            label += 1
    return labels


def chi_square_check(counts: torch.Tensor, pmf: torch.Tensor, what: str, min_expected: float = 5.0) -> str:
    """Pearson chi-square goodness of fit of ``counts`` (N,) to ``pmf`` (N,) at a false-failure
    rate of about 1e-6 (Wilson-Hilferty critical value); outcomes with expected count below
    ``min_expected`` are pooled with their index neighbours (:func:`pooled_cells`).

    Returns:
        a one-line summary (statistic, critical value, degrees of freedom, samples).

    Raises:
        AssertionError: the test rejects, or samples landed where ``pmf`` is 0.
    """
    counts = counts.to(torch.float64).cpu()
    pmf = pmf.to(torch.float64).cpu()
    pmf = pmf / pmf.sum()
    n = float(counts.sum())
    if bool((counts[pmf == 0] > 0).any()):
        raise AssertionError(f"{what}: samples landed on outcomes of probability 0; not timed")
    support = pmf > 0
    expected = n * pmf[support]
    labels = pooled_cells(expected, min_expected)
    cells = int(labels.max()) + 1
    observed = torch.zeros(cells, dtype=torch.float64).index_add_(0, labels, counts[support])
    wanted = torch.zeros(cells, dtype=torch.float64).index_add_(0, labels, expected)
    dof = cells - 1
    if dof < 1:
        return f"chi2: one cell only (n={int(n)}), nothing to test"
    stat = float(((observed - wanted) ** 2 / wanted).sum())
    critical = dof * (1.0 - 2.0 / (9.0 * dof) + CHI_SQUARE_Z * math.sqrt(2.0 / (9.0 * dof))) ** 3
    summary = f"chi2 {stat:.1f} <= {critical:.1f} (dof {dof}, n {int(n)})"
    if stat > critical:
        raise AssertionError(f"{what}: chi2 {stat:.1f} > {critical:.1f} (dof {dof}, n {int(n)}); not timed")
    return summary


# ----------------------------------------------------------------------------- the 2D data
@functools.lru_cache(maxsize=1)
def _paper_2d_distributions():
    return moons(K2), swiss_roll(K2)


@dataclass
class Paper2D:
    """The 2D experiment on one device.

    Attributes:
        circuit: ``Circuit(32, 2, 10)``.
        source, target: ``(2**20, 2)`` int64 samples of moons and swiss roll on the device.
        p, q: ``(M,)`` float64 exact pmfs of both, on the device.
    """

    circuit: E.Circuit
    source: torch.Tensor
    target: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.p.device


@functools.lru_cache(maxsize=2)
def paper_2d_data(device: str = "cpu", seed: int = 0) -> Paper2D:
    """The circuit, training samples and exact pmfs of the 2D experiment (cached per device)."""
    src, tgt = _paper_2d_distributions()
    rng = np.random.default_rng(seed)
    source = torch.from_numpy(src.sample(DATA_SAMPLES, rng)).to(device)
    target = torch.from_numpy(tgt.sample(DATA_SAMPLES, rng)).to(device)
    p = torch.from_numpy(src.pmf()).to(device)
    q = torch.from_numpy(tgt.pmf()).to(device)
    return Paper2D(E.Circuit(K2, 2, L2, PRESET.r, PRESET.R), source, target, p, q)


# ----------------------------------------------------------------------------- training
def train_2d(data: Paper2D, steps: int, backend: str = "auto", seed: int = 0) -> E.TrainResult:
    """The paper's 2D training run (module docstring) with the target pass ``backend``."""
    return E.train(
        data.circuit,
        data.source,
        data.target,
        model="current",
        steps=steps,
        batch_size=TRAIN_BATCH,
        queries="uniform",
        device=data.device,
        seed=seed,
        backend=backend,
        progress=False,
    )


def check_training(data: Paper2D, backend: str, steps: int = 20) -> str:
    """Raise unless ``steps`` steps with ``backend`` give the losses of the ``"reference"`` run."""
    losses = train_2d(data, steps, backend).losses
    expected = train_2d(data, steps, "reference").losses
    if not bool(torch.isfinite(losses).all()):
        raise AssertionError(f"train-2d {backend}: non-finite loss; not timed")
    if not torch.allclose(losses, expected, rtol=1e-3, atol=1e-6):
        worst = float(((losses - expected).abs() / expected.abs().clamp_min(1e-6)).max())
        raise AssertionError(
            f"train-2d {backend}: losses differ from the reference run (max rel {worst:.2e}); not timed"
        )
    return f"{steps} steps: losses equal to the reference run's (rtol 1e-3)"


def mlp_macs(module: torch.nn.Module) -> int:
    """Multiply-accumulates of one row through every ``nn.Linear`` of ``module``."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


# ----------------------------------------------------------------------------- sampling
@functools.lru_cache(maxsize=2)
def trained_currentnet(device: str, steps: int, seed: int = 0) -> E.TrainResult:
    """A CurrentNet trained by train-2d (``backend="auto"``), cached per device and steps."""
    return train_2d(paper_2d_data(device), steps, "auto", seed)


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


def sample_flat(backend: str, field: Field, x0: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``(B,)`` flat terminal states of one fresh ``sample`` call (cached sink currents dropped)."""
    if isinstance(field, CurrentNetField):
        field.refresh()
    return run_backend(backend, field, x0, seed)


_LAWS: dict[int, tuple[Field, torch.Tensor]] = {}


def output_law(kind: str, field: Field, data: Paper2D) -> torch.Tensor:
    """The exact law of the walk's output: ``q`` for the ExactField, the propagated law
    (:func:`~ecd2g_fast.exact_output_distribution`) of a CurrentNet field, cached per field."""
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
    """Check one run's ``(B,)`` flat terminal states (module docstring)."""
    M = data.circuit.num_states
    what = f"sample-2d {kind} {backend} B={terminal.numel()}"
    if terminal.dtype != torch.int64 or int(terminal.min()) < 0 or int(terminal.max()) >= M:
        raise AssertionError(f"{what}: terminal states outside [0, M); not timed")
    if kind == "current-net" and not statistical:
        return "all walkers terminated in valid states (no statistical test: exact law too costly here)"
    law = output_law(kind, field, data)
    return chi_square_check(torch.bincount(terminal.cpu(), minlength=M), law, what)


def currentnet_walk_flops(field: CurrentNetField, walkers: int) -> float:
    """Lower-bound FLOPs of one walk: ``2 x`` the MACs of the MLP body (the first layer is
    shared per walker and state) for ``2 M`` neighbours per move and ``L`` moves per walker."""
    c = field.circuit
    return 2.0 * mlp_macs(field.net.body) * walkers * 2 * c.num_states * c.num_layers


# ----------------------------------------------------------------------------- moves
def move_circuit(num_states: int) -> E.Circuit:
    K, D = MOVE_GRIDS[num_states]
    return E.Circuit(K, D, MOVE_LAYERS)


@functools.lru_cache(maxsize=8)
def move_field(kind: str, num_states: int, device: str = "cpu") -> Field:
    """The field of a move case: ExactField uniform -> discretised Gaussian, or a seeded random
    CurrentNet with output bias +1 (positive forward currents everywhere)."""
    c = move_circuit(num_states)
    K, D = MOVE_GRIDS[num_states]
    if kind == "exact":
        axis = torch.arange(K, dtype=torch.float64)
        density = torch.exp(-0.5 * ((axis - (K - 1) / 2) / (K / 8)) ** 2)
        q = density
        for _ in range(D - 1):
            q = (q[:, None] * density[None, :]).flatten()
        p = torch.full((c.num_states,), 1.0 / c.num_states, dtype=torch.float64)
        return E.ExactField(c, p.to(device), (q / q.sum()).to(device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = E.CurrentNet(c)
    with torch.no_grad():
        net.body[-1].bias.fill_(1.0)
    return net.to(device).eval().field()


def move_walkers(field: Field, walkers: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B,)`` int64 layers in ``[0, L]`` and flat states, uniform, on the field's device."""
    c = field.circuit
    g = torch.Generator().manual_seed(seed)
    layer = torch.randint(0, c.num_layers + 1, (walkers,), generator=g)
    z = torch.randint(0, c.num_states, (walkers,), generator=g)
    return layer.to(field.device), z.to(field.device)


DrawFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def move_drawer(backend: str, field: Field, walkers: int) -> DrawFn:
    """``draw(layer, z, generator) -> (B,)`` outlet codes of one bidirectional move.

    Set-up (the potential tables) happens here, outside the timed move.
    """
    M = field.circuit.num_states
    chunk = default_chunk_size(walkers, M)
    if backend == "torch":
        return lambda layer, z, g: draw_outlets(field, layer, z, "bidirectional", g, chunk)
    if backend == "cpp":
        if isinstance(field, PotentialField):
            inner = sampling_cpp.potential_drawer(field, "bidirectional")
        else:
            inner = sampling_cpp.draw_outlets_chunked
        return lambda layer, z, g: inner(field, layer, z, "bidirectional", g, chunk)
    if backend in ("potential", "potential-torch"):
        inner = sampling_potential.potential_drawer(
            field, "bidirectional", use_extension=backend == "potential"
        )
        return lambda layer, z, g: inner(field, layer, z, "bidirectional", g, chunk)
    raise ValueError(f"unknown move backend {backend!r}")


def outlet_currents(field: Field, layer: torch.Tensor, z: torch.Tensor, outlet: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 out-current of each walker's drawn outlet (codes as in the samplers)."""
    c = field.circuit
    M = c.num_states
    sink = outlet == 2 * M
    backward = (outlet >= M) & ~sink
    w = torch.where(sink, z, outlet % M)
    other = layer + torch.where(backward, -1, 1)
    out = torch.zeros(layer.shape[0], dtype=torch.float64, device=layer.device)
    edge = ~sink
    if isinstance(field, PotentialField):
        phi = field.potential_table().to(torch.float64)
        g = torch.tensor(c.g, dtype=torch.float64, device=layer.device)
        conductance = torch.where(w == z, g, torch.tensor(c.G, dtype=torch.float64, device=layer.device))
        drop = phi[layer[edge], z[edge]] - phi[other[edge].clamp(0, c.num_layers), w[edge]]
        out[edge] = conductance[edge] * drop
        out[sink] = field.sink_table().to(torch.float64)[z[sink]]
        return out
    net = field.net
    zs, ws = c._unflatten(z), c._unflatten(w)
    fwd = edge & ~backward
    out[fwd] = net.currents(layer[fwd], zs[fwd], ws[fwd])
    out[backward] = -net.currents(layer[backward] - 1, ws[backward], zs[backward])
    out[sink] = field.sink_currents(z[sink])
    return out


def vertex_probabilities(field: Field, layer: int, state: int) -> torch.Tensor:
    """``(2M + 1,)`` float64 probabilities of the outlets of vertex ``(layer, state)``."""
    c = field.circuit
    M, L = c.num_states, c.num_layers
    dev = field.device
    lt, zt = torch.tensor([layer], device=dev), torch.tensor([state], device=dev)
    weights = torch.zeros(2 * M + 1, dtype=torch.float64, device=dev)
    if layer < L:
        weights[:M] = field.currents_to_next(lt, zt, 0, M)[0].to(torch.float64)
    if layer > 0:
        weights[M : 2 * M] = -field.currents_from_prev(lt, zt, 0, M)[0].to(torch.float64)
    if layer == L:
        weights[2 * M] = field.sink_currents(zt)[0].to(torch.float64)
    weights = weights.clamp_min(0.0)
    return weights / weights.sum()


def check_move(
    backend: str, field: Field, draw: DrawFn, layer: torch.Tensor, z: torch.Tensor, stat_walkers: int
) -> str:
    """Validity on the timed walkers, then a chi-square test at one interior vertex."""
    c = field.circuit
    M = c.num_states
    what = f"move {backend} M={M} B={layer.numel()}"
    g = torch.Generator(field.device).manual_seed(7)
    outlet = draw(layer, z, g)
    if int(outlet.min()) < 0 or int(outlet.max()) > 2 * M:
        raise AssertionError(f"{what}: outlet codes out of range; not timed")
    current = outlet_currents(field, layer, z, outlet)
    if not bool((current > 0).all()):
        raise AssertionError(
            f"{what}: {int((current <= 0).sum())} outlets without positive out-current; not timed"
        )
    vertex_layer, vertex_state = c.num_layers // 2, M // 3
    probs = vertex_probabilities(field, vertex_layer, vertex_state)
    lt = torch.full((stat_walkers,), vertex_layer, dtype=torch.int64, device=field.device)
    zt = torch.full((stat_walkers,), vertex_state, dtype=torch.int64, device=field.device)
    counts = torch.bincount(draw(lt, zt, g).cpu(), minlength=2 * M + 1)
    return "outlets valid; " + chi_square_check(counts, probs, what)


def stat_walkers_for(kind: str, num_states: int, limits: Limits) -> int:
    """Walkers of a move's chi-square test, within the run's caps (at least 256)."""
    cap = min(limits.max_move_net_pairs, 2.0**30) if kind == "current-net" else limits.max_dense_currents
    return int(max(256, min(65536, cap / 4 / (2 * num_states))))


# ----------------------------------------------------------------------------- pytest-benchmark
try:
    import pytest
except ImportError:  # the workloads need no pytest
    pytest = None

if pytest is not None:

    def _device_params():
        return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif("not torch.cuda.is_available()"))]

    def _sync(device):
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    @pytest.mark.parametrize("device", _device_params())
    @pytest.mark.parametrize("backend", TRAIN_BACKENDS)
    def test_bench_train_2d(benchmark, backend, device):
        limits = Limits.from_env(device)
        data = paper_2d_data(device)
        summary = check_training(data, backend)

        def run():
            result = train_2d(data, limits.train_steps, backend)
            _sync(device)
            return result

        benchmark.extra_info.update(
            steps=limits.train_steps,
            batch=TRAIN_BATCH,
            K=K2,
            L=L2,
            check=summary,
            paper_seconds_5000_steps=PAPER_TRAIN_SECONDS,
        )
        benchmark.pedantic(run, rounds=1, iterations=1)

    @pytest.mark.parametrize("device", _device_params())
    @pytest.mark.parametrize("walkers", SAMPLE_SIZES, ids=lambda n: f"B={n}")
    @pytest.mark.parametrize(
        "kind,backend", [(k, b) for k, names in SAMPLE_BACKENDS.items() for b in names], ids=lambda v: str(v)
    )
    def test_bench_sample_2d(benchmark, kind, backend, walkers, device):
        limits = Limits.from_env(device)
        data = paper_2d_data(device)
        why = sample_skip_reason(kind, backend, walkers, data.circuit, device, limits)
        if why:
            pytest.skip(why)
        field = sampling_field(kind, data, limits.train_steps)
        x0 = start_states(data, walkers)
        summary = check_sampling(
            kind,
            backend,
            field,
            data,
            sample_flat(backend, field, x0),
            kind == "exact" or limits.statistical_currentnet,
        )

        def run():
            out = sample_flat(backend, field, x0)
            _sync(device)
            return out

        benchmark.extra_info.update(walkers=walkers, field=kind, check=summary)
        benchmark.pedantic(run, rounds=1, iterations=1)

    @pytest.mark.parametrize("device", _device_params())
    @pytest.mark.parametrize("walkers", MOVE_WALKERS, ids=lambda n: f"B={n}")
    @pytest.mark.parametrize("num_states", tuple(MOVE_GRIDS), ids=lambda m: f"M={m}")
    @pytest.mark.parametrize(
        "kind,backend", [(k, b) for k, names in MOVE_BACKENDS.items() for b in names], ids=lambda v: str(v)
    )
    def test_bench_move(benchmark, kind, backend, num_states, walkers, device):
        limits = Limits.from_env(device)
        why = move_skip_reason(kind, backend, walkers, num_states, device, limits)
        if why:
            pytest.skip(why)
        field = move_field(kind, num_states, device)
        draw = move_drawer(backend, field, walkers)
        layer, z = move_walkers(field, walkers)
        summary = check_move(backend, field, draw, layer, z, stat_walkers_for(kind, num_states, limits))
        g = torch.Generator(field.device).manual_seed(3)

        def run():
            out = draw(layer, z, g)
            _sync(device)
            return out

        benchmark.extra_info.update(walkers=walkers, num_states=num_states, field=kind, check=summary)
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
