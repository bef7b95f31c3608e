"""Property-based fuzzing of the public API with hypothesis.

Three groups of properties:

1. **Random valid inputs against the references.** Random circuits (``M = K**D <= 64``,
   ``L <= 20``, ``r`` in ``[1e-12, 1e3]``, ``R / r`` in ``(1, 1e12]``) and random pmfs with zeros
   either are refused (``ValueError`` naming ``r``/``R``) or satisfy Kirchhoff's law to 1e-9 at
   every vertex; the ``"torch"`` target pass equals the pairwise ``"reference"`` one on random
   circuits up to ``K**D >= 2**63`` (hashed keys) under the tolerance rule of
   ``tests/test_targets.py``; ``sample()`` with an ``ExactField`` returns well-formed states in
   both modes, and the exact bidirectional output law is ``q`` to 1e-9.
2. **Random malformed inputs.** Every public function (``Circuit``, ``state_index``,
   ``index_state``, ``potentials``, ``current_targets``, ``potential_targets``, ``sample``,
   ``exact_output_distribution``, ``TrainConfig``, ``train``, the CLI's data reader
   ``load_states``) given a malformed argument raises ``TypeError`` or ``ValueError`` (``FieldError``
   is one) whose message names the argument; any other exception type fails. The CLI, in-process
   on ``train --steps 1`` with random option values, exits 0, 1 or 2 and never prints a traceback.
   The malformed inputs come in kinds (one test id each, ``function:kind``); a kind on which the
   code has a known defect is marked ``xfail(strict=True)`` with the defect as its reason, so it
   fails again once the defect is fixed (then remove the marker).
3. A bounded cost: the whole file runs in well under a minute under the ``ci`` profile.

Profiles (registered in ``tests/conftest.py``, chosen by the environment variable
``ECD2G_FUZZ_PROFILE``):

* ``ci`` (the default, what ``make test`` runs): ``derandomize=True`` (the same examples on every
  run), ``deadline=None``, no example database, no shrinking (a failure is reported at once, with
  a ``@reproduce_failure`` blob); 10 examples per test and per malformed-input kind, 50 for the
  cheap valid-input properties, 20 CLI runs.
* ``long``: ``ECD2G_FUZZ_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz.py``: random
  seeds, 400 examples per test and kind (2000 for the cheap valid-input properties, 800 CLI runs),
  shrinking on; about 2 minutes on the 2-core CPU. For a fuzzing session, not for CI: it may find
  what the ``ci`` examples miss (it found the ``p ~ q`` defect of
  :func:`test_exact_output_law_when_q_is_p_with_zeros` through
  :func:`test_exact_field_walks_are_well_formed_and_exact`, with ``q`` within 1e-5 of ``p``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import numbers
import os
import re
import sys
import tempfile
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

import ecd2g_fast as E
from ecd2g_fast import backends, cli
from ecd2g_fast.experiments.datasets import load_states
from ecd2g_fast.sampling import MODES
from ecd2g_fast.training import TrainConfig

from .test_targets import RTOL, current_scale, potential_scale
from .testing import assert_close_to_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def scaled(fraction: float, **changes) -> settings:
    """The profile's settings with ``fraction`` of its ``max_examples`` (at least 2) and ``changes``."""
    return settings(max_examples=max(2, round(settings.default.max_examples * fraction)), **changes)


def names_argument(message: str, name: str) -> bool:
    """Whether ``message`` names ``name`` as a word (``r`` in ``"r must be ..."``, not in ``"for"``)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?!\w)", message) is not None


def kirchhoff_residual(circuit: E.Circuit, p: torch.Tensor, q: torch.Tensor) -> float:
    """Largest violation of Kirchhoff's law over all vertices, in units of the total current (1):
    outflow minus inflow is ``p`` at layer 0, ``-q`` at layer L, 0 elsewhere
    (as ``tests/test_circuit.py::test_kirchhoff_and_unit_cut_current``)."""
    currents = circuit.currents(p, q)
    net_out = torch.zeros(circuit.num_layers + 1, circuit.num_states, dtype=torch.float64)
    net_out[:-1] += currents.sum(2)
    net_out[1:] -= currents.sum(1)
    injection = torch.zeros_like(net_out)
    injection[0] += p
    injection[-1] -= q
    return float((net_out - injection).abs().max())


# ============================================================================ valid inputs
@st.composite
def small_circuit_sizes(draw, max_states: int = 64, max_layers: int = 20) -> tuple[int, int, int]:
    """``(K, D, L)`` with ``K**D <= max_states``."""
    dim = draw(st.integers(1, 3))
    largest_k = max(k for k in range(2, max_states + 1) if k**dim <= max_states)
    return draw(st.integers(2, largest_k)), dim, draw(st.integers(1, max_layers))


def resistances(log10_factor_minus_one: tuple[float, float]) -> st.SearchStrategy[tuple[float, float]]:
    """``(r, R)`` with ``r = 10**u``, ``u`` in ``[-12, 3]``, and ``R = r (1 + 10**v)``, ``v`` in the range."""
    return st.tuples(st.floats(-12.0, 3.0), st.floats(*log10_factor_minus_one)).map(
        lambda uv: (10.0 ** uv[0], 10.0 ** uv[0] * (1.0 + 10.0 ** uv[1]))
    )


#: ``R / r - 1`` up to 1e6: ``theta >= 2e-3`` for every ``M >= 2`` (``theta ~ sqrt(2 M r / R)``).
WELL_CONDITIONED = (-9.0, 6.0)
#: ``R / r`` up to 1e12: ``theta`` down to ``1e-6``.
ILL_CONDITIONED = (6.0, 11.999)


def pmfs(num_states: int) -> st.SearchStrategy[torch.Tensor]:
    """float64 pmfs of length ``num_states``, often sparse (zeros), weights over twelve decades."""

    def normalise(weights: list[float]) -> torch.Tensor:
        w = torch.tensor(weights, dtype=torch.float64)
        if float(w.sum()) == 0.0:
            w[0] = 1.0
        return w / w.sum()

    weight = st.one_of(st.just(0.0), st.floats(1e-6, 1e6))
    return st.lists(weight, min_size=num_states, max_size=num_states).map(normalise)


def check_kirchhoff_or_refusal(data: st.DataObject, conditioning: tuple[float, float]) -> None:
    """Draw a circuit with ``R / r - 1 = 10**v``, ``v`` in ``conditioning``, and two pmfs; the
    circuit is refused with a ``ValueError`` naming ``r``/``R``, or Kirchhoff holds to 1e-9."""
    K, D, L = data.draw(small_circuit_sizes(), label="K, D, L")
    r, R = data.draw(resistances(conditioning), label="r, R")
    try:
        circuit = E.Circuit(K, D, L, r, R)
    except ValueError as error:
        assert names_argument(str(error), "r") or names_argument(str(error), "R"), str(error)
        event("refused")
        return
    event(f"theta {'<' if circuit.theta < 1e-3 else '>='} 1e-3")
    p = data.draw(pmfs(circuit.num_states), label="p")
    q = data.draw(pmfs(circuit.num_states), label="q")
    residual = kirchhoff_residual(circuit, p, q)
    assert residual <= 1e-9, f"Kirchhoff violated by {residual:.3e} (theta = {circuit.theta:.3e})"


@scaled(5.0)
@given(data=st.data())
def test_kirchhoff_holds_or_circuit_refuses(data):
    """Random circuits with ``R / r <= 1e6 + 1`` (so ``theta >= 2e-3``) and random sparse pmfs:
    ``Circuit`` raises ``ValueError`` naming ``r``/``R``, or ``currents(p, q)`` satisfies
    Kirchhoff's law at every vertex to 1e-9 of the total current."""
    check_kirchhoff_or_refusal(data, WELL_CONDITIONED)


@given(data=st.data())
def test_kirchhoff_holds_or_circuit_refuses_ill_conditioned(data):
    """As :func:`test_kirchhoff_holds_or_circuit_refuses` with ``R / r`` in ``(1e6, 1e12]``, where
    ``theta`` can be far below 1e-3: there the closed form would miss Kirchhoff's law by up to
    ~1e-5, so ``Circuit`` must refuse (it does since ``MIN_THETA = 1e-3``)."""
    check_kirchhoff_or_refusal(data, ILL_CONDITIONED)


STATE_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@st.composite
def target_cases(draw, with_w: bool):
    """A circuit, queries and a batch for the target pass: small, wide (``K`` up to 65536, all
    counting paths) or hashed (``K**D >= 2**63``) state spaces; batches with duplicates from a
    pool, queries that hit and miss, ``z == w`` on some, narrow integer dtypes sometimes."""
    space = draw(st.sampled_from(["small", "wide", "hashed"]))
    if space == "small":
        K, D = draw(st.integers(2, 12)), draw(st.integers(1, 3))
    elif space == "wide":
        K, D = draw(st.integers(2, 65536)), draw(st.integers(1, 5))
    else:
        K = draw(st.integers(2, 7))
        D = math.ceil(63 / math.log2(K)) + draw(st.integers(0, 8))
        K, D = draw(st.sampled_from([(K, D), (3, 41)]))
    L = draw(st.integers(1, 20))
    r, R = draw(st.one_of(st.just((0.1, 100.0)), resistances(WELL_CONDITIONED)))
    circuit = E.Circuit(K, D, L, r, R)
    event(f"state space: {space}, M {'>=' if circuit.num_states >= 2**63 else '<'} 2**63")
    Q, B, By = draw(st.integers(0, 24)), draw(st.integers(1, 24)), draw(st.integers(1, 24))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1), label="seed"))
    pool = torch.randint(0, K, (draw(st.integers(1, 4)), D), generator=g)
    x = torch.randint(0, K, (B, D), generator=g)
    y = torch.randint(0, K, (By, D), generator=g)
    x[torch.rand(B, generator=g) < 0.7] = pool[0]
    y[torch.rand(By, generator=g) < 0.5] = pool[-1]
    candidates = torch.cat([pool, x, y, torch.randint(0, K, (4, D), generator=g)])
    z = candidates[torch.randint(0, candidates.shape[0], (Q,), generator=g)]
    w = candidates[torch.randint(0, candidates.shape[0], (Q,), generator=g)]
    same = torch.rand(Q, generator=g) < 0.3
    w[same] = z[same]
    layer = torch.randint(0, L if with_w else L + 1, (Q,), generator=g)
    fits = [dt for dt in STATE_DTYPES if K - 1 <= torch.iinfo(dt).max]
    x = x.to(draw(st.sampled_from(fits), label="x dtype"))
    y = y.to(draw(st.sampled_from(fits), label="y dtype"))
    check_values = draw(st.booleans(), label="check_values")
    return circuit, layer, z, w, x, y, check_values


@scaled(5.0)
@given(case=target_cases(with_w=True))
def test_torch_current_targets_equal_reference(case):
    """``current_targets(backend="torch")`` equals the pairwise ``"reference"`` backend on random
    circuits, batches and queries, to 1e-12 of the sum of the absolute values of each target's
    terms (``tests/test_targets.py``'s rule; counts are exact, so only rounding differs)."""
    circuit, layer, z, w, x, y, check_values = case
    out = E.current_targets(circuit, layer, z, w, x, y, backend="torch", check_values=check_values)
    ref = E.current_targets(circuit, layer, z, w, x, y, backend="reference")
    assert out.dtype == torch.float64 and out.shape == layer.shape
    scale = current_scale(circuit, layer, z, w, x.long(), y.long())
    assert_close_to_reference(out, ref, rtol=RTOL, scale=scale)


@scaled(5.0)
@given(case=target_cases(with_w=False))
def test_torch_potential_targets_equal_reference(case):
    """``potential_targets(backend="torch")`` equals the ``"reference"`` backend (layers in
    ``[0, L]``), under the same tolerance rule as the current targets."""
    circuit, layer, z, _, x, y, check_values = case
    out = E.potential_targets(circuit, layer, z, x, y, backend="torch", check_values=check_values)
    ref = E.potential_targets(circuit, layer, z, x, y, backend="reference")
    assert out.dtype == torch.float64 and out.shape == layer.shape
    assert_close_to_reference(
        out, ref, rtol=RTOL, scale=potential_scale(circuit, layer, z, x.long(), y.long())
    )


def sample_backends() -> list[str]:
    """The sampler backends that can run on the CPU here (``"cpp"`` needs the built extension)."""
    from ecd2g_fast.sampling import cpp

    return [
        "auto",
        *(n for n in backends.names("sample") if n != "cpp" or cpp.is_available(torch.device("cpu"))),
    ]


@st.composite
def walk_cases(draw):
    """An ``ExactField`` of random sparse pmfs ``p != q`` on a random small circuit (``M <= 64``,
    ``L <= 8``, well-conditioned ``r/R``); start states from the support of ``p`` and anywhere in ``S``; a
    sampler backend and a seed."""
    K, D, L = draw(small_circuit_sizes(max_layers=8), label="K, D, L")
    r, R = draw(resistances(WELL_CONDITIONED), label="r, R")
    circuit = E.Circuit(K, D, L, r, R)
    p = draw(pmfs(circuit.num_states), label="p")
    q = draw(pmfs(circuit.num_states), label="q")
    if torch.equal(q, p):  # q = p: test_exact_output_law_when_q_is_p_with_zeros (a known defect)
        q = torch.roll(q, 1)
        if torch.equal(q, p):  # uniform
            q = torch.nn.functional.one_hot(torch.tensor(0), circuit.num_states).double()
    support = torch.nonzero(p).flatten().tolist()
    in_support = draw(st.lists(st.sampled_from(support), max_size=16), label="starts in the support of p")
    anywhere = draw(st.lists(st.integers(0, circuit.num_states - 1), max_size=16), label="starts anywhere")
    starts = [circuit.index_state(torch.tensor(i, dtype=torch.int64)) for i in (in_support, anywhere)]
    backend = draw(st.sampled_from(sample_backends()), label="backend")
    return E.ExactField(circuit, p, q), p, q, *starts, backend, draw(st.integers(0, 2**63 - 1), label="seed")


def check_walk(
    circuit: E.Circuit, mode: str, x0: torch.Tensor, states: torch.Tensor, moves: torch.Tensor
) -> None:
    """``(B, D)`` int64 states in ``[0, K)``; ``(B,)`` int64 moves: ``L`` (forward) or ``L`` plus an
    even number (bidirectional: the walk ends at layer L)."""
    assert states.shape == (x0.shape[0], circuit.dim) and states.dtype == torch.int64
    assert states.numel() == 0 or (int(states.min()) >= 0 and int(states.max()) < circuit.num_categories)
    assert moves.shape == (x0.shape[0],) and moves.dtype == torch.int64
    extra = moves - circuit.num_layers
    if mode == "forward":
        assert bool((extra == 0).all()), f"forward walks must take exactly L moves, got {moves.tolist()}"
    else:
        assert bool((extra >= 0).all() and (extra % 2 == 0).all()), f"moves {moves.tolist()}"


@scaled(5.0)
@given(case=walk_cases())
def test_exact_field_walks_are_well_formed_and_exact(case):
    """``sample()`` of an ``ExactField``, in both modes and with every backend: from start states in
    the support of ``p`` it returns well-formed states and move counts (:func:`check_walk`); from
    start states anywhere the same, or a ``FieldError`` naming a layer-0 vertex when a start lies
    outside the support (such a vertex may carry no current at all: with ``p = q`` and an even
    ``L`` it does not). The exact bidirectional output law from ``p`` is ``q`` to 1e-9."""
    field, p, q, in_support, anywhere, backend, seed = case
    circuit = field.circuit
    event(f"backend: {backend}")
    for mode in MODES:
        states, moves = E.sample(field, in_support, mode, backend=backend, generator=seed, return_moves=True)
        check_walk(circuit, mode, in_support, states, moves)
        try:
            states, moves = E.sample(
                field, anywhere, mode, backend=backend, generator=seed, return_moves=True
            )
        except E.FieldError as error:
            event("a start outside the support of p is a dead end")
            outside = bool((p[circuit.flatten(anywhere)] == 0).any())
            assert outside and "layer 0" in str(error), str(error)
        else:
            check_walk(circuit, mode, anywhere, states, moves)
    law = E.exact_output_distribution(field, p)
    error = float((law.pmf - q).abs().max())
    assert error <= 1e-9, f"exact bidirectional output law differs from q by {error:.3e}"


@example(case=(3, 2, (0.1, 100.0), [1.0, 0.0, 0.0], 0.0))
@given(
    case=st.tuples(
        st.integers(2, 6),
        st.sampled_from([2, 4, 6, 8]),
        resistances(WELL_CONDITIONED),
        st.lists(st.sampled_from([0.0, 1.0, 2.5]), min_size=6, max_size=6),
        st.sampled_from([0.0, 1e-9, 1e-6]),
    )  # fmt: skip
)
def test_exact_output_law_when_q_is_p_with_zeros(case):
    """``q = p`` (the identity transport), or ``q`` equal to ``p`` but for ``eps`` of mass moved to
    a state, with zeros in ``p`` and an even ``L``: the exact bidirectional output law of the
    ``ExactField`` is ``q`` to 1e-9. The sub-case of :func:`test_exact_field_walks_are_well_formed_and_exact`
    that it leaves out, pinned by a known failing example."""
    K, L, (r, R), weights, eps = case
    circuit = E.Circuit(K, 1, L, r, R)
    p = torch.tensor(weights[:K], dtype=torch.float64)
    p[0] = max(float(p[0]), 1.0)
    p /= p.sum()
    q = p.clone()
    q[0] -= eps
    q[-1] += eps
    law = E.exact_output_distribution(E.ExactField(circuit, p, q), p)
    assert float((law.pmf - q).abs().max()) <= 1e-9


# ============================================================================ malformed inputs
def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


#: Objects of many types that no argument of the API accepts by accident.
ODDITIES = (
    object(), np.int64(2), np.float32(0.5), np.float64(0.5), np.bool_(True), Fraction(1, 3),
    Decimal("0.5"), torch.tensor(2), torch.tensor(0.5), torch.tensor([1, 2]), torch.device("cpu"),
    frozenset({1}), Ellipsis,
)  # fmt: skip
#: Values of many types and sizes (ints bounded so that float(int) stays finite: huge ints are a
#: kind of their own).
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**200), 2**200),
    st.floats(),
    st.complex_numbers(max_magnitude=1e6),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
    st.sampled_from(ODDITIES),
)
NOT_INT = ANY_VALUE.filter(lambda v: not is_int(v))
NOT_REAL = ANY_VALUE.filter(lambda v: not is_real(v))
NOT_TENSOR = st.one_of(
    ANY_VALUE.filter(lambda v: not isinstance(v, torch.Tensor)),
    npst.arrays(np.int64, (2, 2), elements=st.integers(0, 2)),
)
#: numpy arrays with two or more elements: ``array == "name"`` is an array, ambiguous as a bool.
ARRAYS = npst.arrays(
    st.sampled_from([np.int64, np.float64, np.str_]), npst.array_shapes(min_side=2, max_side=3)
)
#: Unhashable containers and arrays, where a name (``mode``, ``backend``) is expected.
UNHASHABLE = st.one_of(
    st.lists(st.text(max_size=4), max_size=2),
    st.dictionaries(st.text(max_size=3), st.none(), max_size=2),
    ARRAYS,
)
#: Short strings (filtered wherever a valid name must be left out).
WORDS = st.text(max_size=12)
#: dtypes that states may not have (int64 is theirs; int8, int16, int32, uint8 are cast to it).
BAD_STATE_DTYPES = (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.complex64,
    torch.uint16, torch.uint32, torch.uint64,
)  # fmt: skip
#: Shapes of rank 0 to 4, sides 0 to 3.
SMALL_SHAPES = st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple)


def bad(argument: str, values: st.SearchStrategy, *also: str) -> st.SearchStrategy:
    """``({argument: value}, names)`` for each drawn value: the error must name ``argument`` (or one of ``also``)."""
    return values.map(lambda value: ({argument: value}, (argument, *also)))


def one_of_arguments(arguments: tuple[str, ...], values: Callable[[str], st.SearchStrategy], *also: str):
    """:func:`bad` for an argument drawn from ``arguments``."""
    return st.one_of(*(bad(a, values(a), *also) for a in arguments))


def zeros(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def states_of_dtype(rows: st.SearchStrategy[int], dim: int, dtypes=BAD_STATE_DTYPES) -> st.SearchStrategy:
    return st.builds(lambda dt, n: zeros(dt, (n, dim)), st.sampled_from(dtypes), rows)


def states_of_shape(dim: int, rows: int | None = None) -> st.SearchStrategy:
    """int64 zeros of any shape but ``(B, dim)`` (``(rows, ...)`` when ``rows`` is given)."""
    shapes = SMALL_SHAPES.filter(lambda s: len(s) != 2 or s[1] != dim)
    if rows is not None:
        shapes = shapes.filter(lambda s: len(s) >= 1).map(lambda s: (rows, *s[1:]))
        shapes = shapes.filter(lambda s: len(s) != 2 or s[1] != dim)
    return shapes.map(lambda s: zeros(torch.int64, s))


def states_out_of_range(rows: st.SearchStrategy[int], num_categories: int, dim: int) -> st.SearchStrategy:
    """``(n, dim)`` int64 states with one entry below 0 or at least ``num_categories``."""
    values = st.one_of(st.integers(-(2**63), -1), st.integers(num_categories, 2**63 - 1))

    def make(n: int, position: int, value: int) -> torch.Tensor:
        t = torch.zeros((n, dim), dtype=torch.int64)
        t.view(-1)[position % (n * dim)] = value
        return t

    return st.builds(make, rows, st.integers(0, 100), values)


def not_pmfs(num_states: int) -> st.SearchStrategy:
    """Anything but a pmf of length ``num_states``: other types and dtypes, wrong shapes,
    nan/inf, negative entries, sums off by more than 1e-6."""
    uniform = torch.full((num_states,), 1.0 / num_states, dtype=torch.float64)

    def with_entry(value: float, position: int) -> torch.Tensor:
        t = uniform.clone()
        t[position % num_states] = value
        return t

    return st.one_of(
        NOT_TENSOR,
        st.builds(
            zeros,
            st.sampled_from([torch.int64, torch.int32, torch.bool, torch.complex128]),
            st.just((num_states,)),
        ),
        SMALL_SHAPES.filter(lambda s: s != (num_states,)).map(
            lambda s: torch.full(s, 1.0 / num_states, dtype=torch.float64)
        ),
        st.builds(with_entry, st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, 100)),
        st.builds(with_entry, st.floats(-1e300, -1e-300), st.integers(0, 100)),
        st.floats(1e-5, 1e5).filter(lambda s: abs(s - 1) > 1e-5).map(lambda s: uniform * s),
    )


# ---------------------------------------------------------------------------- the calls
CIRCUIT = E.Circuit(3, 2, 3)  # K = 3, D = 2, M = 9, L = 3
HUGE_CIRCUIT = E.Circuit(3, 41, 2)  # M = 3**41 >= 2**63
UNIFORM = torch.full((9,), 1 / 9, dtype=torch.float64)
FIELD = E.ExactField(CIRCUIT, UNIFORM, UNIFORM)
X0 = torch.tensor([[0, 1], [2, 2], [1, 0], [2, 1]])
TARGET_ARGS = {
    "circuit": CIRCUIT,
    "layer": torch.tensor([0, 2, 1]),
    "z": torch.tensor([[0, 1], [2, 2], [1, 1]]),
    "w": torch.tensor([[0, 1], [0, 0], [2, 1]]),
    "x": torch.tensor([[0, 1], [0, 1], [2, 0], [1, 1], [2, 2]]),
    "y": torch.tensor([[1, 1], [0, 2], [2, 2], [2, 2]]),
}
TARGET_TENSORS = ("layer", "z", "w", "x", "y")
TRAIN_CIRCUIT = E.Circuit(4, 1, 2)
TRAIN_DATA = torch.tensor([[0], [1], [1], [2], [3], [3]])
TRAIN_ARGS = {
    "circuit": TRAIN_CIRCUIT,
    "source": TRAIN_DATA,
    "target": TRAIN_DATA.flip(0),
    "steps": 1,
    "batch_size": 4,
    "num_queries": 4,
    "model_kwargs": {"hidden": [4]},
    "checkpoint_every": 1,
    "device": "cpu",
    "progress": False,
}
DATA_OPTION = "--fuzzed-data"


def call_circuit(**changes):
    return E.Circuit(**{"num_categories": 3, "dim": 2, "num_layers": 3, "r": 0.1, "R": 100.0, **changes})


def call_state_index(z, circuit=CIRCUIT):
    return circuit.state_index(z)


def call_index_state(idx, circuit=CIRCUIT):
    return circuit.index_state(idx)


def call_potentials(**changes):
    return CIRCUIT.potentials(**{"p": UNIFORM, "q": UNIFORM, **changes})


def call_current_targets(**changes):
    return E.current_targets(**{**TARGET_ARGS, **changes})


def call_potential_targets(**changes):
    args = {**TARGET_ARGS, "layer": torch.tensor([0, 3, 1]), **changes}
    del args["w"]
    return E.potential_targets(**args)


def call_sample(**changes):
    return E.sample(**{"field": FIELD, "x0": X0, **changes})


def call_exact_output_distribution(**changes):
    return E.exact_output_distribution(**{"field": FIELD, "p0": UNIFORM, **changes})


def call_train(**changes):
    return E.train(**{**TRAIN_ARGS, **changes})


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def call_load_states(suffix: str, content: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        return load_states(path, name=DATA_OPTION)


def call_load_array(array: np.ndarray):
    return call_load_states(".npy", npy_bytes(array))


def check_loaded_array(result: np.ndarray, changes: dict) -> None:
    """A loaded ``.npy`` array: ``(N, D)`` int64, the file's values, in ``[0, 2**31)``."""
    array = np.asarray(changes["array"])
    expected = array.reshape(array.shape[0], -1) if array.ndim == 1 else array
    assert result.dtype == np.int64 and result.shape == expected.shape[:1] + expected.shape[1:2]
    assert np.array_equal(result, expected.astype(np.int64)) and result.min() >= 0 and result.max() < 2**31


def check_loaded_csv(result: np.ndarray, changes: dict) -> None:
    """A loaded ``.csv`` file of integer rows: ``(N, D)`` int64 equal to the rows written."""
    rows = changes["rows"]
    assert result.dtype == np.int64 and result.tolist() == rows


def csv_bytes(rows: list[list[int]], header: str, spaced: bool) -> bytes:
    separator = ", " if spaced else ","
    lines = ([header] if header else []) + [separator.join(map(str, row)) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def call_load_csv(rows: list[list[int]], header: str, spaced: bool):
    return call_load_states(".csv", csv_bytes(rows, header, spaced))


@contextlib.contextmanager
def limited_address_space(headroom: int = 2**30):
    """Lower this process's soft ``RLIMIT_AS`` to its current size plus ``headroom`` (Linux), so
    that a huge allocation fails at once instead of exhausting the machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
    limit = size + headroom if hard == resource.RLIM_INFINITY else min(size + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_finite_constants(circuit: E.Circuit) -> None:
    """A constructed circuit has finite constants: ``theta > 0``, ``log_a``, ``log_b``, ``log_s``."""
    assert math.isfinite(circuit.theta) and circuit.theta > 0, f"theta = {circuit.theta}"
    assert math.isfinite(circuit.log_s) and bool(
        torch.isfinite(circuit.log_a).all() and torch.isfinite(circuit.log_b).all()
    )


@dataclasses.dataclass(frozen=True)
class Malformed:
    """One kind of malformed input.

    ``inputs`` draws ``(changes, names)``; ``call(**changes)`` calls the function with those
    arguments replaced, and a ``TypeError``/``ValueError`` must name one of ``names``. With
    ``may_succeed`` the input may also be valid (then ``check(result, changes)``, if given).
    ``defect`` marks a kind on which the code has a known defect: ``xfail(strict=True)``.
    """

    id: str
    call: Callable[..., object]
    inputs: st.SearchStrategy
    may_succeed: bool = False
    check: Callable[[object, dict], None] | None = None
    defect: str | None = None
    guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    marks: tuple = ()


INT_ARGUMENTS = {"num_categories": 2, "dim": 1, "num_layers": 1}
ROWS = st.integers(1, 5)

MALFORMED = [
    # ------------------------------------------------------------------ Circuit
    Malformed(
        "Circuit:size-not-an-int", call_circuit, one_of_arguments(tuple(INT_ARGUMENTS), lambda a: NOT_INT)
    ),
    Malformed(
        "Circuit:size-below-minimum",
        call_circuit,
        one_of_arguments(tuple(INT_ARGUMENTS), lambda a: st.integers(-(2**70), INT_ARGUMENTS[a] - 1)),
    ),
    Malformed(
        "Circuit:huge-but-cheap-state-space",
        call_circuit,
        st.fixed_dictionaries(
            {
                "num_categories": st.integers(2, 2**64),
                "dim": st.integers(1, 64),
                "num_layers": st.integers(1, 50),
            }
        ).map(lambda changes: (changes, tuple(changes))),
        may_succeed=True,
        check=lambda circuit, _: check_finite_constants(circuit),
    ),
    Malformed(
        "Circuit:num_layers-huge",
        call_circuit,
        bad("num_layers", st.integers(10**9, 2**80)),
        may_succeed=True,
        guard=limited_address_space,
        marks=(pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS and /proc"),),
    ),
    Malformed(
        "Circuit:resistance-not-a-real", call_circuit, one_of_arguments(("r", "R"), lambda a: NOT_REAL)
    ),
    Malformed(
        "Circuit:resistance-not-finite-or-not-positive",
        call_circuit,
        one_of_arguments(
            ("r", "R"),
            lambda a: st.one_of(
                st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]),
                st.floats(max_value=-1e-300),
                st.integers(max_value=0),
            ),
        ),
    ),
    Malformed(
        "Circuit:r-not-below-R",
        call_circuit,
        st.tuples(st.floats(1e-300, 1e300), st.floats(0.0, 1e300)).map(
            lambda t: ({"r": t[0] + t[1], "R": t[0]}, ("r", "R"))
        ),
    ),
    Malformed(
        "Circuit:r-subnormal",
        call_circuit,
        bad("r", st.floats(5e-324, 5e-309), "R"),
    ),
    Malformed(
        "Circuit:resistance-int-beyond-float",
        call_circuit,
        st.tuples(st.integers(2**1024, 2**1100), st.booleans()).map(
            lambda t: ({"r": 1, "R": t[0]} if t[1] else {"r": t[0], "R": t[0] + 1}, ("r", "R"))
        ),
    ),
    Malformed(
        "Circuit:r-over-R-underflows",
        call_circuit,
        st.tuples(st.floats(1e-300, 1e-200), st.floats(1e200, 1e300)).map(
            lambda t: ({"r": t[0], "R": t[1]}, ("r", "R"))
        ),
    ),
    # ------------------------------------------------------------------ state_index / index_state
    Malformed("Circuit.state_index:z-not-a-tensor", call_state_index, bad("z", NOT_TENSOR)),
    Malformed("Circuit.state_index:z-bad-dtype", call_state_index, bad("z", states_of_dtype(ROWS, 2))),
    Malformed(
        "Circuit.state_index:z-bad-shape",
        call_state_index,
        bad(
            "z",
            SMALL_SHAPES.filter(lambda s: len(s) == 0 or s[-1] != 2).map(lambda s: zeros(torch.int64, s)),
        ),
    ),
    Malformed(
        "Circuit.state_index:z-out-of-range", call_state_index, bad("z", states_out_of_range(ROWS, 3, 2))
    ),
    Malformed(
        "Circuit.state_index:state-space-beyond-int64",
        call_state_index,
        st.just(({"z": torch.zeros(2, 41, dtype=torch.int64), "circuit": HUGE_CIRCUIT}, ("state_index",))),
    ),
    Malformed(
        "Circuit.state_index:z-on-meta-device",
        call_state_index,
        bad("z", states_out_of_range(ROWS, 3, 2).map(lambda t: t.clamp(0, 2).to("meta"))),
    ),
    Malformed(
        "Circuit.state_index:z-sparse",
        call_state_index,
        bad("z", st.just(X0.to_sparse())),
    ),
    Malformed("Circuit.index_state:idx-not-a-tensor", call_index_state, bad("idx", NOT_TENSOR)),
    Malformed(
        "Circuit.index_state:idx-bad-dtype",
        call_index_state,
        bad("idx", st.builds(zeros, st.sampled_from(BAD_STATE_DTYPES), SMALL_SHAPES)),
    ),
    Malformed(
        "Circuit.index_state:idx-out-of-range",
        call_index_state,
        bad(
            "idx",
            st.one_of(st.integers(-(2**63), -1), st.integers(9, 2**63 - 1)).map(
                lambda v: torch.tensor([0, v])
            ),
        ),
    ),
    Malformed(
        "Circuit.index_state:state-space-beyond-int64",
        call_index_state,
        st.just(({"idx": torch.zeros(2, dtype=torch.int64), "circuit": HUGE_CIRCUIT}, ("index_state",))),
    ),
    Malformed(
        "Circuit.index_state:idx-on-meta-device",
        call_index_state,
        bad("idx", st.integers(0, 8).map(lambda v: torch.tensor([v]).to("meta"))),
    ),
    # ------------------------------------------------------------------ potentials
    Malformed(
        "Circuit.potentials:p-or-q-not-a-pmf",
        call_potentials,
        one_of_arguments(("p", "q"), lambda a: not_pmfs(9)),
    ),
    Malformed(
        "Circuit.potentials:p-or-q-on-meta-device",
        call_potentials,
        one_of_arguments(("p", "q"), lambda a: st.just(UNIFORM.to("meta"))),
    ),
    Malformed(
        "Circuit.potentials:p-or-q-sparse",
        call_potentials,
        one_of_arguments(("p", "q"), lambda a: st.just(UNIFORM.to_sparse())),
    ),
]


def target_kinds(name: str, call: Callable, tensors: tuple[str, ...]) -> list[Malformed]:
    """The malformed-input kinds of ``current_targets`` / ``potential_targets``."""
    layer_max = 2 if "w" in tensors else 3

    def bad_dtype(a: str) -> st.SearchStrategy:
        if a == "layer":
            return st.builds(
                zeros, st.sampled_from([torch.int32, torch.int16, torch.float64, torch.bool]), st.just((3,))
            )
        return states_of_dtype(st.just(3) if a in ("z", "w") else ROWS, 2)

    def bad_shape(a: str) -> st.SearchStrategy:
        if a == "layer":
            return SMALL_SHAPES.filter(lambda s: s != (3,)).map(lambda s: zeros(torch.int64, s))
        return states_of_shape(2, rows=3 if a in ("z", "w") else None)

    def out_of_range(a: str) -> st.SearchStrategy:
        if a == "layer":
            values = st.one_of(st.integers(-(2**63), -1), st.integers(layer_max + 1, 2**63 - 1))
            return values.map(lambda v: torch.tensor([0, v, 1]))
        return states_out_of_range(st.just(3) if a in ("z", "w") else ROWS, 3, 2)

    on_meta_layer = torch.tensor([0, 1, 1], device="meta")
    all_on_meta = {t: on_meta_layer if t == "layer" else TARGET_ARGS[t].to("meta") for t in tensors}

    return [
        Malformed(f"{name}:circuit-not-a-circuit", call, bad("circuit", ANY_VALUE)),
        Malformed(f"{name}:tensor-not-a-tensor", call, one_of_arguments(tensors, lambda a: NOT_TENSOR)),
        Malformed(f"{name}:tensor-bad-dtype", call, one_of_arguments(tensors, bad_dtype)),
        # a state tensor whose row count differs from layer's may be reported as layer's
        Malformed(f"{name}:tensor-bad-shape", call, one_of_arguments(tensors, bad_shape, "layer")),
        Malformed(f"{name}:tensor-out-of-range", call, one_of_arguments(tensors, out_of_range)),
        Malformed(
            f"{name}:empty-batch",
            call,
            one_of_arguments(("x", "y"), lambda a: st.just(torch.zeros(0, 2, dtype=torch.int64))),
        ),
        # a device mismatch is reported on the tensor that differs from layer's device
        Malformed(
            f"{name}:one-tensor-on-meta-device",
            call,
            one_of_arguments(tensors, lambda a: st.just(all_on_meta[a]), *tensors),
        ),
        Malformed(
            f"{name}:all-tensors-on-meta-device",
            call,
            st.just((all_on_meta, tensors)),
        ),
        Malformed(
            f"{name}:batch-sparse",
            call,
            one_of_arguments(("x", "y"), lambda a: st.just(TARGET_ARGS[a].to_sparse())),
        ),
        Malformed(
            f"{name}:z-zero-dim",
            call,
            bad("z", st.integers(0, 2).map(torch.tensor)),
        ),
        Malformed(
            f"{name}:backend-unknown",
            call,
            bad(
                "backend",
                st.one_of(WORDS, ANY_VALUE)
                .filter(is_hashable)
                .filter(lambda v: v not in ("auto", "torch", "reference", "triton")),
            ),
        ),
        Malformed(
            f"{name}:backend-unhashable-or-array",
            call,
            bad("backend", UNHASHABLE),
        ),
        Malformed(
            f"{name}:normalize-not-a-bool",
            call,
            bad("normalize", ANY_VALUE.filter(lambda v: not isinstance(v, bool))),
        ),
    ]


MALFORMED += target_kinds("current_targets", call_current_targets, TARGET_TENSORS)
MALFORMED += target_kinds(
    "potential_targets", call_potential_targets, tuple(t for t in TARGET_TENSORS if t != "w")
)

# ------------------------------------------------------------------ sample, exact_output_distribution
MALFORMED += [
    Malformed("sample:field-not-a-field", call_sample, bad("field", ANY_VALUE)),
    Malformed("sample:x0-not-a-tensor", call_sample, bad("x0", NOT_TENSOR)),
    Malformed("sample:x0-bad-dtype", call_sample, bad("x0", states_of_dtype(ROWS, 2))),
    Malformed("sample:x0-bad-shape", call_sample, bad("x0", states_of_shape(2))),
    Malformed("sample:x0-out-of-range", call_sample, bad("x0", states_out_of_range(ROWS, 3, 2))),
    Malformed(
        "sample:x0-on-meta-device",
        call_sample,
        bad("x0", st.just(X0.to("meta"))),
    ),
    Malformed(
        "sample:x0-sparse",
        call_sample,
        bad("x0", st.just(X0.to_sparse())),
    ),
    Malformed("sample:mode-unknown", call_sample, bad("mode", ANY_VALUE.filter(lambda v: v not in MODES))),
    Malformed(
        "sample:mode-array",
        call_sample,
        bad("mode", ARRAYS),
    ),
    Malformed(
        "sample:backend-unknown",
        call_sample,
        bad(
            "backend",
            st.one_of(WORDS, ANY_VALUE)
            .filter(is_hashable)
            .filter(lambda v: v not in ("auto", *backends.names("sample"))),
        ),
    ),
    Malformed(
        "sample:backend-unhashable-or-array",
        call_sample,
        bad("backend", UNHASHABLE),
    ),
    Malformed(
        "sample:chunk_size-not-an-int",
        call_sample,
        bad("chunk_size", NOT_INT.filter(lambda v: v is not None)),
    ),
    Malformed("sample:chunk_size-below-1", call_sample, bad("chunk_size", st.integers(-(2**70), 0))),
    Malformed(
        "sample:max_moves-not-an-int", call_sample, bad("max_moves", NOT_INT.filter(lambda v: v is not None))
    ),
    Malformed("sample:max_moves-below-1", call_sample, bad("max_moves", st.integers(-(2**70), 0))),
    Malformed(
        "sample:generator-wrong-type",
        call_sample,
        bad(
            "generator",
            ANY_VALUE.filter(
                lambda v: v is not None and not (isinstance(v, numbers.Integral) and not isinstance(v, bool))
            ),
        ),
    ),
    Malformed(
        "sample:generator-seed-out-of-range",
        call_sample,
        bad("generator", st.one_of(st.integers(max_value=-(2**63) - 1), st.integers(min_value=2**64))),
    ),
    Malformed(
        "exact_output_distribution:field-not-a-field", call_exact_output_distribution, bad("field", ANY_VALUE)
    ),
    Malformed(
        "exact_output_distribution:p0-not-a-pmf", call_exact_output_distribution, bad("p0", not_pmfs(9))
    ),
    Malformed(
        "exact_output_distribution:p0-on-meta-device",
        call_exact_output_distribution,
        bad("p0", st.just(UNIFORM.to("meta"))),
    ),
    Malformed(
        "exact_output_distribution:mode-unknown",
        call_exact_output_distribution,
        bad("mode", ANY_VALUE.filter(lambda v: v not in MODES)),
    ),
    Malformed(
        "exact_output_distribution:tol-not-a-real",
        call_exact_output_distribution,
        bad("tol", NOT_REAL),
    ),
    Malformed(
        "exact_output_distribution:tol-not-finite-or-negative",
        call_exact_output_distribution,
        bad("tol", st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(-1e300, -1e-300))),
    ),
    Malformed(
        "exact_output_distribution:max_moves-not-an-int",
        call_exact_output_distribution,
        bad("max_moves", NOT_INT.filter(lambda v: v is not None)),
    ),
    Malformed(
        "exact_output_distribution:max_moves-below-1",
        call_exact_output_distribution,
        bad("max_moves", st.integers(-(2**70), 0)),
    ),
]

# ------------------------------------------------------------------ TrainConfig, train
CHOICES = {
    "model": ("current", "potential"),
    "queries": ("uniform", "data"),
    "targets_backend": ("auto", "reference", "torch", "triton"),
    "optimizer": ("sgd", "adam", "adamw"),
    "lr_schedule": ("constant", "cosine"),
    "sink_labels": ("posterior", "contrast"),
}


def not_one_of(choices: tuple[str, ...]) -> st.SearchStrategy:
    return st.one_of(WORDS, ANY_VALUE).filter(lambda v: v not in choices)


#: For every TrainConfig setting, values it must refuse (types and ranges of its check).
INVALID_SETTING_VALUES = {
    "model": not_one_of(CHOICES["model"]),
    "steps": st.one_of(NOT_INT, st.integers(-(2**70), 0)),
    "batch_size": st.one_of(NOT_INT, st.integers(-(2**70), 1)),
    "num_queries": st.one_of(NOT_INT.filter(lambda v: v is not None), st.integers(-(2**70), 0)),
    "queries": not_one_of(CHOICES["queries"]),
    "lr": st.one_of(NOT_REAL, st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf])),
    "momentum": st.one_of(
        NOT_REAL, st.floats(max_value=-1e-300), st.floats(min_value=1.0), st.just(math.nan)
    ),
    "weight_decay": st.one_of(NOT_REAL, st.floats(max_value=-1e-300), st.sampled_from([math.nan, math.inf])),
    "grad_clip": st.one_of(
        NOT_REAL.filter(lambda v: v is not None),
        st.floats(max_value=0.0),
        st.sampled_from([math.nan, math.inf]),
    ),
    "ema_decay": st.one_of(
        NOT_REAL.filter(lambda v: v is not None),
        st.floats(max_value=-1e-300),
        st.floats(min_value=1.0),
        st.just(math.nan),
    ),
    "ratio_weight": st.one_of(NOT_REAL, st.floats(max_value=-1e-300), st.sampled_from([math.nan, math.inf])),
    "consistency_weight": st.one_of(
        NOT_REAL, st.floats(max_value=-1e-300), st.sampled_from([math.nan, math.inf])
    ),
    "model_kwargs": st.one_of(
        ANY_VALUE.filter(lambda v: not isinstance(v, dict)),
        st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    ),
    "query_kwargs": st.one_of(
        ANY_VALUE.filter(lambda v: not isinstance(v, dict)),
        st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    ),
    "seed": st.one_of(NOT_INT, st.integers(-(2**70), -1), st.integers(2**63, 2**70)),
    "amp": ANY_VALUE.filter(lambda v: v is not None and not isinstance(v, bool)),
    "targets_backend": not_one_of(CHOICES["targets_backend"]),
    "checkpoint_every": st.one_of(NOT_INT, st.integers(-(2**70), 0)),
    "optimizer": not_one_of(CHOICES["optimizer"]),
    "lr_schedule": not_one_of(CHOICES["lr_schedule"]),
    "sink_labels": not_one_of(CHOICES["sink_labels"]),
    "warmup_steps": st.one_of(NOT_INT, st.integers(-(2**70), -1)),
}
INVALID_SETTING = st.one_of(*(bad(name, values) for name, values in INVALID_SETTING_VALUES.items()))
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
IDENTIFIERS = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)


def call_train_config(**changes):
    return TrainConfig(**changes)


def parses_as_device(text: str) -> bool:
    try:
        torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def invalid_model_kwargs() -> st.SearchStrategy:
    """``(model_kwargs, names)``: a bad ``hidden``, ``encoding`` or ``layer_embedding_dim``, or an unknown key."""
    bad_hidden = st.one_of(
        st.just([]),
        st.lists(st.integers(-5, 0), min_size=1, max_size=2),
        st.lists(NOT_INT, min_size=1, max_size=2),
        ANY_VALUE.filter(lambda v: not isinstance(v, (list, tuple))),
    )
    entries = st.one_of(
        st.tuples(st.just("hidden"), bad_hidden),
        st.tuples(st.just("encoding"), not_one_of(("scaled", "onehot"))),
        st.tuples(st.just("layer_embedding_dim"), st.one_of(NOT_INT, st.integers(-5, 0))),
        st.tuples(
            IDENTIFIERS.filter(lambda k: k not in ("hidden", "encoding", "layer_embedding_dim")),
            st.integers(0, 3),
        ),
    )
    return entries.map(lambda kv: ({"model_kwargs": {kv[0]: kv[1]}}, ("model_kwargs", kv[0])))


#: Device types that torch parses but that are unavailable here (a CPU-only machine).
UNUSABLE_DEVICES = (
    "meta",
    "mps",
    "xpu",
    "hpu",
    "xla",
    "lazy",
    "ipu",
    "mtia",
    "ve",
    "fpga",
    "maia",
    "vulkan",
    "hip",
    "privateuseone",
)
#: Largest finite float32; SGD's lr and weight_decay are cast to it.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)

MALFORMED += [
    Malformed(
        "TrainConfig:any-setting-any-value",
        call_train_config,
        st.tuples(st.sampled_from(SETTING_NAMES), ANY_VALUE).map(lambda t: ({t[0]: t[1]}, (t[0],))),
        may_succeed=True,
    ),
    Malformed("TrainConfig:invalid-setting", call_train_config, INVALID_SETTING),
    Malformed(
        "TrainConfig:unknown-setting",
        call_train_config,
        IDENTIFIERS.filter(lambda k: k not in SETTING_NAMES).map(lambda k: ({k: 1}, (k,))),
    ),
    Malformed(
        "TrainConfig:real-setting-int-beyond-float",
        call_train_config,
        one_of_arguments(
            ("lr", "momentum", "weight_decay", "grad_clip", "ema_decay"),
            lambda a: st.integers(2**1024, 2**1100),
        ),
    ),
    Malformed(
        "TrainConfig:choice-setting-array",
        call_train_config,
        one_of_arguments(tuple(CHOICES), lambda a: ARRAYS),
    ),
    Malformed("train:invalid-setting", call_train, INVALID_SETTING),
    Malformed("train:circuit-not-a-circuit", call_train, bad("circuit", ANY_VALUE)),
    Malformed(
        "train:source-or-target-malformed",
        call_train,
        one_of_arguments(
            ("source", "target"),
            lambda a: st.one_of(
                NOT_TENSOR.filter(lambda v: not callable(v)),
                states_of_dtype(ROWS, 1),
                states_of_shape(1),
                states_out_of_range(ROWS, 4, 1),
                st.just(torch.zeros(0, 1, dtype=torch.int64)),
            ),
        ),
    ),
    Malformed(
        "train:source-or-target-on-meta-device",
        call_train,
        one_of_arguments(("source", "target"), lambda a: st.just(TRAIN_DATA.to("meta"))),
    ),
    Malformed(
        "train:device-unparsable",
        call_train,
        bad(
            "device",
            st.one_of(
                WORDS.filter(lambda s: not parses_as_device(s)),
                ANY_VALUE.filter(lambda v: v is not None and not isinstance(v, (str, torch.device))),
            ),
        ),
    ),
    Malformed(
        "train:device-unusable",
        call_train,
        bad("device", st.sampled_from(UNUSABLE_DEVICES)),
    ),
    Malformed(
        "train:lr-or-weight_decay-beyond-float32",
        call_train,
        one_of_arguments(("lr", "weight_decay"), lambda a: st.floats(FLOAT32_MAX * 1.01, 1e308)),
    ),
    Malformed(
        "train:checkpoint_path-not-a-path",
        call_train,
        bad(
            "checkpoint_path",
            ANY_VALUE.filter(lambda v: v is not None and not isinstance(v, (str, os.PathLike))),
        ),
    ),
    Malformed(
        "train:checkpoint_path-a-folder", call_train, bad("checkpoint_path", st.just(tempfile.gettempdir()))
    ),
    Malformed("train:model_kwargs-invalid", call_train, invalid_model_kwargs()),
]

# ------------------------------------------------------------------ load_states (the CLI's data reader)
NUMERIC_DTYPES = st.one_of(
    npst.integer_dtypes(), npst.unsigned_integer_dtypes(), npst.floating_dtypes(), npst.boolean_dtypes()
)
NON_NUMERIC_DTYPES = st.one_of(
    npst.unicode_string_dtypes(),
    npst.byte_string_dtypes(),
    npst.complex_number_dtypes(),
    npst.datetime64_dtypes(),
    npst.timedelta64_dtypes(),
    npst.array_dtypes(),
)
ARRAY_SHAPES = npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
LETTERS = st.from_regex(r"[a-df-hj-mo-z]{1,4}", fullmatch=True)  # no e, i, n: never a float literal


def data_file(values: st.SearchStrategy, key: str = "array") -> st.SearchStrategy:
    """``({key: value}, (DATA_OPTION,))``: the error must name the option given as ``name=``."""
    return values.map(lambda value: ({key: value}, (DATA_OPTION,)))


def integer_rows() -> st.SearchStrategy:
    return st.integers(1, 4).flatmap(
        lambda d: st.lists(st.lists(st.integers(-3, 2**40), min_size=d, max_size=d), min_size=1, max_size=6)
    )


def malformed_csv() -> st.SearchStrategy:
    """A numeric first line (so no header is skipped), then a ragged row or a non-numeric cell."""
    ragged = st.sampled_from(["3", "3,4,5"])
    non_numeric = LETTERS.map(lambda word: f"3,{word}")
    return st.one_of(ragged, non_numeric).map(lambda row: f"1,2\n{row}\n".encode())


MALFORMED += [
    Malformed(
        "load_states:npy-numeric-array",
        call_load_array,
        data_file(npst.arrays(NUMERIC_DTYPES, ARRAY_SHAPES)),
        may_succeed=True,
        check=check_loaded_array,
    ),
    Malformed(
        "load_states:npy-non-numeric-dtype",
        call_load_array,
        data_file(npst.arrays(NON_NUMERIC_DTYPES, ARRAY_SHAPES)),
    ),
    Malformed(
        "load_states:npy-object-array",
        call_load_array,
        data_file(npst.arrays(object, npst.array_shapes(min_side=1, max_side=3), elements=st.integers(0, 3))),
    ),
    Malformed(
        "load_states:npy-random-bytes",
        call_load_states,
        st.binary(max_size=64).map(lambda b: ({"suffix": ".npy", "content": b}, (DATA_OPTION,))),
    ),
    Malformed(
        "load_states:npy-truncated",
        call_load_states,
        st.tuples(
            npst.arrays(np.int64, npst.array_shapes(min_side=1, max_side=4), elements=st.integers(0, 9)),
            st.integers(1, 200),
        ).map(
            lambda t: (
                {"suffix": ".npy", "content": npy_bytes(t[0])[: -min(t[1], len(npy_bytes(t[0])) - 1)]},
                (DATA_OPTION,),
            )
        ),
    ),
    Malformed(
        "load_states:csv-integer-rows",
        call_load_csv,
        st.fixed_dictionaries(
            {
                "rows": integer_rows(),
                "header": st.one_of(st.just(""), LETTERS, st.just("x,y")),
                "spaced": st.booleans(),
            }
        ).map(lambda changes: (changes, (DATA_OPTION,))),
        may_succeed=True,
        check=check_loaded_csv,
    ),
    Malformed(
        "load_states:csv-invalid-utf8",
        call_load_states,
        st.binary(max_size=16).map(
            lambda b: ({"suffix": ".csv", "content": b"1,2\n" + b + b"\xff\n"}, (DATA_OPTION,))
        ),
    ),
    Malformed(
        "load_states:csv-malformed-rows",
        call_load_states,
        malformed_csv().map(lambda b: ({"suffix": ".csv", "content": b}, (DATA_OPTION,))),
    ),
    Malformed(
        "load_states:unknown-suffix",
        call_load_states,
        st.tuples(
            st.sampled_from([".txt", ".npz", ".json", "", ".np", ".csv.gz", ".npy.bak"]),
            st.binary(max_size=8),
        ).map(lambda t: ({"suffix": t[0], "content": t[1]}, (DATA_OPTION,))),
    ),
]


def malformed_params() -> list:
    params = []
    for case in MALFORMED:
        marks = list(case.marks)
        if case.defect is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=f"known defect: {case.defect}"))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


# load_states on float16 data warns "overflow encountered in cast" (its 2**31 bound compared in
# float16), numpy.loadtxt on an empty .csv "input contained no data", and numpy.save of a structured
# dtype with non-ASCII field names "Stored array in format 3.0": expected, not failures.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:Stored array in format 3.0:UserWarning")
@pytest.mark.filterwarnings("ignore:loadtxt. input contained no data:UserWarning")
@pytest.mark.parametrize("case", malformed_params())
@given(data=st.data())
def test_malformed_input_raises_type_or_value_error_naming_it(case, data):
    """A malformed argument makes the function raise ``TypeError`` or ``ValueError`` whose message
    names the argument (for ``load_states`` the ``name=`` it was given); any other exception type,
    a message that names something else, or a malformed input accepted is a failure."""
    changes, names = data.draw(case.inputs, label="arguments, names")
    with case.guard():
        try:
            result = case.call(**changes)
        except (TypeError, ValueError) as error:
            assert any(names_argument(str(error), name) for name in names), (
                f"{type(error).__name__} names none of {names}: {error}"
            )
            return
    assert case.may_succeed, f"malformed input accepted: {changes!r}"
    if case.check is not None:
        case.check(result, changes)


def test_every_train_setting_has_invalid_values():
    """The fuzzing of ``TrainConfig`` and ``train`` covers every setting: a new setting needs its
    invalid values in ``INVALID_SETTING_VALUES``."""
    assert set(INVALID_SETTING_VALUES) == set(SETTING_NAMES)


# ------------------------------------------------------------------ the CLI
CLI_TINY = [
    "--num-categories", "6", "--num-layers", "2", "--batch-size", "16", "--steps", "1",
    "--device", "cpu", "--model-kwargs", '{"hidden": [8]}',
]  # fmt: skip
#: Options of ``ecd2g train`` and the values they are fuzzed with. Sizes stay below 41 and
#: --threads below 3: larger values only cost time (and ``--threads 100000`` crashes torch).
CLI_WORDS = (
    "none", "auto", "true", "false", "current", "potential", "uniform", "data", "gaussian", "moons",
    "swissroll", "torch", "reference", "triton", "cpp", "forward", "bidirectional", "cpu", "cuda",
    "meta", "gpu", "missing.npy", "missing.csv", "nan", "inf", "-inf", "1e308", "5e-324", "-0",
    "0.5", "1.5", "1e-3", "{", "[1]", "null", '{"hidden": [4]}', '{"hidden": []}', '{"hidden": [0]}',
    '{"foo": 1}', '{"encoding": "onehot"}', '{"layer_embedding_dim": 0}', "", " ",
)  # fmt: skip
CLI_VALUES = st.one_of(
    st.sampled_from(CLI_WORDS),
    st.integers(-3, 40).map(str),
    st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=6),
)
CLI_OPTIONS = (
    "--model", "--steps", "--batch-size", "--num-queries", "--queries", "--lr", "--momentum",
    "--weight-decay", "--ema-decay", "--model-kwargs", "--seed", "--amp", "--targets-backend",
    "--checkpoint-every", "--num-categories", "--num-layers", "--r", "--R", "--source", "--target",
    "--device", "--mode", "--backend", "--num-samples", "--sample-seed",
)  # fmt: skip
#: Option values that reach the run (valid ones, and ones that fail there: exit status 1).
CLI_SEEDS = (
    ("--model", "potential"), ("--queries", "data"), ("--amp", "true"), ("--ema-decay", "none"),
    ("--targets-backend", "reference"), ("--num-queries", "3"), ("--r", "1e-12"), ("--R", "1e12"),
    ("--device", "cuda"), ("--device", "meta"), ("--device", "gpu"), ("--source", "missing.npy"),
    ("--target", "moons"), ("--targets-backend", "triton"), ("--lr", "1e39"), ("--r", "5e-324"),
    ("--num-categories", "none"), ("--model-kwargs", '{"foo": 1}'), ("--model-kwargs", '{"hidden": [0]}'),
)  # fmt: skip
CLI_ARGUMENTS = st.one_of(
    st.tuples(st.sampled_from(CLI_OPTIONS), CLI_VALUES),
    st.sampled_from(CLI_SEEDS),
    st.tuples(st.just("--threads"), st.sampled_from(["-1", "0", "1", "2", "x", "", "1.5"])),
    st.tuples(st.sampled_from(["--resume", "--quiet"])),
)


@scaled(2.0, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(extra=st.lists(CLI_ARGUMENTS, min_size=1, max_size=3))
def test_cli_train_with_random_options_never_shows_a_traceback(extra, capsys):
    """``ecd2g train`` in-process (one step of a tiny 1D configuration) with random option values
    exits 0, 1 (a failed run) or 2 (bad usage) and never prints a traceback."""
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as folder:
        argv = ["train", "uniform-to-gaussian-1d", "--out", str(Path(folder) / "run"), *CLI_TINY]
        argv += [part for option in extra for part in option]
        try:
            status = cli.main(argv)
        except SystemExit as exit_:
            status = exit_.code
    err = capsys.readouterr().err
    event(f"exit status {status}")
    assert status in (0, 1, 2), f"exit status {status!r} for {argv}: {err}"
    assert "Traceback" not in err, err
    if status == 1:
        assert "ecd2g: error:" in err, err
