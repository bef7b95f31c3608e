"""The sparse Hamming circuit: ECD2G with one-coordinate moves, for state spaces of any size.

:class:`HammingCircuit` joins ``(l, z)`` to ``(l+1, w)`` only when ``w`` equals ``z`` (stay
resistor ``r``) or differs from it in one coordinate (lateral resistor ``R``). Its potentials
and local currents have a closed form through the Hamming scheme, and :class:`KernelTables`
holds the per-layer kernels that give them with per-state relative accuracy at any dimension.
:mod:`.targets` holds the Monte-Carlo targets on it, which :func:`ecd2g_fast.current_targets` and
:func:`ecd2g_fast.potential_targets` run for a :class:`HammingCircuit`.

Noise to data at any dimension: :class:`LogField` (a field given by the log of the smoothed data
density, walked on state vectors), :class:`DataLogField` (the exact field of a pmf or of samples),
:class:`ProductMixtureLogField` (the exact field of a mixture of product distributions, any
``D``), :class:`HammingNet` (the learned log-field; :class:`HammingMixer`, an MLP-mixer body for
large ``D``), its loss and queries and the layer-mean check :func:`layer_mean_ratios`
(:mod:`.learning`). The mathematics, with the test that checks each result, is in ``docs/hamming.md``.
"""

from . import targets
from .circuit import HammingCircuit, HammingConfig
from .extended import ExtendedTensor
from .learning import BregmanLogLoss, KernelQueries, WalkQueries, layer_mean_ratios
from .log_field import DataLogField, LogField, ProductMixtureLogField
from .mixer import HammingMixer
from .model import HammingNet, HammingNetField
from .tables import KernelTables, distance_histogram

__all__ = [
    "BregmanLogLoss",
    "DataLogField",
    "ExtendedTensor",
    "HammingCircuit",
    "HammingConfig",
    "HammingMixer",
    "HammingNet",
    "HammingNetField",
    "KernelQueries",
    "KernelTables",
    "LogField",
    "ProductMixtureLogField",
    "WalkQueries",
    "distance_histogram",
    "layer_mean_ratios",
    "targets",
]
