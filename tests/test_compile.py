"""torch.compile of the target pass on the CPU: ``fullgraph=True`` with the default value check, for
exact keys (dense count table and sorted batches) and hashed keys; results equal to eager, one
compile for batches of one shape, out-of-range values caught inside the graph.

``aot_eager`` (Dynamo and AOTAutograd, no code generation: about a second per graph) checks the
tracing of every counting path; ``inductor`` (seconds per graph on 2 cores) the generated code of
the exact dense-table path (the benchmarked one) and of the hashed path (the opaque
``hashed_counts`` op). Tolerances are the target tests' (``tests/test_targets.py``): generated code
may evaluate ``exp`` and sums in another order, so values are compared at 1e-12 of each target's
terms, never bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from ecd2g_fast.targets import current_targets, potential_targets

from .test_targets import RTOL, current_scale, make_case, potential_scale
from .testing import assert_close_to_reference

pytestmark = pytest.mark.usefixtures("one_thread")

#: (K, D) of each counting path: M = 2500 (dense table), 3**37 (sorted exact keys), 4**64 (hashed).
CASES = {"exact-dense": (50, 2), "exact-sorted": (3, 37), "hashed": (4, 64)}
SIZES = (64, 33, 31)  # Q, B, B'


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def all_targets(circuit, layer, z, w, x, y) -> torch.Tensor:
    """``(4, Q)``: both passes, physical and normalised, with the default ``check_values=True``."""
    return torch.stack(
        [
            current_targets(circuit, layer, z, w, x, y),
            current_targets(circuit, layer, z, w, x, y, normalize=True),
            potential_targets(circuit, layer, z, x, y),
            potential_targets(circuit, layer, z, x, y, normalize=True),
        ]
    )


def assert_equal_to_eager(out: torch.Tensor, case: tuple) -> None:
    """``out`` of :func:`all_targets` against eager, at 1e-12 of each target's terms (normalised
    targets: the same terms divided by the target's scale)."""
    circuit, layer, z, w, x, y = case
    eager = all_targets(*case)
    current = current_scale(circuit, layer, z, w, x, y)
    potential = potential_scale(circuit, layer, z, x, y)
    scales = [
        current,
        current * torch.exp(-circuit.log_current_scale(layer, z, w)),
        potential,
        potential * torch.exp(-circuit.log_potential_scale(layer)),
    ]
    for row, scale in enumerate(scales):
        assert_close_to_reference(out[row], eager[row], rtol=RTOL, scale=scale)


# inductor on the dense-table and hashed paths only (compile time)
@pytest.mark.parametrize(
    "keys,backend", [(k, "aot_eager") for k in CASES] + [("exact-dense", "inductor"), ("hashed", "inductor")]
)
def test_fullgraph_equals_eager_without_recompiling(keys, backend):
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(all_targets, backend=counter, fullgraph=True)
    for seed in (1, 2):  # two batches of the same shape
        case = make_case(*CASES[keys], *SIZES, seed=seed)
        assert_equal_to_eager(compiled(*case), case)
    assert counter.frame_count == 1


def test_changing_sizes_recompile_once_with_dynamic_shapes():
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(all_targets, backend=counter, fullgraph=True)
    for sizes in (SIZES, (100, 40, 31), (120, 47, 31)):
        case = make_case(*CASES["exact-dense"], *sizes, seed=sizes[0])
        assert_equal_to_eager(compiled(*case), case)
    assert counter.frame_count == 2  # the second size makes Q and B dynamic; the third reuses it


@pytest.mark.parametrize("keys", ["exact-dense", "hashed"])
def test_out_of_range_values_raise_inside_the_graph(keys):
    """check_values=True in a compiled graph: torch._assert_async, a RuntimeError naming the tensor
    when the graph runs (eager raises ValueError: tests/test_targets.py)."""
    K, D = CASES[keys]
    compiled = torch.compile(all_targets, backend="aot_eager", fullgraph=True)
    circuit, layer, z, w, x, y = make_case(K, D, *SIZES, seed=3)
    compiled(circuit, layer, z, w, x, y)
    with pytest.raises(RuntimeError, match=rf"z must hold states in \[0, {K}\)"):
        compiled(circuit, layer, z + K, w, x, y)
    bad_y = y.clone()
    bad_y[-1, -1] = -1
    with pytest.raises(RuntimeError, match="y must hold states"):
        compiled(circuit, layer, z, w, x, bad_y)
    # layer L - 1 + 1 = L is a vertex layer (fine for potentials) but no edge layer
    with pytest.raises(RuntimeError, match=r"layer must hold layer indices in \[0, 4\]"):
        compiled(circuit, torch.full_like(layer, 5), z, w, x, y)


def test_check_values_false_compiles_to_the_same_targets():
    compiled = torch.compile(
        lambda *a: current_targets(*a, check_values=False, normalize=True),
        backend="aot_eager",
        fullgraph=True,
    )
    case = make_case(*CASES["hashed"], *SIZES, seed=4)
    assert torch.equal(compiled(*case), current_targets(*case, normalize=True))


def test_triton_backend_is_refused_under_compile():
    compiled = torch.compile(
        lambda *a: current_targets(*a, backend="triton"), backend="aot_eager", fullgraph=True
    )
    # fullgraph: Dynamo reports the ValueError raised while tracing as torch._dynamo.exc.Unsupported
    with pytest.raises(Exception, match="cannot be traced by torch.compile"):
        compiled(*make_case(*CASES["exact-dense"], *SIZES))
