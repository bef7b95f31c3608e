"""The ``"potential"`` and ``"potential-torch"`` draws: O(log M) per move (docs/theory.md §6).

For a :class:`~ecd2g_fast.fields.PotentialField` the out-currents of ``(l, z)`` are, by Ohm's law,

    forward to (l+1, w):   G max(phi - Phi[l+1, w], 0) + e [w == z] max(phi - Phi[l+1, z], 0)
    backward to (l-1, w):  the same against Phi[l-1]
    sink (l == L):         sink[z]

with ``phi = Phi[l, z]``. With layer ``m`` sorted, ``V_0 <= ... <= V_{M-1}``, the lateral mass
is ``G F(k)`` with ``k = #{w: V_w < phi}`` and ``F(j) = sum_{i<j} (phi - V_i) = j phi - S_j``.

:class:`PotentialTables` computes everything that depends on the vertex only, once per call of
:func:`ecd2g_fast.sample`, for all ``(L+1) M`` vertices: the sorted layers and their permutation,
the counts ``k`` (``searchsorted``), and the five group masses of every vertex (forward lateral,
forward ``w == z`` term, backward lateral, backward ``w == z`` term, sink). A move then gathers
the walker's five masses, picks a group with one uniform, and for a lateral group draws ``j``
from ``F`` by inverse CDF with a second uniform: a vectorised binary search for the smallest ``j``
in ``[1, k]`` with ``F(j) > u F(k)``; the outlet is the state of ``V_{j-1}``. Cost per move:
``O(log M)`` gathers per walker, no field evaluation and nothing of size ``B x M``.

Cancellation: ``j phi - S_j`` is a difference of two numbers of size ``j |phi|`` whose result can
be as small as the spread of the layer; with potentials far from 0 (any gauge constant, or the
``-l s`` drop of deep layers) that loses digits. The prefix sums are therefore stored shifted by a
per-layer reference ``c_m`` (the layer's median), ``P_j = sum_{i<j} (V_i - c_m)``, and
``F(j) = j (phi - c_m) - P_j``: every operand is of the size of the layer's spread. The tests check
the masses against direct sums with a gauge constant of ``1e6``.

The tables are built in plain torch. The per-move draw runs in the compiled op
``potential_move_sorted`` (C++ or CUDA, the same arithmetic, Philox streams keyed from the
generator): the ``"potential"`` draw, where the extension has kernels for the device; or in plain
torch (:meth:`PotentialTables.draw`, ``torch.rand`` with the generator): the ``"potential-torch"``
draw, and the ``"potential"`` draw (after one warning) where the extension lacks the kernels. CPU
and CUDA either way. Memory: the tables hold about 80 bytes per vertex, ``80 (L+1) M`` bytes, ten
times the potential table itself; nothing scales with ``B x M``.

Both take only :class:`~ecd2g_fast.fields.PotentialField` fields (the table's ``supports``
check); ``"auto"`` passes over them for any other field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _extension, backends
from ..circuit import Circuit
from ..fields import Field, FieldError, PotentialField, call_field
from .cpp import op_drawer
from .reference import Draw, check_outflow, describe_vertex

#: Group indices of :attr:`PotentialTables.masses`.
FORWARD_LATERAL, FORWARD_DIAGONAL, BACKWARD_LATERAL, BACKWARD_DIAGONAL, SINK = range(5)


@dataclass(frozen=True)
class PotentialTables:
    """Per-vertex tables of a potential field for the O(log M) draw (docs/theory.md §6).

    Attributes:
        phi: ``(L+1, M)`` float64 potential table.
        order: ``(L+1, M)`` int64; ``order[m, j]`` is the state with the ``j``-th smallest
            potential of layer ``m``.
        reference: ``(L+1,)`` float64 per-layer shift ``c_m`` (the median of layer ``m``).
        prefix: ``(L+1, M+1)`` float64 shifted prefix sums ``P[m, j] = sum_{i<j} (V_i - c_m)``
            of the sorted layer ``V``.
        count: ``(L+1, M, 2)`` int64; ``count[l, z, 0] = #{w: Phi[l+1, w] < Phi[l, z]}`` and
            ``count[l, z, 1]`` the same against layer ``l-1`` (0 where the layer does not exist).
        masses: ``(L+1, M, 5)`` float64 non-negative group masses of every vertex, in the order
            forward lateral, forward diagonal, backward lateral, backward diagonal, sink (backward
            and sink are 0 in forward mode).
    """

    phi: torch.Tensor
    order: torch.Tensor
    reference: torch.Tensor
    prefix: torch.Tensor
    count: torch.Tensor
    masses: torch.Tensor

    @classmethod
    def from_field(cls, field: PotentialField, mode: str = "bidirectional") -> PotentialTables:
        """Tabulate a potential field; ``O((L+1) M log M)`` time, ``O((L+1) M)`` memory.

        Args:
            field: a :class:`~ecd2g_fast.fields.PotentialField`.
            mode: ``"bidirectional"`` (forward, backward and sink groups) or ``"forward"``.

        Returns:
            The tables, on ``field.device``.

        Raises:
            FieldError: a table of the wrong shape, dtype or device
                (:func:`~ecd2g_fast.fields.call_field`), a non-finite potential, or
                (bidirectional) a non-finite sink current, naming its layer and state.
        """
        circuit = field.circuit
        L, M = circuit.num_layers, circuit.num_states
        G, e = float(circuit.G), float(circuit.e)
        phi = call_field(field, "potential_table", (), (L + 1, M)).to(torch.float64).contiguous()
        _check_finite(field, phi, "potential")
        bidirectional = mode == "bidirectional"
        device = phi.device

        sorted_phi, order = torch.sort(phi, dim=1, stable=True)
        reference = sorted_phi[:, M // 2].clone()
        prefix = torch.zeros((L + 1, M + 1), dtype=torch.float64, device=device)
        prefix[:, 1:] = torch.cumsum(sorted_phi - reference[:, None], dim=1)

        count = torch.zeros((L + 1, M, 2), dtype=torch.int64, device=device)
        masses = torch.zeros((L + 1, M, 5), dtype=torch.float64, device=device)
        # forward: vertex layers 0..L-1 against layers 1..L
        k = torch.searchsorted(sorted_phi[1:], phi[:-1], right=False)
        count[:-1, :, 0] = k
        masses[:-1, :, FORWARD_LATERAL] = G * _lateral(phi[:-1], reference[1:], prefix[1:], k)
        masses[:-1, :, FORWARD_DIAGONAL] = e * (phi[:-1] - phi[1:]).clamp_min(0.0)
        if bidirectional:
            # backward: vertex layers 1..L against layers 0..L-1
            k = torch.searchsorted(sorted_phi[:-1], phi[1:], right=False)
            count[1:, :, 1] = k
            masses[1:, :, BACKWARD_LATERAL] = G * _lateral(phi[1:], reference[:-1], prefix[:-1], k)
            masses[1:, :, BACKWARD_DIAGONAL] = e * (phi[1:] - phi[:-1]).clamp_min(0.0)
            sink = call_field(field, "sink_table", (), (M,)).to(torch.float64)
            _check_finite(field, sink.unsqueeze(0), "sink current", first_layer=L)
            masses[L, :, SINK] = sink.clamp_min(0.0)
        return cls(phi, order, reference, prefix, count, masses)

    def draw(self, layer: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One move's outlets for walkers at ``(layer, z)``.

        Args:
            layer, z: ``(n,)`` int64 walker positions on the tables' device (in forward mode
                ``layer < L``).
            generator: ``torch.Generator`` on that device, or None.

        Returns:
            ``(n,)`` int64 outlet codes: ``w`` (to ``(l+1, w)``), ``M + w`` (to ``(l-1, w)``),
            ``2M`` (sink). Walkers whose vertex has no positive outflow get ``-1``.
        """
        L1, M = self.phi.shape
        n = layer.shape[0]
        flat = layer * M + z
        masses = self.masses.view(-1, 5)[flat]
        cumulative = masses.cumsum(1)
        total = cumulative[:, -1]
        u = torch.rand((n, 2), dtype=torch.float64, device=layer.device, generator=generator)
        target = u[:, 0] * total
        group = (cumulative <= target[:, None]).sum(1).clamp_max(4)
        # rounding can leave the target at the very top: take the last group with mass instead
        last_with_mass = 4 - torch.argmax(masses.flip(1).gt(0).to(torch.int8), dim=1)
        group = torch.where(masses.gather(1, group[:, None]).squeeze(1) > 0, group, last_with_mass)

        outlet = torch.where(group == FORWARD_DIAGONAL, z, torch.full_like(z, 2 * M))
        outlet = torch.where(group == BACKWARD_DIAGONAL, M + z, outlet)
        lateral = torch.nonzero((group == FORWARD_LATERAL) | (group == BACKWARD_LATERAL)).squeeze(1)
        if lateral.numel():
            backward = group[lateral] == BACKWARD_LATERAL
            neighbour = layer[lateral] + torch.where(backward, -1, 1)
            k = self.count.view(-1, 2)[flat[lateral], backward.to(torch.int64)]
            j = self._inverse_cdf(self.phi.view(-1)[flat[lateral]], neighbour, k, u[lateral, 1])
            w = self.order.view(-1)[neighbour * M + j - 1]
            outlet[lateral] = w + M * backward.to(torch.int64)
        return torch.where(total > 0, outlet, torch.full_like(outlet, -1))

    def _inverse_cdf(
        self, phi: torch.Tensor, m: torch.Tensor, k: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        # smallest j in [1, k] with F(j) = j (phi - c_m) - P[m, j] > u F(k): binary search,
        # all walkers at once, ceil(log2 M) + 1 rounds of gathers (no B x M tensor)
        M = self.phi.shape[1]
        prefix = self.prefix.view(-1)
        shifted = phi - self.reference[m]
        row = m * (M + 1)

        def F(j):
            return j.to(torch.float64) * shifted - prefix[row + j]

        target = u * F(k)
        lo, hi = torch.ones_like(k), k.clone()
        for _ in range(max(M - 1, 1).bit_length() + 1):
            mid = (lo + hi) // 2
            above = F(mid) > target
            searching = lo < hi
            hi = torch.where(searching & above, mid, hi)
            lo = torch.where(searching & ~above, mid + 1, lo)
        return lo


def _lateral(
    phi: torch.Tensor, reference: torch.Tensor, prefix: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    # F(k) = k (phi - c) - P[k], row by row; clamp the rounding residue of empty sums at 0
    value = k.to(torch.float64) * (phi - reference[:, None]) - prefix.gather(1, k)
    return value.clamp_min(0.0)


def _check_finite(field: Field, table: torch.Tensor, what: str, first_layer: int = 0) -> None:
    bad = ~torch.isfinite(table)
    if bool(bad.any()):
        l, z = (int(v) for v in torch.nonzero(bad)[0])
        raise FieldError(
            f"field returned a non-finite {what} at {describe_vertex(field, first_layer + l, z)}"
        )


def potential_drawer(field: PotentialField, mode: str, use_extension: bool | None = None) -> Draw:
    """The O(log M) per-move draw for one field and mode.

    Args:
        field: a :class:`~ecd2g_fast.fields.PotentialField`; its tables are built here, once.
        mode: ``"bidirectional"`` or ``"forward"``.
        use_extension: draw with the compiled ``potential_move_sorted`` op (True), with plain
            torch (False), or with the op when the extension has kernels for the field's device
            (None). Both follow the same arithmetic; their random streams differ (Philox keyed
            from the generator vs ``torch.rand``).

    Returns:
        A :data:`.reference.Draw`.

    Raises:
        FieldError: see :meth:`PotentialTables.from_field`; the draw raises it for a visited
            vertex without positive outflow.
        RuntimeError: ``use_extension=True`` but the extension has no kernels for the device.
    """
    tables = PotentialTables.from_field(field, mode)
    device = tables.phi.device
    if use_extension is None:
        use_extension = _extension.has_device_kernels(device)
    if use_extension:
        if not _extension.has_device_kernels(device):
            raise RuntimeError(_extension.device_unavailable_reason(device))
        op = _extension.ops().potential_move_sorted
        arrays = (tables.phi, tables.order, tables.reference, tables.prefix, tables.count, tables.masses)

        def move(layer, z, seed, offset):
            return op(*arrays, layer, z, seed, offset)

        return op_drawer(field, move)

    def draw(layer, z, generator, chunk_size):
        outlet = tables.draw(layer, z, generator)
        check_outflow(field, layer, z, outlet < 0)
        return outlet

    return draw


def compiled_or_torch_drawer(field: PotentialField, mode: str) -> Draw:
    """The ``"potential"`` draw factory: compiled where the extension has kernels for the
    field's device, else in plain torch after one ``RuntimeWarning`` per process (the plain-torch
    draw is slower, never less exact)."""
    device = field.device
    compiled = _extension.has_device_kernels(device)
    if not compiled:
        # the same cause as "auto" passing over "cpp": one warning between them
        backends.warn_once(
            ("sample", "cpp"),
            f"ecd2g_fast sample: the compiled kernels are not available on {device} "
            f"({_extension.device_unavailable_reason(device)}); using the plain-torch potential sampler",
        )
    return potential_drawer(field, mode, compiled)


def torch_drawer(field: PotentialField, mode: str) -> Draw:
    """The ``"potential-torch"`` draw factory: the O(log M) draw in plain torch, even where the
    compiled op exists (the reference of the compiled draw, and a fallback)."""
    return potential_drawer(field, mode, use_extension=False)


def _is_potential_field(field: object) -> bool:
    # the sorted tables rank a whole layer: they serve the complete circuit's all-to-all edges
    return isinstance(field, PotentialField) and isinstance(field.circuit, Circuit)


for _name, _factory in (("potential", compiled_or_torch_drawer), ("potential-torch", torch_drawer)):
    backends.register(
        "sample",
        _name,
        _factory,
        supports=_is_potential_field,
        unsupported_reason="it needs a PotentialField (a potential table) on a complete Circuit; use 'cpp' or 'torch'",
    )
