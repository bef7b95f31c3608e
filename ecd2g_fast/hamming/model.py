""":class:`HammingNet`: a learned noise-to-data log-field for Hamming circuits of any dimension.

The network outputs ``f(l, z)`` and the field is ``S_l(z) = log alpha*_{L-l} + f(l, z)``
(:mod:`.log_field`): the per-layer normaliser, which spans hundreds of nats across layers at large
``D``, stays outside the network, so ``f`` is of order one and ``f = 0`` (the initial output) is
the uniform field of the layer mean. It is trained on the Monte-Carlo targets ``t`` of ``rho_l(z)``
with a scale-free loss whose minimiser is ``log E[t]`` (:class:`~.learning.BregmanLogLoss`).

**Architecture.** The input is a sum of per-coordinate embeddings, ``sum_c E[c, z_c]``, plus a
layer embedding; a stack of pre-norm residual MLP blocks (LayerNorm, Linear, SiLU, Linear) and a
linear head follow. The sum makes the neighbours cheap: a state one coordinate away from ``z``
differs by ``E[c, v] - E[c, z_c]``, so the inputs of a walker and of its ``2 (1 + D (K-1))``
neighbours in the two adjacent layers cost ``O(width)`` each, and one batched body evaluation per
move gives every value the walk needs (:meth:`HammingNet.outlet_values`), with the same value for a
state whichever walker asks: both ends of an edge see one current.

**The ratio head** (``head="ratios"``, :data:`HEADS`; the recipe's) reads the log-ratios of all a
vertex's edges off a second linear head at the vertex itself: one row per walker and move, the
steep ratios near the data as direct outputs, at the price of that consistency.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_choice, check_int
from .circuit import HammingCircuit, check_hamming_circuit
from .log_field import LogField, LogFieldTables

__all__ = ["HammingNet", "HammingNetField"]

#: float32 activations of one body evaluation in :meth:`HammingNet.outlet_values` (rows x width):
#: 2**24 floats = 64 MiB per block.
_MAX_ACTIVATIONS = 2**24


#: How :class:`HammingNet` sees the layer: ``"embedding"``, a free vector per layer;
#: ``"smooth"``, a linear map of Fourier features of two smooth layer coordinates
#: (:func:`smooth_layer_features`), so neighbouring layers get nearby inputs.
LAYER_ENCODINGS = ("embedding", "smooth")

#: Frequencies per coordinate of the smooth layer features.
_LAYER_FREQUENCIES = 8

#: How a Hamming network's output is scaled per layer: ``"none"``; ``"sharpness"``, times
#: ``lambda_l / lambda_L`` (:func:`layer_sharpness`). The exact log-field varies on the scale of
#: ``lambda_l``, which grows 200-fold from layer 0 to ``L`` at ``D = 64``: with the gain the body
#: works on one output scale at every layer instead of learning that growth (as a diffusion
#: model's output is scaled by its noise level).
OUTPUT_SCALES = ("none", "sharpness")

#: Where a Hamming network's walkers leave the circuit at layer ``L``. ``"inflow"``: the learned
#: field's net inflow into ``(L, z)`` (Kirchhoff's law). It is a small difference of large
#: currents, so a field a little flatter than the exact one lets walkers exit at noise states
#: (docs/hamming.md §8). ``"learned"``: a second linear head on the body's last hidden state at
#: ``(L, z)`` gives the logit of ``r(z)``, the posterior probability that a state of layer ``L`` is
#: a clean data sample, and the sink current over ``rho_L(z)`` is ``r(z) / Ã_0(0)``
#: (:meth:`HammingNetField.learned_sink`); :class:`~.learning.BregmanLogLoss` trains the head.
SINKS = ("inflow", "learned")

#: How a Hamming network gives the walk the field at a vertex's neighbours. ``"scalar"``: the one
#: output ``f`` evaluated again at each of the ``2 N`` neighbour states (consistent: both ends of
#: an edge see one value). ``"ratios"``: a second linear head on the body's last hidden state at
#: ``(l, z)`` outputs the log-ratio ``S_{l+-1}(w) - S_l(z)`` (less its closed-form layer part) of
#: every outlet ``w`` at once, a ``(2, D, K)`` grid of coordinate changes plus the two stay edges:
#: one network row per walker and move instead of ``2 N + 1``, and the steep rises of the field
#: near the data (several nats per coordinate at layer ``L``) are read off directly instead of
#: as differences of a scalar function (:class:`~.learning.BregmanLogLoss` trains the head on
#: every edge of each query). The two ends of an edge no longer share one value.
HEADS = ("scalar", "ratios")


def outlet_values_of_ratios(
    f: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(f, f + g_forward, f + g_backward)``: the ``outlet_values`` form ``(B,)``, ``(B, N)``,
    ``(B, N)`` of a ratio head's ``(B,)`` output ``f`` and ``(B, 2, N)`` log-ratios ``g``, so that the
    difference of a neighbour's value and the vertex's is the head's log-ratio."""
    return f, f[:, None] + g[:, 0], f[:, None] + g[:, 1]


def layer_sharpness(circuit: HammingCircuit) -> torch.Tensor:
    """``(L+1,)`` float64 ``lambda_l = log Ã_{L-l}(0) - log Ã_{L-l}(1)``: how much one changed
    coordinate costs at layer ``l`` (increasing in ``l``, fastest near layer ``L``)."""
    log_kernel = LogFieldTables(circuit).log_kernel
    return log_kernel[:, 0] - log_kernel[:, 1]


def smooth_layer_features(circuit: HammingCircuit) -> torch.Tensor:
    """``(L+1, 4 F)`` float32 features of the layers: ``cos`` and ``sin`` of ``pi k u`` for
    ``k = 1..F`` and two coordinates ``u`` in ``[0, 1]``: the depth ``l / L`` and the kernel's
    sharpness ``lambda_l / lambda_L``, ``lambda_l = log Ã_{L-l}(0) - log Ã_{L-l}(1)`` (how much a
    changed coordinate costs at layer ``l``; it grows fastest near layer ``L``)."""
    L = circuit.num_layers
    sharpness = layer_sharpness(circuit)
    sharpness = (sharpness - sharpness.min()) / (sharpness.max() - sharpness.min()).clamp_min(1e-300)
    coordinates = torch.stack([torch.arange(L + 1, dtype=torch.float64) / L, sharpness], dim=1)
    angles = math.pi * coordinates[:, :, None] * torch.arange(1, _LAYER_FREQUENCIES + 1, dtype=torch.float64)
    return torch.cat([angles.cos(), angles.sin()], dim=1).flatten(1).to(torch.float32)


class ResidualBlock(nn.Module):
    """``x + W2 silu(W1 LayerNorm(x))``, width ``width``, hidden ``expansion * width``."""

    def __init__(self, width: int, expansion: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, expansion * width)
        self.outer = nn.Linear(expansion * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(nn.functional.silu(self.inner(self.norm(x))))


def check_layer_encoding(layer_encoding: object) -> str:
    """``layer_encoding`` if it is one of :data:`LAYER_ENCODINGS`; else ValueError naming it."""
    return check_choice("layer_encoding", layer_encoding, LAYER_ENCODINGS)


def output_head(width: int) -> tuple[nn.LayerNorm, nn.Linear]:
    """The final LayerNorm and the linear head ``width -> 1``, zero-initialised: the untrained
    network outputs ``f = 0``, the uniform field of the layer mean."""
    head = nn.Linear(width, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.LayerNorm(width), head


class LayerEncoding:
    """The layer input, output gain and sink head of a Hamming log-field network (a mixin of an
    ``nn.Module``): with ``"embedding"`` a free vector per layer (``layer_embedding``), with
    ``"smooth"`` a linear map (``layer_input``) of :func:`smooth_layer_features` (the buffer
    ``layer_features``); the body's output is multiplied by the buffer ``layer_gain``
    (:data:`OUTPUT_SCALES`); with ``sink="learned"`` a second head ``sink_head`` (:data:`SINKS`)."""

    def init_layer_encoding(
        self, circuit: HammingCircuit, width: int, layer_encoding: str, output_scale: str = "none"
    ) -> None:
        """Check ``layer_encoding`` (:func:`check_layer_encoding`) and ``output_scale``, and register
        the layer input and the output gain."""
        self.layer_encoding = check_layer_encoding(layer_encoding)
        self.output_scale = check_choice("output_scale", output_scale, OUTPUT_SCALES)
        gain = torch.ones(circuit.num_layers + 1)
        if output_scale == "sharpness":
            sharpness = layer_sharpness(circuit)
            gain = (sharpness / sharpness[-1]).to(torch.float32)
        self.register_buffer("layer_gain", gain, persistent=False)
        if layer_encoding == "embedding":
            self.layer_embedding = nn.Embedding(circuit.num_layers + 1, width)
        else:
            features = smooth_layer_features(circuit)
            self.register_buffer("layer_features", features, persistent=False)
            self.layer_input = nn.Linear(features.shape[1], width)

    def init_ratio_head(self, width: int, head: str, per_token: bool = False) -> None:
        """Check ``head`` (:data:`HEADS`) and, for ``"ratios"``, register the zero-initialised
        ``ratio_head`` (the untrained log-ratios are those of the uniform field of the layer mean):
        ``width -> 2 (1 + D K)`` on the last hidden state; with ``per_token`` (a body with one
        hidden state per coordinate) ``width -> 2`` for the stay edges and ``token_ratio_head``,
        ``width -> 2 K`` on each coordinate's state. Called after :meth:`init_sink`, for the same
        reason."""
        self.head_kind = check_choice("head", head, HEADS)
        if head != "ratios":
            return
        D, K = self.circuit.dim, self.circuit.num_categories
        self.ratio_head = nn.Linear(width, 2 if per_token else 2 * (1 + D * K))
        heads = [self.ratio_head]
        if per_token:
            self.token_ratio_head = nn.Linear(width, 2 * K)
            heads.append(self.token_ratio_head)
        for linear in heads:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def slot_log_ratios(
        self, hidden: torch.Tensor, layer: torch.Tensor, z: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(n, 2, N)`` float32 learned log-ratios ``g`` of the forward (``[:, 0]``) and backward
        (``[:, 1]``) outlets of ``(n, D)`` states ``z`` at ``(n,)`` layers in slot order, from their
        ``(n, width)`` last hidden states (and, for a per-token head, the ``(n, D, width)`` token
        states): the model's ``S_{l+-1}(w) - S_l(z)`` is ``log alpha*_{L-l'} - log alpha*_{L-l} + g``
        (:data:`HEADS`). With ``output_scale="sharpness"`` each direction's head output is
        multiplied by the gain of the layer it leads to (:data:`OUTPUT_SCALES`): one changed
        coordinate's ratio is then of order one in the head's units at every layer."""
        D, K, N, L = (
            self.circuit.dim,
            self.circuit.num_categories,
            self.circuit.num_neighbours,
            self.circuit.num_layers,
        )
        n = z.shape[0]
        raw = self.ratio_head(hidden)
        if tokens is None:
            stay, grid = raw[:, :2], raw[:, 2:].view(n, 2, D * K)
        else:  # (n, D, 2, K) -> (n, 2, D K)
            stay = raw
            grid = self.token_ratio_head(tokens).view(n, D, 2, K).transpose(1, 2).reshape(n, 2, D * K)
        coordinate, value = self.circuit.slot_changes(z, 1, N)
        index = (coordinate * K + value)[:, None, :].expand(n, 2, N - 1)
        g = torch.cat([stay[:, :, None], grid.gather(2, index)], dim=2)
        if self.output_scale == "none":
            return g
        far = torch.stack([(layer + 1).clamp_max(L), (layer - 1).clamp_min(0)], dim=1)
        return g * self.layer_gain[far][:, :, None]

    def edge_log_ratio(
        self,
        hidden: torch.Tensor,
        layer: torch.Tensor,
        z: torch.Tensor,
        direction: torch.Tensor,
        slot: torch.Tensor,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(n,)`` float32: entry ``[b, direction[b], slot[b]]`` of :meth:`slot_log_ratios`, one
        outlet per row (``direction`` 0 forward, 1 backward; ``(n,)`` int64 each), reading only the
        head's weights of that outlet (a loss that needs one edge per row skips the other
        ``2 N - 1`` outputs)."""
        D, K, L = self.circuit.dim, self.circuit.num_categories, self.circuit.num_layers
        rows = torch.arange(z.shape[0], device=z.device)
        w = self.circuit.apply_slot(z, slot)
        coordinate = (w != z).long().argmax(1)  # the changed coordinate (any, for the stay slot)
        value = w[rows, coordinate]
        lateral = slot > 0
        if tokens is None:
            index = torch.where(lateral, 2 + direction * (D * K) + coordinate * K + value, direction)
            head, source = self.ratio_head, hidden
        else:  # stay edges from the pooled state, lateral ones from the coordinate's token
            index = torch.where(lateral, direction * K + value, direction)
            head = self.token_ratio_head
            source = torch.where(lateral[:, None], tokens[rows, coordinate], hidden)
        g = (head.weight[index] * source).sum(1) + head.bias[index]
        if tokens is not None:
            stay = self.ratio_head.weight[direction] * hidden
            g = torch.where(lateral, g, stay.sum(1) + self.ratio_head.bias[direction])
        if self.output_scale == "none":
            return g
        far = torch.where(direction == 0, (layer + 1).clamp_max(L), (layer - 1).clamp_min(0))
        return g * self.layer_gain[far]

    def init_sink(self, width: int, sink: str) -> None:
        """Check ``sink`` (:data:`SINKS`) and, for ``"learned"``, register the zero-initialised
        ``sink_head`` (``width -> 1``: the untrained ``r`` is 1/2). Called last in a constructor, so
        the other parameters' seeded initialisation is that of the ``"inflow"`` network."""
        self.sink = check_choice("sink", sink, SINKS)
        if sink == "learned":
            self.sink_head = nn.Linear(width, 1)
            nn.init.zeros_(self.sink_head.weight)
            nn.init.zeros_(self.sink_head.bias)

    def outputs(
        self,
        hidden: torch.Tensor,
        layer: torch.Tensor,
        z: torch.Tensor,
        sink_logit: bool = False,
        ratios: bool = False,
        tokens: torch.Tensor | None = None,
        edge: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``f`` ``(n,)`` from the ``(n, width)`` last hidden states of rows ``(n,)`` layers,
        ``(n, D)`` states; with ``sink_logit`` also the sink head's logit of ``r`` at every row
        (meaningful at the rows of layer ``L``), and with ``ratios`` last the ``(n, 2, N)``
        log-ratios of the ratio head (:meth:`slot_log_ratios`; ``tokens`` for a per-token head),
        or, given ``edge = (direction, slot)`` instead, the ``(n,)`` log-ratio of that one outlet
        per row (:meth:`edge_log_ratio`)."""
        f = self.head(hidden).squeeze(-1) * self.layer_gain[layer]
        if edge is not None:
            if ratios:
                raise ValueError("give ratios or edge, not both")
            if self.head_kind != "ratios":
                raise ValueError(f"edge needs a network built with head='ratios', not {self.head_kind!r}")
            return f, self.edge_log_ratio(hidden, layer, z, *edge, tokens)
        if not (sink_logit or ratios):
            return f
        out = [f]
        if sink_logit:
            if self.sink != "learned":
                raise ValueError(f"sink_logit needs a network built with sink='learned', not {self.sink!r}")
            out.append(self.sink_head(hidden).squeeze(-1))
        if ratios:
            if self.head_kind != "ratios":
                raise ValueError(f"ratios needs a network built with head='ratios', not {self.head_kind!r}")
            out.append(self.slot_log_ratios(hidden, layer, z, tokens))
        return tuple(out)

    def forward(
        self,
        layer: torch.Tensor,
        z: torch.Tensor,
        sink_logit: bool = False,
        ratios: bool = False,
        edge: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``(n,)`` float32 ``f(layer, z)`` from ``(n,)`` int64 layers in ``[0, L]`` and ``(n, D)`` int64
        states; with ``sink_logit`` (``sink="learned"`` only) also the ``(n,)`` logit of ``r(z)``
        (:data:`SINKS`), meaningful at the rows of layer ``L``; with ``ratios`` (``head="ratios"``
        only) last the ``(n, 2, N)`` log-ratios of every outlet (:meth:`slot_log_ratios`); with
        ``edge = (direction, slot)`` (``head="ratios"``, ``(n,)`` int64 each) ``(f, g)``, ``g`` the
        ``(n,)`` log-ratio of that one outlet of each row (:meth:`edge_log_ratio`). The body gives
        its last hidden states (``last_hidden_states``: pooled, and per token or None)."""
        hidden, tokens = self.last_hidden_states(layer, z)
        return self.outputs(hidden, layer, z, sink_logit, ratios, tokens, edge)

    def ratio_outlets(
        self, layer: torch.Tensor, z: torch.Tensor, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What a move needs from a ``head="ratios"`` network, one row per walker (``rows`` walkers
        per call): ``f`` ``(B,)``, the log-ratios ``(B, 2, N)`` of its outlets
        (:meth:`slot_log_ratios`) and, with ``sink="learned"``, the sink head's logit ``(B,)`` at
        the same rows (the sink of a walker at layer ``L``; None otherwise). float32."""
        learned = self.sink == "learned"
        parts = [
            self(layer[b0 : b0 + rows], z[b0 : b0 + rows], sink_logit=learned, ratios=True)
            for b0 in range(0, z.shape[0], rows)
        ]
        f, g = torch.cat([p[0] for p in parts]), torch.cat([p[-1] for p in parts])
        return f, g, torch.cat([p[1] for p in parts]) if learned else None

    def ratio_outlet_values(
        self, layer: torch.Tensor, z: torch.Tensor, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``outlet_values`` of a ``head="ratios"`` network (:meth:`ratio_outlets`): ``f`` at the
        walker and ``f + g`` at its outlets, so that ``S_{l'}(w) - S_l(z)`` is the head's log-ratio.
        Three float32 tensors ``(B,)``, ``(B, N)``, ``(B, N)``."""
        f, g, _ = self.ratio_outlets(layer, z, rows)
        return outlet_values_of_ratios(f, g)

    def ratio_rows(self) -> int:
        """Walkers per network call of :meth:`ratio_outlets` (64 MiB of activations)."""
        N = self.circuit.num_neighbours
        rows_per_block = getattr(self, "rows_per_block", None)
        if rows_per_block is not None:  # a body whose rows are (D, width) token tensors
            return rows_per_block()
        return max(1, _MAX_ACTIVATIONS // max(self.width, 2 * N))

    def embed_layers(self, layer: torch.Tensor) -> torch.Tensor:
        """``(..., width)`` float32 input part of ``(...)`` int64 layers in ``[0, L]``."""
        if self.layer_encoding == "embedding":
            return self.layer_embedding(layer)
        return self.layer_input(self.layer_features[layer])


class HammingNet(LayerEncoding, nn.Module):
    """``f(l, z)``, the learned part of the log-field of a noise-to-data Hamming circuit.

    Args:
        circuit: the :class:`HammingCircuit`.
        width: embedding and residual width.
        depth: residual blocks.
        layer_encoding: how the layer enters (:data:`LAYER_ENCODINGS`).
        output_scale: the output's gain per layer (:data:`OUTPUT_SCALES`; with the ratio head,
            also its log-ratios, by the gain of the layer each edge leads to).
        sink: where walkers leave at layer ``L`` (:data:`SINKS`).
        head: how the walk reads the field at the neighbours (:data:`HEADS`).

    Raises:
        TypeError: ``circuit`` is not a HammingCircuit, or a size is not an int.
        ValueError: a size below 1, an unknown ``layer_encoding``, ``output_scale``, ``sink`` or ``head``.
    """

    def __init__(
        self,
        circuit: HammingCircuit,
        width: int = 256,
        depth: int = 3,
        layer_encoding: str = "embedding",
        output_scale: str = "none",
        sink: str = "inflow",
        head: str = "scalar",
    ) -> None:
        super().__init__()
        self.circuit = check_hamming_circuit(circuit)
        K, D = circuit.num_categories, circuit.dim
        self.width, self.depth = check_int("width", width, 1), check_int("depth", depth, 1)
        check_layer_encoding(layer_encoding)
        # sum of D embeddings: entries of size 1/sqrt(D) give inputs of order one
        self.state_embedding = nn.Parameter(torch.randn(D * K, width) / math.sqrt(D))
        # registered after the state embedding, as always: the seeded initialisation and the
        # parameters' order (which checkpointed optimiser states follow) stay as they were
        self.init_layer_encoding(circuit, width, layer_encoding, output_scale)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.norm, self.head = output_head(width)
        self.register_buffer("offsets", torch.arange(D) * K, persistent=False)
        self.init_sink(width, sink)
        self.init_ratio_head(width, head)

    def config(self) -> dict:
        """The constructor's arguments besides the circuit (checkpoints record them)."""
        return {
            "width": self.width,
            "depth": self.depth,
            "layer_encoding": self.layer_encoding,
            "output_scale": self.output_scale,
            "sink": self.sink,
            "head": self.head_kind,
        }

    def embed_states(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, width)`` float32 ``sum_c E[c, z_c]`` of ``(n, D)`` int64 states."""
        return nn.functional.embedding_bag(z + self.offsets, self.state_embedding, mode="sum")

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., width)`` inputs -> ``(..., width)`` normalised last hidden states."""
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., width)`` inputs -> ``(...)`` outputs ``f`` (before the layer gain)."""
        return self.head(self.hidden(x)).squeeze(-1)

    def last_hidden_states(self, layer: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The ``(n, width)`` last hidden states of rows ``(n,)`` layers, ``(n, D)`` states (no
        per-token states: :meth:`~LayerEncoding.forward`)."""
        return self.hidden(self.embed_states(z) + self.embed_layers(layer)), None

    def slot_changes(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, N, width)``: the input change from ``z`` to each of its ``N`` neighbour slots."""
        K, N = self.circuit.num_categories, self.circuit.num_neighbours
        coordinate, value = self.circuit.slot_changes(z, 0, N)
        lateral = coordinate.clamp_min(0)
        new_rows = lateral * K + value
        old_rows = lateral * K + z[:, lateral]
        change = self.state_embedding[new_rows] - self.state_embedding[old_rows]
        return change * (coordinate >= 0)[None, :, None]

    def outlet_values(
        self, layer: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``f`` at each walker ``(B,)`` and at its ``N`` neighbours in layers ``l+1`` and ``l-1``
        ``(B, N)`` each (layers clipped to ``[0, L]``), from one body evaluation per block of walkers.

        Args:
            layer: ``(B,)`` int64 layers in ``[0, L]``; ``z``: ``(B, D)`` int64 states.

        Returns:
            Three float32 tensors on ``z``'s device.
        """
        L, N = self.circuit.num_layers, self.circuit.num_neighbours
        if self.head_kind == "ratios":
            return self.ratio_outlet_values(layer, z, self.ratio_rows())
        B = z.shape[0]
        here = torch.empty(B, device=z.device)
        ahead = torch.empty(B, N, device=z.device)
        behind = torch.empty(B, N, device=z.device)
        rows = max(1, _MAX_ACTIVATIONS // ((2 * N + 1) * self.width))
        for b0 in range(0, B, rows):
            zb, lb = z[b0 : b0 + rows], layer[b0 : b0 + rows]
            base = self.embed_states(zb)
            neighbours = base[:, None, :] + self.slot_changes(zb)
            inputs = torch.cat(
                [
                    (base + self.embed_layers(lb))[:, None, :],
                    neighbours + self.embed_layers((lb + 1).clamp_max(L))[:, None, :],
                    neighbours + self.embed_layers((lb - 1).clamp_min(0))[:, None, :],
                ],
                dim=1,
            )
            out = self.body(inputs)
            n, gain = zb.shape[0], self.layer_gain
            here[b0 : b0 + n], ahead[b0 : b0 + n], behind[b0 : b0 + n] = (
                out[:, 0] * gain[lb],
                out[:, 1 : N + 1] * gain[(lb + 1).clamp_max(L)][:, None],
                out[:, N + 1 :] * gain[(lb - 1).clamp_min(0)][:, None],
            )
        return here, ahead, behind

    def field(self) -> HammingNetField:
        """The sampler's view of the network (:class:`HammingNetField`)."""
        return HammingNetField(self)


class HammingNetField(LogField):
    """A Hamming log-field network as a :class:`~.log_field.LogField`:
    ``S_l(z) = log alpha*_{L-l} + f(l, z)``.

    The network is a :class:`HammingNet` or a :class:`~.mixer.HammingMixer`; any module with their
    ``circuit``, ``net(layer, z)`` and ``outlet_values(layer, z)`` will do. Evaluated in float32 and
    used in float64; one ``outlet_values`` call per move gives every walker and its neighbours. A
    vertex without positive outflow (a local minimum of the learned potential) is bridged by its
    forward stay edge and counted (:attr:`~.log_field.LogField.bridge_dead_ends`,
    :attr:`~.log_field.LogField.bridged`). A bridge goes uphill, so a walker can return over the
    edge it was bridged across and cycle: the field is not :attr:`~ecd2g_fast.fields.Field.acyclic`,
    and walks are capped at ``100 L + 1000`` moves by default, as for learned current fields. The
    network is evaluated as it is: put it in ``eval()`` mode and load the weights (an EMA, say)
    before sampling.

    Args:
        net: the network.
        sink: where walkers leave at layer ``L`` (:data:`SINKS`): the network's own ``sink`` by
            default; ``"inflow"`` walks a network with a sink head by the inflow instead (to
            compare the two on one network).

    Raises:
        ValueError: an unknown ``sink``, or ``"learned"`` for a network without a sink head.
    """

    bytes_per_pair = 1024
    bridge_dead_ends = True
    # a bridge goes against the learned potential, so walks may cycle: capped like current fields
    acyclic = False

    def __init__(self, net: nn.Module, sink: str | None = None) -> None:
        device = next(net.parameters()).device
        super().__init__(net.circuit, device)
        self.net = net
        own = getattr(net, "sink", "inflow")
        self.sink = check_choice("sink", own if sink is None else sink, SINKS)
        if self.sink == "learned" and own != "learned":
            raise ValueError("sink='learned' needs a network built with sink='learned' (a sink head)")
        self._row_logits: tuple[torch.Tensor, torch.Tensor] | None = None

    def learned_sink(self, z: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 sink currents over ``rho_L(z)`` of ``(B, D)`` states at layer ``L``:
        ``r(z) / Ã_0(0)``, ``r = sigmoid`` of the sink head's logit (:data:`SINKS`). Exact for the
        exact ``r``: ``rho_L(z) = sum_y q(y) Ã_0(h(z, y))``, so ``r(z) = q(z) Ã_0(0) / rho_L(z)``
        and ``r / Ã_0(0)`` is the exact sink ``q(z)`` over ``rho_L(z)``."""
        L = self.circuit.num_layers
        layer = torch.full((z.shape[0],), L, dtype=torch.int64, device=z.device)
        return self._sink_of_logit(self.net(layer, z, sink_logit=True)[1])

    def _sink_of_logit(self, logit: torch.Tensor) -> torch.Tensor:
        """``r / Ã_0(0)`` in float64 from the sink head's ``(B,)`` logit of ``r``."""
        return torch.exp(nn.functional.logsigmoid(logit.to(torch.float64)) - self.tables.log_kernel[-1, 0])

    def sink_over_rho(self, z: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        # a move asks it for every walker's row (no host sync to pick those at layer L): one more
        # network row per 2N + 1; a ratio head's move already evaluated each walker's own row, which
        # is the sink's row for the walkers at layer L (outlet_log_fields kept its logit)
        if self.sink == "learned":
            kept, self._row_logits = self._row_logits, None
            if kept is not None and kept[0] is z:
                return self._sink_of_logit(kept[1])
            return self.learned_sink(z)
        return super().sink_over_rho(z, backward)

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.tables.log_norm[layer] + self.net(layer, z).to(torch.float64)

    # A ratio head's neighbour values exist only as seen from the vertex (HEADS): the flat methods
    # read them from outlet_log_fields instead of evaluating the neighbours.
    def currents_to_next(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if getattr(self.net, "head_kind", "scalar") != "ratios":
            return super().currents_to_next(layer, z, start, stop)
        here, ahead, _ = self.outlet_log_fields(layer, self._states(z))
        return self.tables.forward_currents(layer, here, ahead[:, start:stop], self.conductance[start:stop])

    def currents_from_prev(self, layer: torch.Tensor, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if getattr(self.net, "head_kind", "scalar") != "ratios":
            return super().currents_from_prev(layer, z, start, stop)
        here, _, behind = self.outlet_log_fields(layer, self._states(z))
        return -self.tables.backward_currents(
            layer, here, behind[:, start:stop], self.conductance[start:stop]
        )

    def outlet_log_fields(
        self, layer: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if getattr(self.net, "head_kind", "scalar") == "ratios":
            f, g, logit = self.net.ratio_outlets(layer, z, self.net.ratio_rows())
            self._row_logits = None if logit is None else (z, logit)
            here, ahead, behind = outlet_values_of_ratios(f.to(torch.float64), g.to(torch.float64))
        else:
            here, ahead, behind = (v.to(torch.float64) for v in self.net.outlet_values(layer, z))
        return self.tables.add_layer_norms(layer, here, ahead, behind)
