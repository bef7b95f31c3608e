"""Where a training step's states come from: the data sources and the query distributions.

**Query distributions.** The MSE minimiser at each query is the exact current (or potential)
whatever distribution the queries come from, as long as it covers every query and is independent
of the batch the targets are counted on. ``"uniform"`` is the paper's: ``l ~ U{0..L-1}``
(``U{0..L}`` for potentials), ``z, w ~ U(S)``. ``"data"`` (docs/theory.md §5) draws each query
state from a mixture: with probability 1/2 a data state, 1/4 a neighbour of a data state (one
coordinate moved by +-1, reflected at the boundary), 1/4 uniform; the data states are a
*separate* draw from the source (half) and target (half) samples, never the batch ``(x, y)``
itself (a query chosen because it occurs in ``x`` would see ``#{x_i == z} >= 1``: a biased
target). For the current model ``w = z`` (the forward edge, which carries most of the current)
with probability 1/4, else ``w`` is drawn from the mixture independently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._validation import check_states
from ..circuit import Circuit
from ..hamming import HammingCircuit
from .config import CIRCUIT_MODELS

__all__ = ["DataSource", "QuerySampler", "Source"]

#: A data source: ``(N, D)`` int64 samples (drawn from with replacement) or ``n -> (n, D)``.
Source = torch.Tensor | Callable[[int], torch.Tensor]


class DataSource:
    """Draws ``(n, D)`` int64 states from a sample tensor (with replacement) or a callable.

    Args:
        name: the argument's name, for error messages (``"source"``, ``"target"``).
        source: ``(N, D)`` int64 states in ``[0, K)``, ``N >= 1``, or a callable ``n -> (n, D)``
            whose outputs are checked on every draw. A callable with ``state_dict()`` and
            ``load_state_dict(state)`` has its state saved in checkpoints and restored on resume.
        circuit: gives ``K`` and ``D``.
        device: where drawn states live.

    Raises:
        TypeError, ValueError: ``source`` is neither, or holds states that do not fit the circuit.
    """

    def __init__(self, name: str, source: object, circuit: Circuit, device: torch.device) -> None:
        self.name, self.circuit, self.device = name, circuit, device
        if isinstance(source, torch.Tensor):
            source = check_states(name, source, circuit.num_categories, circuit.dim)
            if source.shape[0] < 1:
                raise ValueError(f"{name} must hold at least one sample, got shape {tuple(source.shape)}")
            self.data: torch.Tensor | None = source.to(device)
            self.fn = None
        elif callable(source):
            self.data, self.fn = None, source
        else:
            raise TypeError(
                f"{name} must be an int64 tensor (N, D) or a callable n -> (n, D), got {type(source).__name__}"
            )

    def state_dict(self) -> dict | None:
        """The callable's ``state_dict()``, or None (tensor data, or a callable without one)."""
        return self.fn.state_dict() if hasattr(self.fn, "state_dict") else None

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None and hasattr(self.fn, "load_state_dict"):
            self.fn.load_state_dict(state)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, D)`` int64 states on :attr:`device` (tensors: uniform rows, with replacement)."""
        if self.data is not None:
            idx = torch.randint(self.data.shape[0], (n,), generator=generator, device=self.device)
            return self.data[idx]
        out = self.fn(n)
        what = f"{self.name}({n}) output"
        out = check_states(what, out, self.circuit.num_categories, self.circuit.dim)
        if out.shape[0] != n:
            raise ValueError(f"{what} must have {n} rows, got {out.shape[0]}")
        return out.to(self.device)


def uniform_states(n: int, circuit: Circuit, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(n, D)`` int64 states drawn uniformly from ``S``."""
    return torch.randint(circuit.num_categories, (n, circuit.dim), generator=gen, device=device)


def neighbours(states: torch.Tensor, circuit: Circuit, gen: torch.Generator) -> torch.Tensor:
    """Move one random coordinate of each of the ``(n, D)`` states by +-1, reflecting at 0 and K-1."""
    n, K = states.shape[0], circuit.num_categories
    dev = states.device
    coord = torch.randint(circuit.dim, (n,), generator=gen, device=dev)
    step = torch.randint(2, (n,), generator=gen, device=dev) * 2 - 1
    rows = torch.arange(n, device=dev)
    moved = states[rows, coord] + step
    moved = torch.where(moved < 0, 1, moved)
    moved = torch.where(moved >= K, K - 2, moved)
    out = states.clone()
    out[rows, coord] = moved
    return out


class QuerySampler:
    """Draws a step's queries (module docstring).

    Args:
        kind: ``"uniform"``, ``"data"``, ``"walk"`` or ``"kernel"`` (Hamming models only: where the
            exact walk towards a target sample goes, :class:`~ecd2g_fast.hamming.WalkQueries`; or
            target samples smoothed by the layer's kernel, with edges for the denoising ratio
            loss, :class:`~ecd2g_fast.hamming.learning.KernelQueries`; ``"kernel-walk"``: the same
            with half of the distances where the walk goes).
        model: ``"current"`` (edge queries ``(l, z, w)``), ``"potential"``, ``"hamming"`` or
            ``"hamming-mixer"`` (vertex queries ``(l, z)``).
        circuit: the circuit.
        sources: the source and target :class:`DataSource` (anchors of ``"data"`` queries).
        query_kwargs: options of kernel queries
            (:data:`~ecd2g_fast.hamming.learning.KERNEL_QUERY_OPTIONS`); ``"kernel-walk"`` sets
            ``walk_fraction=0.5`` unless they set it.

    Raises:
        ValueError: kernel or walk queries for a model of the complete circuit; ``query_kwargs``
            with an unknown option, or given to other queries than kernel queries.
    """

    def __init__(
        self,
        kind: str,
        model: str,
        circuit: Circuit,
        sources: tuple[DataSource, DataSource],
        query_kwargs: dict | None = None,
    ) -> None:
        query_kwargs = query_kwargs or {}
        self.kind, self.model, self.circuit, self.sources = kind, model, circuit, sources
        self.num_layers = circuit.num_layers if model == "current" else circuit.num_layers + 1
        if kind in ("walk", "kernel", "kernel-walk"):
            hamming = CIRCUIT_MODELS[HammingCircuit]
            if model not in hamming:
                raise ValueError(
                    f"queries {kind!r} are for the hamming models ({', '.join(hamming)}), not {model!r}"
                )
            from ..hamming import learning

            if kind == "walk":
                self.walk = learning.WalkQueries(circuit)
            else:
                options = learning.KERNEL_QUERY_OPTIONS
                unknown = sorted(set(query_kwargs) - set(options))
                if unknown:
                    raise ValueError(
                        f"query_kwargs: unknown option {unknown[0]!r}; kernel queries take "
                        f"{', '.join(map(repr, options))}"
                    )
                walk_fraction = 0.5 if kind == "kernel-walk" else 0.0
                self.walk = learning.KernelQueries(
                    circuit, **{"walk_fraction": walk_fraction, **query_kwargs}
                )
        if query_kwargs and kind not in ("kernel", "kernel-walk"):
            raise ValueError(f"query_kwargs are options of kernel queries, not of {kind!r} queries")

    def _mixture(self, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        c = self.circuit
        xs, ys = self.sources[0].draw(n, gen), self.sources[1].draw(n, gen)
        pick = torch.randint(2, (n, 1), generator=gen, device=device).bool()
        anchors = torch.where(pick, xs, ys)
        near = neighbours(anchors, c, gen)
        uniform = uniform_states(n, c, gen, device)
        u = torch.rand((n, 1), generator=gen, device=device)
        return torch.where(u < 0.5, anchors, torch.where(u < 0.75, near, uniform))

    def draw(self, n: int, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
        """``n`` queries: ``(layer (n,), z (n, D))``, plus ``w (n, D)`` for the current model."""
        if self.kind in ("walk", "kernel", "kernel-walk"):  # around target (data) samples
            return self.walk(self.sources[1].draw(n, gen), n, gen)
        layer = torch.randint(self.num_layers, (n,), generator=gen, device=device)
        if self.kind == "uniform":
            z = uniform_states(n, self.circuit, gen, device)
            if self.model != "current":
                return layer, z
            return layer, z, uniform_states(n, self.circuit, gen, device)
        z = self._mixture(n, gen, device)
        if self.model != "current":
            return layer, z
        w = self._mixture(n, gen, device)
        diagonal = torch.rand((n, 1), generator=gen, device=device) < 0.25
        return layer, z, torch.where(diagonal, z, w)
