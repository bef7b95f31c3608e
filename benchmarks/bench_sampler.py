"""The sampler: whole walks and one move, for every backend.

Groups:

* **walk**: ``Limits.walkers`` (100,000) walkers through a 12 x 12 grid (K = 12, D = 2, L = 10),
  uniform source -> a 2D Gaussian target, :class:`~ecd2g_fast.ExactField`, bidirectional walk;
  one :func:`ecd2g_fast.sample` call timed. Backends: every draw of the backend table,
  ``"torch"`` (the plain-torch reference draw), ``"cpp"`` (compiled; for this potential field the
  on-the-fly O(M) op),
  ``"cpp-generic"`` (compiled, the field wrapped as a plain current field, so currents are
  evaluated in torch chunk by chunk), ``"potential"`` (O(log M) tables, compiled draw),
  ``"potential-torch"`` (O(log M) tables, plain-torch draw). Check: the terminal states pass the
  chi-square test against the target pmf.
* **move**: one move of ``B`` walkers (``Limits.move_walkers`` = {256, 65536}) at uniformly drawn
  vertices ``(l, z)``, ``M`` in {50 (1D, K = 50), 2500 (2D, 50 x 50), 65536 (2D, 256 x 256)},
  ``L = 10``, for the ExactField of uniform -> discretised Gaussian pmfs and for a CurrentNet
  with random weights (its output bias set to +1 so that every vertex has outflow; weights do
  not change the cost of a move); the draw is taken from the backend table as
  :func:`ecd2g_fast.sample` takes it. Table building (``"potential"``) is set-up, not part of the
  move. Check: every drawn outlet has a positive out-current, and the outlets drawn by many
  walkers at one interior vertex pass the chi-square test against the normalised out-currents
  of that vertex.
* **hamming-move**: one move of ``B`` walkers on a :class:`~ecd2g_fast.HammingCircuit` (K, D) in
  {(2, 16), (4, 8), (2, 20)}, ``L = 10``, ExactField of uniform -> a mixture of two product pmfs:
  ``2 (1 + D (K-1)) + 1`` outlets per walker instead of ``2M + 1``. Backends ``"torch"`` and
  ``"cpp"`` (the compiled ``hamming_move``). Checks as for **move**.

Cases above the cost caps of :class:`~benchmarks.cases.Limits` are skipped with the reason
(:func:`skip_reason`); chi-square tests are :func:`ecd2g_fast.metrics.chi_square_test` at a
false-failure rate of about 1e-6.

Run: ``python -m benchmarks.bench_sampler --cases walk --threads 1 --repeats 3`` (a table, rows
appended to ``benchmarks/results/sampler.jsonl``), ``python -m benchmarks.report --cases move``,
or under pytest-benchmark with ``make bench`` (``ECD2G_BENCH_WALKERS`` sets the walkers).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator

import torch

import ecd2g_fast as E
from ecd2g_fast import _extension, backends
from ecd2g_fast.fields import Field, PotentialField, default_chunk_size
from ecd2g_fast.models import CurrentNetField

from . import cases, runner
from .cases import Case, Limits, Prepared

#: The whole-walk grid.
WALK_K, WALK_D, WALK_L = 12, 2, 10
#: The draws of the backend table, and ``"cpp-generic"`` (the exact field wrapped as a plain
#: current field, drawn by ``"cpp"``).
WALK_BACKENDS = (*backends.names("sample"), "cpp-generic")
#: Backends of a move (and of a 2D sampling run) for each kind of field: every draw of the table
#: that supports it.
BACKENDS = {"exact": backends.names("sample"), "current-net": ("torch", "cpp")}
#: M -> (K, D) of the move cases.
MOVE_GRIDS = {50: (50, 1), 2500: (50, 2), 65536: (256, 2)}
MOVE_LAYERS = 10
#: How the bytes of this family's rows are counted (the reports print it).
NOTES = {
    "bytes": {
        "potential": "8-byte words per walker-move: 9 table gathers (5 masses, count, phi, reference, "
        "order), ceil(log2 M) + 1 prefix-sum gathers of the binary search, 4 walker-state reads/writes "
        "(+8 for the walk loop's bookkeeping in whole walks); the mean number of moves is measured",
    }
}


def move_words(num_states: int) -> int:
    """8-byte words one potential-sampler move reads and writes per walker (``NOTES``)."""
    return 9 + math.ceil(math.log2(num_states)) + 1 + 4


# ----------------------------------------------------------------------------- costs
def skip_reason(
    kind: str, backend: str, neighbours: float, device: torch.device, limits: Limits, what: str
) -> str | None:
    """Why a sampling case is not run, or None.

    Args:
        kind: ``"exact"`` (an exact or potential field) or ``"current-net"``.
        backend: the sampler backend.
        neighbours: walker x neighbour-state evaluations of the case (a walk: ``B 2 M (L + 1)``;
            a move: ``B 2 M``).
        device: where it runs.
        limits: the caps (for a move, with ``max_net_pairs`` set to ``max_move_net_pairs``).
        what: ``"walk"`` or ``"move"``, for the message.
    """
    if backend in ("cpp", "cpp-generic", "potential") and not _extension.has_device_kernels(device):
        return _extension.device_unavailable_reason(device)
    if kind == "current-net":
        if neighbours > limits.max_net_pairs:
            return f"{what} needs ~{neighbours:.1e} CurrentNet pair evaluations > cap {limits.max_net_pairs:.1e} on this device"
        return None
    if backend in ("torch", "cpp-generic") and neighbours > limits.max_dense_currents:
        return f"plain-torch {what} builds ~{neighbours:.1e} currents > cap {limits.max_dense_currents:.1e} on this device"
    if backend == "cpp" and neighbours > limits.max_compiled_currents:
        return f"O(M) compiled {what} computes ~{neighbours:.1e} currents > cap {limits.max_compiled_currents:.1e} on this device"
    return None


def walk_neighbours(circuit: E.Circuit, walkers: int) -> float:
    """Walker x neighbour-state evaluations of one walk: ``B 2 M (L + 1)``."""
    return walkers * 2 * circuit.num_states * (circuit.num_layers + 1)


# ----------------------------------------------------------------------------- whole walks
class _CurrentField(Field):
    """An exact field seen as a generic current field (no potential table)."""

    def __init__(self, inner: Field) -> None:
        super().__init__(inner.circuit)
        self.inner = inner

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def currents_to_next(self, layer, z, start, stop):
        return self.inner.currents_to_next(layer, z, start, stop)

    def currents_from_prev(self, layer, z, start, stop):
        return self.inner.currents_from_prev(layer, z, start, stop)

    def sink_currents(self, z):
        return self.inner.sink_currents(z)


def run_backend(name: str, field: Field, x0: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``(B,)`` int64 terminal flat states of one bidirectional walk from the ``(B, D)`` start
    states ``x0`` with backend ``name`` (``WALK_BACKENDS``; a CurrentNet field's cached sink
    currents are dropped first, so a call costs what one fresh ``sample`` call costs)."""
    c = field.circuit
    g = torch.Generator(x0.device).manual_seed(seed)
    if isinstance(field, CurrentNetField):
        field.refresh()
    if name == "cpp-generic":
        return c.state_index(E.sample(_CurrentField(field), x0, backend="cpp", generator=g))
    return c.state_index(E.sample(field, x0, backend=name, generator=g))


@functools.lru_cache(maxsize=1)
def walk_workload(walkers: int, device: str = "cpu") -> tuple[Field, torch.Tensor, torch.Tensor]:
    """The ExactField (uniform -> Gaussian on the 12 x 12 grid), its ``(M,)`` float64 target pmf
    and ``(B, 2)`` int64 start states drawn from the source."""
    circuit = E.Circuit(WALK_K, WALK_D, WALK_L)
    M = circuit.num_states
    p = torch.full((M,), 1.0 / M, dtype=torch.float64, device=device)
    axis = torch.arange(WALK_K, dtype=torch.float64, device=device)
    density = torch.exp(-((axis[:, None] - 7.0) ** 2 / 8.0 + (axis[None, :] - 4.0) ** 2 / 4.5))
    q = (density / density.sum()).flatten()
    g = torch.Generator(device).manual_seed(0)
    x0 = circuit.index_state(torch.multinomial(p, walkers, replacement=True, generator=g))
    return E.ExactField(circuit, p, q), q, x0


def _prepare_walk(name: str, walkers: int, device: str) -> Prepared:
    field, q, x0 = walk_workload(walkers, device)
    terminal = run_backend(name, field, x0)  # also the warm-up
    what = f"walk {name} B={walkers}"
    counts = torch.bincount(terminal.cpu(), minlength=q.numel())
    return Prepared(functools.partial(run_backend, name, field, x0), cases.check_counts(counts, q, what))


def walk_cases(device: torch.device, limits: Limits) -> Iterator[Case]:
    """Every backend on the whole-walk workload."""
    circuit = E.Circuit(WALK_K, WALK_D, WALK_L)
    for name in WALK_BACKENDS:
        yield Case(
            "walk",
            f"walk exact K={WALK_K} D={WALK_D} B={limits.walkers}",
            name,
            functools.partial(_prepare_walk, name, limits.walkers, str(device)),
            unit="samples/s",
            work=limits.walkers,
            params={"field": "exact", "K": WALK_K, "D": WALK_D, "L": WALK_L, "B": limits.walkers},
            skip=skip_reason("exact", name, walk_neighbours(circuit, limits.walkers), device, limits, "walk"),
        )


# ----------------------------------------------------------------------------- one move
@functools.lru_cache(maxsize=8)
def move_field(kind: str, num_states: int, device: str = "cpu") -> Field:
    """The field of a move case: ExactField uniform -> discretised Gaussian, or a seeded random
    CurrentNet with output bias +1 (positive forward currents everywhere)."""
    K, D = MOVE_GRIDS[num_states]
    c = E.Circuit(K, D, MOVE_LAYERS)
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


MoveFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def move_drawer(backend: str, field: Field, walkers: int) -> MoveFn:
    """``draw(layer, z, generator) -> (B,)`` int64 outlet codes of one bidirectional move (codes:
    :mod:`ecd2g_fast.sampling.reference`): the draw of ``backend`` from the backend table, with
    the default chunk of ``walkers`` walkers. Set-up (the potential tables) happens here."""
    chunk = default_chunk_size(field, walkers)
    draw = backends.select("sample", backend, field.device, subject=field).impl(field, "bidirectional")
    return lambda layer, z, g: draw(layer, z, g, chunk)


def outlet_currents(field: Field, layer: torch.Tensor, z: torch.Tensor, outlet: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 out-current of each walker's drawn outlet (``(B,)`` int64 slot codes)."""
    c = field.circuit
    N = c.num_neighbours
    sink = outlet == 2 * N
    backward = (outlet >= N) & ~sink
    w = torch.where(sink, z, c.neighbour_at(z, outlet % N))
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
    zs, ws = c.unflatten(z), c.unflatten(w)
    fwd = edge & ~backward
    out[fwd] = net.currents(layer[fwd], zs[fwd], ws[fwd])
    out[backward] = -net.currents(layer[backward] - 1, ws[backward], zs[backward])
    out[sink] = field.sink_currents(z[sink])
    return out


def vertex_probabilities(field: Field, layer: int, state: int) -> torch.Tensor:
    """``(2N + 1,)`` float64 probabilities of the outlets of vertex ``(layer, state)`` (``N``
    neighbour slots: ``M`` on the complete circuit)."""
    c = field.circuit
    N, L = c.num_neighbours, c.num_layers
    dev = field.device
    lt, zt = torch.tensor([layer], device=dev), torch.tensor([state], device=dev)
    weights = torch.zeros(2 * N + 1, dtype=torch.float64, device=dev)
    if layer < L:
        weights[:N] = field.currents_to_next(lt, zt, 0, N)[0].to(torch.float64)
    if layer > 0:
        weights[N : 2 * N] = -field.currents_from_prev(lt, zt, 0, N)[0].to(torch.float64)
    if layer == L:
        weights[2 * N] = field.sink_currents(zt)[0].to(torch.float64)
    weights = weights.clamp_min(0.0)
    return weights / weights.sum()


def check_move(
    backend: str, field: Field, draw: MoveFn, layer: torch.Tensor, z: torch.Tensor, stat_walkers: int
) -> str:
    """Validity on the timed ``(B,)`` walkers, then a chi-square test at one interior vertex
    with ``stat_walkers`` walkers."""
    c = field.circuit
    M, N = c.num_states, c.num_neighbours
    what = f"move {backend} M={M} B={layer.numel()}"
    g = torch.Generator(field.device).manual_seed(7)
    outlet = draw(layer, z, g)
    if int(outlet.min()) < 0 or int(outlet.max()) > 2 * N:
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
    counts = torch.bincount(draw(lt, zt, g).cpu(), minlength=2 * N + 1)
    return "outlets valid; " + cases.check_counts(counts, probs, what)


def stat_walkers_for(kind: str, num_states: int, limits: Limits) -> int:
    """Walkers of a move's chi-square test, within the run's caps (at least 256)."""
    cap = min(limits.max_move_net_pairs, 2.0**30) if kind == "current-net" else limits.max_dense_currents
    return int(max(256, min(65536, cap / 4 / (2 * num_states))))


def _prepare_move(kind: str, name: str, num_states: int, walkers: int, device: str, stat: int) -> Prepared:
    field = move_field(kind, num_states, device)
    layer, z = move_walkers(field, walkers)
    draw = move_drawer(name, field, walkers)
    verdict = check_move(name, field, draw, layer, z, stat)
    g = torch.Generator(field.device).manual_seed(3)
    flops = bytes_moved = None
    if kind == "current-net":
        L = field.circuit.num_layers
        pairs = num_states * float((layer < L).sum() + (layer > 0).sum())
        flops = 2.0 * cases.mlp_macs(field.net.body) * pairs
    if name == "potential":
        bytes_moved = 8.0 * walkers * move_words(num_states)
    return Prepared(
        functools.partial(draw, layer, z, g),
        verdict,
        flops=flops,
        flops_dtype="fp32" if flops else None,
        bytes_moved=bytes_moved,
        bytes_note=NOTES["bytes"]["potential"] if bytes_moved else None,
    )


def move_cases(device: torch.device, limits: Limits) -> Iterator[Case]:
    """Every backend, field kind, ``M`` and ``B`` of a move."""
    move_limits = dataclasses.replace(limits, max_net_pairs=limits.max_move_net_pairs)
    for kind, names in BACKENDS.items():
        for num_states, (K, D) in MOVE_GRIDS.items():
            for walkers in limits.move_walkers:
                stat = stat_walkers_for(kind, num_states, limits)
                for name in names:
                    why = skip_reason(kind, name, walkers * 2 * num_states, device, move_limits, "move")
                    yield Case(
                        "move",
                        f"move {kind} M={num_states} B={walkers}",
                        name,
                        functools.partial(_prepare_move, kind, name, num_states, walkers, str(device), stat),
                        unit="walker-moves/s",
                        work=walkers,
                        params={
                            "field": kind,
                            "M": num_states,
                            "K": K,
                            "D": D,
                            "L": MOVE_LAYERS,
                            "B": walkers,
                            "check_walkers": stat,
                        },
                        skip=why,
                    )


# ----------------------------------------------------------------------------- one local move
#: (K, D) of the Hamming move cases: M = 65536 twice (binary and K = 4), and M = 2**20.
HAMMING_GRIDS = ((2, 16), (4, 8), (2, 20))
#: Backends that take a potential field on a Hamming circuit (the O(log M) tables need all-to-all edges).
HAMMING_BACKENDS = ("torch", "cpp")


@functools.lru_cache(maxsize=4)
def hamming_move_field(K: int, D: int, device: str = "cpu") -> Field:
    """The ExactField of a Hamming move case: uniform source, a mixture of two product pmfs
    (per-coordinate pmfs peaked at value 0 and at value K-1) as target, ``L = MOVE_LAYERS``."""
    c = E.HammingCircuit(K, D, MOVE_LAYERS)
    values = torch.arange(K, dtype=torch.float64)
    low = torch.exp(-values)
    components = [low / low.sum(), low.flip(0) / low.sum()]
    q = torch.zeros(c.num_states, dtype=torch.float64)
    for weight, marginal in zip((0.6, 0.4), components):
        product = torch.ones(1, dtype=torch.float64)
        for _ in range(D):
            product = torch.outer(product, marginal).reshape(-1)
        q += weight * product
    p = torch.full((c.num_states,), 1.0 / c.num_states, dtype=torch.float64)
    return E.ExactField(c, p.to(device), q.to(device))


def _prepare_hamming_move(name: str, K: int, D: int, walkers: int, device: str) -> Prepared:
    field = hamming_move_field(K, D, device)
    field.potential_table()  # set-up, not part of the move
    layer, z = move_walkers(field, walkers)
    draw = move_drawer(name, field, walkers)
    verdict = check_move(name, field, draw, layer, z, 65536)
    g = torch.Generator(field.device).manual_seed(3)
    return Prepared(functools.partial(draw, layer, z, g), verdict)


def hamming_move_cases(device: torch.device, limits: Limits) -> Iterator[Case]:
    """One bidirectional move on a Hamming circuit: ``2 (1 + D (K-1)) + 1`` outlets per walker."""
    for K, D in HAMMING_GRIDS:
        for walkers in limits.move_walkers:
            for name in HAMMING_BACKENDS:
                neighbours = walkers * 2 * (1 + D * (K - 1))
                yield Case(
                    "hamming-move",
                    f"hamming move exact K={K} D={D} B={walkers}",
                    name,
                    functools.partial(_prepare_hamming_move, name, K, D, walkers, str(device)),
                    unit="walker-moves/s",
                    work=walkers,
                    params={"field": "exact", "K": K, "D": D, "M": K**D, "L": MOVE_LAYERS, "B": walkers},
                    skip=skip_reason("exact", name, neighbours, device, limits, "move"),
                )


GROUPS = {"walk": walk_cases, "move": move_cases, "hamming-move": hamming_move_cases}

#: pytest-benchmark (``make bench``): every case of GROUPS, parametrized by benchmarks/conftest.py.
test_bench = runner.run_benchmark


if __name__ == "__main__":
    runner.main(GROUPS, __doc__.split("\n\n")[0], "sampler")
