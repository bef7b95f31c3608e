"""Sorted-batch counting for the current-target pass, and the plain-torch ``"torch"`` backend.

Each ``(D,)`` state row becomes one int64 *key*:

* **exact** when ``M = K**D < 2**63``: the canonical row-major index ``sum_d z[d] K**(D-1-d)``,
  so equal keys mean equal states;
* **hashed** otherwise: ``sum_d z[d] h_d  (mod 2**64)`` with fixed pseudo-random odd 64-bit
  multipliers ``h_d``. Two distinct rows collide with probability at most about ``2**-48``
  per pair (for ``K <= 2**16``, over the choice of the ``h_d``), and a collision can never
  change a count: every key match is verified against the full row, and a run of equal keys
  holding distinct rows is flagged *ambiguous* and counted row by row.

Exact keys with few enough states (``M`` up to ``max(2**16, 2 (B + B'))``) are counted in a
dense table: ``O(M + (Q + B) D)``. Otherwise a batch is sorted once (:class:`SortedBatch`) and a
query's count is found by binary search: ``O((Q + B) log B + (Q + B) D)``, instead of the
reference's ``O(Q B D)``. For exact keys neither path has a data-dependent size, so neither
synchronises with a GPU. The Triton backend
(:mod:`ecd2g_fast.targets.triton`) uses the same keys and sorted batches.

**torch.compile.** Exact keys trace as they are (static sizes), so inductor fuses the whole pass.
Hashed keys have data-dependent sizes (runs, flagged queries); under ``torch.compile`` their
counting runs as one opaque custom op, :func:`hashed_counts` (``torch.ops.ecd2g_fast.hashed_counts``),
which the graph calls like any other op: no graph break, and the same exact counts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..circuit import Circuit
from .reference import current_from_counts, potential_from_counts

#: Bound on the elements of the ``(rows, D)`` temporaries built while hashing or comparing rows.
_CHUNK_ELEMENTS = 2**22
_HASH_SEED = 0x5EED_EC02

HashFn = Callable[[torch.Tensor], torch.Tensor]


@functools.lru_cache(maxsize=64)
def _weights(num_categories: int, dim: int, exact: bool, device: torch.device) -> torch.Tensor:
    if exact:
        powers = [num_categories ** (dim - 1 - d) for d in range(dim)]
        return torch.tensor(powers, dtype=torch.int64, device=device)
    return _hash_weights(dim, device)


@functools.lru_cache(maxsize=64)
def _hash_weights(dim: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_HASH_SEED)
    multipliers = torch.randint(-(2**63), 2**63 - 1, (dim,), generator=generator, dtype=torch.int64)
    # Odd multipliers: a difference in one coordinate alone can then never vanish mod 2**64.
    return (multipliers | 1).to(device)


def _weighted_row_sums(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 ``sum_d states[:, d] * weights[d]``, wrapping mod ``2**64``."""
    if torch.compiler.is_compiling():
        return (states * weights).sum(dim=1)  # fused into its consumers: nothing (N, D) is stored
    if states.device.type == "cpu":
        # Integer matmul exists on CPU only (not CUDA); 6x faster than mul + sum at D = 64.
        return states @ weights
    return _weighted_row_sums_chunked(states, weights)


def _weighted_row_sums_chunked(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    num_rows, dim = states.shape
    if num_rows * dim <= _CHUNK_ELEMENTS:
        return (states * weights).sum(dim=1)
    out = torch.empty(num_rows, dtype=torch.int64, device=states.device)
    step = max(1, _CHUNK_ELEMENTS // dim)
    for start in range(0, num_rows, step):
        out[start : start + step] = (states[start : start + step] * weights).sum(dim=1)
    return out


def rows_equal(
    a: torch.Tensor, a_index: torch.Tensor | None, b: torch.Tensor, b_index: torch.Tensor
) -> torch.Tensor:
    """``(N,)`` bool: ``a[a_index[i]] == b[b_index[i]]`` for whole rows, in bounded memory.

    Args:
        a, b: ``(Na, D)`` and ``(Nb, D)`` int64 states.
        a_index: ``(N,)`` int64 row indices into ``a``, or ``None`` for ``arange(N)``.
        b_index: ``(N,)`` int64 row indices into ``b``.
    """
    n, dim = b_index.shape[0], b.shape[1]
    out = torch.empty(n, dtype=torch.bool, device=b.device)
    step = max(1, _CHUNK_ELEMENTS // dim)
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows_a = a[start:stop] if a_index is None else a[a_index[start:stop]]
        out[start:stop] = (rows_a == b[b_index[start:stop]]).all(dim=1)
    return out


@dataclass(frozen=True)
class StateKeys:
    """The map from ``(N, D)`` int64 states to ``(N,)`` int64 keys used for one pass.

    Attributes:
        exact: keys are canonical indices (equal keys <=> equal states); otherwise hashes that
            must be verified against the rows.
        weights: ``(D,)`` int64 multipliers of the weighted row sum.
        hash_fn: replaces the weighted sum when given (tests force collisions with a weak one).
    """

    exact: bool
    weights: torch.Tensor
    hash_fn: HashFn | None = None

    @classmethod
    def for_circuit(cls, circuit: Circuit, device: torch.device, hash_fn: HashFn | None = None) -> StateKeys:
        """Exact keys when ``circuit.num_states < 2**63`` and no ``hash_fn`` is given, else hashed."""
        exact = hash_fn is None and circuit.num_states < 2**63
        # Under torch.compile the weights become constants of the graph; Dynamo would ignore
        # (and warn about) the cache.
        weights = _weights.__wrapped__ if torch.compiler.is_compiling() else _weights
        return cls(exact, weights(circuit.num_categories, circuit.dim, exact, device), hash_fn)

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        if self.hash_fn is not None:
            return self.hash_fn(states).to(torch.int64).contiguous()
        return _weighted_row_sums(states, self.weights)


@dataclass(frozen=True)
class SortedBatch:
    """A batch of states sorted by key; for hashed keys, collapsed into runs of equal keys.

    Exact keys: ``keys`` holds all ``B`` sorted keys and a count is the distance between a query
    key's lower and upper bound (no data-dependent sizes, hence no device sync on CUDA). Hashed
    keys: ``U <= B`` runs with their lengths, first rows and ambiguity flags.

    Attributes:
        keys: ``(B,)`` int64 sorted keys (exact), or ``(U,)`` strictly increasing run keys (hashed).
        size: ``B``.
        counts: ``(U,)`` int64 run lengths (``sum = B``); hashed keys only, like the rest.
        states: ``(B, D)`` int64 the batch as given.
        order: ``(B,)`` int64 ``states[order]`` is sorted by key.
        starts: ``(U,)`` int64 position in ``order`` of each run's first row.
        ambiguous: ``(U,)`` bool: the run holds distinct rows (a hash collision inside the batch).
    """

    keys: torch.Tensor
    size: int
    counts: torch.Tensor | None = None
    states: torch.Tensor | None = None
    order: torch.Tensor | None = None
    starts: torch.Tensor | None = None
    ambiguous: torch.Tensor | None = None

    @property
    def exact(self) -> bool:
        return self.states is None

    @property
    def representatives(self) -> torch.Tensor:
        """``(U,)`` int64 row of ``states`` that a query matching a run's key is compared with."""
        return self.order[self.starts]


def sort_batch(states: torch.Tensor, state_keys: StateKeys) -> SortedBatch:
    """Sort a ``(B, D)`` int64 batch by key (and, for hashes, find its runs and ambiguous runs)."""
    sorted_keys, order = torch.sort(state_keys(states))
    if state_keys.exact:
        return SortedBatch(sorted_keys, states.shape[0])
    keys, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    run_of_position = torch.repeat_interleave(torch.arange(keys.shape[0], device=keys.device), counts)
    # Only rows in runs of length > 1 can differ from their run's first row.
    shared = torch.nonzero(counts[run_of_position] > 1).squeeze(1)
    first = order[starts[run_of_position[shared]]]
    differs = ~rows_equal(states, order[shared], states, first)
    ambiguous = torch.zeros(keys.shape[0], dtype=torch.bool, device=keys.device)
    ambiguous[run_of_position[shared[differs]]] = True
    return SortedBatch(keys, states.shape[0], counts, states, order, starts, ambiguous)


def find_runs(batch: SortedBatch, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run index of each query key in a hashed batch: ``(run, key_hit)``, both ``(Q,)``; ``run`` valid where hit."""
    run = torch.searchsorted(batch.keys, keys).clamp_(max=batch.keys.shape[0] - 1)
    return run, batch.keys[run] == keys


def count_states(batch: SortedBatch, keys: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` int64: how many rows of the batch equal each query state, exactly.

    Args:
        batch: the sorted batch.
        keys: ``(Q,)`` int64 keys of ``states`` (the same :class:`StateKeys` as the batch).
        states: ``(Q, D)`` int64 query states (read only for hashed keys).
    """
    if batch.exact:
        return torch.searchsorted(batch.keys, keys, right=True) - torch.searchsorted(batch.keys, keys)
    run, key_hit = find_runs(batch, keys)
    counts = torch.where(key_hit, batch.counts[run], 0)
    hit = torch.nonzero(key_hit).squeeze(1)
    mismatch = hit[~rows_equal(states, hit, batch.states, batch.representatives[run[hit]])]
    counts[mismatch] = 0
    return fix_ambiguous(batch, run, key_hit, states, counts)


def fix_ambiguous(
    batch: SortedBatch, run: torch.Tensor, key_hit: torch.Tensor, states: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Recount, row by row, the queries whose key falls in an ambiguous run; ``counts`` in place."""
    flagged = torch.nonzero(key_hit & batch.ambiguous[run]).squeeze(1)
    if flagged.numel() == 0:
        return counts
    lengths = batch.counts[run[flagged]]
    owner = torch.repeat_interleave(torch.arange(flagged.shape[0], device=counts.device), lengths)
    offset = torch.arange(owner.shape[0], device=counts.device) - (torch.cumsum(lengths, 0) - lengths)[owner]
    members = batch.order[batch.starts[run[flagged]][owner] + offset]
    equal = rows_equal(states, flagged[owner], batch.states, members)
    counts[flagged] = torch.zeros_like(lengths).index_add_(0, owner, equal.to(torch.int64))
    return counts


def same_states(
    state_keys: StateKeys, z: torch.Tensor, w: torch.Tensor, kz: torch.Tensor, kw: torch.Tensor
) -> torch.Tensor:
    """``(Q,)`` bool ``z == w`` row-wise, from their keys when exact."""
    same = kz == kw
    if state_keys.exact:
        return same
    candidates = torch.nonzero(same).squeeze(1)
    same[candidates[~rows_equal(z, candidates, w, candidates)]] = False
    return same


@torch.library.custom_op("ecd2g_fast::hashed_counts", mutates_args=())
def hashed_counts(batches: list[torch.Tensor], queries: list[torch.Tensor]) -> list[torch.Tensor]:
    """How many rows of each batch equal each row of each query tensor, with hashed keys.

    :func:`sort_batch` (once per batch) and :func:`count_states` with hashed keys (every key
    match verified against the full rows, ambiguous runs recounted row by row: exact whatever the
    collisions), as one custom op (``torch.ops.ecd2g_fast.hashed_counts``): their sizes depend
    on the data, and as an op they stay out of a ``torch.compile`` graph, which then needs no
    graph break.

    Args:
        batches: ``(B_j, D)`` int64 states, ``B_j >= 1``.
        queries: ``(Q_i, D)`` int64 states, on the batches' device.

    Returns:
        ``(Q_i,)`` int64 counts of ``queries[i]`` in ``batches[j]`` at ``i * len(batches) + j``.
    """
    if not batches:
        return []
    keys = StateKeys(False, _hash_weights(batches[0].shape[1], batches[0].device))
    sorted_batches = [sort_batch(batch.contiguous(), keys) for batch in batches]
    counts = []
    for q in queries:
        query_keys = keys(q)
        counts += [count_states(batch, query_keys, q) for batch in sorted_batches]
    return counts


@hashed_counts.register_fake
def _(batches: list[torch.Tensor], queries: list[torch.Tensor]) -> list[torch.Tensor]:
    return [q.new_empty(q.shape[0], dtype=torch.int64) for q in queries for _ in batches]


#: Exact keys are counted in a dense ``(2, M)`` table (two scatter-adds, one gather per count)
#: when ``M`` is at most the larger of this and twice the batch rows: then zeroing the table
#: costs no more than sorting the batches would.
DENSE_TABLE_MIN_STATES = 2**16
#: ... and never for more states than this (a 512 MiB table).
DENSE_TABLE_MAX_STATES = 2**26


@dataclass(frozen=True)
class PreparedBatches:
    """Everything the pass needs from ``x`` and ``y``: the key map and their counts per key.

    Exactly one representation is set: ``table`` (exact keys, small ``M``), ``x`` and ``y``
    (sorted batches) or ``rows`` (hashed keys under ``torch.compile``).

    Attributes:
        state_keys: the key map (``None`` with ``rows``: :func:`hashed_counts` keys the rows itself).
        x_size, y_size: ``B``, ``B'``.
        table: ``(2, M)`` int32: how many rows of ``x`` (row 0) and ``y`` (row 1) have each key.
        x, y: the sorted batches.
        rows: the batches ``x``, ``y`` as given, counted by :func:`hashed_counts`.
    """

    state_keys: StateKeys | None
    x_size: int
    y_size: int
    table: torch.Tensor | None = None
    x: SortedBatch | None = None
    y: SortedBatch | None = None
    rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def keys(self, states: torch.Tensor) -> torch.Tensor | None:
        """``(Q,)`` int64 keys of ``(Q, D)`` states, or ``None`` where counting needs none (``rows``)."""
        return None if self.state_keys is None else self.state_keys(states)

    def counts(
        self, queries: list[tuple[torch.Tensor | None, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(#x == state, #y == state)``, each ``(Q,)`` integer, for each ``((Q,) keys, (Q, D) states)``
        of ``queries`` (keys from :meth:`keys`)."""
        if self.table is not None:
            return [(self.table[0][keys], self.table[1][keys]) for keys, _ in queries]
        if self.rows is not None:
            counts = hashed_counts(list(self.rows), [q for _, q in queries])
            return list(zip(counts[0::2], counts[1::2]))
        return [(count_states(self.x, keys, q), count_states(self.y, keys, q)) for keys, q in queries]

    def same(
        self, z: torch.Tensor, w: torch.Tensor, kz: torch.Tensor | None, kw: torch.Tensor | None
    ) -> torch.Tensor:
        """``(Q,)`` bool ``z == w`` row-wise (:func:`same_states`; compared directly with ``rows``)."""
        if self.state_keys is None:
            return (z == w).all(dim=1)
        return same_states(self.state_keys, z, w, kz, kw)


def uses_dense_table(state_keys: StateKeys, num_states: int, x_size: int, y_size: int) -> bool:
    """Whether :func:`prepare` counts in a dense table (see :data:`DENSE_TABLE_MIN_STATES`)."""
    limit = min(DENSE_TABLE_MAX_STATES, max(DENSE_TABLE_MIN_STATES, 2 * (x_size + y_size)))
    return state_keys.exact and num_states <= limit and max(x_size, y_size) < 2**31


#: Builds the ``(2, M)`` int32 count table of ``x`` and ``y``: ``(state_keys, x, y, M) -> table``.
CountTableFn = Callable[[StateKeys, torch.Tensor, torch.Tensor, int], torch.Tensor]


def count_table(state_keys: StateKeys, x: torch.Tensor, y: torch.Tensor, num_states: int) -> torch.Tensor:
    """The ``(2, M)`` int32 count table of two batches (exact keys), in plain torch."""
    nx, ny = x.shape[0], y.shape[0]
    table = torch.zeros((2, num_states), dtype=torch.int32, device=x.device)
    ones = torch.ones(max(nx, ny), dtype=torch.int32, device=x.device)
    table[0].index_add_(0, state_keys(x), ones[:nx])
    table[1].index_add_(0, state_keys(y), ones[:ny])
    return table


def prepare(
    circuit: Circuit,
    x: torch.Tensor,
    y: torch.Tensor,
    hash_fn: HashFn | None = None,
    table_fn: CountTableFn = count_table,
) -> PreparedBatches:
    """Key and count (or sort) the two batches ``x`` ``(B, D)`` and ``y`` ``(B', D)`` (int64, one device).

    ``table_fn`` builds the dense table where :func:`uses_dense_table` picks it (the Triton
    backend passes a one-kernel version). Under ``torch.compile``, hashed keys are left to
    :func:`hashed_counts` (module docstring).
    """
    nx, ny = x.shape[0], y.shape[0]
    if hash_fn is None and circuit.num_states >= 2**63 and torch.compiler.is_compiling():
        return PreparedBatches(None, nx, ny, rows=(x, y))
    state_keys = StateKeys.for_circuit(circuit, x.device, hash_fn)
    if uses_dense_table(state_keys, circuit.num_states, nx, ny):
        return PreparedBatches(state_keys, nx, ny, table=table_fn(state_keys, x, y, circuit.num_states))
    return PreparedBatches(state_keys, nx, ny, x=sort_batch(x, state_keys), y=sort_batch(y, state_keys))


def targets_from_prepared(
    circuit: Circuit,
    prepared: PreparedBatches,
    layer: torch.Tensor,
    z: torch.Tensor,
    kz: torch.Tensor,
    w: torch.Tensor | None = None,
    kw: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """``(Q,)`` float64 targets from prepared batches and the query keys ``kz`` (and ``kw``).

    The current targets ``I_layer(z, w)`` when the head states ``w`` and their keys ``kw`` are
    given, else the potential targets ``phi_layer(z)``; normalised with ``normalize``.
    """
    sizes = (prepared.x_size, prepared.y_size)
    if w is None:
        ((count_x, count_y),) = prepared.counts([(kz, z)])
        return potential_from_counts(circuit, layer, count_x, count_y, *sizes, normalize)
    (cxz, cyz), (cxw, cyw) = prepared.counts([(kz, z), (kw, w)])
    same = None if normalize else prepared.same(z, w, kz, kw)  # C(z, w) cancels in the normalised target
    return current_from_counts(circuit, layer, same, (cxz, cyz, cxw, cyw), *sizes, normalize)


def evaluate_torch(
    circuit: Circuit,
    prepared: PreparedBatches,
    layer: torch.Tensor,
    z: torch.Tensor,
    w: torch.Tensor | None,
    normalize: bool,
) -> torch.Tensor:
    """The pass of the ``"torch"`` backend on prepared batches: :func:`targets_from_prepared`."""
    kw = None if w is None else prepared.keys(w)
    return targets_from_prepared(circuit, prepared, layer, z, prepared.keys(z), w, kw, normalize)


#: A backend's pass on prepared batches: ``(circuit, prepared, layer, z, w, normalize) -> (Q,)
#: float64`` targets, the currents for head states ``w`` and the potentials for ``w=None``.
EvaluateFn = Callable[
    [Circuit, PreparedBatches, torch.Tensor, torch.Tensor, torch.Tensor | None, bool], torch.Tensor
]


@dataclass(frozen=True)
class TargetBackend:
    """A backend of the pass: the functions it registers for both ops, from its two parts.

    Both prepare the batches with :func:`prepare` (contiguous, as kernels read them) and hand
    them to ``evaluate``.

    Attributes:
        evaluate: the pass on prepared batches (:data:`EvaluateFn`).
        table_fn: builds the dense count table (:data:`CountTableFn`).
    """

    evaluate: EvaluateFn
    table_fn: CountTableFn = count_table

    def current_targets(
        self,
        circuit: Circuit,
        layer: torch.Tensor,
        z: torch.Tensor,
        w: torch.Tensor | None,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        normalize: bool = False,
        hash_fn: HashFn | None = None,
    ) -> torch.Tensor:
        """The backend of :func:`ecd2g_fast.targets.current_targets` (checked inputs).

        Args:
            circuit: the circuit.
            layer: ``(Q,)`` int64 in ``[0, L)``; ``z``, ``w``: ``(Q, D)`` int64 states (``w=None``:
                the potential targets of :meth:`potential_targets` instead).
            x, y: ``(B, D)``, ``(B', D)`` int64 batches, on the same device.
            normalize: return the normalised targets.
            hash_fn: replaces the row hash and forces hashed keys (for testing collisions).

        Returns:
            ``(Q,)`` float64 current targets.
        """
        prepared = prepare(circuit, x.contiguous(), y.contiguous(), hash_fn, self.table_fn)
        return self.evaluate(circuit, prepared, layer, z, w, normalize)

    def potential_targets(
        self,
        circuit: Circuit,
        layer: torch.Tensor,
        z: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        normalize: bool = False,
        hash_fn: HashFn | None = None,
    ) -> torch.Tensor:
        """The backend of :func:`ecd2g_fast.targets.potential_targets` (checked inputs).

        Args and Returns as :meth:`current_targets`, with ``layer`` in ``[0, L]`` and no ``w``.
        """
        return self.current_targets(circuit, layer, z, None, x, y, normalize=normalize, hash_fn=hash_fn)


#: The ``"torch"`` backend: sorted batches or a dense count table, in plain torch.
TORCH = TargetBackend(evaluate_torch)
current_targets_torch = TORCH.current_targets
potential_targets_torch = TORCH.potential_targets
