"""Every operator under ``torch.ops.ecd2g_fast``: its schema, and ``torch.library.opcheck`` on it.

The C++ ops (``csrc/sampler.cpp``, loaded with the extension) and the Python custom op of the
target pass (``hashed_counts``, :mod:`ecd2g_fast.targets.packed`) are listed in :data:`SCHEMAS`
(the README's table). ``opcheck`` tests each op's schema, fake (meta) implementation and
registrations, so that it traces under ``torch.compile``; the sampler ops' samples are those of
``tests/test_sampler_backends.py`` (which also checks their CUDA kernels against the CPU).
"""

from __future__ import annotations

import pytest
import torch

import ecd2g_fast  # noqa: F401 - registers ecd2g_fast::hashed_counts
from ecd2g_fast import _extension

from .test_sampler_backends import op_samples as sampler_op_samples

#: name -> schema of every op, as ``torch._C._jit_get_all_schemas`` prints it.
SCHEMAS = {
    "consume_outlets": (
        "ecd2g_fast::consume_outlets(Tensor weights, Tensor rows, Tensor total, Tensor choice, "
        "Tensor status, int outlet_offset, bool negate, int seed, int offset) -> (Tensor, Tensor, Tensor)"
    ),
    "potential_move": (
        "ecd2g_fast::potential_move(Tensor phi, Tensor sink, Tensor layer, Tensor z, float G, float e, "
        "bool bidirectional, int seed, int offset) -> (Tensor, Tensor)"
    ),
    "potential_move_sorted": (
        "ecd2g_fast::potential_move_sorted(Tensor phi, Tensor order, Tensor reference, Tensor prefix, "
        "Tensor count, Tensor masses, Tensor layer, Tensor z, int seed, int offset) -> (Tensor, Tensor)"
    ),
    "hamming_move": (
        "ecd2g_fast::hamming_move(Tensor phi, Tensor sink, Tensor layer, Tensor z, int num_categories, "
        "int dim, float g, float G, bool bidirectional, int seed, int offset) -> (Tensor, Tensor)"
    ),
    "philox4x32": "ecd2g_fast::philox4x32(Tensor counters, int seed) -> Tensor",
    "hashed_counts": "ecd2g_fast::hashed_counts(Tensor[] batches, Tensor[] queries) -> Tensor[]",
}
#: The ops defined in Python, registered by ``import ecd2g_fast`` (the others need the extension).
PYTHON_OPS = ("hashed_counts",)


def registered_schemas() -> dict[str, str]:
    """name -> schema of every op registered under ``ecd2g_fast`` (after loading the extension)."""
    _extension.available()
    prefix = "ecd2g_fast::"
    return {
        s.name[len(prefix) :]: str(s) for s in torch._C._jit_get_all_schemas() if s.name.startswith(prefix)
    }


def op_samples() -> dict[str, tuple]:
    """``"op[-variant]"`` -> arguments of one call of the op, for every registered op."""
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 4, (5, 64), generator=g)
    batch = pool[torch.randint(0, 5, (40,), generator=g)]  # duplicates
    queries = torch.cat([pool, torch.randint(0, 4, (6, 64), generator=g)])  # hits and misses
    samples = {
        "hashed_counts": ([batch, batch[::3]], [queries, queries[3:]]),
        "hashed_counts-empty": ([batch], [queries[:0]]),
        "hashed_counts-no-tensors": ([batch], []),
    }
    if _extension.available():
        samples.update(sampler_op_samples())
    return samples


def test_every_op_is_listed_and_sampled():
    registered = registered_schemas()
    expected = set(SCHEMAS) if _extension.available() else set(PYTHON_OPS)
    assert set(registered) == expected, (
        "an op was added or removed: update SCHEMAS, op_samples and the README"
    )
    for name, schema in registered.items():
        assert schema == SCHEMAS[name]
    assert {case.split("-")[0] for case in op_samples()} == expected


@pytest.mark.parametrize("case", list(op_samples()))
def test_opcheck(case):
    op = getattr(torch.ops.ecd2g_fast, case.split("-")[0])
    torch.library.opcheck(op, op_samples()[case])


def test_hashed_counts_are_exact():
    batches, queries = op_samples()["hashed_counts"]
    counts = torch.ops.ecd2g_fast.hashed_counts(batches, queries)
    assert len(counts) == len(queries) * len(batches)
    for i, rows in enumerate(queries):
        for j, batch in enumerate(batches):
            want = (rows[:, None, :] == batch[None, :, :]).all(2).sum(1)
            got = counts[i * len(batches) + j]
            assert got.dtype == torch.int64 and torch.equal(got, want)
    assert int(counts[0][:5].sum()) == batches[0].shape[0]
