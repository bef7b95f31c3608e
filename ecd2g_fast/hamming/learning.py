"""Learning a noise-to-data log-field on a Hamming circuit: targets, loss and queries.

**Targets.** For a batch ``y`` of ``B`` data samples, ``t_l(z) = (1/B) sum_b Ã_{L-l}(h(z, y_b))`` is
an unbiased estimate of ``rho_l(z)`` (:mod:`.log_field`); every sample contributes through its
distance. ``log t`` is computed from the per-query distance histogram (one-hot products,
:func:`~.targets.distance_histograms`) by a log-sum-exp over the ``D + 1`` distances, finite at any
``D``.

**Loss.** With ``u = log t - S`` (``S`` the field's log-value), the loss ``e^u - u - 1 >= 0`` has
gradient ``1 - t e^{-S}`` in ``S``, so its expectation over the noise of ``t`` is minimised at
``S = log E[t] = log rho``: the exact field. It is scale-free (only the ratio ``t / e^S`` enters)
and zero where ``S = log t``. A squared error on ``t`` itself would weight the states by their
density and be dominated by the largest targets; a squared error on ``log t`` is biased (its
minimiser is ``E[log t] < log E[t]``).

**Queries.** The targets are only needed where walkers go. :class:`WalkQueries` draws a layer and
a distance from the occupancy of the exact walk towards a single data point (the lumped chain
over ``(l, h)``, which that walk follows exactly), then a data sample and that many changed
coordinates; ``"uniform"`` queries draw layers and states uniformly (useless at large ``D``: a
uniform state is at distance about ``D (K-1)/K`` from every sample).
"""

from __future__ import annotations

import math

import torch

from .circuit import HammingCircuit
from .log_field import LogFieldTables
from .targets import distance_histograms

__all__ = ["BregmanLogLoss", "WalkQueries", "log_targets", "point_occupancy"]


def log_targets(
    tables: LogFieldTables, layer: torch.Tensor, z: torch.Tensor, y: torch.Tensor, num_categories: int
) -> torch.Tensor:
    """``log t_layer(z)``: ``(Q,)`` float64 from ``(Q,)`` int64 layers, ``(Q, D)`` queries and a
    ``(B, D)`` batch of data samples (module docstring)."""
    counts = distance_histograms(z, y, num_categories)
    return torch.logsumexp(torch.log(counts) + tables.log_kernel[layer], dim=1) - math.log(y.shape[0])


class BregmanLogLoss:
    """Sum over the queries of ``e^u - u - 1``, ``u = log t - S`` (module docstring).

    The call has the trainer's loss signature (:class:`~ecd2g_fast.training.Trainer`); the source
    batch is not used: the Hamming model learns from uniform noise, whose term of the potentials
    vanishes.

    Args:
        circuit: the Hamming circuit.
        device: where the tables live.
    """

    def __init__(self, circuit: HammingCircuit, device: torch.device | str = "cpu") -> None:
        self.circuit = circuit
        self.tables = LogFieldTables(circuit, device)

    def targets(self, layer: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(Q,)`` float32 ``log t - log alpha*_{L-l}``: the target of the network's output ``f``."""
        logt = log_targets(self.tables, layer, z, y, self.circuit.num_categories)
        return (logt - self.tables.log_norm[layer]).to(torch.float32)

    def __call__(
        self,
        net: torch.nn.Module,
        queries: tuple[torch.Tensor, torch.Tensor],
        x: torch.Tensor | None,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """0-d float32 sum over the queries ``(layer (Q,), z (Q, D))`` of the loss of ``net``'s
        output ``f`` (:class:`~.model.HammingNet`) on the ``(B, D)`` data batch ``y``."""
        layer, z = queries
        u = self.targets(layer, z, y) - net(layer, z)
        return (torch.exp(u) - u - 1).sum()


def point_occupancy(
    circuit: HammingCircuit, tables: LogFieldTables | None = None, tol: float = 1e-7
) -> torch.Tensor:
    """Expected visits of the exact walk from uniform noise to one data point, per layer and distance.

    The field of a single target point depends on ``z`` only through ``h = h(z, y0)``, and the walk
    on ``(l, h)`` is a chain: from ``(l, h)`` an edge to layer ``l' = l +- 1`` keeps ``h`` (the stay
    edge, and the ``h (K-2)`` changes of a wrong coordinate to another wrong value), lowers it (the
    ``h`` corrections) or raises it (the ``(D-h)(K-1)`` changes of a right coordinate). Mass starts
    at layer 0 with ``h ~ Binomial(D, (K-1)/K)`` and is propagated until less than ``tol`` is left.

    Returns:
        ``(L+1, D+1)`` float64 expected visits (CPU).
    """
    K, D, L = circuit.num_categories, circuit.dim, circuit.num_layers
    tables = tables or LogFieldTables(circuit)
    S = tables.log_kernel  # S_l(h) of a point target: log Ã_{L-l}(h)
    h = torch.arange(D + 1, dtype=torch.float64)
    # per destination class: (distance shift, multiplicity, conductance)
    classes = [(0, torch.ones_like(h), circuit.g), (-1, h, circuit.G), (0, h * (K - 2), circuit.G)]
    classes.append((1, (D - h) * (K - 1), circuit.G))

    def weights(tail: int, head: int, signed: bool = False) -> list[torch.Tensor]:
        """Per class, ``(D+1,)`` total out-weight from ``(tail, h)`` to ``(head, h + shift)``:
        positive parts (``signed``: the signed sum, for Kirchhoff's law at layer L)."""
        edge = min(tail, head)
        drift = tables.drift_terms(torch.full((D + 1,), edge), S[tail])
        drift = drift if head > tail else -drift
        out = []
        for shift, count, conductance in classes:
            target = (torch.arange(D + 1) + shift).clamp(0, D)
            w = conductance * (torch.expm1(S[head, target] - S[tail]) + drift)
            valid = (torch.arange(D + 1) + shift >= 0) & (torch.arange(D + 1) + shift <= D)
            out.append(torch.where(valid & (count > 0), (w if signed else w.clamp_min(0)) * count, 0.0))
        return out

    forward = [weights(l, l + 1) for l in range(L)]
    backward = [None] + [weights(l, l - 1) for l in range(1, L + 1)]
    # the sink is the net inflow (the exact field's: q / rho, nonzero only at h = 0)
    sink = (-torch.stack(weights(L, L - 1, signed=True)).sum(0)).clamp_min(0)
    total = torch.zeros(L + 1, D + 1, dtype=torch.float64)
    for l in range(L + 1):
        if l < L:
            total[l] += torch.stack(forward[l]).sum(0)
        if l > 0:
            total[l] += torch.stack(backward[l]).sum(0)
    total[L] += sink
    total = torch.where(total > 0, total, 1.0)
    mass = torch.zeros(L + 1, D + 1, dtype=torch.float64)
    k = torch.arange(D + 1, dtype=torch.float64)
    log_binomial = math.lgamma(D + 1) - torch.lgamma(k + 1) - torch.lgamma(D - k + 1)
    mass[0] = torch.softmax(log_binomial + k * math.log(K - 1), dim=0)
    visits = torch.zeros_like(mass)
    for _ in range(100 * (L + D) + 1000):
        visits += mass
        new = torch.zeros_like(mass)
        for l in range(L + 1):
            if l < L:
                for (shift, _, _), w in zip(classes, forward[l]):
                    moved = mass[l] * w / total[l]
                    new[l + 1] += _shifted(moved, shift)
            if l > 0:
                for (shift, _, _), w in zip(classes, backward[l]):
                    moved = mass[l] * w / total[l]
                    new[l - 1] += _shifted(moved, shift)
        mass = new
        if float(mass.sum()) < tol:
            break
    return visits


def _shifted(x: torch.Tensor, shift: int) -> torch.Tensor:
    """``x`` moved by ``shift`` positions along its last axis (entries pushed past the end vanish;
    the callers' weights are zero there)."""
    if shift == 0:
        return x
    out = torch.zeros_like(x)
    if shift > 0:
        out[shift:] = x[:-shift]
    else:
        out[:shift] = x[-shift:]
    return out


class WalkQueries:
    """Query states where walkers go: ``(l, h)`` from :func:`point_occupancy`, then a data sample
    with ``h`` coordinates changed (module docstring).

    Args:
        circuit: the Hamming circuit.
        tables: its :class:`LogFieldTables` (computed if not given).
    """

    def __init__(self, circuit: HammingCircuit, tables: LogFieldTables | None = None) -> None:
        self.circuit = circuit
        visits = point_occupancy(circuit, tables)
        self.probabilities = (visits / visits.sum()).reshape(-1)

    def __call__(
        self, data: torch.Tensor, num_queries: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(layer (Q,), z (Q, D))`` int64 queries around the ``(B, D)`` samples ``data``, on its
        device (``generator`` must be on that device)."""
        K, D = self.circuit.num_categories, self.circuit.dim
        device = data.device
        if self.probabilities.device != device:
            self.probabilities = self.probabilities.to(device)
        cell = torch.multinomial(self.probabilities, num_queries, replacement=True, generator=generator)
        layer, distance = cell // (D + 1), cell % (D + 1)
        anchor = data[torch.randint(0, data.shape[0], (num_queries,), generator=generator, device=device)]
        rank = torch.rand(num_queries, D, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
        shift = torch.randint(1, K, (num_queries, D), generator=generator, device=device)
        return layer, torch.where(rank < distance[:, None], (anchor + shift) % K, anchor)
