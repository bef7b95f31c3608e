"""The state space ``S = {0..K-1}^D`` that every circuit family shares, and its indexing.

A state is a ``(D,)`` int64 vector or, after the canonical row-major flattening (first
coordinate most significant), one int64 index in ``[0, M)``, ``M = K**D`` (docs/theory.md §1).
"""

from __future__ import annotations

import torch

from ._validation import check_int, check_integer_dtype, check_tensor

__all__ = ["MAX_DIM", "StateSpace"]

_INT64_LIMIT = 2**63
#: Largest ``D``: ``M = K**D`` is kept as an exact Python int, whose size grows with ``D``.
MAX_DIM = 2**20


class StateSpace:
    """``S = {0..K-1}^D`` with its row-major indexing; the base of the circuit classes.

    Args:
        num_categories: ``K >= 2``.
        dim: ``D``, ``1 <= D <= 2**20``.

    Attributes:
        num_categories, dim: ``K`` and ``D``.
        num_states: ``M = K**D``, an exact Python int (it may have thousands of digits).

    Raises:
        TypeError: a size is not an int.
        ValueError: ``K < 2``, ``D < 1`` or ``D > 2**20``.
    """

    def __init__(self, num_categories: int, dim: int) -> None:
        self.num_categories = check_int("num_categories", num_categories, 2)
        self.dim = check_int("dim", dim, 1)
        if self.dim > MAX_DIM:
            raise ValueError(f"dim must be <= {MAX_DIM} (2**20), got {dim}")
        self.num_states: int = self.num_categories**self.dim

    def state_index(self, z: torch.Tensor) -> torch.Tensor:
        """Canonical row-major index ``sum_d z[..., d] * K**(D-1-d)``.

        Args:
            z: ``(..., D)`` integer states with entries in ``[0, K)``: int64, or int8, int16,
                int32, uint8 (cast to int64 once).

        Returns:
            ``(...)`` int64 indices in ``[0, M)``.

        Raises:
            TypeError: ``z`` is not a tensor of one of those dtypes.
            ValueError: wrong last dimension, entries outside ``[0, K)``, or ``M >= 2**63``.
        """
        z = check_integer_dtype("z", check_tensor("z", z))
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}) (D = {self.dim}), got {tuple(z.shape)}")
        self._check_index_range("state_index")
        if z.numel() and (int(z.min()) < 0 or int(z.max()) >= self.num_categories):
            raise ValueError(f"z must hold states in [0, {self.num_categories}) (K = {self.num_categories})")
        return self.flatten(z)

    def index_state(self, idx: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`state_index`.

        Args:
            idx: ``(...)`` integer indices in ``[0, M)``: int64, or int8, int16, int32, uint8
                (cast to int64 once).

        Returns:
            ``(..., D)`` int64 states.

        Raises:
            TypeError: ``idx`` is not a tensor of one of those dtypes.
            ValueError: an index outside ``[0, M)``, or ``M >= 2**63``.
        """
        idx = check_integer_dtype("idx", check_tensor("idx", idx))
        self._check_index_range("index_state")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_states):
            raise ValueError(f"idx must hold indices in [0, {self.num_states}) (M = K**D)")
        return self.unflatten(idx)

    def _check_index_range(self, what: str) -> None:
        if self.num_states >= _INT64_LIMIT:
            raise ValueError(f"{what} needs M = K**D < 2**63 to fit an int64 index")

    def flatten(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`state_index` without any check, for callers that validated ``z`` already.

        Args:
            z: ``(..., D)`` int64 states with entries in ``[0, K)``, on any device; ``M < 2**63``.

        Returns:
            ``(...)`` int64 indices on ``z``'s device. Nothing is checked: a wrong dtype, last
            dimension or value gives a meaningless result (or an error from torch).
        """
        idx = torch.zeros(z.shape[:-1], dtype=torch.int64, device=z.device)
        for d in range(self.dim):
            idx = idx * self.num_categories + z[..., d]
        return idx

    def unflatten(self, idx: torch.Tensor) -> torch.Tensor:
        """:meth:`index_state` without any check, for callers that validated ``idx`` already.

        Args:
            idx: ``(...)`` int64 indices in ``[0, M)``, on any device; ``M < 2**63``.

        Returns:
            ``(..., D)`` int64 states on ``idx``'s device. Nothing is checked: an index outside
            ``[0, M)`` gives a meaningless state.
        """
        powers = self.num_categories ** torch.arange(self.dim - 1, -1, -1, device=idx.device)
        return torch.div(idx.unsqueeze(-1), powers, rounding_mode="floor") % self.num_categories
