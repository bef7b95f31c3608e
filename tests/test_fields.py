"""The Field contract (ecd2g_fast/fields.py): construction, checked outputs, empty calls, inference
mode, the memory budget; StateField; integer seeds and narrow state dtypes; sample under
torch.compile."""

from __future__ import annotations

import types

import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast import backends, fields

from .testing import assert_samples_follow, dirichlet_pair, total_variation

BACKENDS = ("torch", "cpp")


def setup(K: int = 4, D: int = 1, L: int = 3, seed: int = 1):
    c = E.Circuit(K, D, L)
    p, q = dirichlet_pair(c.num_states, seed)
    return c, p, q


def dense_state_fn(c: E.Circuit, p: torch.Tensor, q: torch.Tensor):
    """``fn(layer, z, w)`` of StateField reading the exact currents ``Circuit.currents``."""
    currents = c.currents(p, q)
    return lambda layer, z, w: currents[layer][c.flatten(z)][:, c.flatten(w)]


def start_states(c: E.Circuit, p: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return c.index_state(torch.multinomial(p, n, replacement=True, generator=g))


class Broken(fields.Field):
    """An ExactField seen as a generic field, one output corrupted; records the grad modes it ran in."""

    def __init__(self, inner: E.ExactField, corrupt: str | None = None, method: str = "currents_to_next"):
        super().__init__(inner.circuit)
        self.inner, self.corrupt, self.method = inner, corrupt, method
        self.modes: set[tuple[bool, bool]] = set()

    @property
    def device(self):
        return self.inner.device

    def _out(self, method: str, out: torch.Tensor):
        self.modes.add((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        if method != self.method or self.corrupt is None:
            return out
        return {
            "column-short": lambda: out[:, :-1],
            "column-extra": lambda: torch.cat([out, out[:, :1]], 1),
            "transposed": lambda: out.T,
            "integer": lambda: out.to(torch.int64),
            "meta-device": lambda: out.to("meta"),
            "list": lambda: out.tolist(),
            "2d-sink": lambda: out[:, None],
        }[self.corrupt]()

    def currents_to_next(self, layer, z, start, stop):
        return self._out("currents_to_next", self.inner.currents_to_next(layer, z, start, stop))

    def currents_from_prev(self, layer, z, start, stop):
        return self._out("currents_from_prev", self.inner.currents_from_prev(layer, z, start, stop))

    def sink_currents(self, z):
        return self._out("sink_currents", self.inner.sink_currents(z))


# ----------------------------------------------------------------------------- construction
def test_field_init_checks_the_circuit_and_sample_needs_it():
    c, p, q = setup()
    with pytest.raises(TypeError, match="circuit must be an ecd2g_fast.Circuit or HammingCircuit, got str"):
        Broken(types.SimpleNamespace(circuit="circuit"))

    class NoInit(Broken):
        def __init__(self, inner):  # forgets super().__init__(circuit)
            self.inner, self.corrupt, self.method, self.modes = inner, None, "", set()

    field = NoInit(E.ExactField(c, p, q))
    match = r"NoInit.circuit must be an ecd2g_fast.Circuit or HammingCircuit, got NoneType \(a Field subclass calls super\(\).__init__\(circuit\)\)"
    with pytest.raises(E.FieldError, match=match):
        E.sample(field, torch.zeros(3, 1, dtype=torch.int64))
    with pytest.raises(E.FieldError, match=match):
        E.exact_output_distribution(field, p)
    field.circuit = c
    field.bytes_per_pair = 0
    with pytest.raises(E.FieldError, match="NoInit.bytes_per_pair must be a positive int, got 0"):
        E.sample(field, torch.zeros(3, 1, dtype=torch.int64))


def test_package_fields_call_field_init():
    c, p, q = setup(K=3, D=2, L=2)
    for field in (
        E.ExactField(c, p, q),
        E.CurrentNet(c).field(),
        E.PotentialNet(c).field(),
        E.StateField(c, dense_state_fn(c, p, q)),
    ):
        assert field.circuit is c
        assert fields.check_field(field) is c
    assert E.ExactField(c, p, q).bytes_per_pair == 64 and E.CurrentNet(c).field().bytes_per_pair == 64
    assert fields.Field.bytes_per_pair == 1024 and not fields.Field.acyclic and E.ExactField.acyclic


# ----------------------------------------------------------------------------- checked outputs
SHAPE_CASES = [
    (
        "currents_to_next",
        "column-short",
        r"currents_to_next returned shape \(\d+, \d+\), expected \(B, stop - start\)",
    ),
    (
        "currents_to_next",
        "column-extra",
        r"currents_to_next returned shape \(\d+, \d+\), expected \(B, stop - start\)",
    ),
    (
        "currents_to_next",
        "transposed",
        r"currents_to_next returned shape \(\d+, \d+\), expected \(B, stop - start\)",
    ),
    (
        "currents_from_prev",
        "transposed",
        r"currents_from_prev returned shape \(\d+, \d+\), expected \(B, stop - start\)",
    ),
    ("currents_to_next", "integer", "currents_to_next must return a floating-point tensor, got torch.int64"),
    (
        "currents_from_prev",
        "meta-device",
        "currents_from_prev must return a tensor on the field's device cpu, got meta",
    ),
    (
        "currents_to_next",
        "list",
        r"currents_to_next must return a torch.Tensor of shape \(B, stop - start\) = \(\d+, \d+\), got list",
    ),
    ("sink_currents", "2d-sink", r"sink_currents returned shape \(\d+, 1\), expected \(B,\) = \(\d+,\)"),
]


@pytest.mark.parametrize("method,corrupt,match", SHAPE_CASES, ids=[f"{m}-{c}" for m, c, _ in SHAPE_CASES])
@pytest.mark.parametrize("consumer", ["exact", *BACKENDS])
def test_bad_outputs_raise_field_error_naming_the_method(consumer, method, corrupt, match):
    """Every consumer rejects a field output of the wrong shape, dtype, device or type, naming the
    method and the expected shape. M = 4 and four walkers all at layer 0 make B == S == M, where
    a transposed output has the expected shape: it is caught because no block is ever square."""
    c, p, q = setup(K=4, D=1, L=2)
    field = Broken(E.ExactField(c, p, q), corrupt, method)
    with pytest.raises(E.FieldError, match=match):
        if consumer == "exact":
            E.exact_output_distribution(field, p)
        else:
            x0 = torch.arange(4).reshape(4, 1)
            E.sample(field, x0, backend=consumer, chunk_size=4, generator=0)


def test_no_block_is_square():
    assert list(fields.column_blocks(0, 4, 4, rows=4)) == [(0, 3), (3, 4)]
    assert list(fields.column_blocks(0, 4, 4, rows=3)) == [(0, 4)]
    assert list(fields.column_blocks(2, 9, 3, rows=3)) == [(2, 4), (4, 5), (5, 7), (7, 8), (8, 9)]
    assert list(fields.column_blocks(0, 5, 1, rows=1)) == [(i, i + 1) for i in range(5)]
    assert list(fields.column_blocks(3, 3, 2, rows=2)) == []


def test_bad_table_of_a_potential_field_raises_field_error():
    c, p, q = setup(K=4, D=1, L=2)

    class Short(E.PotentialField):
        device = torch.device("cpu")

        def compute_potential_table(self):
            return torch.zeros(c.num_layers, c.num_states, dtype=torch.float64)  # one layer short

    for backend in ("potential", "potential-torch", "cpp"):
        with pytest.raises(
            E.FieldError,
            match=r"Short.potential_table returned shape \(2, 4\), expected \(L\+1, M\) = \(3, 4\)",
        ):
            E.sample(Short(c), torch.zeros(2, 1, dtype=torch.int64), backend=backend)


# ----------------------------------------------------------------------------- empty calls, modes
def test_empty_calls_return_empty_tensors():
    c, p, q = setup(K=3, D=2, L=2)
    empty = torch.zeros(0, dtype=torch.int64)
    one = torch.ones(1, dtype=torch.int64)
    for field in (
        E.ExactField(c, p, q),
        E.CurrentNet(c).field(),
        E.PotentialNet(c).field(),
        E.StateField(c, dense_state_fn(c, p, q)),
    ):
        for method in ("currents_to_next", "currents_from_prev"):
            assert getattr(field, method)(empty, empty, 0, 9).shape == (0, 9), (field, method)
            assert getattr(field, method)(one, one, 4, 4).shape == (1, 0), (field, method)
        assert field.sink_currents(empty).shape == (0,)


def test_fields_are_called_under_inference_mode_and_results_are_ordinary_tensors():
    c, p, q = setup(K=4, D=1, L=2)
    exact = E.ExactField(c, p, q)
    x0 = start_states(c, p, 200)
    for backend in BACKENDS:
        field = Broken(exact)
        out = E.sample(field, x0, backend=backend, generator=0)
        assert field.modes == {(True, False)}
        assert not out.is_inference()
        out[0, 0] = 0  # an ordinary tensor: in-place updates work outside inference mode
    field = Broken(exact)
    law = E.exact_output_distribution(field, p)
    assert field.modes == {(True, False)} and not law.pmf.is_inference()
    # caches built while sampling are ordinary tensors, usable (and updatable) outside inference mode
    assert not exact.potential_table().is_inference()
    net = E.CurrentNet(c)
    with torch.no_grad():
        net.body[-1].bias.fill_(1.0)  # positive currents: every vertex has outflow
    net_field = net.field()
    E.sample(net_field, x0[:1], generator=0)  # caches the sink current of one state
    assert net_field.sink_currents(torch.arange(c.num_states)).shape == (c.num_states,)


def test_default_chunk_follows_the_memory_budget(monkeypatch):
    c, p, q = setup(K=5, D=2, L=2)
    exact = E.ExactField(c, p, q)
    x0 = start_states(c, p, 40)
    widest = {}

    class Recording(Broken):
        def currents_to_next(self, layer, z, start, stop):
            widest[layer.shape[0]] = max(widest.get(layer.shape[0], 0), stop - start)
            return super().currents_to_next(layer, z, start, stop)

    monkeypatch.delenv(fields.MEMORY_ENV, raising=False)
    assert fields.memory_budget() == fields.SAMPLE_MEMORY_BYTES
    assert fields.default_chunk_size(exact, 40) == c.num_states
    monkeypatch.setenv(fields.MEMORY_ENV, str(40 * 1024 * 3))  # three states a walker at 1024 B a pair
    assert fields.default_chunk_size(Recording(exact), 40) == 3
    assert fields.default_chunk_size(exact, 40) == c.num_states  # 64 B a pair: 48 >= M
    E.sample(Recording(exact), x0, backend="torch", generator=0)
    assert widest[40] == 3  # the first move: all 40 walkers at layer 0
    monkeypatch.setenv(fields.MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match="ECD2G_SAMPLE_MEMORY_BYTES must be a positive int"):
        E.sample(Recording(exact), x0)


# ----------------------------------------------------------------------------- StateField
STATE_SETUPS = {"line-K6-L3": (6, 1, 3), "grid-K3-D2-L4": (3, 2, 4), "line-K2-L1": (2, 1, 1)}


@pytest.mark.parametrize("setup_name", list(STATE_SETUPS))
def test_state_field_of_the_exact_currents_reproduces_q(setup_name):
    c, p, q = setup(*STATE_SETUPS[setup_name])
    field = E.StateField(c, dense_state_fn(c, p, q))
    assert not field.acyclic and field.device == torch.device("cpu")
    for mode in ("bidirectional", "forward"):
        want = E.exact_output_distribution(E.ExactField(c, p, q), p, mode).pmf
        assert total_variation(E.exact_output_distribution(field, p, mode).pmf, want) <= 1e-12
    assert total_variation(E.exact_output_distribution(field, p).pmf, q) <= 1e-12
    for backend in BACKENDS:
        out = E.sample(field, start_states(c, p, 12_000), backend=backend, generator=3)
        assert_samples_follow(torch.bincount(c.state_index(out), minlength=c.num_states), q)


def test_state_field_maps_methods_onto_fn():
    c, p, q = setup(K=3, D=2, L=3)
    exact = E.ExactField(c, p, q)
    calls = []

    def fn(layer, z, w):
        calls.append((layer, z.shape[0], w.shape[0]))
        return dense_state_fn(c, p, q)(layer, z, w)

    field = E.StateField(c, fn)
    layer = torch.tensor([0, 2, 1, 2, 0])
    z = torch.tensor([4, 0, 8, 3, 4])
    torch.testing.assert_close(field.currents_to_next(layer, z, 2, 7), exact.currents_to_next(layer, z, 2, 7))
    assert sorted(calls) == [(0, 2, 5), (1, 1, 5), (2, 2, 5)]  # grouped by layer
    torch.testing.assert_close(
        field.currents_from_prev(layer + 1, z, 0, 9), exact.currents_from_prev(layer + 1, z, 0, 9)
    )
    torch.testing.assert_close(field.sink_currents(z), q[z], rtol=0, atol=1e-15)
    calls.clear()
    field.sink_currents(z)
    assert calls == []  # cached
    field.refresh()
    field.sink_currents(z[:1])
    assert calls and all(layer == c.num_layers - 1 for layer, *_ in calls)


def test_state_field_of_a_module_follows_its_weights_and_device():
    c, p, q = setup(K=3, D=1, L=2)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Softplus(), torch.nn.Linear(8, 1))

    def fn(layer, z, w):  # an undecorated network of (z, w) pairs
        pairs = torch.cat([z[:, None, :].expand(-1, w.shape[0], -1), w[None].expand(z.shape[0], -1, -1)], 2)
        return torch.nn.functional.softplus(net(pairs.float())).squeeze(-1)

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, layer, z, w):
            return fn(layer, z, w)

    field = E.StateField(c, Module())
    assert field.device == torch.device("cpu")
    states = torch.arange(c.num_states)
    first = field.sink_currents(states).clone()
    with torch.no_grad():
        net[-1].bias += 1.0
    assert not torch.equal(field.sink_currents(states), first)  # weights changed: cache dropped
    assert E.sample(field, start_states(c, p, 50), generator=0).shape == (50, 1)


@pytest.mark.parametrize(
    "bad,match",
    [
        (
            lambda out: out.T,
            r"StateField.fn\(layer=0, z: \(\d+, 1\), w: \(\d+, 1\)\) returned shape \(\d+, \d+\), expected \(B, S\)",
        ),
        (lambda out: out[:, 1:], r"StateField.fn\(layer=\d.*returned shape .*, expected \(B, S\)"),
        (lambda out: out.sum(1), r"returned shape \(\d+,\), expected \(B, S\)"),
        (
            lambda out: out.to(torch.int32),
            "StateField.fn.* must return a floating-point tensor, got torch.int32",
        ),
        (
            lambda out: out.numpy(),
            r"StateField.fn.* must return a torch.Tensor of shape \(B, S\) = .*, got ndarray",
        ),
    ],
    ids=["transposed", "column-short", "vector", "integer", "numpy"],
)
def test_state_field_rejects_bad_fn_outputs(bad, match):
    c, p, q = setup(K=4, D=1, L=2)
    exact_fn = dense_state_fn(c, p, q)
    field = E.StateField(c, lambda layer, z, w: bad(exact_fn(layer, z, w)))
    with pytest.raises(E.FieldError, match=match):
        E.exact_output_distribution(field, p)
    with pytest.raises(E.FieldError, match=match):
        E.sample(field, torch.arange(4).reshape(4, 1), chunk_size=4)


def test_state_field_rejects_bad_arguments():
    c, p, q = setup()
    with pytest.raises(TypeError, match="circuit must be an ecd2g_fast.Circuit"):
        E.StateField("circuit", dense_state_fn(c, p, q))
    with pytest.raises(TypeError, match="fn must be callable"):
        E.StateField(c, 3)
    with pytest.raises(TypeError, match="device must be a torch.device or str"):
        E.StateField(c, dense_state_fn(c, p, q), device=0)
    with pytest.raises(ValueError, match="bytes_per_pair must be >= 1"):
        E.StateField(c, dense_state_fn(c, p, q), bytes_per_pair=0)


# ----------------------------------------------------------------------------- seeds and dtypes
@pytest.mark.parametrize("backend", backends.names("sample"))
def test_int_seed_is_a_seeded_generator(backend):
    c, p, q = setup(K=4, D=2, L=3)
    field = E.ExactField(c, p, q)
    x0 = start_states(c, p, 500)
    seeded = E.sample(field, x0, backend=backend, generator=torch.Generator().manual_seed(5))
    assert torch.equal(E.sample(field, x0, backend=backend, generator=5), seeded)
    assert not torch.equal(E.sample(field, x0, backend=backend, generator=6), seeded)


def test_bad_generators_are_named():
    c, p, q = setup()
    field, x0 = E.ExactField(c, p, q), torch.zeros(3, 1, dtype=torch.int64)
    for bad in ("0", 1.5, True, [0]):
        with pytest.raises(TypeError, match="generator must be a torch.Generator, an int seed or None, got"):
            E.sample(field, x0, generator=bad)
    with pytest.raises(ValueError, match=r"generator as an int seed must lie in \[-2\*\*63, 2\*\*64\)"):
        E.sample(field, x0, generator=2**64)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_generator_on_another_device_is_named():
    c, p, q = setup()
    field, x0 = E.ExactField(c, p, q), torch.zeros(3, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="generator must be a torch.Generator on cpu, got one on cuda"):
        E.sample(field, x0, generator=torch.Generator("cuda"))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_narrow_integer_states_are_cast_once(dtype):
    c, p, q = setup(K=4, D=2, L=3)
    field = E.ExactField(c, p, q)
    x0 = start_states(c, p, 300)
    want = E.sample(field, x0, generator=2)
    got = E.sample(field, x0.to(dtype), generator=2)
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert torch.equal(c.state_index(x0.to(dtype)), c.state_index(x0))
    assert torch.equal(c.index_state(c.state_index(x0).to(torch.int32)), x0)
    with pytest.raises(
        TypeError, match=r"x0 must have dtype torch.int64 \(or int8, int16, int32, uint8, cast"
    ):
        E.sample(field, x0.to(torch.float32))
    with pytest.raises(TypeError, match="x0 must have dtype torch.int64 .*got torch.bool"):
        E.sample(field, x0.bool())


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("kind", ["exact", "state"])
def test_sample_in_compiled_code_does_not_recompile(kind):
    """sample() inside a compiled function: two calls with new inputs of the same shape compile
    once (a recompilation raises), and give what eager gives for the seed. Dynamo decides about
    recompiling, whatever the backend; "eager" skips Inductor's code generation."""
    torch._dynamo.reset()
    c, p, q = setup(K=5, D=2, L=4)
    field = E.ExactField(c, p, q) if kind == "exact" else E.StateField(c, dense_state_fn(c, p, q))

    def f(x0):
        return E.sample(field, (x0 + 1) - 1, generator=7) * 2

    compiled = torch.compile(f, backend="eager")
    first, second = start_states(c, p, 300, seed=1), start_states(c, p, 300, seed=2)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = [compiled(first), compiled(second)]
    assert torch.equal(got[0], f(first)) and torch.equal(got[1], f(second))
    assert not torch.equal(got[0], got[1])
