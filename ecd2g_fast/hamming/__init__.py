"""The sparse Hamming circuit: ECD2G with one-coordinate moves, for state spaces of any size.

:class:`HammingCircuit` joins ``(l, z)`` to ``(l+1, w)`` only when ``w`` equals ``z`` (stay
resistor ``r``) or differs from it in one coordinate (lateral resistor ``R``). Its potentials
and local currents have a closed form through the Hamming scheme, and :class:`KernelTables`
holds the per-layer kernels that give them with per-state relative accuracy at any dimension.
The mathematics, with the test that checks each result, is in ``docs/hamming.md``.
"""

from .circuit import HammingCircuit, HammingConfig
from .extended import ExtendedTensor
from .tables import KernelTables, distance_histogram

__all__ = ["ExtendedTensor", "HammingCircuit", "HammingConfig", "KernelTables", "distance_histogram"]
