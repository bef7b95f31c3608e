"""Noise-to-data fields on a Hamming circuit, given by the logarithm of a smoothed data density.

With a uniform source ``p = 1/M`` the source term of the potentials vanishes (every ``A_l`` has
mean 0 over the states), so in the gauge of :class:`~ecd2g_fast.hamming.KernelTables`

    phi_l(z) = -l s + alpha*_{L-l} - rho_l(z),     rho_l(z) = sum_y q(y) Ã_{L-l}(h(z, y)) > 0:

the data smoothed by a Hamming kernel that widens away from layer ``L`` (docs/hamming.md §8). The
layer mean of ``rho_l`` is ``alpha*_{L-l}`` exactly. Currents follow by Ohm's law: across the edge
``(l, z) -> (l+1, w)``

    I = C(z, w) [delta'_l + rho_{l+1}(w) - rho_l(z)],    delta'_l = s + alpha*_{L-l} - alpha*_{L-l-1}.

``rho`` spans thousands of orders of magnitude at large ``D`` (``1/M = 2^-784`` at ``K = 2``,
``D = 784``), so a field is given by its logarithm ``S_l(z) = log rho_l(z)`` and every current of a
vertex is returned divided by that vertex's own ``rho_l(z)``:

    forward to (l+1, w_k):   C_k [expm1(S_{l+1}(w_k) - S_l(z)) + delta'_l e^{-S_l(z)}]
    backward to (l-1, w_k):  C_k [expm1(S_{l-1}(w_k) - S_l(z)) - delta'_{l-1} e^{-S_l(z)}]
    sink at (L, z):          sum_k C_k [delta'_{L-1} e^{-S_L(z)} - expm1(S_{L-1}(w_k) - S_L(z))]

(the sink is the net inflow, Kirchhoff's law at ``(L, z)``, clipped at 0). The samplers only ever
compare the currents of one vertex, so the per-vertex factor changes nothing they compute, and the
values stay of order one at any ``D``. Any ``S`` gives currents that derive from a potential
(``-rho = -e^S`` up to per-layer constants), so the walk has no current cycle.

:class:`LogField` implements this for any ``S``; :class:`DataLogField` computes ``S`` exactly from a
pmf or from samples (the exact field of a data set, by distance histograms, for any ``D``);
:class:`ProductMixtureLogField` computes it exactly for a mixture of product distributions (the
distance to a draw of a product distribution is a sum of independent Bernoulli variables), the
reference a learned field is measured against at any ``D`` where the data law is such a mixture.
"""

from __future__ import annotations

import abc
import math

import numpy as np
import torch

from ..fields import Field
from . import extended as ext
from .circuit import HammingCircuit, check_hamming_circuit
from .extended import ExtendedTensor
from .targets import distance_histograms

__all__ = ["DataLogField", "LogField", "LogFieldTables", "ProductMixtureLogField"]


class LogFieldTables:
    """The per-layer constants of a noise-to-data field, on one device (module docstring).

    Attributes:
        log_norm: ``(L+1,)`` float64 ``log alpha*_{L-l}``, the log of the layer mean of ``rho_l``.
        drift_log, drift_sign: ``(L,)`` float64 ``log |delta'_l|`` and its sign (+-1).
        log_kernel: ``(L+1, D+1)`` float64 ``log Ã_{L-l}(h)``: row ``l`` is the kernel of vertex
            layer ``l``.
    """

    def __init__(self, circuit: HammingCircuit, device: torch.device | str = "cpu") -> None:
        tables = circuit.kernel_tables()
        L = circuit.num_layers
        alpha_m, alpha_e = tables.alpha_star.numpy()
        drift_m, drift_e = tables.drift.numpy()
        tail, head = L - np.arange(L), L - np.arange(L) - 1
        m = np.stack([np.full(L, drift_m), alpha_m[tail], -alpha_m[head]], axis=-1)
        e = np.stack([np.full(L, drift_e), alpha_e[tail], alpha_e[head]], axis=-1)
        drift = ExtendedTensor.from_numpy(*ext.total(m, e.astype(np.int32)))
        self.log_norm = tables.alpha_star.log().flip(0).to(device)
        self.drift_log = drift.log().to(device)
        self.drift_sign = drift.sign().to(torch.float64).to(device)
        self.log_kernel = tables.log_kernel().flip(0).to(device)

    def drift_terms(self, edge_layer: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        """``delta'_edge_layer / rho``: ``(n,)`` float64 from ``(n,)`` int64 edge layers in ``[0, L)``
        and ``(n,)`` float64 ``log rho``."""
        return self.drift_sign[edge_layer] * torch.exp(self.drift_log[edge_layer] - log_rho)

    def add_layer_norms(
        self, layer: torch.Tensor, here: torch.Tensor, ahead: torch.Tensor, behind: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A network's outlet values ``f`` (``(B,)`` at the vertex, ``(B, N)`` in layers ``l +- 1``,
        float64) turned into log-fields ``S = log alpha*_{L-l} + f`` by adding each layer's
        normaliser (layers clipped to ``[0, L]``)."""
        norm, L = self.log_norm, self.log_norm.shape[0] - 1
        return (
            norm[layer] + here,
            norm[(layer + 1).clamp_max(L)][:, None] + ahead,
            norm[(layer - 1).clamp_min(0)][:, None] + behind,
        )

    def forward_currents(
        self, layer: torch.Tensor, here: torch.Tensor, ahead: torch.Tensor, conductance: torch.Tensor
    ) -> torch.Tensor:
        """Forward out-currents over ``rho_l(z)`` (module docstring): ``(B, S)`` float64 from ``(B,)``
        layers in ``[0, L)``, ``(B,)`` ``S_l(z)``, ``(B, S)`` ``S_{l+1}`` at the slots and their
        ``(S,)`` conductances."""
        drift = self.drift_terms(layer, here)
        return conductance * (torch.expm1(ahead - here[:, None]) + drift[:, None])

    def backward_currents(
        self, layer: torch.Tensor, here: torch.Tensor, behind: torch.Tensor, conductance: torch.Tensor
    ) -> torch.Tensor:
        """Backward out-currents over ``rho_l(z)``, as :meth:`forward_currents`; ``layer`` in ``[1, L]``."""
        drift = self.drift_terms(layer - 1, here)
        return conductance * (torch.expm1(behind - here[:, None]) - drift[:, None])

    def edge_currents(
        self,
        layer: torch.Tensor,
        here: torch.Tensor,
        ahead: torch.Tensor,
        behind: torch.Tensor,
        conductance: torch.Tensor,
        bidirectional: bool = True,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, 2N)`` float64 out-currents over ``rho_l(z)`` of every edge of ``(B,)`` vertices at
        ``layer`` in ``[0, L]``: forward slots ``[:, :N]``, backward ``[:, N:]``, 0 where the edge
        does not exist (forward at ``L``; backward at 0, or without ``bidirectional``). From the
        log-fields ``here`` ``(B,)``, ``ahead`` and ``behind`` ``(B, N)`` and the ``(N,)`` slot
        conductances; written into ``out`` (a zeroed ``(B, 2N)`` float64 tensor or view) if given."""
        L, N = self.log_norm.shape[0] - 1, ahead.shape[1]
        if out is None:
            out = torch.zeros(here.shape[0], 2 * N, dtype=torch.float64, device=here.device)
        forward = self.forward_currents(layer.clamp_max(L - 1), here, ahead, conductance)
        out[:, :N] = torch.where((layer < L)[:, None], forward, 0.0)
        if bidirectional:
            backward = self.backward_currents(layer.clamp_min(1), here, behind, conductance)
            out[:, N:] = torch.where((layer > 0)[:, None], backward, 0.0)
        return out


class LogField(Field):
    """A noise-to-data current field on a :class:`HammingCircuit` given by ``S_l(z) = log rho_l(z)``.

    Subclasses implement :meth:`log_field` (and may replace :meth:`slot_log_fields` and
    :meth:`outlet_log_fields` by cheaper forms, as a network does). The field answers the flat
    :class:`~ecd2g_fast.fields.Field` methods for enumerable ``M`` (``exact_output_distribution``,
    tests) and :meth:`outlet_currents` on ``(B, D)`` state vectors for any ``M`` (the walk). Every
    current of a vertex is returned divided by the vertex's ``rho_l(z)`` (module docstring).

    Args:
        circuit: the Hamming circuit.
        device: where the field takes and returns tensors.
        slots_per_call: neighbour slots of all walkers together that one evaluation may cover
            (memory bound of :meth:`slot_log_fields`'s default).
    """

    acyclic = True
    #: :func:`ecd2g_fast.sample` walks ``(B, D)`` state vectors and asks :meth:`outlet_currents`.
    state_vectors = True
    #: In :meth:`outlet_currents`, give a vertex below layer ``L`` without positive outflow a unit
    #: forward stay edge instead of stranding its walkers, and count it in :attr:`bridged`. An exact
    #: field has no such vertex (Kirchhoff's law); a learned one can have a few (a local minimum
    #: of its potential), and the count says how often the walk met one.
    bridge_dead_ends = False

    def __init__(
        self, circuit: HammingCircuit, device: torch.device | str = "cpu", slots_per_call: int = 2**16
    ) -> None:
        super().__init__(check_hamming_circuit(circuit))
        self._device = torch.device(device)
        self.tables = LogFieldTables(circuit, self._device)
        self.slots_per_call = slots_per_call
        N = circuit.num_neighbours
        self.conductance = circuit.slot_conductances(torch.zeros(1, dtype=torch.int64), 0, N).to(self._device)
        #: walker-moves that took a bridge (:attr:`bridge_dead_ends`): a 0-d int64 tensor on the device
        self.bridged = torch.zeros((), dtype=torch.int64, device=self._device)

    @property
    def device(self) -> torch.device:
        return self._device

    @abc.abstractmethod
    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``S_layer(z)``: ``(n,)`` float64 from ``(n,)`` int64 layers in ``[0, L]`` and ``(n, D)``
        int64 states."""

    def slot_log_fields(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, S)`` float64 ``S_layer[b](w)`` for ``w`` in slots ``start..stop-1`` of ``z[b]``.

        Default: the neighbour states materialised in blocks of about :attr:`slots_per_call`
        (walker, slot) pairs and passed to :meth:`log_field`.
        """
        B, S = z.shape[0], stop - start
        out = torch.empty(B, S, dtype=torch.float64, device=z.device)
        rows = max(1, self.slots_per_call // max(S, 1))
        for b0 in range(0, B, rows):
            states = self.circuit.neighbour_vectors(z[b0 : b0 + rows], start, stop)
            n = states.shape[0]
            layers = layer[b0 : b0 + rows, None].expand(n, S).reshape(-1)
            out[b0 : b0 + n] = self.log_field(layers, states.reshape(n * S, -1)).view(n, S)
        return out

    def outlet_log_fields(
        self, layer: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``S`` at each walker's vertex ``(B,)``, at its ``N`` neighbours in layer ``l+1`` and in
        layer ``l-1`` ``(B, N)`` each (layers clipped to ``[0, L]``; the values of edges that do not
        exist are ignored). float64."""
        L, N = self.circuit.num_layers, self.circuit.num_neighbours
        here = self.log_field(layer, z)
        ahead = self.slot_log_fields((layer + 1).clamp_max(L), z, 0, N)
        behind = self.slot_log_fields((layer - 1).clamp_min(0), z, 0, N)
        return here, ahead, behind

    # ------------------------------------------------------------------ currents (module docstring)
    def outlet_currents(self, layer: torch.Tensor, z: torch.Tensor, mode: str) -> torch.Tensor:
        """Every out-current of each walker's vertex, over its ``rho_l(z)``, from one evaluation.

        Args:
            layer: ``(B,)`` int64 layers in ``[0, L]``; ``z``: ``(B, D)`` int64 states.
            mode: ``"bidirectional"`` or ``"forward"``.

        Returns:
            ``(B, 2N + 1)`` float64: forward slots ``[:, :N]``, backward slots ``[:, N:2N]`` (out
            of the vertex: positive where current flows to layer ``l-1``), the sink ``[:, 2N]``;
            0 for outlets that do not exist (forward at layer ``L``, backward at layer 0 or in
            forward mode, the sink below layer ``L`` or in forward mode). With
            :attr:`bridge_dead_ends`, a row below layer ``L`` without a positive entry gets a unit
            forward stay edge.
        """
        L, N = self.circuit.num_layers, self.circuit.num_neighbours
        B = layer.shape[0]
        out = torch.zeros(B, 2 * N + 1, dtype=torch.float64, device=layer.device)
        here, ahead, behind = self.outlet_log_fields(layer, z)
        bidirectional = mode == "bidirectional"
        self.tables.edge_currents(
            layer, here, ahead, behind, self.conductance, bidirectional, out[:, : 2 * N]
        )
        if bidirectional:
            out[:, 2 * N] = torch.where(layer == L, self.sink_over_rho(z, out[:, N : 2 * N]), 0.0)
        if self.bridge_dead_ends:
            # no host sync: the count stays on the device
            stuck = (out.clamp_min(0).sum(1) <= 0) & (layer < L)
            out[:, 0] = torch.where(stuck, 1.0, out[:, 0])
            self.bridged += stuck.sum()
        return out

    # ------------------------------------------------------------------ the flat Field contract
    def _states(self, z: torch.Tensor) -> torch.Tensor:
        return self.circuit.unflatten(z)

    def currents_to_next(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        states = self._states(z)
        here = self.log_field(layer, states)
        ahead = self.slot_log_fields(layer + 1, states, start, stop)
        return self.tables.forward_currents(layer, here, ahead, self.conductance[start:stop])

    def currents_from_prev(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        states = self._states(z)
        here = self.log_field(layer, states)
        behind = self.slot_log_fields(layer - 1, states, start, stop)
        return -self.tables.backward_currents(layer, here, behind, self.conductance[start:stop])

    def sink_over_rho(self, z: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        """The sink currents over ``rho_L(z)`` of ``(B, D)`` states at layer ``L``, given their
        ``(B, N)`` backward out-currents over ``rho_L(z)``: ``(B,)`` float64, the net inflow
        (Kirchhoff's law, module docstring). The one place a subclass puts another sink (a
        learned one, :class:`~.model.HammingNetField`); :meth:`outlet_currents` and
        :meth:`sink_currents` both read it."""
        return -backward.sum(1)

    def sink_currents(self, z: torch.Tensor) -> torch.Tensor:
        L, N = self.circuit.num_layers, self.circuit.num_neighbours
        last = torch.full_like(z, L)
        backward = -self.currents_from_prev(last, z, 0, N)
        return self.sink_over_rho(self._states(z), backward).clamp_min(0.0)


class DataLogField(LogField):
    """The exact noise-to-data field of a pmf or of a set of samples: ``S_l(z) = log sum_y q(y) Ã_{L-l}(h(z, y))``.

    With samples it is the exact field of their empirical distribution: its walk reproduces the
    samples themselves (it memorises), at any ``D``: the reference a learned field must beat on
    held-out data. Cost per evaluated state: ``O(n D)`` for ``n`` support points.

    Args:
        circuit: the Hamming circuit (``r``, ``R`` any).
        states: ``(n, D)`` integer support points in ``[0, K)``, on the field's device.
        weights: ``(n,)`` non-negative float weights (a pmf over ``states``; normalised here);
            default equal weights (samples).

    Raises:
        TypeError, ValueError: bad ``states`` or ``weights``.
    """

    def __init__(
        self, circuit: HammingCircuit, states: torch.Tensor, weights: torch.Tensor | None = None
    ) -> None:
        from .._validation import check_states

        states = check_states("states", states, circuit.num_categories, circuit.dim)
        super().__init__(circuit, states.device)
        n = states.shape[0]
        if n < 1:
            raise ValueError("states must hold at least one state")
        if weights is None:
            weights = torch.ones(n, dtype=torch.float64, device=states.device)
        if not isinstance(weights, torch.Tensor) or weights.shape != (n,) or not weights.is_floating_point():
            raise ValueError(f"weights must be a ({n},) float tensor, got {weights!r:.80}")
        weights = weights.to(torch.float64)
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be finite and non-negative with a positive sum")
        keep = weights > 0
        self.points = states[keep]
        self.log_weights = torch.log(weights[keep] / weights.sum())
        # equal weights (samples): distance-histogram counts, exact integers
        self.equal_weights = bool((weights[keep] == weights[keep][0]).all())
        self.bytes_per_pair = 64 + 8 * self.points.shape[0]

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.equal_weights:  # one logsumexp over the D + 1 distances per state
            counts = distance_histograms(z, self.points, self.circuit.num_categories)
            log_mass = torch.log(counts) - math.log(self.points.shape[0])
            return torch.logsumexp(log_mass + self.tables.log_kernel[layer], dim=1)
        distance = (z[:, None, :] != self.points[None, :, :]).sum(-1)
        terms = self.log_weights + self.tables.log_kernel[layer[:, None], distance]
        return torch.logsumexp(terms, dim=1)


class ProductMixtureLogField(LogField):
    """The exact noise-to-data field of ``q(y) = sum_c w_c prod_d P_c(y_d)``, a mixture of product
    distributions, at any ``D``.

    For a state ``z`` and component ``c`` the distance ``h(z, y)`` of a draw ``y`` of the component
    is a sum of independent Bernoulli variables of means ``1 - P_c(y_d = z_d)`` (a Poisson-binomial
    law, computed by the ``D``-step convolution), so
    ``rho_l(z) = sum_c w_c sum_h P_c(h(z, y) = h) Ã_{L-l}(h)`` exactly. Cost per evaluated state:
    ``O(C D^2)``.

    Args:
        circuit: the Hamming circuit.
        probabilities: ``(C, D, K)`` float per-component, per-coordinate categorical laws (rows
            sum to 1).
        weights: ``(C,)`` non-negative float mixture weights (normalised here).
        device: where the field computes.
    """

    def __init__(
        self,
        circuit: HammingCircuit,
        probabilities: torch.Tensor,
        weights: torch.Tensor,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(circuit, device)
        K, D = circuit.num_categories, circuit.dim
        if (
            not isinstance(probabilities, torch.Tensor)
            or probabilities.dim() != 3
            or probabilities.shape[1:]
            != (
                D,
                K,
            )
        ):
            raise ValueError(f"probabilities must be a (C, {D}, {K}) tensor, got {probabilities!r:.80}")
        C = probabilities.shape[0]
        if not isinstance(weights, torch.Tensor) or weights.shape != (C,):
            raise ValueError(f"weights must be a ({C},) tensor, got {weights!r:.80}")
        probabilities = probabilities.to(torch.float64)
        weights = weights.to(torch.float64)
        if bool((probabilities < 0).any()) or not torch.allclose(
            probabilities.sum(-1), torch.ones((), dtype=torch.float64)
        ):
            raise ValueError("probabilities must be non-negative with rows summing to 1")
        if bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        self.probabilities = probabilities.to(self.device)
        self.log_weights = torch.log(weights / weights.sum()).to(self.device)

    def distance_laws(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, C, D+1)`` float64 ``P_c(h(z, y) = h)`` for ``(n, D)`` int64 states ``z``."""
        n, D = z.shape
        C = self.probabilities.shape[0]
        index = z[:, None, :, None].expand(n, C, D, 1)
        differ = 1 - self.probabilities[None].expand(n, -1, -1, -1).gather(3, index).squeeze(3)  # (n, C, D)
        law = torch.zeros(n, C, D + 1, dtype=torch.float64, device=z.device)
        law[..., 0] = 1
        for d in range(D):
            p = differ[..., d : d + 1]
            law[..., 1 : d + 2] = law[..., 1 : d + 2] * (1 - p) + law[..., : d + 1] * p
            law[..., :1] *= 1 - p
        return law

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = torch.empty(z.shape[0], dtype=torch.float64, device=z.device)
        rows = max(1, 2**22 // (self.probabilities.shape[0] * (z.shape[1] + 1)))
        for start in range(0, z.shape[0], rows):
            stop = start + rows
            terms = torch.log(self.distance_laws(z[start:stop])) + self.log_weights[:, None]
            terms = terms + self.tables.log_kernel[layer[start:stop]][:, None, :]
            out[start:stop] = torch.logsumexp(terms.flatten(1), dim=1)
        return out
