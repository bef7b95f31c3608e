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
        self, hidden: torch.Tensor, layer: torch.Tensor, sink_logit: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``f`` ``(n,)`` from the ``(n, width)`` last hidden states of rows at ``(n,)`` layers; with
        ``sink_logit`` also the sink head's logit of ``r`` at every row (meaningful at the rows of
        layer ``L``)."""
        f = self.head(hidden).squeeze(-1) * self.layer_gain[layer]
        if not sink_logit:
            return f
        if self.sink != "learned":
            raise ValueError(f"sink_logit needs a network built with sink='learned', not {self.sink!r}")
        return f, self.sink_head(hidden).squeeze(-1)

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
        output_scale: the output's gain per layer (:data:`OUTPUT_SCALES`).
        sink: where walkers leave at layer ``L`` (:data:`SINKS`).

    Raises:
        TypeError: ``circuit`` is not a HammingCircuit, or a size is not an int.
        ValueError: a size below 1, an unknown ``layer_encoding``, ``output_scale`` or ``sink``.
    """

    def __init__(
        self,
        circuit: HammingCircuit,
        width: int = 256,
        depth: int = 3,
        layer_encoding: str = "embedding",
        output_scale: str = "none",
        sink: str = "inflow",
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

    def config(self) -> dict:
        """The constructor's arguments besides the circuit (checkpoints record them)."""
        return {
            "width": self.width,
            "depth": self.depth,
            "layer_encoding": self.layer_encoding,
            "output_scale": self.output_scale,
            "sink": self.sink,
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

    def forward(
        self, layer: torch.Tensor, z: torch.Tensor, sink_logit: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(n,)`` float32 ``f(layer, z)`` from ``(n,)`` int64 layers in ``[0, L]`` and ``(n, D)`` int64
        states; with ``sink_logit`` (``sink="learned"`` only) also the ``(n,)`` logit of ``r(z)``
        (:data:`SINKS`), meaningful at the rows of layer ``L``."""
        hidden = self.hidden(self.embed_states(z) + self.embed_layers(layer))
        return self.outputs(hidden, layer, sink_logit)

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

    def learned_sink(self, z: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float64 sink currents over ``rho_L(z)`` of ``(B, D)`` states at layer ``L``:
        ``r(z) / Ã_0(0)``, ``r = sigmoid`` of the sink head's logit (:data:`SINKS`). Exact for the
        exact ``r``: ``rho_L(z) = sum_y q(y) Ã_0(h(z, y))``, so ``r(z) = q(z) Ã_0(0) / rho_L(z)``
        and ``r / Ã_0(0)`` is the exact sink ``q(z)`` over ``rho_L(z)``."""
        L = self.circuit.num_layers
        layer = torch.full((z.shape[0],), L, dtype=torch.int64, device=z.device)
        logit = self.net(layer, z, sink_logit=True)[1].to(torch.float64)
        return torch.exp(nn.functional.logsigmoid(logit) - self.tables.log_kernel[L, 0])

    def sink_over_rho(self, z: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        # a move asks it for every walker's row (no host sync to pick those at layer L): one more
        # network row per 2N + 1
        if self.sink == "learned":
            return self.learned_sink(z)
        return super().sink_over_rho(z, backward)

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.tables.log_norm[layer] + self.net(layer, z).to(torch.float64)

    def outlet_log_fields(
        self, layer: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L = self.circuit.num_layers
        here, ahead, behind = (v.to(torch.float64) for v in self.net.outlet_values(layer, z))
        norm = self.tables.log_norm
        return (
            norm[layer] + here,
            norm[(layer + 1).clamp_max(L)][:, None] + ahead,
            norm[(layer - 1).clamp_min(0)][:, None] + behind,
        )
