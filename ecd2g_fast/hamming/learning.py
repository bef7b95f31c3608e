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

**Layer means.** The layer mean of ``rho_l`` is ``alpha*_{L-l}`` exactly, and a learned field must
keep it: a per-layer scale error of 0.1 in ``log rho`` already costs about 0.27 in TV at ``D = 12``
(docs/hamming.md §8). A uniform-state average is useless at large ``D`` (its value comes from
states it never draws); :func:`layer_mean_ratios` estimates it by importance sampling from the
data smoothed by the layer's kernel, ``pi_l(z) = rho^data_l(z) / (M alpha*_{L-l})``, a
distribution one draws exactly (:func:`smoothed_data_states`): ``E_{pi_l}[rho_l / rho^data_l]``
is the layer mean of ``rho_l`` over ``alpha*_{L-l}``, whatever the data set.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_choice, check_int
from .circuit import HammingCircuit
from .log_field import LogField, LogFieldTables
from .model import outlet_values_of_ratios
from .targets import distance_histograms

__all__ = [
    "KERNEL_QUERY_OPTIONS",
    "RATIO_EDGES",
    "SINK_LABELS",
    "BregmanLogLoss",
    "KernelQueries",
    "WalkQueries",
    "change_coordinates",
    "check_ratio_training",
    "check_sink_training",
    "layer_mean_ratios",
    "log_targets",
    "point_occupancy",
    "smoothed_data_pairs",
    "smoothed_data_states",
]

#: Where the scalar loss's ``e^u`` is continued linearly (its gradient capped at ``e^U_MAX``,
#: finite in float32).
U_MAX = 40.0

#: Edges per kernel query in the denoising ratio loss by default (:class:`KernelQueries`): each
#: costs one more network row per query.
RATIO_EDGES = 2

#: How :class:`BregmanLogLoss` trains a learned sink's head (:meth:`BregmanLogLoss.sink_terms`),
#: both at the kernel queries of layer ``L``: ``"posterior"``, the label ``[z = anchor]`` of each
#: query (1 with probability ``r(z)``: ``pi_L(0) = 0.08`` of them at ``D = 64``); ``"contrast"``,
#: each query (a draw of ``pi_L``, label 0) against its anchor (a clean sample, label 1), one more
#: network row per query. Both are minimised by the exact ``r``.
SINK_LABELS = ("posterior", "contrast")

#: The options of :class:`KernelQueries` a training configuration may set (``query_kwargs``).
KERNEL_QUERY_OPTIONS = (
    "walk_fraction",
    "correction_fraction",
    "stay_fraction",
    "edges",
    "last_layer_fraction",
)


def edge_terms(d: torch.Tensor, log_tau: torch.Tensor) -> torch.Tensor:
    """``e^d - tau d + tau (log tau - 1) >= 0`` elementwise (float64): the denoising ratio term of
    a model log-ratio ``d`` against an anchor's ratio ``tau = e^log_tau``, minimised in expectation
    at ``d = log E[tau]``; ``e^d`` is continued linearly beyond :data:`U_MAX`, as the scalar term's."""
    tau = torch.exp(log_tau)
    capped = d.clamp_max(U_MAX)
    return torch.exp(capped) * (1 + d - capped) - tau * d + tau * (log_tau - 1)


def log_targets(
    tables: LogFieldTables, layer: torch.Tensor, z: torch.Tensor, y: torch.Tensor, num_categories: int
) -> torch.Tensor:
    """``log t_layer(z)``: ``(Q,)`` float64 from ``(Q,)`` int64 layers, ``(Q, D)`` queries and a
    ``(B, D)`` batch of data samples (module docstring)."""
    counts = distance_histograms(z, y, num_categories)
    return torch.logsumexp(torch.log(counts) + tables.log_kernel[layer], dim=1) - math.log(y.shape[0])


class BregmanLogLoss:
    """Sum over the queries of ``e^u - u - 1``, ``u = log t - S`` (module docstring), plus, for
    :class:`KernelQueries`, ``ratio_weight`` times the denoising ratio loss of their edges and, for
    a network with ``sink="learned"``, the cross-entropy of its sink head on ``sink_labels``
    (:data:`SINK_LABELS`, :meth:`sink_terms`).

    The call has the trainer's loss signature (:class:`~ecd2g_fast.training.Trainer`); the source
    batch is not used: the Hamming model learns from uniform noise, whose term of the potentials
    vanishes.

    Args:
        circuit: the Hamming circuit.
        device: where the tables live.
        ratio_weight: weight of the denoising ratio term (kernel queries only).
        sink_labels: how a learned sink's head is trained (:data:`SINK_LABELS`).
        consistency_weight: weight of the edge-consistency term of a ratio head
            (:meth:`consistency_terms`); 0: none.
    """

    def __init__(
        self,
        circuit: HammingCircuit,
        device: torch.device | str = "cpu",
        ratio_weight: float = 1.0,
        sink_labels: str = "posterior",
        consistency_weight: float = 0.0,
    ) -> None:
        self.circuit = circuit
        self.tables = LogFieldTables(circuit, device)
        self.ratio_weight = ratio_weight
        self.consistency_weight = consistency_weight
        self.sink_labels = check_choice("sink_labels", sink_labels, SINK_LABELS)
        # log pi_L(0): the share of layer-L kernel queries that sit on their anchor
        self.log_stay = math.log(smoothed_distance_laws(self.tables, circuit.num_categories)[-1, 0].item())

    def targets(self, layer: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(Q,)`` float64 ``log t - log alpha*_{L-l}``: the target of the network's output ``f``."""
        logt = log_targets(self.tables, layer, z, y, self.circuit.num_categories)
        return logt - self.tables.log_norm[layer]

    def edge_states(
        self, layer: torch.Tensor, z: torch.Tensor, slot: torch.Tensor, forward: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The other end of each kernel query's edges: ``(Q, E)`` int64 layers ``l +- 1`` and
        ``(Q * E, D)`` int64 states (row ``q * E + e``)."""
        E = slot.shape[1]
        other = torch.where(forward, layer[:, None] + 1, layer[:, None] - 1)
        return other, self.circuit.apply_slot(z.repeat_interleave(E, 0), slot.reshape(-1))

    def ratio_terms(
        self,
        layer: torch.Tensor,
        z: torch.Tensor,
        anchor: torch.Tensor,
        other: torch.Tensor,
        w: torch.Tensor,
        f_here: torch.Tensor,
        f_there: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(Q,)`` float64 mean over each query's ``E`` edges of ``e^d - tau d + tau (log tau - 1)``,
        each edge's term times its importance ``weight`` ``(Q, E)`` (:class:`KernelQueries`) if given.

        ``d = S_{l'}(w) - S_l(z)`` is the model's log-ratio across the edge to ``w`` in layer ``l'``
        (:meth:`edge_states`; from ``f_here`` ``(Q,)`` and ``f_there`` ``(Q, E)``), and
        ``tau = Ã_{L-l'}(h(w, anchor)) / Ã_{L-l}(h(z, anchor))`` the anchor's ratio. Given ``z``, the
        anchor follows the posterior of :func:`smoothed_data_pairs`, so ``E[tau | z]`` is the exact
        ratio ``rho_{l'}(w) / rho_l(z)`` and the term is minimised there (docs/hamming.md §8).
        """
        n, E = other.shape
        h_here = (z != anchor).sum(1)
        h_there = (w != anchor.repeat_interleave(E, 0)).sum(1).view(n, E)
        kernel, norm = self.tables.log_kernel, self.tables.log_norm
        log_tau = kernel[other, h_there] - kernel[layer, h_here][:, None]
        d = norm[other] - norm[layer][:, None] + f_there - f_here[:, None]
        terms = edge_terms(d, log_tau)
        return (terms if weight is None else terms * weight).mean(1)

    def all_edge_ratio_terms(
        self,
        layer: torch.Tensor,
        z: torch.Tensor,
        anchor: torch.Tensor,
        log_ratios: torch.Tensor,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ratio term of :meth:`ratio_terms` over *every* edge of each query, for a network
        with a ratio head (:data:`~.model.HEADS`): ``(Q,)`` float64, the mean over the query's
        existing edges (``2 N``, ``N`` at layers 0 and ``L``), times its ``(Q,)`` ``weight`` if given.

        ``log_ratios`` ``(Q, 2, N)`` are the head's forward and backward ``g`` in slot order; the
        model's log-ratio is ``d = log alpha*_{L-l'} - log alpha*_{L-l} + g``. The anchor's distance
        to a neighbour in slot ``(c, v)`` is ``h(z, anchor) + [anchor_c = z_c] - [anchor_c = v]``. The
        mean over all edges is the expectation the sampled edges of :meth:`ratio_terms` estimate
        (uniform slots and directions), so the minimiser is again the exact ratio."""
        L, N = self.circuit.num_layers, self.circuit.num_neighbours
        h_here = (z != anchor).sum(1)
        coordinate, value = self.circuit.slot_changes(z, 1, N)
        a = anchor[:, coordinate]
        delta = (a == z[:, coordinate]).long() - (a == value).long()
        h_there = torch.cat([h_here[:, None], h_here[:, None] + delta], dim=1)  # (Q, N)
        kernel, norm = self.tables.log_kernel, self.tables.log_norm
        other = torch.stack([(layer + 1).clamp_max(L), (layer - 1).clamp_min(0)], dim=1)  # (Q, 2)
        log_tau = kernel[other[:, :, None], h_there[:, None, :]] - kernel[layer, h_here][:, None, None]
        d = (norm[other] - norm[layer][:, None])[:, :, None] + log_ratios.to(torch.float64)
        exists = torch.stack([layer < L, layer > 0], dim=1).to(torch.float64)  # (Q, 2)
        terms = (edge_terms(d, log_tau) * exists[:, :, None]).sum((1, 2)) / (N * exists.sum(1))
        return terms if weight is None else terms * weight

    @torch.no_grad()
    def model_edge_currents(
        self, layer: torch.Tensor, z: torch.Tensor, f: torch.Tensor, log_ratios: torch.Tensor
    ) -> torch.Tensor:
        """``(Q, 2N)`` float64: the positive parts of the out-currents (over ``rho_l(z)``,
        bidirectional, forward slots first; :meth:`~.log_field.LogFieldTables.edge_currents`) that
        the walk at each query would draw its move from, given a ratio head's ``f`` ``(Q,)`` and
        ``log_ratios`` ``(Q, 2, N)`` there. No gradient."""
        outlets = outlet_values_of_ratios(f.to(torch.float64), log_ratios.to(torch.float64))
        log_fields = self.tables.add_layer_norms(layer, *outlets)
        conductance = self.circuit.slot_conductances(z, 0, self.circuit.num_neighbours)
        return self.tables.edge_currents(layer, *log_fields, conductance).clamp_min(0)

    def consistency_terms(
        self,
        net: torch.nn.Module,
        layer: torch.Tensor,
        z: torch.Tensor,
        f: torch.Tensor,
        log_ratios: torch.Tensor,
        uniform: torch.Tensor,
    ) -> torch.Tensor:
        """``(Q,)`` float64 ``(d(z -> w) + d(w -> z))^2`` for a ratio head: the two ends' log-ratios
        across one edge of each query, 0 for every potential (and so for the exact field).

        The edge is drawn as the walk at ``z`` would take it: by inverse CDF at ``uniform`` ``(Q,)``
        in ``[0, 1)`` over the positive parts of the model's out-currents
        (:meth:`model_edge_currents`, from the head's ``f`` ``(Q,)`` and ``log_ratios``
        ``(Q, 2, N)`` at the queries; without gradient). The walk picks the largest
        of many noisy log-ratios, so where a vertex has many edges (``K = 17``) the ratios it takes
        are biased upwards against those the far ends give back. ``d(z -> w)`` is read from
        ``log_ratios`` (the layer normalisers cancel in the sum) and ``d(w -> z)`` from one more
        network row per query, at ``w`` (its one outlet back to ``z``,
        :meth:`~.model.LayerEncoding.edge_log_ratio`). 0 at a vertex without a positive
        out-current."""
        c = self.circuit
        L, N = c.num_layers, c.num_neighbours
        with torch.no_grad():
            cumulative = self.model_edge_currents(layer, z, f, log_ratios).cumsum(1)
            target = uniform.to(torch.float64)[:, None] * cumulative[:, -1:]
            drawn = torch.searchsorted(cumulative, target).squeeze(1).clamp_max(2 * N - 1)
        direction, slot = drawn // N, drawn % N
        there = torch.where(direction == 0, layer + 1, layer - 1).clamp(0, L)
        w = c.apply_slot(z, slot)
        # the module itself, not a DistributedDataParallel wrapper: one forward per step there;
        # both rows' gradients reach each parameter in the same backward
        far_end = getattr(net, "module", net)(there, w, edge=(1 - direction, c.reverse_slot(z, w)))[1]
        rows = torch.arange(z.shape[0], device=z.device)
        mismatch = log_ratios[rows, direction, slot].to(torch.float64) + far_end.to(torch.float64)
        # a vertex without a positive out-current (at layer L, all flows in: the walker leaves by
        # the sink) has no edge to tie
        return torch.where(cumulative[:, -1] > 0, mismatch.square(), 0.0)

    def __call__(
        self,
        net: torch.nn.Module,
        queries: tuple[torch.Tensor, ...],
        x: torch.Tensor | None,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """0-d float64 loss of ``net``'s output ``f`` (:class:`~.model.HammingNet`) on the ``(B, D)``
        data batch ``y``: over the queries ``(layer (Q,), z (Q, D))`` (:class:`WalkQueries`), or
        ``(layer, z, anchor, slot, forward[, weight])`` (:class:`KernelQueries`), with one network
        call for every state the loss reads.

        In float64: before training ``u`` reaches ``log(M / B)`` near the data (174 at ``K = 17``,
        ``D = 64``), past float32's ``exp`` (88); and ``e^u`` is continued linearly beyond
        :data:`U_MAX`, so the gradient the float32 network receives stays finite. That changes
        the minimiser only where the network is more than ``U_MAX`` nats below a target, which
        happens before it has reached the targets' scale."""
        layer, z = queries[:2]
        consistency = None
        base = getattr(net, "module", net)  # DDP or not
        learned_sink = getattr(base, "sink", "inflow") == "learned"
        ratio_head = getattr(base, "head_kind", "scalar") == "ratios"
        if len(queries) == 2:
            if learned_sink or ratio_head:
                which = "sink='learned'" if learned_sink else "head='ratios'"
                raise ValueError(f"a network with {which} trains on kernel queries (anchors)")
            f_here = net(layer, z).to(torch.float64)
            ratio = None
        else:
            anchor, slot, forward = queries[2:5]
            weight = queries[5] if len(queries) == 6 else None
            n = layer.shape[0]
            if ratio_head:  # every edge from the head at the query: no rows for the other ends
                rows, m = (layer, z), 0
            else:
                other, w = self.edge_states(layer, z, slot, forward)
                rows, m = (torch.cat([layer, other.reshape(-1)]), torch.cat([z, w])), other.numel()
            clean = None
            if learned_sink and self.sink_labels == "contrast":  # the layer-L queries' anchors
                clean = anchor[layer == self.circuit.num_layers]
                last_layer = layer.new_full((clean.shape[0],), self.circuit.num_layers)
                rows = torch.cat([rows[0], last_layer]), torch.cat([rows[1], clean])
            flags = {"sink_logit": True} if learned_sink else {}
            out = net(*rows, **flags, **({"ratios": True} if ratio_head else {}))
            f = (out[0] if isinstance(out, tuple) else out).to(torch.float64)
            logit = out[1] if learned_sink else None
            f_here = f[:n]
            if ratio_head:
                # the walk-fraction weight is one per query (the trainer refuses edge options)
                query_weight = None if weight is None else weight[:, 0]
                ratio = self.all_edge_ratio_terms(layer, z, anchor, out[-1][:n], query_weight)
                if self.consistency_weight > 0:
                    # the query's own uniform slot draws, which a ratio head leaves unused
                    N = self.circuit.num_neighbours
                    uniform = ((slot[:, 0] * N + slot[:, -1]).to(torch.float64) + 0.5) / N**2
                    consistency = self.consistency_terms(net, layer, z, f_here, out[-1][:n], uniform)
            else:
                f_there = f[n : n + m].view(other.shape)
                ratio = self.ratio_terms(layer, z, anchor, other, w, f_here, f_there, weight)
        u = self.targets(layer, z, y) - f_here
        # e^u continued linearly beyond U_MAX: the gradient 1 - e^u stays finite in float32 while
        # the untrained network is still far below the targets (u = 174 at K = 17, D = 64)
        capped = u.clamp_max(U_MAX)
        loss = torch.exp(capped) * (1 + u - capped) - u - 1
        if ratio is not None:
            loss = loss + self.ratio_weight * ratio
        if consistency is not None:
            loss = loss + self.consistency_weight * consistency
        if learned_sink:
            clean_logit = None if clean is None else logit[n + m :]
            loss = loss + self.sink_terms(layer, z, anchor, logit[:n], clean_logit)
        return loss.sum()

    def sink_terms(
        self,
        layer: torch.Tensor,
        z: torch.Tensor,
        anchor: torch.Tensor,
        logit: torch.Tensor,
        clean_logit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(Q,)`` float64 cross-entropy of the sink head at the queries of layer ``L`` (0
        elsewhere): of its ``logit`` ``(Q,)`` against the label ``[z = anchor]``; or, given the
        head's ``clean_logit`` ``(Q_L,)`` at the anchors of the ``Q_L`` queries of layer ``L``
        (``sink_labels="contrast"``), the contrast of query against anchor.

        **Posterior labels.** A kernel query ``z`` of layer ``L`` is drawn around its anchor ``y`` by ``Ã_0`` (its law is
        ``pi_L``), so given ``z`` the label is 1 with probability ``r(z) = q(z) Ã_0(0) / rho_L(z)``
        (the posterior of :func:`smoothed_data_pairs`), and the cross-entropy's minimiser is
        ``sigmoid(logit) = r(z)``: the exact sink (:data:`~.model.SINKS`). The edge weights of
        :class:`KernelQueries` do not change the law of ``z``, and its ``walk_fraction`` leaves
        the queries of layer ``L`` to ``pi_L``; walk queries would change it, and are refused for
        these networks (:func:`check_sink_training`).

        **Contrast.** The anchors follow ``q`` and the queries ``pi_L = rho_L / (M alpha*_0)``, so a
        classifier of the pair's two members, with logit ``g``, is minimised by the cross-entropy at
        ``g = log(q / pi_L) = log r - log pi_L(0)`` (``pi_L(0) = Ã_0(0) / (M alpha*_0)``, the
        query's chance to sit on its anchor). The head's ``g`` is ``log sigmoid(logit) - log
        pi_L(0)``, so the minimiser is again ``sigmoid(logit) = r``. Half of the labels are 1
        (against a share ``pi_L(0)`` of the posterior labels), and where the head's ``r`` is small
        a label 0 pulls its logit down by about ``r / pi_L(0)`` (against ``r``)."""
        last = layer == self.circuit.num_layers
        logit = logit.to(torch.float64)
        if clean_logit is None:
            label = (z == anchor).all(1).to(torch.float64)
            terms = torch.nn.functional.binary_cross_entropy_with_logits(logit, label, reduction="none")
            return torch.where(last, terms, 0.0)
        softplus, logsigmoid = torch.nn.functional.softplus, torch.nn.functional.logsigmoid
        g_query = logsigmoid(logit[last]) - self.log_stay
        g_clean = logsigmoid(clean_logit.to(torch.float64)) - self.log_stay
        # -log(1 - sigmoid(g)) at the query (label 0), -log sigmoid(g) at its anchor (label 1)
        terms = torch.zeros_like(logit)
        return terms.masked_scatter(last, softplus(g_query) + softplus(-g_clean))


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
    mass[0] = torch.softmax(log_sphere_sizes(D, K), dim=0)
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
        return layer, change_coordinates(anchor, distance, K, generator)


def change_coordinates(
    anchor: torch.Tensor, distance: torch.Tensor, num_categories: int, generator: torch.Generator
) -> torch.Tensor:
    """``(n, D)`` states at Hamming distance ``distance`` ``(n,)`` from ``anchor`` ``(n, D)``:
    that many coordinates, chosen uniformly, changed to a uniform other value."""
    n, D = anchor.shape
    device = anchor.device
    rank = torch.rand(n, D, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    shift = torch.randint(1, num_categories, (n, D), generator=generator, device=device)
    return torch.where(rank < distance[:, None], (anchor + shift) % num_categories, anchor)


def log_sphere_sizes(dim: int, num_categories: int) -> torch.Tensor:
    """``(D+1,)`` float64 ``log(C(D, h) (K-1)^h)``: the log number of states at distance ``h`` from one."""
    h = torch.arange(dim + 1, dtype=torch.float64)
    return (
        math.lgamma(dim + 1)
        - torch.lgamma(h + 1)
        - torch.lgamma(dim - h + 1)
        + h * math.log(num_categories - 1)
    )


def smoothed_distance_laws(tables: LogFieldTables, num_categories: int) -> torch.Tensor:
    """``(L+1, D+1)`` float64 on the tables' device: row ``l`` is the law of the distance from a
    draw of ``pi_l`` to the data sample it was drawn around,
    ``C(D, h) (K-1)^h Ã_{L-l}(h) / (M alpha*_{L-l})`` (module docstring)."""
    kernel = tables.log_kernel
    return torch.softmax(
        log_sphere_sizes(kernel.shape[1] - 1, num_categories).to(kernel.device) + kernel, dim=1
    )


def smoothed_data_pairs(
    tables: LogFieldTables,
    layer: torch.Tensor,
    data: torch.Tensor,
    num_categories: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, anchor)``: ``(n, D)`` states drawn from ``pi_l(z) = rho^data_l(z) / (M alpha*_{L-l})``,
    the data's field at layer ``l`` normalised (module docstring), and the data rows they were drawn
    around: a uniform row ``y`` of ``data``, a distance ``h`` with probability
    ``C(D, h) (K-1)^h Ã_{L-l}(h) / (M alpha*_{L-l})``, then ``h`` coordinates of ``y`` changed. The
    anchor given ``z`` is then distributed as ``q(y) Ã_{L-l}(h(z, y)) / rho_l(z)``: the posterior
    the denoising ratio loss needs.

    Args:
        tables: the circuit's :class:`LogFieldTables`.
        layer: ``(n,)`` int64 layers in ``[0, L]``; ``data``: ``(B, D)`` int64 samples;
        num_categories: ``K``; generator: on ``data``'s device.

    Returns:
        Two ``(n, D)`` int64 tensors on ``data``'s device.
    """
    K, B = num_categories, data.shape[0]
    device = data.device
    law = smoothed_distance_laws(tables, K).to(device)[layer]
    distance = torch.multinomial(law, 1, generator=generator).squeeze(1)
    anchor = data[torch.randint(0, B, (layer.shape[0],), generator=generator, device=device)]
    return change_coordinates(anchor, distance, K, generator), anchor


def smoothed_data_states(
    tables: LogFieldTables,
    layer: torch.Tensor,
    data: torch.Tensor,
    num_categories: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """The states of :func:`smoothed_data_pairs`: ``(n, D)`` draws of ``pi_l``."""
    return smoothed_data_pairs(tables, layer, data, num_categories, generator)[0]


class KernelQueries:
    """Queries of the denoising ratio loss: ``(layer, z, anchor, slot, forward[, weight])``.

    ``layer`` follows the layer marginal of :class:`WalkQueries` (where the walk spends its moves);
    with ``last_layer_fraction = c > 0`` it is ``L`` with probability ``c`` more (the queries a
    learned sink learns from, :meth:`BregmanLogLoss.sink_terms`; each layer's terms keep their
    minimiser, only the share of the network's attention changes).
    With ``walk_fraction = 0``, ``(z, anchor)`` come from :func:`smoothed_data_pairs`: ``z`` follows
    ``pi_l``. But ``pi_l`` sits far from the data even at layer ``L`` once ``D`` is large (its mean
    distance to the anchor is 20 at ``D = 64``, 84 at ``D = 256`` and 280 at ``D = 784`` for
    ``L = 64``), while the walk's last moves are near the data. With ``walk_fraction = a > 0`` the
    distance is drawn from ``(1 - a) pi_l(h) + a w_l(h)``, ``w_l`` the walk's occupancy at layer
    ``l`` (:func:`point_occupancy`), and the query's edges carry the importance weight
    ``pi_l(h) / ((1 - a) pi_l(h) + a w_l(h)) <= 1 / (1 - a)``. Given ``z``, the weighted ratio term
    is the posterior one times a factor of ``z`` alone, so its minimiser is still the exact ratio
    (docs/hamming.md §8). At layer ``L`` the queries keep ``pi_L`` (weight 1), so a learned sink
    learns from them (:meth:`BregmanLogLoss.sink_terms`).

    ``slot`` ``(n, E)`` are neighbour slots of ``z`` and ``forward`` ``(n, E)`` bool their
    direction: to layer ``l + 1`` or ``l - 1``, forced to the existing one at layers 0 and ``L``;
    ``E`` is ``edges``. A slot is uniform over the ``N`` slots; or, with probability
    ``correction_fraction = b``, one of the ``h`` corrections of ``z`` towards its anchor (a
    coordinate where they differ, set to the anchor's value; uniform if ``h = 0``): the edges with
    the large ratios that carry the walk's last moves, which a uniform slot finds with probability
    ``h / N`` only; or, with probability ``stay_fraction = s``, the stay slot 0 (the edge to the
    same state one layer on: the one a walker that never approaches the data keeps taking, found
    with probability ``1 / N`` otherwise). The edge then carries the importance weight
    ``(1/N) / ((1 - b' - s)/N + b' [slot corrects] / h + s [slot = 0]) <= 1 / (1 - b - s)``
    (``b' = b [h > 0]``): the expected loss, and so its minimiser, is that of uniform slots (the
    slot's law given ``(z, anchor)`` is undone edge by edge).

    Args:
        circuit: the Hamming circuit; ``tables``: its :class:`LogFieldTables` (computed if not given).
        walk_fraction: ``a`` in ``[0, 1)``.
        correction_fraction: ``b`` in ``[0, 1)``.
        stay_fraction: ``s`` in ``[0, 1)``, with ``b + s < 1``.
        edges: ``E >= 1``, edges per query (:data:`RATIO_EDGES` by default).
        last_layer_fraction: ``c`` in ``[0, 1)``.

    The ``weight`` ``(n, E)`` float64 is returned when ``a``, ``b`` or ``s`` is positive.
    """

    def __init__(
        self,
        circuit: HammingCircuit,
        tables: LogFieldTables | None = None,
        walk_fraction: float = 0.0,
        correction_fraction: float = 0.0,
        stay_fraction: float = 0.0,
        edges: int = RATIO_EDGES,
        last_layer_fraction: float = 0.0,
    ) -> None:
        self.edges = check_int("edges", edges, 1)
        fractions = {
            "walk_fraction": walk_fraction,
            "correction_fraction": correction_fraction,
            "stay_fraction": stay_fraction,
            "last_layer_fraction": last_layer_fraction,
        }
        for name, value in fractions.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if correction_fraction + stay_fraction >= 1:
            raise ValueError(
                "correction_fraction + stay_fraction must be below 1 (some slots stay uniform), got "
                f"{correction_fraction} + {stay_fraction}"
            )
        self.circuit, self.walk_fraction = circuit, walk_fraction
        self.correction_fraction, self.stay_fraction = correction_fraction, stay_fraction
        self.tables = tables or LogFieldTables(circuit)
        visits = point_occupancy(circuit, self.tables)
        self.layer_probabilities = visits.sum(1) / visits.sum()
        if last_layer_fraction > 0:
            self.layer_probabilities = (1 - last_layer_fraction) * self.layer_probabilities
            self.layer_probabilities[-1] += last_layer_fraction
        if walk_fraction > 0:
            kernel_law = smoothed_distance_laws(self.tables, circuit.num_categories).cpu()
            walk_law = visits / visits.sum(1, keepdim=True).clamp_min(1e-300)
            walk_law[-1] = kernel_law[-1]  # layer L keeps pi_L: a learned sink's labels need it
            self.distance_law = (1 - walk_fraction) * kernel_law + walk_fraction * walk_law
            self.weights = kernel_law / self.distance_law.clamp_min(1e-300)

    def __call__(
        self, data: torch.Tensor, num_queries: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        """``num_queries`` queries around the ``(B, D)`` samples ``data``, on its device."""
        c, device = self.circuit, data.device
        if self.layer_probabilities.device != device:
            self.layer_probabilities = self.layer_probabilities.to(device)
            self.tables = LogFieldTables(c, device)
            if self.walk_fraction > 0:
                self.distance_law, self.weights = self.distance_law.to(device), self.weights.to(device)
        n, L, E = num_queries, c.num_layers, self.edges
        layer = torch.multinomial(self.layer_probabilities, n, replacement=True, generator=generator)
        if self.walk_fraction == 0:
            z, anchor = smoothed_data_pairs(self.tables, layer, data, c.num_categories, generator)
        else:
            distance = torch.multinomial(self.distance_law[layer], 1, generator=generator).squeeze(1)
            anchor = data[torch.randint(0, data.shape[0], (n,), generator=generator, device=device)]
            z = change_coordinates(anchor, distance, c.num_categories, generator)
        slot = torch.randint(0, c.num_neighbours, (n, E), generator=generator, device=device)
        forward = torch.rand(n, E, generator=generator, device=device) < 0.5
        forward = (forward | (layer == 0)[:, None]) & (layer < L)[:, None]
        if self.walk_fraction == 0 and self.correction_fraction == 0 and self.stay_fraction == 0:
            return layer, z, anchor, slot, forward
        weight = torch.ones(n, E, dtype=torch.float64, device=device)
        if self.walk_fraction > 0:
            weight = weight * self.weights[layer, distance][:, None]
        if self.correction_fraction > 0 or self.stay_fraction > 0:
            slot, edge_weight = self._mixed_slots(z, anchor, slot, generator)
            weight = weight * edge_weight
        return layer, z, anchor, slot, forward, weight

    def _mixed_slots(
        self, z: torch.Tensor, anchor: torch.Tensor, slot: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``slot`` ``(n, E)`` with each entry replaced, with probability ``s``, by the stay slot and,
        with probability ``b``, by a correction of ``z`` towards ``anchor``; and the ``(n, E)``
        float64 importance weights (class docstring)."""
        (n, E), N, b, s = (
            slot.shape,
            self.circuit.num_neighbours,
            self.correction_fraction,
            self.stay_fraction,
        )
        device = z.device
        differs = z != anchor
        h = differs.sum(1, keepdim=True)
        # a uniform differing coordinate per edge: the largest of uniform keys over the differing ones
        keys = torch.rand(n, E, z.shape[1], generator=generator, device=device) * differs[:, None, :]
        coordinate = keys.argmax(2)
        correction = self.circuit.slot_of(z, coordinate, anchor.gather(1, coordinate))
        kind = torch.rand(n, E, generator=generator, device=device)
        slot = torch.where((kind >= s) & (kind < s + b) & (h > 0), correction, slot)
        slot = torch.where(kind < s, 0, slot)
        corrects = self.circuit.apply_slot(z.repeat_interleave(E, 0), slot.reshape(-1))
        corrects = ((corrects != anchor.repeat_interleave(E, 0)).sum(1).view(n, E) < h) & (h > 0)
        b = b * (h > 0)  # without a difference the corrections' share stays uniform
        density = (1 - b - s) / N + b * corrects / h.clamp_min(1) + s * (slot == 0)
        return slot, ((1 / N) / density).to(torch.float64)


def check_sink_training(sink: str, queries: str) -> None:
    """Raise ``ValueError`` unless a network with ``sink`` (:data:`~.model.SINKS`) can learn from
    ``queries`` (:data:`~ecd2g_fast.training.config.QUERIES`): the learned
    sink's labels (:meth:`BregmanLogLoss.sink_terms`, either :data:`SINK_LABELS`) need kernel
    queries, whose states follow ``pi_L`` at layer ``L`` (with or without ``walk_fraction``)."""
    if sink == "learned" and queries not in ("kernel", "kernel-walk"):
        raise ValueError(
            "a network with sink='learned' needs queries='kernel' or 'kernel-walk' (its labels need "
            f"query states drawn from the smoothed data at layer L), got queries={queries!r}"
        )


#: Kernel-query options that choose the sampled edges, which a ratio head does not use (it trains
#: on every edge of each query, :meth:`BregmanLogLoss.all_edge_ratio_terms`).
EDGE_QUERY_OPTIONS = ("correction_fraction", "stay_fraction", "edges")


def check_ratio_training(
    head: str, queries: str, query_kwargs: dict, consistency_weight: float = 0.0
) -> None:
    """Raise ``ValueError`` unless a network with ``head`` (:data:`~.model.HEADS`) can learn from
    ``queries`` with ``query_kwargs``: a ratio head needs kernel queries (its terms need their
    anchors) and takes none of :data:`EDGE_QUERY_OPTIONS` (it trains on every edge); a
    ``consistency_weight`` above 0 (:meth:`BregmanLogLoss.consistency_terms`) needs a ratio head."""
    if head != "ratios":
        if consistency_weight > 0:
            raise ValueError(
                f"consistency_weight={consistency_weight} ties the two ends of a ratio head's edges, "
                f"but the network has head={head!r} (one value per state): set it to 0"
            )
        return
    if queries not in ("kernel", "kernel-walk"):
        raise ValueError(
            f"a network with head='ratios' needs queries='kernel' or 'kernel-walk' (its ratio terms "
            f"need the queries' anchors), got queries={queries!r}"
        )
    chosen = sorted(set(query_kwargs) & set(EDGE_QUERY_OPTIONS))
    if chosen:
        raise ValueError(
            f"query_kwargs {chosen[0]!r} chooses edges, but a network with head='ratios' trains on "
            "every edge of each query: leave it out"
        )


@torch.no_grad()
def layer_mean_ratios(
    field: LogField,
    data: torch.Tensor,
    num_states: int = 1024,
    generator: torch.Generator | int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, ``log`` of the layer mean of ``field``'s ``rho_l`` over its exact value ``alpha*_{L-l}``.

    Importance sampling from ``pi_l`` of the data set ``data`` (module docstring): ``num_states``
    draws per layer, weighted by ``rho_l(z) / rho^data_l(z)`` (``rho^data`` exact, by
    :class:`~.log_field.DataLogField`). Unbiased for the ratio of means (its log is consistent);
    0 for a field whose layer means are tied to their closed-form values.

    Args:
        field: a :class:`~.log_field.LogField` (a learned one: :class:`~.model.HammingNetField`).
        data: ``(B, D)`` int64 samples of the target (e.g. training data); cost ``O(B D)`` per state.
        num_states: draws per layer.
        generator: a seed or a generator on ``field.device``.

    Returns:
        ``(L+1,)`` float64 estimates and ``(L+1,)`` float64 standard errors (delta method), CPU.
    """
    from .log_field import DataLogField

    circuit = field.circuit
    L, device = circuit.num_layers, field.device
    if isinstance(generator, int):
        generator = torch.Generator(device=device).manual_seed(generator)
    data = data.to(device)
    reference = DataLogField(circuit, data)
    estimates = torch.empty(L + 1, dtype=torch.float64)
    errors = torch.empty(L + 1, dtype=torch.float64)
    for l in range(L + 1):
        layer = torch.full((num_states,), l, dtype=torch.int64, device=device)
        z = smoothed_data_states(field.tables, layer, data, circuit.num_categories, generator)
        log_ratio = (field.log_field(layer, z) - reference.log_field(layer, z)).cpu()
        top = log_ratio.max()
        weights = torch.exp(log_ratio - top)
        mean = weights.mean()
        estimates[l] = torch.log(mean) + top
        errors[l] = weights.std() / (mean * math.sqrt(num_states))
    return estimates, errors
