"""Distances between discrete distributions: pure functions on histograms and pmfs.

Every function takes non-negative float or integer arrays (``numpy.ndarray`` or ``torch.Tensor``)
of one shape ``(M,)`` (any shape is flattened), normalises each to sum 1 and computes in float64;
nothing is modified in place and nothing random happens except where a ``rng`` is passed.

Conventions, chosen once for the whole package:

* **TV** (total variation) ``= 1/2 sum |p - q|``, in ``[0, 1]``.
* **KL** ``KL(p || q) = sum_{p > 0} p log(p / q)`` in **nats**; ``+inf`` where ``p > 0 = q``. For a
  generated histogram ``q``, smooth it first with :func:`additive_smoothing` (the package uses
  ``alpha = 0.5``, the Krichevsky-Trofimov estimator) so that the KL from the target is finite:
  :func:`smoothed_kl`.
* **JS** (Jensen-Shannon divergence) ``= 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q) / 2``,
  in **bits** (log base 2), so it lies in ``[0, 1]``; always finite, no smoothing needed.

Sampling noise: a histogram of ``n`` draws from ``q`` itself is not at TV 0 from ``q``. The
:func:`tv_floor` family gives the value a perfect generator would reach at the same ``n``, the
yardstick that every sampled TV must be read against.

Goodness of fit: :func:`chi_square_test` (Pearson's chi-square of counts against a pmf, cells of
small expected count pooled by :func:`pooled_cells`, rejection above :func:`chi_square_critical`,
a false-failure rate of about 1e-6) is the one test by which the test suite and the benchmarks
decide that a sampler draws from the law it should. Its numerical core lives in the private
sibling :mod:`ecd2g_fast._goodness_of_fit`; import it from here.
"""

from __future__ import annotations

import math

import numpy as np

from . import _goodness_of_fit as _gof
from ._goodness_of_fit import (
    CHI_SQUARE_MIN_EXPECTED,
    CHI_SQUARE_Z,
    POOLINGS,
    ChiSquareTest,
    chi_square_critical,
)

#: Pseudo-count added to every cell of a generated histogram before a KL (Krichevsky-Trofimov).
DEFAULT_KL_ALPHA = 0.5
#: Mass fraction that defines a distribution's occupied cells (see :func:`occupied_cells`).
DEFAULT_OCCUPIED_MASS = 0.99

__all__ = [
    "CHI_SQUARE_MIN_EXPECTED",
    "CHI_SQUARE_Z",
    "DEFAULT_KL_ALPHA",
    "DEFAULT_OCCUPIED_MASS",
    "POOLINGS",
    "ChiSquareTest",
    "additive_smoothing",
    "chi_square_critical",
    "chi_square_test",
    "histogram",
    "js_divergence",
    "js_floor",
    "kl_divergence",
    "normalize",
    "occupied_cells",
    "pooled_cells",
    "smoothed_kl",
    "smoothed_kl_floor",
    "total_variation",
    "tv_floor",
    "tv_floor_two_sample",
]


def _as_array(name: str, values) -> np.ndarray:
    """``values`` as a flat float64 numpy array; raises for negative or non-finite entries."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array or tensor, got {type(values).__name__}") from error
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    if (array < 0).any():
        raise ValueError(f"{name} must be non-negative, got minimum {array.min()}")
    return array


def _pair(p, q, p_name: str = "p", q_name: str = "q") -> tuple[np.ndarray, np.ndarray]:
    p, q = normalize(p, name=p_name), normalize(q, name=q_name)
    if p.shape != q.shape:
        raise ValueError(
            f"{p_name} and {q_name} must have the same number of cells, got {p.size} and {q.size}"
        )
    return p, q


def normalize(values, *, name: str = "values") -> np.ndarray:
    """A histogram or unnormalised pmf as a pmf.

    Args:
        values: ``(M,)`` (or any shape, flattened) non-negative counts or weights.
        name: the argument's name, for error messages.

    Returns:
        ``(M,)`` float64 numpy array summing to 1.

    Raises:
        TypeError: not numeric.
        ValueError: empty, negative, non-finite, or summing to 0.
    """
    array = _as_array(name, values)
    total = array.sum()
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum")
    return array / total


def histogram(states, num_categories: int) -> np.ndarray:
    """Counts of each state, in the package's row-major state order.

    Args:
        states: ``(N, D)`` integer states in ``[0, K)`` (numpy or torch), or ``(N,)`` flat
            indices in ``[0, K)`` for ``D = 1``.
        num_categories: ``K >= 1``.

    Returns:
        ``(K**D,)`` int64 numpy counts; cell ``sum_d z[d] K**(D-1-d)`` counts state ``z``.

    Raises:
        TypeError: non-integer states or ``num_categories``.
        ValueError: wrong rank, a state outside ``[0, K)``, or ``K**D`` above 2**26 cells.
    """
    if isinstance(num_categories, bool) or not isinstance(num_categories, int):
        raise TypeError(f"num_categories must be an int, got {type(num_categories).__name__}")
    if num_categories < 1:
        raise ValueError(f"num_categories must be >= 1, got {num_categories}")
    if hasattr(states, "detach"):
        states = states.detach().cpu().numpy()
    states = np.asarray(states)
    if not np.issubdtype(states.dtype, np.integer):
        raise TypeError(f"states must hold integers, got dtype {states.dtype}")
    if states.ndim == 1:
        states = states[:, None]
    if states.ndim != 2:
        raise ValueError(f"states must have shape (N, D) or (N,), got {states.shape}")
    dim = states.shape[1]
    num_cells = num_categories**dim
    if num_cells > 2**26:
        raise ValueError(f"histogram supports K**D <= 2**26 cells, got {num_categories}**{dim}")
    if states.size and (states.min() < 0 or states.max() >= num_categories):
        raise ValueError(f"states must lie in [0, {num_categories}), got [{states.min()}, {states.max()}]")
    flat = np.zeros(states.shape[0], dtype=np.int64)
    for d in range(dim):
        flat = flat * num_categories + states[:, d].astype(np.int64)
    return np.bincount(flat, minlength=num_cells).astype(np.int64)


def total_variation(p, q) -> float:
    """Total variation ``1/2 sum |p - q|`` after normalising both.

    Args:
        p, q: ``(M,)`` non-negative histograms or pmfs.

    Returns:
        A float in ``[0, 1]``: 0 for equal pmfs, 1 for disjoint supports.

    Raises:
        TypeError, ValueError: see :func:`normalize`; different sizes.
    """
    p, q = _pair(p, q)
    return float(0.5 * np.abs(p - q).sum())


def kl_divergence(p, q) -> float:
    """``KL(p || q) = sum_{p > 0} p ln(p / q)`` in nats, after normalising both.

    Args:
        p, q: ``(M,)`` non-negative histograms or pmfs.

    Returns:
        A float ``>= 0``; ``math.inf`` when ``q`` is 0 on a cell where ``p`` is not.

    Raises:
        TypeError, ValueError: see :func:`normalize`; different sizes.
    """
    p, q = _pair(p, q)
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float(max(np.sum(p[support] * np.log(p[support] / q[support])), 0.0))


def additive_smoothing(counts, alpha: float = DEFAULT_KL_ALPHA) -> np.ndarray:
    """Additive (Lidstone) smoothing: ``(c_i + alpha) / (n + alpha M)``.

    ``alpha = 1`` is Laplace's rule, ``alpha = 0.5`` the Krichevsky-Trofimov estimator (the
    package's default for KL), ``alpha = 0`` plain normalisation.

    Args:
        counts: ``(M,)`` non-negative counts (need not be integers).
        alpha: pseudo-count per cell, ``>= 0``.

    Returns:
        ``(M,)`` float64 pmf.

    Raises:
        TypeError, ValueError: bad ``counts``; ``alpha`` negative or not finite.
    """
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    counts = _as_array("counts", counts)
    return normalize(counts + alpha, name="counts")


def smoothed_kl(target, generated_counts, alpha: float = DEFAULT_KL_ALPHA) -> float:
    """``KL(target || additive_smoothing(generated_counts, alpha))`` in nats.

    The direction penalises target mass that the generator misses; smoothing keeps it finite.
    Even a perfect generator scores above 0 here (about ``(#target cells) / (2 n)`` nats for
    ``n`` samples): compare with the same quantity for a target sample of the same size.

    Args:
        target: ``(M,)`` target pmf or histogram.
        generated_counts: ``(M,)`` counts of the generated samples.
        alpha: pseudo-count per cell.

    Returns:
        A finite float ``>= 0`` when ``alpha > 0``.
    """
    return kl_divergence(target, additive_smoothing(generated_counts, alpha))


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in bits (log base 2), after normalising both.

    ``JS = 1/2 KL(p || m) + 1/2 KL(q || m)`` with ``m = (p + q) / 2``.

    Args:
        p, q: ``(M,)`` non-negative histograms or pmfs.

    Returns:
        A float in ``[0, 1]``: 0 for equal pmfs, 1 for disjoint supports.
    """
    p, q = _pair(p, q)
    m = 0.5 * (p + q)

    def half(a: np.ndarray) -> float:
        support = a > 0
        return float(np.sum(a[support] * np.log2(a[support] / m[support])))

    return float(min(max(0.5 * half(p) + 0.5 * half(q), 0.0), 1.0))


def occupied_cells(pmf, mass: float = DEFAULT_OCCUPIED_MASS) -> int:
    """Number of cells of the smallest set holding ``mass`` of the probability.

    Cells are taken by decreasing probability until their total reaches ``mass``; this is the
    distribution's effective support, used to size sample counts (10 samples per occupied cell).

    Args:
        pmf: ``(M,)`` pmf or histogram.
        mass: fraction in ``(0, 1]``.

    Returns:
        An int in ``[1, M]``.
    """
    if not (isinstance(mass, (int, float)) and 0 < mass <= 1):
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    ranked = np.sort(normalize(pmf, name="pmf"))[::-1]
    cumulative = np.cumsum(ranked)
    return int(min(np.searchsorted(cumulative, mass * (1 - 1e-12)) + 1, ranked.size))


def _check_draws(num_samples: int, repeats: int) -> None:
    for name, value in (("num_samples", num_samples), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def tv_floor(pmf, num_samples: int, rng: np.random.Generator, repeats: int = 10) -> float:
    """Mean TV between a histogram of ``num_samples`` draws from ``pmf`` and ``pmf`` itself.

    This is exactly the statistic :func:`total_variation` gives a *perfect* generator evaluated
    the same way (``num_samples`` generated states against the reference pmf): the sampling-noise
    floor of a sampled TV. Averaged over ``repeats`` independent multinomial draws.

    Args:
        pmf: ``(M,)`` reference pmf.
        num_samples: the generated sample size ``n``.
        rng: numpy random generator.
        repeats: number of independent draws to average.

    Returns:
        A float in ``[0, 1]``, roughly ``sum_i sqrt(p_i (1 - p_i) / (2 pi n))``.
    """
    _check_draws(num_samples, repeats)
    pmf = normalize(pmf, name="pmf")
    values = [total_variation(rng.multinomial(num_samples, pmf), pmf) for _ in range(repeats)]
    return float(np.mean(values))


def tv_floor_two_sample(pmf, num_samples: int, rng: np.random.Generator, repeats: int = 10) -> float:
    """Mean TV between two independent histograms of ``num_samples`` draws each from ``pmf``.

    About ``sqrt(2)`` times :func:`tv_floor`; the floor for comparing two *sampled* histograms
    (as ``examples/transport_1d.py`` does), not a sampled histogram with an exact pmf.

    Args, Returns: as :func:`tv_floor`.
    """
    _check_draws(num_samples, repeats)
    pmf = normalize(pmf, name="pmf")
    values = [
        total_variation(rng.multinomial(num_samples, pmf), rng.multinomial(num_samples, pmf))
        for _ in range(repeats)
    ]
    return float(np.mean(values))


def smoothed_kl_floor(
    pmf, num_samples: int, rng: np.random.Generator, alpha: float = DEFAULT_KL_ALPHA, repeats: int = 10
) -> float:
    """Mean :func:`smoothed_kl` of a perfect generator: ``num_samples`` draws from ``pmf``.

    Args, Returns: as :func:`tv_floor`; ``alpha`` as :func:`additive_smoothing`.
    """
    _check_draws(num_samples, repeats)
    pmf = normalize(pmf, name="pmf")
    values = [smoothed_kl(pmf, rng.multinomial(num_samples, pmf), alpha) for _ in range(repeats)]
    return float(np.mean(values))


def js_floor(pmf, num_samples: int, rng: np.random.Generator, repeats: int = 10) -> float:
    """Mean :func:`js_divergence` between ``pmf`` and a histogram of ``num_samples`` draws from it.

    Args, Returns: as :func:`tv_floor`.
    """
    _check_draws(num_samples, repeats)
    pmf = normalize(pmf, name="pmf")
    values = [js_divergence(pmf, rng.multinomial(num_samples, pmf)) for _ in range(repeats)]
    return float(np.mean(values))


# ---------------------------------------------------------------------------- goodness of fit
def pooled_cells(
    expected, min_expected: float = CHI_SQUARE_MIN_EXPECTED, pooling: str = "neighbours"
) -> np.ndarray:
    """Cell label of each outcome for a chi-square test, small expected counts pooled.

    Outcomes with expected count ``>= min_expected`` keep a cell each (labels ``0, 1, ...`` in
    index order). The others are pooled after them, by ``pooling``:

    * ``"neighbours"``: in index order (neighbouring states), into runs closed as soon as their
      total expected count reaches ``min_expected``; a short last run joins the run before it.
      Keeps the test's power where much mass lies on small outcomes (a grid's tails).
    * ``"together"``: all into one cell.

    Args:
        expected: ``(N,)`` non-negative expected counts.
        min_expected: the pooling threshold (Cochran's rule: 5).
        pooling: ``"neighbours"`` or ``"together"``.

    Returns:
        ``(N,)`` int64 numpy labels in ``[0, cells)``; every label is used.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return _gof.pool(_as_array("expected", expected), min_expected, pooling)


def chi_square_test(
    counts,
    pmf,
    *,
    min_expected: float = CHI_SQUARE_MIN_EXPECTED,
    pooling: str = "neighbours",
    z: float = CHI_SQUARE_Z,
) -> ChiSquareTest:
    """Pearson chi-square goodness of fit of ``counts`` to ``pmf``.

    The outcomes where ``pmf > 0`` are grouped by :func:`pooled_cells` (expected counts
    ``n pmf`` below ``min_expected`` pooled), and the test rejects when the statistic exceeds
    :func:`chi_square_critical` (default ``z``: false-failure rate about 1e-6). A sample on an
    outcome of probability 0 rejects outright.

    Args:
        counts: ``(N,)`` non-negative counts of each outcome (numpy or torch).
        pmf: ``(N,)`` the law they should follow (normalised here).
        min_expected, pooling: see :func:`pooled_cells`.
        z: standard-normal quantile of the critical value.

    Returns:
        :class:`ChiSquareTest`: ``.passed`` says whether ``counts`` are consistent with ``pmf``;
        ``str()`` is a one-line summary.

    Raises:
        TypeError, ValueError: bad ``counts`` or ``pmf`` (see :func:`normalize`), different
        sizes, unknown ``pooling``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    counts = _as_array("counts", counts)
    pmf = normalize(pmf, name="pmf")
    if counts.shape != pmf.shape:
        raise ValueError(
            f"counts and pmf must have the same number of cells, got {counts.size} and {pmf.size}"
        )
    return _gof.evaluate(counts, pmf, min_expected, pooling, z)
