""":class:`HammingMixer`: an MLP-mixer log-field network for Hamming circuits of high dimension.

The same function as :class:`~.model.HammingNet`, ``f(l, z)`` with the field
``S_l(z) = log alpha*_{L-l} + f(l, z)`` (:mod:`.log_field`), trained by the same loss and recipe,
with a body that grows with the data: a few million parameters at ``D = 784``.

**Architecture.** The tokens are the ``D`` coordinates: token ``c`` starts as ``E[c, z_c]`` (a
``(D K, width)`` table) plus the layer input (:class:`~.model.LayerEncoding`, shared with
``HammingNet``). ``depth`` pre-norm residual mixer blocks follow, each a token-mixing MLP (LayerNorm
over the channels, then ``D -> token_hidden -> D`` with SiLU across the tokens, the same for every
channel) and a channel-mixing MLP (LayerNorm, ``width -> channel_hidden -> width`` with SiLU, the
same for every token). A final LayerNorm, the mean over the tokens and a zero-initialised linear
head give ``f``, so the untrained output is 0, as ``HammingNet``'s.

**Neighbours cost full rows.** A move needs ``f`` at the walker and at its ``N = 1 + D (K-1)``
neighbours in layers ``l+1`` and ``l-1`` (:meth:`HammingMixer.outlet_values`). ``HammingNet``'s
input is a sum over coordinates, so a neighbour's input is the walker's plus one embedding
difference, and each of the ``2 N + 1`` values costs one ``O(depth width^2)`` MLP row: ``O(D)`` per
move. The mixer keeps the coordinates apart and mixes them in its first block, so a neighbour
shares nothing with the walker: every one of the ``2 N + 1`` values is a full ``(D, width)``
evaluation of ``2 depth D width (token_hidden + channel_hidden)`` multiply-adds, ``O(D^2)`` per move,
about ``D`` times ``HammingNet``'s at the default sizes. Measured on one thread of a loaded
2-core AMD EPYC (``K = 2``, ``L = 64``, default sizes against ``HammingNet(width=256, depth=3)``):
one ``outlet_values`` call for 16 walkers at ``D = 64`` takes about 4 s against 37 ms, for 4
walkers at ``D = 256`` about 14 s against 37 ms, and a training step of the recipe at ``D = 64``
30 s against 0.2 s.

With ``head="ratios"`` (:data:`~.model.HEADS`) the mixer reads each coordinate's changes off
that coordinate's token (``2 K`` outputs per token, the two stay edges from the token mean), so a
move costs one ``(D, width)`` row per walker, as a training query does.

Choose ``HammingNet`` by default, and whenever walks must be cheap: it is the measured model of the
``D = 64`` and ``D = 256`` experiments. Choose the mixer for large ``D`` (images, ``D = 784``) when
a sum of per-coordinate embeddings lacks the capacity to express the interactions between the
coordinates, and train and sample it on an accelerator.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_int
from .circuit import HammingCircuit, check_hamming_circuit
from .model import HammingNetField, LayerEncoding, check_layer_encoding, output_head

__all__ = ["HammingMixer", "MixerBlock"]

#: float32 values of the largest activation of one body evaluation in
#: :meth:`HammingMixer.outlet_values` (rows times the widest of ``D width``, ``D channel_hidden``
#: and ``width token_hidden``): 2**24 floats = 64 MiB per block of rows.
_MAX_ACTIVATIONS = 2**24


class MixerBlock(nn.Module):
    """One pre-norm residual mixer block on ``(n, D, width)`` token tensors.

    ``x + T(LayerNorm(x))`` across the ``D`` tokens (``D -> token_hidden -> D``, SiLU, per channel),
    then ``x + C(LayerNorm(x))`` across the channels (``width -> channel_hidden -> width``, SiLU,
    per token).
    """

    def __init__(self, dim: int, width: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(width)
        self.token_inner = nn.Linear(dim, token_hidden)
        self.token_outer = nn.Linear(token_hidden, dim)
        self.channel_norm = nn.LayerNorm(width)
        self.channel_inner = nn.Linear(width, channel_hidden)
        self.channel_outer = nn.Linear(channel_hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.token_norm(x).transpose(1, 2)  # (n, width, D): the MLP runs along the tokens
        x = x + self.token_outer(nn.functional.silu(self.token_inner(y))).transpose(1, 2)
        return x + self.channel_outer(nn.functional.silu(self.channel_inner(self.channel_norm(x))))


class HammingMixer(LayerEncoding, nn.Module):
    """``f(l, z)``, the learned part of a Hamming circuit's log-field, by an MLP-mixer (module docstring).

    The interface of :class:`~.model.HammingNet`: :meth:`forward`, :meth:`outlet_values`,
    :meth:`config`, :meth:`field`.

    Args:
        circuit: the :class:`HammingCircuit`.
        width: channels per token.
        token_hidden: hidden size of the token-mixing MLPs (across the ``D`` tokens).
        channel_hidden: hidden size of the channel-mixing MLPs.
        depth: mixer blocks.
        layer_encoding: how the layer enters (:data:`~.model.LAYER_ENCODINGS`).
        output_scale: the output's gain per layer (:data:`~.model.OUTPUT_SCALES`).
        sink: where walkers leave at layer ``L`` (:data:`~.model.SINKS`).
        head: how the walk reads the field at the neighbours (:data:`~.model.HEADS`); the ratio
            head reads each coordinate's changes off that coordinate's token.

    Raises:
        TypeError: ``circuit`` is not a HammingCircuit, or a size is not an int.
        ValueError: a size below 1, an unknown ``layer_encoding``, ``output_scale``, ``sink`` or ``head``.
    """

    def __init__(
        self,
        circuit: HammingCircuit,
        width: int = 128,
        token_hidden: int = 256,
        channel_hidden: int = 512,
        depth: int = 4,
        layer_encoding: str = "smooth",
        output_scale: str = "none",
        sink: str = "inflow",
        head: str = "scalar",
    ) -> None:
        super().__init__()
        self.circuit = check_hamming_circuit(circuit)
        K, D = circuit.num_categories, circuit.dim
        self.width = check_int("width", width, 1)
        self.token_hidden = check_int("token_hidden", token_hidden, 1)
        self.channel_hidden = check_int("channel_hidden", channel_hidden, 1)
        self.depth = check_int("depth", depth, 1)
        check_layer_encoding(layer_encoding)
        # one embedding per token (no sum over coordinates, unlike HammingNet): entries of order one
        self.state_embedding = nn.Parameter(torch.randn(D * K, width))
        self.init_layer_encoding(circuit, width, layer_encoding, output_scale)
        self.blocks = nn.ModuleList(MixerBlock(D, width, token_hidden, channel_hidden) for _ in range(depth))
        self.norm, self.head = output_head(width)
        self.register_buffer("offsets", torch.arange(D) * K, persistent=False)
        self.init_sink(width, sink)
        self.init_ratio_head(width, head, per_token=True)

    def config(self) -> dict:
        """The constructor's arguments besides the circuit (checkpoints record them)."""
        return {
            "width": self.width,
            "token_hidden": self.token_hidden,
            "channel_hidden": self.channel_hidden,
            "depth": self.depth,
            "layer_encoding": self.layer_encoding,
            "output_scale": self.output_scale,
            "sink": self.sink,
            "head": self.head_kind,
        }

    def last_hidden_states(self, layer: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(n, width)`` token means and the ``(n, D, width)`` token states after the last block
        (normalised) of rows ``(n,)`` layers, ``(n, D)`` int64 states: what
        :meth:`~.model.LayerEncoding.forward` reads its heads from.

        Memory: a few ``(n, D, max(width, channel_hidden))`` float32 activations (and those of
        the backward pass when gradients are on); callers bound ``n``.
        """
        x = self.state_embedding[z + self.offsets] + self.embed_layers(layer)[:, None, :]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x.mean(1), x

    def rows_per_block(self) -> int:
        """Rows (states) per body evaluation in :meth:`outlet_values` (:data:`_MAX_ACTIVATIONS`)."""
        D = self.circuit.dim
        widest = max(D * self.width, D * self.channel_hidden, self.width * self.token_hidden)
        return max(1, _MAX_ACTIVATIONS // widest)

    def outlet_values(
        self, layer: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``f`` at each walker ``(B,)`` and at its ``N`` neighbours in layers ``l+1`` and ``l-1``
        ``(B, N)`` each (layers clipped to ``[0, L]``), as :meth:`~.model.HammingNet.outlet_values`.

        The ``2 N + 1`` rows ``(l, z)``, ``(min(l+1, L), w)``, ``(max(l-1, 0), w)`` of each walker
        (``w`` its neighbours, :meth:`HammingCircuit.neighbour_vectors`) are evaluated explicitly by
        :meth:`forward`, at most :meth:`rows_per_block` rows per call: as many whole walkers as that
        holds, or, when one walker's rows do not fit, one walker and a range of its neighbour slots
        (the neighbour states are built per call, so they are bounded too). A state gets the value
        ``forward`` gives it, up to the rounding of differently batched float32 matrix products.

        Args:
            layer: ``(B,)`` int64 layers in ``[0, L]``; ``z``: ``(B, D)`` int64 states.

        Returns:
            Three float32 tensors on ``z``'s device.
        """
        if self.head_kind == "ratios":
            return self.ratio_outlet_values(layer, z, self.ratio_rows())
        L, N, D = self.circuit.num_layers, self.circuit.num_neighbours, self.circuit.dim
        B = z.shape[0]
        here = torch.empty(B, device=z.device)
        ahead = torch.empty(B, N, device=z.device)
        behind = torch.empty(B, N, device=z.device)
        rows = self.rows_per_block()
        walkers = max(1, rows // (2 * N + 1))
        slots = min(N, max(1, rows // (2 * walkers)))
        for b0 in range(0, B, walkers):
            zb, lb = z[b0 : b0 + walkers], layer[b0 : b0 + walkers]
            n = zb.shape[0]
            here[b0 : b0 + n] = self(lb, zb)
            for s0 in range(0, N, slots):
                s1 = min(N, s0 + slots)
                w = self.circuit.neighbour_vectors(zb, s0, s1).reshape(-1, D)
                up = (lb + 1).clamp_max(L).repeat_interleave(s1 - s0)
                down = (lb - 1).clamp_min(0).repeat_interleave(s1 - s0)
                values = self(torch.cat([up, down]), torch.cat([w, w])).view(2, n, s1 - s0)
                ahead[b0 : b0 + n, s0:s1], behind[b0 : b0 + n, s0:s1] = values[0], values[1]
        return here, ahead, behind

    def field(self) -> HammingNetField:
        """The sampler's view of the network (:class:`~.model.HammingNetField`)."""
        return HammingNetField(self)
