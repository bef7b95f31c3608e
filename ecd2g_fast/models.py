"""Learned fields: :class:`CurrentNet` (the paper's network) and :class:`PotentialNet` (docs/theory.md §6).

Each model is an ``nn.Module`` (parameters, ``forward`` on a batch of queries, the closed-form
scales of its regression targets) plus a small field adapter (``model.field()``) that
implements the :class:`~ecd2g_fast.fields.Field` interface, so a trained model plugs into
:func:`ecd2g_fast.sample` and :func:`ecd2g_fast.exact_output_distribution` unchanged.

**State encoding.** A state ``z`` (``(D,)`` int64 in ``[0, K)``) is encoded coordinate by
coordinate through a fixed ``(K, F)`` table and the ``D`` rows are concatenated (``D F`` features):

* ``"scaled"`` (default, ``F = 1``): ``2 z_d / (K - 1) - 1`` in ``[-1, 1]``. The exact potentials
  are smooth in the coordinates whenever the pmfs are, so a ReLU MLP on scaled coordinates
  interpolates between the states it has seen; this is what the 1D ``K = 50`` and 2D ``K x K``
  (``K ~ 32-64``) experiments use. The input size is ``D``, independent of ``K``.
* ``"onehot"`` (``F = K``): one indicator block per coordinate. No smoothness prior, for
  categorical data whose order means nothing; the first layer is then a sum of per-coordinate
  embeddings.

**Target scales (docs/theory.md §5, §7).** Physical currents span orders of magnitude across layers and
between the forward (``C = g``) and lateral (``C = G``) edges (``g / G = R / r = 1000`` in the
paper). Both networks regress dimensionless targets of order one, the targets of
:func:`~ecd2g_fast.current_targets` / :func:`~ecd2g_fast.potential_targets` with
``normalize=True``; the scales are the circuit's (:attr:`~ecd2g_fast.Circuit.log_sigma`,
:attr:`~ecd2g_fast.Circuit.log_tau`, computed in log space), kept in float64, and only the
normalised values are cast to float32:

* :class:`CurrentNet` outputs ``f(z, w, l) ~ I_l(z, w) / (C(z, w) sigma_l)`` with
  ``sigma_l = s + (a_l + b_l + a_{l+1} + b_{l+1}) / M``: the potential *drop* across the edge in
  units of its typical size (``s`` the uniform drop, ``a / M`` and ``b / M`` the size of the
  source and target terms of eq. 12 for pmfs of order ``1 / M``). Dividing by ``C`` makes the
  forward and lateral edges one smooth function of ``(z, w)``, so the rare diagonal queries
  (``w == z``, probability ``1 / M`` under uniform queries) are learned from their neighbours.
* :class:`PotentialNet` outputs two numbers per state, ``u(z) ~ M p(z) - 1`` and
  ``v(z) ~ M q(z) - 1`` (density ratios to the uniform pmf, minus one), and
  ``phi_l(z) = -l s + (a_l u(z) - b_l v(z)) / M``. This is eq. (12) exactly: the layer enters
  only through the closed-form coefficients, so the network needs no layer input and every query,
  whatever its layer, trains the same two functions. It regresses
  ``(phi_l(z) + l s) / tau_l = alpha_l u - beta_l v`` (``tau_l = (a_l + b_l) / M``) with
  ``alpha_l = a_l / (a_l + b_l)``, ``beta_l = b_l / (a_l + b_l)`` in ``[0, 1]``. Its potential
  table centres ``u`` and ``v`` (zero mean over the M states), so the table is the exact
  potential of the pmfs ``(1 + u) / M`` and ``(1 + v) / M``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from ._validation import check_choice, check_enumerable, check_int
from .circuit import Circuit
from .fields import Field, PotentialField, SinkCache, parameter_version

__all__ = ["ENCODINGS", "CurrentNet", "PotentialNet", "CurrentNetField", "PotentialNetField", "StateEncoding"]

ENCODINGS = ("scaled", "onehot")
#: Rows (walker x neighbour pairs) of one block of the pairwise network evaluation: bounds the
#: ``(rows, hidden)`` float32 activations to ``2**16 * 128 * 4`` bytes = 32 MiB per layer.
PAIR_BLOCK_ROWS = 2**16
#: On CUDA the blocks are this many times larger (2**18 rows, 128 MiB of float32 activations at
#: width 128): one block then covers 256 walkers x 1024 states, so a move of the 2D experiment's
#: CurrentNet sampling is a handful of large kernels instead of many launches.
CUDA_PAIR_BLOCK_FACTOR = 4
#: States encoded at once when tabulating a network over all M states.
STATE_BLOCK = 2**16


def _check_circuit(circuit: object) -> Circuit:
    if not isinstance(circuit, Circuit):
        raise TypeError(f"circuit must be an ecd2g_fast.Circuit, got {type(circuit).__name__}")
    return circuit


def _check_hidden(hidden: object) -> tuple[int, ...]:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or len(hidden) == 0:
        raise TypeError(f"hidden must be a non-empty sequence of ints, got {hidden!r}")
    return tuple(check_int("hidden[i]", h, 1) for h in hidden)


#: Largest encoding table a network builds (checked before it is allocated).
MAX_ENCODING_BYTES = 2**31


class StateEncoding(nn.Module):
    """Fixed per-coordinate encoding of ``(Q, D)`` int64 states into ``(Q, D F)`` float32 features.

    Args:
        num_categories: ``K``.
        dim: ``D``.
        kind: ``"scaled"`` (``F = 1``, ``2 z / (K - 1) - 1``) or ``"onehot"`` (``F = K``).

    Raises:
        ValueError: unknown ``kind``; a table larger than :data:`MAX_ENCODING_BYTES`.
    """

    def __init__(self, num_categories: int, dim: int, kind: str = "scaled") -> None:
        super().__init__()
        self.kind = check_choice("encoding", kind, ENCODINGS)
        K = num_categories
        table_bytes = 8 * K * (K if kind == "onehot" else 1)
        if table_bytes > MAX_ENCODING_BYTES:
            raise ValueError(
                f"encoding {kind!r} of num_categories = {K} needs a {table_bytes / 2**30:.3g} GiB table, more "
                f"than the {MAX_ENCODING_BYTES / 2**30:g} GiB allowed"
                + ("; use encoding='scaled'" if kind == "onehot" else "")
            )
        if kind == "scaled":
            table = (2.0 * torch.arange(K, dtype=torch.float64) / (K - 1) - 1.0).unsqueeze(1)
        else:
            table = torch.eye(K, dtype=torch.float64)
        self.register_buffer("table", table.to(torch.float32), persistent=False)
        self.dim = dim
        self.features = dim * table.shape[1]

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``(Q, D)`` int64 states in ``[0, K)`` -> ``(Q, D F)`` float32 features."""
        return self.table[states].flatten(1)


def _mlp_body(widths: Sequence[int], out_features: int) -> nn.Sequential:
    """``ReLU, Linear, ReLU, ..., Linear(widths[-1], out)``: everything after the first Linear."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.ReLU(), nn.Linear(a, b)]
    layers += [nn.ReLU(), nn.Linear(widths[-1], out_features)]
    return nn.Sequential(*layers)


def conductances(circuit: Circuit, same: torch.Tensor) -> torch.Tensor:
    """``C(z, w)`` as float64: ``g`` where ``same`` (``z == w``) else ``G``; the shape of ``same``."""
    # Not torch.where with Python floats (a float32 result) nor torch.tensor(g, device=...) (a
    # blocking host-to-device copy per call on CUDA, every training step).
    out = torch.full(same.shape, circuit.G, dtype=torch.float64, device=same.device)
    return out.masked_fill_(same, circuit.g)


def _float32_first_layer(like: torch.Tensor):
    """Disable autocast for the first Linear: in bf16, scaled coordinates ``2 z / (K-1) - 1`` of
    neighbouring states collide once ``K > 128`` (8-bit mantissa); the layer is tiny anyway."""
    return torch.autocast(like.device.type, enabled=False)


class CurrentNet(nn.Module):
    """The paper's current network ``f_theta(z, w, l) -> I_l(z, w)`` (Algorithm 1, Appendix B).

    An MLP (hidden sizes ``hidden``, ReLU) on ``[enc(z), enc(w), emb(l)]`` with ``emb`` an
    ``nn.Embedding(L, layer_embedding_dim)`` of the edge layer ``l in [0, L)``. Its scalar output is
    the normalised current ``I_l(z, w) / (C(z, w) sigma_l)`` (module docstring); :meth:`currents`
    undoes the scaling in float64.

    The first Linear is applied as three parts, ``W_z enc(z) + W_w enc(w) + W_l emb(l) + b``, so
    the field adapter computes the neighbour part once per chunk of states and broadcasts it over
    the walkers (:meth:`pairwise`).

    Args:
        circuit: the circuit whose currents are learned.
        hidden: hidden layer sizes; the paper's ``(128, 128, 128)``.
        encoding: ``"scaled"`` or ``"onehot"`` (module docstring).
        layer_embedding_dim: size of the layer embedding; the paper's 2.

    Raises:
        TypeError: ``circuit`` not a Circuit, ``hidden`` not a sequence of ints.
        ValueError: unknown ``encoding``, non-positive sizes.
    """

    kind = "current"

    def __init__(
        self,
        circuit: Circuit,
        hidden: Sequence[int] = (128, 128, 128),
        encoding: str = "scaled",
        layer_embedding_dim: int = 2,
    ) -> None:
        super().__init__()
        self.circuit = _check_circuit(circuit)
        self.hidden = _check_hidden(hidden)
        check_int("layer_embedding_dim", layer_embedding_dim, 1)
        c = circuit
        self.encoding = StateEncoding(c.num_categories, c.dim, encoding)
        self.layer_embedding = nn.Embedding(c.num_layers, layer_embedding_dim)
        F = self.encoding.features
        self.input = nn.Linear(2 * F + layer_embedding_dim, self.hidden[0])
        self.body = _mlp_body(self.hidden, 1)
        # sigma_l (docs/theory.md §5); 0.0 once M is beyond float64, where physical currents are 0.0 too
        self.register_buffer("sigma", torch.exp(c.log_sigma), persistent=False)

    def config(self) -> dict:
        """JSON-friendly constructor arguments (besides the circuit)."""
        return {
            "hidden": list(self.hidden),
            "encoding": self.encoding.kind,
            "layer_embedding_dim": self.layer_embedding.embedding_dim,
        }

    # ------------------------------------------------------------------ network
    def forward(self, layer: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Normalised currents of a batch of edges.

        Args:
            layer: ``(Q,)`` int64 edge layers in ``[0, L)``.
            z: ``(Q, D)`` int64 tail states (layer ``l``), in ``[0, K)``.
            w: ``(Q, D)`` int64 head states (layer ``l + 1``).

        Returns:
            ``(Q,)`` float32 ``f(z, w, l) ~ I_l(z, w) / (C(z, w) sigma_l)`` (the autocast dtype
            under autocast, which applies to the hidden layers only: the first Linear always runs
            in float32).
        """
        with _float32_first_layer(z):
            h = self.input(
                torch.cat([self.encoding(z), self.encoding(w), self.layer_embedding(layer)], dim=1)
            )
        return self.body(h).squeeze(-1)

    def scale(self, layer: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(Q,)`` float64 ``C(z, w) sigma_l`` for ``(Q,)`` layers and ``(Q, D)`` states: the factor
        from the network's output (and ``current_targets(..., normalize=True)``) to physical
        currents; ``exp(circuit.log_current_scale(layer, z, w))`` without the checks."""
        return self.sigma[layer] * conductances(self.circuit, (z == w).all(dim=1))

    @torch.no_grad()
    def currents(self, layer: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Physical currents ``I_l(z, w)``: ``(Q,)`` int64 layers, ``(Q, D)`` states -> ``(Q,)`` float64."""
        return self(layer, z, w).to(torch.float64) * self.scale(layer, z, w)

    @torch.no_grad()
    def pairwise(
        self,
        layer: torch.Tensor,
        walkers: torch.Tensor,
        states: torch.Tensor,
        walker_is_tail: bool,
        amp: bool = False,
    ) -> torch.Tensor:
        """Normalised output for every (walker, state) pair, sharing the first layer's state part.

        With ``walker_is_tail`` the edge is ``(layer, walker) -> (layer + 1, state)``, otherwise
        ``(layer, state) -> (layer + 1, walker)``. Memory is bounded by :data:`PAIR_BLOCK_ROWS`
        (times :data:`CUDA_PAIR_BLOCK_FACTOR` on CUDA) rows of activations whatever ``B x S``.

        Args:
            layer: ``(B,)`` int64 edge layers in ``[0, L)``.
            walkers: ``(B, D)`` int64 states.
            states: ``(S, D)`` int64 states.
            walker_is_tail: which end of the edge the walker is.
            amp: run the hidden layers under CUDA bf16 autocast (as training does on CUDA); the
                first layer and the output stay float32.

        Returns:
            ``(B, S)`` float32 normalised currents (multiply by :meth:`scale` for physical ones).
        """
        F = self.encoding.features
        weight = self.input.weight
        w_tail, w_head, w_layer = weight[:, :F], weight[:, F : 2 * F], weight[:, 2 * F :]
        w_walker, w_state = (w_tail, w_head) if walker_is_tail else (w_head, w_tail)
        walker_part = torch.addmm(self.input.bias, self.encoding(walkers), w_walker.t())
        walker_part = walker_part + self.layer_embedding(layer) @ w_layer.t()  # (B, H)
        state_part = self.encoding(states) @ w_state.t()  # (S, H), once for all walkers
        B, S = walker_part.shape[0], state_part.shape[0]
        out = torch.empty((B, S), dtype=torch.float32, device=walker_part.device)
        block = PAIR_BLOCK_ROWS * (CUDA_PAIR_BLOCK_FACTOR if walker_part.is_cuda else 1)
        cols = min(S, block) if S else 1
        rows = max(1, block // cols)
        hidden_layers = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with hidden_layers:
            for j in range(0, S, cols):
                sp = state_part[j : j + cols]
                for i in range(0, B, rows):
                    h = walker_part[i : i + rows, None, :] + sp[None, :, :]
                    out[i : i + rows, j : j + cols] = self.body(h).squeeze(-1)
        return out

    def field(self, *, amp: bool | None = None) -> CurrentNetField:
        """The :class:`~ecd2g_fast.fields.Field` view of this network (shares its parameters)."""
        return CurrentNetField(self, amp=amp)


class CurrentNetField(Field):
    """Field adapter of a :class:`CurrentNet` (not a potential field: cycles are possible).

    Currents are float64 physical values, evaluated without gradients in float32 and rescaled in
    float64 (with ``amp``, the hidden layers in bf16 as in training on CUDA). ``sink_currents``
    sums ``I_{L-1}(w, z)`` over all ``w`` (docs/theory.md §4, clipped at 0) and caches the result
    per state (:class:`~ecd2g_fast.fields.SinkCache`); the cache is dropped automatically when the
    network's parameters change (:func:`parameter_version`) or explicitly by :meth:`refresh`.
    ``bytes_per_pair`` is 64: the network's activations are bounded by :data:`PAIR_BLOCK_ROWS`
    blocks whatever the chunk, so a pair holds only its float32 output and the float64 currents.

    Args:
        net: the network; the field follows its device and current weights.
        amp: evaluate the hidden layers under bf16 autocast on CUDA (``None``, the default, or
            ``True``); ``False``: float32. CPU evaluation is always float32.
            Every move evaluates the network against all ``M`` neighbour states, so this is
            where CurrentNet sampling spends its time.
    """

    acyclic = False
    bytes_per_pair = 64

    def __init__(self, net: CurrentNet, *, amp: bool | None = None) -> None:
        if not isinstance(net, CurrentNet):
            raise TypeError(f"net must be a CurrentNet, got {type(net).__name__}")
        if amp is not None and not isinstance(amp, bool):
            raise TypeError(f"amp must be a bool or None, got {type(amp).__name__}")
        super().__init__(net.circuit)
        self.net = net
        self.amp = amp
        self._sink = SinkCache()

    @property
    def device(self) -> torch.device:
        return self.net.sigma.device

    def refresh(self) -> None:
        """Drop the cached sink currents."""
        self._sink.clear()

    def _edge_currents(
        self, edge_layer, walkers, start: int, stop: int, walker_is_tail: bool
    ) -> torch.Tensor:
        c = self.circuit
        flat = torch.arange(start, stop, device=walkers.device)
        amp = self.amp is not False and walkers.device.type == "cuda"
        out = self.net.pairwise(edge_layer, c.unflatten(walkers), c.unflatten(flat), walker_is_tail, amp)
        conductance = conductances(c, walkers[:, None] == flat[None, :])
        return out.to(torch.float64) * (self.net.sigma[edge_layer][:, None] * conductance)

    def currents_to_next(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop-start)`` float64 ``I_layer(z, w)``; ``layer``, ``z`` ``(B,)`` int64, layer in ``[0, L)``."""
        return self._edge_currents(layer, z, start, stop, walker_is_tail=True)

    def currents_from_prev(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, stop-start)`` float64 ``I_{layer-1}(w, z)``; layer in ``[1, L]``."""
        return self._edge_currents(layer - 1, z, start, stop, walker_is_tail=False)

    def sink_currents(self, z: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 ``max(sum_w I_{L-1}(w, z), 0)`` for ``(B,)`` int64 flat states ``z``."""
        return self._sink.lookup(self, z, parameter_version(self.net), self._inflow)

    def _inflow(self, states: torch.Tensor) -> torch.Tensor:
        """``(n,)`` float64 ``sum_w I_{L-1}(w, z)`` over all ``M`` states ``w``."""
        M = self.circuit.num_states
        total = torch.zeros(states.shape[0], dtype=torch.float64, device=states.device)
        edge_layer = torch.full_like(states, self.circuit.num_layers - 1)
        chunk = max(1, min(M, PAIR_BLOCK_ROWS * 4 // max(states.shape[0], 1)))
        for start in range(0, M, chunk):
            stop = min(start + chunk, M)
            total += self._edge_currents(edge_layer, states, start, stop, walker_is_tail=False).sum(1)
        return total


class PotentialNet(nn.Module):
    """Potential network ``f_theta(z) -> (u(z), v(z))`` with ``phi_l(z) = -l s + (a_l u - b_l v) / M``.

    ``u ~ M p - 1`` and ``v ~ M q - 1`` (docs/theory.md §6: the potential network is a pair of density
    estimators; the layer enters through the closed-form ``a_l``, ``b_l``, ``s`` of eq. 12, which is
    exact for every pair of pmfs, so the network takes no layer input). An MLP with hidden sizes
    ``hidden`` and ReLU on ``enc(z)``, two outputs.

    Args:
        circuit: the circuit.
        hidden: hidden layer sizes (default ``(128, 128, 128)``, as :class:`CurrentNet`).
        encoding: ``"scaled"`` or ``"onehot"``.

    Raises:
        TypeError, ValueError: as :class:`CurrentNet`.
    """

    kind = "potential"

    def __init__(
        self, circuit: Circuit, hidden: Sequence[int] = (128, 128, 128), encoding: str = "scaled"
    ) -> None:
        super().__init__()
        self.circuit = _check_circuit(circuit)
        self.hidden = _check_hidden(hidden)
        c = circuit
        self.encoding = StateEncoding(c.num_categories, c.dim, encoding)
        self.input = nn.Linear(self.encoding.features, self.hidden[0])
        self.body = _mlp_body(self.hidden, 2)
        self.register_buffer("alpha", torch.exp(c.log_alpha).to(torch.float32), persistent=False)
        self.register_buffer("beta", torch.exp(c.log_beta).to(torch.float32), persistent=False)
        self.register_buffer("a_over_m", torch.exp(c.log_a - c.log_num_states), persistent=False)
        self.register_buffer("b_over_m", torch.exp(c.log_b - c.log_num_states), persistent=False)

    def config(self) -> dict:
        """JSON-friendly constructor arguments (besides the circuit)."""
        return {"hidden": list(self.hidden), "encoding": self.encoding.kind}

    def densities(self, z: torch.Tensor) -> torch.Tensor:
        """``(Q, D)`` int64 states -> ``(Q, 2)`` float32 ``(u, v) ~ (M p(z) - 1, M q(z) - 1)``."""
        with _float32_first_layer(z):
            h = self.input(self.encoding(z))
        return self.body(h)

    def forward(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Normalised potentials ``alpha_l u(z) - beta_l v(z)``.

        Args:
            layer: ``(Q,)`` int64 layers in ``[0, L]``.
            z: ``(Q, D)`` int64 states in ``[0, K)``.

        Returns:
            ``(Q,)`` float32 ``~ (phi_l(z) + l s) / tau_l`` (``potential_targets(...,
            normalize=True)``; ``tau_l = exp(circuit.log_potential_scale(layer))``).
        """
        uv = self.densities(z)
        return self.alpha[layer].to(uv.dtype) * uv[:, 0] - self.beta[layer].to(uv.dtype) * uv[:, 1]

    @torch.no_grad()
    def potentials(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Physical potentials (gauge ``c = 0``, uncentred ``u``, ``v``): ``(Q,)`` -> ``(Q,)`` float64."""
        uv = self.densities(z).to(torch.float64)
        return (
            -layer.to(torch.float64) * self.circuit.s
            + self.a_over_m[layer] * uv[:, 0]
            - self.b_over_m[layer] * uv[:, 1]
        )

    @torch.no_grad()
    def density_table(self) -> torch.Tensor:
        """``(2, M)`` float64 centred ``(u, v)`` over all states (``M <= 2**24``)."""
        c = self.circuit
        check_enumerable("PotentialNet.density_table", c.num_states)
        dev = self.a_over_m.device
        out = torch.empty((2, c.num_states), dtype=torch.float64, device=dev)
        for start in range(0, c.num_states, STATE_BLOCK):
            flat = torch.arange(start, min(start + STATE_BLOCK, c.num_states), device=dev)
            out[:, start : start + flat.shape[0]] = self.densities(c.unflatten(flat)).t().to(torch.float64)
        return out - out.mean(dim=1, keepdim=True)

    def field(self) -> PotentialNetField:
        """The :class:`~ecd2g_fast.fields.PotentialField` view of this network."""
        return PotentialNetField(self)


class PotentialNetField(PotentialField):
    """Potential-field adapter of a :class:`PotentialNet`: the ``(L+1, M)`` table computed once.

    The network's outputs read as density estimates ``p_hat = (1 + u_c) / M`` and
    ``q_hat = (1 + v_c) / M`` (``u_c``, ``v_c`` centred). Nothing keeps them non-negative, and
    where ``p_hat(z) < 0`` the vertex ``(0, z)`` is a net sink of current: a walker reaching it may
    find no positive outflow. The field therefore projects both onto pmfs (clip at 0, renormalise)
    and is the exact field of the projected pair, ``phi_l = -l s + a_l (p_hat - 1/M) - b_l (q_hat -
    1/M)``: Kirchhoff's law then gives every vertex that carries current a positive outflow, so the
    walk never gets stuck. Where nothing is clipped this equals the unprojected potentials.
    :meth:`clipped_mass` reports how much was clipped. The table is recomputed automatically when
    the network's parameters change, or after :meth:`refresh`.

    Args:
        net: the network.
    """

    def __init__(self, net: PotentialNet) -> None:
        if not isinstance(net, PotentialNet):
            raise TypeError(f"net must be a PotentialNet, got {type(net).__name__}")
        super().__init__(net.circuit)
        self.net = net
        self._version: tuple | None = None

    @property
    def device(self) -> torch.device:
        return self.net.a_over_m.device

    def potential_table(self) -> torch.Tensor:
        """Cached ``(L+1, M)`` float64 potential table (rebuilt when the weights change)."""
        version = parameter_version(self.net)
        if version != self._version:
            self._table, self._version = None, version
        return super().potential_table()

    def raw_densities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unprojected ``(p_hat, q_hat)``, each ``(M,)`` float64 summing to 1 (may be negative)."""
        M = self.circuit.num_states
        u, v = self.net.density_table()
        return (1.0 + u) / M, (1.0 + v) / M

    def densities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected ``(p_hat, q_hat)``: ``(M,)`` float64 pmfs (non-negative, sum 1)."""
        projected = []
        for pmf in self.raw_densities():
            pmf = pmf.clamp_min(0.0)
            projected.append(pmf / pmf.sum())
        return projected[0], projected[1]

    def clipped_mass(self) -> tuple[float, float]:
        """Total negative mass of the unprojected ``p_hat`` and ``q_hat`` (0.0 when valid)."""
        return tuple(abs(float(pmf.clamp_max(0.0).sum())) for pmf in self.raw_densities())  # type: ignore[return-value]

    def compute_potential_table(self) -> torch.Tensor:
        return self.circuit.potential_table(*self.densities())
