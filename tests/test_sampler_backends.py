"""The sampler backends "torch", "cpp" and "potential" against the exact output law (docs/theory.md §4, §6).

Statistical tests: Pearson chi-square at a false-failure rate of about 1e-6 per test
(``testing.assert_samples_follow``, Wilson-Hilferty threshold), with fixed seeds, so a run is
deterministic and the whole file fails falsely with probability below 1e-4. CUDA cases are
parametrised and skipped when no GPU is present; nothing touches CUDA at import.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast import _extension, backends
from ecd2g_fast.fields import Field, PotentialField
from ecd2g_fast.hamming import HammingCircuit
from ecd2g_fast.sampling.exact import transition_tables
from ecd2g_fast.sampling.potential import PotentialTables

from .testing import assert_close_to_reference, assert_samples_follow, devices, dirichlet_pair

requires_extension = pytest.mark.skipif(not _extension.available(), reason="ecd2g_fast._C is not built")


def gaussian(K: int) -> torch.Tensor:
    x = torch.arange(K, dtype=torch.float64)
    w = torch.exp(-0.5 * ((x - (K - 1) / 2) / (K / 6)) ** 2)
    return w / w.sum()


SETUPS = {
    "grid-K5-D2-L4": lambda: (E.Circuit(5, 2, 4), *dirichlet_pair(25, 1)),
    "line-K13-L7": lambda: (
        E.Circuit(13, 1, 7),
        torch.full((13,), 1 / 13, dtype=torch.float64),
        gaussian(13),
    ),
    "sparse-K7-L3": lambda: (
        E.Circuit(7, 1, 3),
        torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0], dtype=torch.float64),
        torch.tensor([0, 0, 0, 0, 0, 0.3, 0.7], dtype=torch.float64),
    ),
}


class Generic(Field):
    """A current field (not a PotentialField) forwarding to an ExactField; optionally corrupted at
    one vertex, and recording the widest neighbour chunk it was asked for."""

    def __init__(self, inner: E.ExactField, corrupt: str | None = None, at: tuple[int, int] = (1, 2)):
        super().__init__(inner.circuit)
        self.inner, self.corrupt, self.at = inner, corrupt, at
        self.widest_chunk = 0

    @property
    def device(self):
        return self.inner.device

    def _hit(self, layer, z):
        return (layer == self.at[0]) & (z == self.at[1])

    def currents_to_next(self, layer, z, start, stop):
        self.widest_chunk = max(self.widest_chunk, stop - start)
        out = self.inner.currents_to_next(layer, z, start, stop)
        hit = self._hit(layer, z)
        if self.corrupt in ("nan", "inf"):
            out[hit] = float(self.corrupt)
        if self.corrupt == "dead":
            out[hit] = -out[hit].abs()
        return out

    def currents_from_prev(self, layer, z, start, stop):
        self.widest_chunk = max(self.widest_chunk, stop - start)
        out = self.inner.currents_from_prev(layer, z, start, stop)
        if self.corrupt == "dead":
            out[self._hit(layer, z)] = out[self._hit(layer, z)].abs()  # no backward outflow either
        return out

    def sink_currents(self, z):
        out = self.inner.sink_currents(z)
        if self.corrupt == "nan-sink":
            out = torch.where(z == self.at[1], float("nan"), out)
        return out


class TablePotential(PotentialField):
    """A PotentialField given by an explicit table (a gauge-shifted or corrupted exact one)."""

    def __init__(self, circuit: E.CircuitBase, table: torch.Tensor):
        super().__init__(circuit)
        self.table = table

    @property
    def device(self):
        return self.table.device

    def compute_potential_table(self):
        return self.table


def draws(variant: str, field: E.ExactField, x0: torch.Tensor, mode: str, seed: int, **kw) -> torch.Tensor:
    """Terminal states of one sampler variant, ``(B, D)`` int64: a backend of the table, or
    ``cpp-generic-*`` / ``auto-generic`` (the field wrapped as a generic current field)."""
    g = torch.Generator(x0.device).manual_seed(seed)
    if variant.startswith("cpp-generic"):
        chunk = 4 if variant.endswith("chunked") else None
        return E.sample(Generic(field), x0, mode, backend="cpp", generator=g, chunk_size=chunk, **kw)
    if variant == "auto-generic":
        return E.sample(Generic(field), x0, mode, generator=g, **kw)
    return E.sample(field, x0, mode, backend=variant, generator=g, **kw)


#: Every draw of the backend table, and the generic field through "cpp" (one chunk, chunks of 4) and "auto".
VARIANTS = [*backends.names("sample"), "cpp-generic-dense", "cpp-generic-chunked", "auto-generic"]
NEEDS_EXTENSION = {"cpp", "cpp-generic-dense", "cpp-generic-chunked"}


def make(setup: str, device: str = "cpu"):
    c, p, q = SETUPS[setup]()
    return c, p.to(device), E.ExactField(c, p.to(device), q.to(device))


def start_states(c: E.Circuit, p: torch.Tensor, B: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(p.device).manual_seed(seed)
    return c.index_state(torch.multinomial(p, B, replacement=True, generator=g))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["bidirectional", "forward"])
@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_backend_follows_the_exact_output_law(variant, setup, mode, device):
    if variant in NEEDS_EXTENSION and not _extension.has_device_kernels(torch.device(device)):
        pytest.skip(f"extension has no {device} kernels")
    c, p, field = make(setup, device)
    expected = E.exact_output_distribution(field, p, mode).pmf
    out = draws(variant, field, start_states(c, p, 12_000), mode, seed=2024)
    assert_samples_follow(torch.bincount(c.state_index(out), minlength=c.num_states), expected)


def test_chi_square_has_power():
    """The same test rejects the bidirectional law for forward-only samples of the compiled path."""
    c, p, field = make("line-K13-L7")
    expected = E.exact_output_distribution(field, p).pmf
    out = E.sample(field, start_states(c, p, 12_000), "forward", generator=torch.Generator().manual_seed(5))
    with pytest.raises(AssertionError, match="chi-square"):
        assert_samples_follow(torch.bincount(c.state_index(out), minlength=c.num_states), expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_same_samples(variant):
    if variant in NEEDS_EXTENSION and not _extension.available():
        pytest.skip("extension not built")
    c, p, field = make("grid-K5-D2-L4")
    x0 = start_states(c, p, 3000)
    first = draws(variant, field, x0, "bidirectional", seed=11)
    assert torch.equal(first, draws(variant, field, x0, "bidirectional", seed=11))
    assert not torch.equal(first, draws(variant, field, x0, "bidirectional", seed=12))


@requires_extension
@pytest.mark.parametrize("variant", ["cpp", "cpp-generic-chunked", "potential"])
def test_compiled_draws_do_not_depend_on_thread_count(variant):
    c, p, field = make("grid-K5-D2-L4")
    x0 = start_states(c, p, 20_000)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = draws(variant, field, x0, "bidirectional", seed=3)
        torch.set_num_threads(max(2, threads))
        parallel = draws(variant, field, x0, "bidirectional", seed=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, parallel)


@requires_extension
def test_chunked_and_dense_agree_and_memory_is_per_chunk():
    """Chunked and dense generic draws follow the same law, and the chunked one never asks the
    field for more than chunk_size neighbour states at once (memory O(B x chunk))."""
    c, p, field = make("grid-K5-D2-L4")
    expected = E.exact_output_distribution(field, p).pmf
    x0 = start_states(c, p, 12_000)
    for chunk in (None, 1, 7):
        generic = Generic(field)
        out = E.sample(
            generic, x0, backend="cpp", chunk_size=chunk, generator=torch.Generator().manual_seed(8)
        )
        assert generic.widest_chunk == (c.num_states if chunk is None else chunk)
        assert_samples_follow(torch.bincount(c.state_index(out), minlength=c.num_states), expected)


# ----------------------------------------------------------------------------- bad fields


def corrupted_table(corrupt: str) -> tuple[E.Circuit, torch.Tensor, TablePotential]:
    c, p, field = make("grid-K5-D2-L4")
    table = field.potential_table().clone()
    if corrupt in ("nan", "inf"):
        table[2, 7] = float(corrupt)
    else:  # "dead": (2, 7) lies below every neighbour, a trap without positive outflow
        table[2, 7] = table.min() - 1.0
    return c, p, TablePotential(c, table)


@pytest.mark.parametrize("backend", backends.names("sample"))
@pytest.mark.parametrize("corrupt", ["nan", "inf", "dead"])
def test_bad_potential_field_raises_field_error_naming_the_vertex(backend, corrupt):
    if backend == "cpp" and not _extension.available():
        pytest.skip("extension not built")
    c, p, field = corrupted_table(corrupt)
    if corrupt == "dead":
        # every backend names the trap itself: (2, 7) is state (1, 2) of the 5 x 5 grid
        match = r"no positive outflow at layer 2, state \(1, 2\) \(index 7\)"
    elif backend.startswith("potential"):
        match = r"non-finite potential at layer 2, state \(1, 2\) \(index 7\)"
    else:
        # walkers meet the bad potential from a neighbouring layer
        match = r"non-finite current at layer [13], state \(\d, \d\) \(index \d+\)"
    with pytest.raises(E.FieldError, match=match):
        draws(backend, field, start_states(c, p, 500), "bidirectional", seed=0)


@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
@pytest.mark.parametrize(
    "corrupt,match",
    [
        ("nan", r"non-finite current at layer 1, state \(2,\) \(index 2\)"),
        ("inf", r"non-finite current at layer 1, state \(2,\) \(index 2\)"),
        ("dead", r"no positive outflow at layer 1, state \(2,\) \(index 2\)"),
        ("nan-sink", r"non-finite current at layer 3, state \(2,\) \(index 2\)"),
    ],
)
def test_bad_current_field_raises_field_error_naming_the_vertex(backend, corrupt, match):
    if backend == "cpp" and not _extension.available():
        pytest.skip("extension not built")
    c = E.Circuit(3, 1, 3)
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    field = Generic(E.ExactField(c, uniform, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)), corrupt)
    x0 = torch.tensor([[0], [1], [2]] * 100)
    with pytest.raises(E.FieldError, match=match):
        E.sample(field, x0, backend=backend, generator=torch.Generator().manual_seed(0))


def test_backend_selection_by_field_type():
    """ "auto" takes "potential" for potential fields and "cpp" for other fields; an explicit
    "potential" on a field without a potential table raises."""
    c, p, field = make("line-K13-L7")
    x0 = start_states(c, p, 2000)
    assert backends.select("sample", "auto", x0.device, subject=field).name == "potential"
    assert backends.select("sample", "auto", x0.device, subject=Generic(field)).name == "cpp"
    with pytest.raises(
        ValueError, match="backend 'potential' for sample cannot process Generic: it needs a PotentialField"
    ):
        E.sample(Generic(field), x0, backend="potential")


# ----------------------------------------------------------------------------- numerics


def test_potential_tables_survive_a_large_gauge_constant():
    """Group masses from shifted prefix sums equal the direct sums of Ohm's-law currents, also
    with every potential offset by a large gauge constant, where unshifted prefix sums
    k*phi - S_k lose digits: each lateral mass to 1e-12 relative (the naive form misses 1e-9)."""
    c, p, field = make("grid-K5-D2-L4")
    G = c.G
    for offset in (0.0, 1e6, -3e7):
        moved = TablePotential(c, field.potential_table() + offset)
        moved.sink_table = field.sink_table  # the exact sink; Kirchhoff's sum is not under test here
        tables = PotentialTables.from_field(moved)
        phi = moved.potential_table()
        forward, backward, sink, total = transition_tables(moved, "bidirectional")
        got = tables.masses
        # lateral groups alone, against sums of the direct differences phi_l(z) - phi_{l+1}(w)
        lateral_fwd = G * (phi[:-1, :, None] - phi[1:, None, :]).clamp_min(0).sum(2)
        lateral_bwd = G * (phi[1:, :, None] - phi[:-1, None, :]).clamp_min(0).sum(2)
        tiny = 1e-300
        assert_close_to_reference(got[:-1, :, 0], lateral_fwd, rtol=1e-12, scale=lateral_fwd + tiny)
        assert_close_to_reference(got[1:, :, 2], lateral_bwd, rtol=1e-12, scale=lateral_bwd + tiny)
        # whole groups against the field's own currents
        scale = float(total.max())
        assert_close_to_reference(got[:-1, :, 0] + got[:-1, :, 1], forward.sum(2), rtol=1e-13, scale=scale)
        assert_close_to_reference(got[1:, :, 2] + got[1:, :, 3], backward.sum(2), rtol=1e-13, scale=scale)
        assert_close_to_reference(got[-1, :, 4], sink, rtol=0.0)
        if offset:  # the test has teeth: the unshifted prefix sum fails it
            V = torch.sort(phi[1:], dim=1).values
            S = torch.cat([torch.zeros(c.num_layers, 1, dtype=torch.float64), V.cumsum(1)], 1)
            k = torch.searchsorted(V, phi[:-1])
            naive = G * (k * phi[:-1] - S.gather(1, k))
            with pytest.raises(AssertionError, match="differ beyond"):
                assert_close_to_reference(naive, lateral_fwd, rtol=1e-9, scale=lateral_fwd + tiny)


def test_gauge_constant_leaves_the_law_unchanged():
    c, p, field = make("sparse-K7-L3")
    moved = TablePotential(c, field.potential_table() + 1e6)
    expected = E.exact_output_distribution(field, p).pmf
    out = E.sample(
        moved, start_states(c, p, 12_000), backend="potential", generator=torch.Generator().manual_seed(4)
    )
    assert_samples_follow(torch.bincount(c.state_index(out), minlength=c.num_states), expected)


# ----------------------------------------------------------------------------- extension plumbing


@requires_extension
def test_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10."""
    ops = _extension.ops()
    vectors = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, (k0, k1), expected in vectors:
        key = (k1 << 32) | k0
        seed = key - 2**64 if key >= 2**63 else key
        out = ops.philox4x32(torch.tensor([counter], dtype=torch.int64), seed)
        assert out[0].tolist() == list(expected)


def hamming_move_args(layer: torch.Tensor, bidirectional: bool) -> tuple:
    """Arguments of one ``hamming_move`` call: the exact field of a K = 3, D = 3, L = 3 Hamming circuit."""
    c = HammingCircuit(3, 3, 3)
    p, q = dirichlet_pair(c.num_states, seed=11)
    field = E.ExactField(c, p, q)
    phi, sink = field.potential_table(), field.sink_table()
    z = torch.arange(layer.shape[0]) * 3 % c.num_states
    return (phi, sink, layer.clamp_max(c.num_layers), z, 3, 3, c.g, c.G, bidirectional, 7, 8)


def op_samples():
    """``"op[-variant]"`` -> arguments of one call of each sampler op (tests/test_ops.py opchecks them)."""
    c, p, field = make("grid-K5-D2-L4")
    L = c.num_layers
    phi, sink = field.potential_table(), field.sink_table()
    tables = PotentialTables.from_field(field)
    layer = torch.tensor([0, 1, 4, 2, 3, 4, 0])
    z = torch.tensor([0, 5, 24, 7, 13, 3, 11])
    weights = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([6, 0, 3, 2, 5])
    state = (torch.zeros(7, dtype=torch.float64), torch.full((7,), -1), torch.zeros(7, dtype=torch.int32))
    arrays = (tables.phi, tables.order, tables.reference, tables.prefix, tables.count, tables.masses)
    return {
        "consume_outlets": (weights, rows, *state, 10, False, 123, 456),
        "consume_outlets-float32-negate": (weights.float(), rows, *state, 0, True, -5, 9),
        "potential_move": (phi, sink, layer, z, c.G, c.e, True, 7, 8),
        "potential_move-forward": (phi, sink, layer.clamp_max(L - 1), z, c.G, c.e, False, 7, 8),
        "potential_move_sorted": (*arrays, layer, z, 1, 2),
        "hamming_move": hamming_move_args(layer, True),
        "hamming_move-forward": hamming_move_args(layer.clamp_max(2), False),
        "philox4x32": (torch.arange(20).reshape(5, 4), 99),
    }


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
@pytest.mark.parametrize("case", list(op_samples()))
def test_cuda_ops_follow_the_cpu_streams(case):
    """Same seed, same walkers: the CUDA kernels draw what the CPU ops draw. consume_outlets and
    philox4x32 must agree exactly; the potential ops may differ where nvcc contracts a multiply-add
    into an FMA and a draw lands within a rounding error of a boundary (tolerated: 1 in 1000)."""
    if not _extension.has_device_kernels(torch.device("cuda")):
        pytest.skip("extension built without CUDA kernels")
    op = getattr(_extension.ops(), case.split("-")[0])
    args = op_samples()[case]
    if case.startswith("hamming_move"):  # many walkers at every vertex
        g = torch.Generator().manual_seed(1)
        layer = torch.randint(0, 3 + (case != "hamming_move-forward"), (50_000,), generator=g)
        args = (*args[:2], layer, torch.randint(0, 27, (50_000,), generator=g), *args[4:])
    if case.startswith("potential_move"):  # many walkers at every vertex
        c = E.Circuit(5, 2, 4)
        g = torch.Generator().manual_seed(1)
        layer = torch.randint(0, c.num_layers + (case != "potential_move-forward"), (50_000,), generator=g)
        z = torch.randint(0, c.num_states, (50_000,), generator=g)
        n_tables = 6 if case == "potential_move_sorted" else 2
        args = (*args[:n_tables], layer, z, *args[n_tables + 2 :])
    on_cpu = op(*args)
    on_cuda = op(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
    on_cpu = on_cpu if isinstance(on_cpu, tuple) else (on_cpu,)
    on_cuda = on_cuda if isinstance(on_cuda, tuple) else (on_cuda,)
    for a, b in zip(on_cpu, on_cuda):
        if case.startswith(("potential_move", "hamming_move")):
            assert float((a != b.cpu()).double().mean()) <= 1e-3
        else:
            assert torch.equal(a, b.cpu())


@requires_extension
def test_ops_name_bad_arguments():
    ops = _extension.ops()
    args = op_samples()
    with pytest.raises(RuntimeError, match="consume_outlets: rows must hold indices in"):
        a = list(args["consume_outlets"])
        a[1] = torch.tensor([0, 1, 2, 3, 7])
        ops.consume_outlets(*a)
    with pytest.raises(RuntimeError, match="consume_outlets: weights must be float32 or float64"):
        a = list(args["consume_outlets"])
        a[0] = a[0].to(torch.int64)
        ops.consume_outlets(*a)
    with pytest.raises(RuntimeError, match=r"potential_move: sink must have shape \(M,\)"):
        a = list(args["potential_move"])
        a[1] = a[1][:3]
        ops.potential_move(*a)
    with pytest.raises(RuntimeError, match="potential_move_sorted: masses must be"):
        a = list(args["potential_move_sorted"])
        a[5] = a[5][..., :4]
        ops.potential_move_sorted(*a)
    with pytest.raises(RuntimeError, match="hamming_move: phi must have M = num_categories\\*\\*dim columns"):
        a = list(args["hamming_move"])
        a[4] = 4
        ops.hamming_move(*a)
    _, status = ops.potential_move(
        *args["potential_move"][:2], torch.tensor([9]), torch.tensor([0]), 1.0, 1.0, True, 0, 0
    )
    assert int(status[0]) == _extension.STATUS_BAD_INDEX


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_extension, "_state", {"available": False, "reason": "simulated for the test"})
    monkeypatch.setattr(backends, "_WARNED", set())
    c, p, field = make("line-K13-L7")
    x0 = start_states(c, p, 300)
    with pytest.warns(RuntimeWarning, match="not built: .*simulated for the test") as record:
        E.sample(Generic(field), x0)
        E.sample(field, x0)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E.sample(Generic(field), x0)  # no second warning
    with pytest.raises(ValueError, match="backend 'cpp' for sample is not available on cpu: .*not built"):
        E.sample(field, x0, backend="cpp")
