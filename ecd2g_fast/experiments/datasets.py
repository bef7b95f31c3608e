"""Distributions on the grid ``{0..K-1}^D`` for the experiments: samplers and exact pmfs.

Every data set is a :class:`GridDistribution`: ``sample(n, rng)`` returns ``(n, D)`` int64 states
and ``pmf()`` the ``(K**D,)`` float64 law of those states in the package's row-major order
(``Circuit.state_index``). Where the law is known in closed form or by quadrature it is exact;
for data given as files it is the empirical law of the file (sampling then draws from the file
with replacement).

The 2D toy sets follow the usual conventions (scikit-learn's generators, FFJORD's toy data):

* **moons**: two interleaved half circles, ``(cos t, sin t)`` and ``(1 - cos t, 1/2 - sin t)``,
  ``t ~ U[0, pi]``, each with probability 1/2, plus isotropic Gaussian noise (default sd 0.1);
* **swiss roll**: the ``(x, z)`` coordinates of the 3D roll, ``(t cos t, t sin t)`` with
  ``t = 3 pi / 2 (1 + 2 u)``, ``u ~ U[0, 1]``, plus isotropic Gaussian noise (default sd 1.0);
* **circles**: two concentric circles of radii 1 and 1/2 (scikit-learn's ``make_circles`` with
  ``factor=0.5``), ``t ~ U[0, 2 pi]``, each with probability 1/2, plus isotropic Gaussian noise
  (default sd 0.05);
* **checkerboard**: uniform over the dark squares of a 4 x 4 checkerboard on the grid (cell
  ``(i, j)`` is dark when ``floor(4 i / K) + floor(4 j / K)`` is even); a law on the grid itself,
  with no continuous stage.

A continuous point is mapped to the grid by one affine map per data set: the noiseless curve's
bounding box, widened by 3 noise sd and then by a margin (default 5 % of the side on each side),
made square (the aspect ratio is kept) and cut into ``K x K`` cells; the rare points beyond the
edge are clipped onto the border cells. Because the noise is isotropic Gaussian, the probability
of a cell given the curve parameter ``t`` factorises into two normal-CDF differences, and the
exact pmf is a quadrature over ``t`` (``2**16`` midpoints per curve segment), clipping included.
"""

from __future__ import annotations

import abc
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Checkerboard",
    "CurveDistribution",
    "DiscretisedGaussian1D",
    "EmpiricalDistribution",
    "GridDistribution",
    "UniformGrid",
    "circles",
    "load_states",
    "make_moons",
    "make_swiss_roll",
    "moons",
    "swiss_roll",
]

_QUADRATURE_POINTS = 2**16


class GridDistribution(abc.ABC):
    """A distribution on ``{0..K-1}^D``.

    Attributes:
        name: short description, for logs and ``config.json``.
        num_categories: ``K``.
        dim: ``D``.
    """

    name: str
    num_categories: int
    dim: int

    @property
    def num_states(self) -> int:
        """``M = K**D``."""
        return self.num_categories**self.dim

    @abc.abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, D)`` int64 states drawn independently."""

    @abc.abstractmethod
    def pmf(self) -> np.ndarray:
        """``(M,)`` float64 law of the states, row-major (first coordinate most significant)."""

    @property
    def pmf_is_exact(self) -> bool:
        """True when :meth:`pmf` is the exact law (not an empirical estimate)."""
        return True

    def sampler(self, rng: np.random.Generator, device: torch.device | str = "cpu") -> StateSampler:
        """A callable ``n -> (n, D)`` int64 tensor on ``device`` drawing from this distribution."""
        return StateSampler(self, rng, device)


class StateSampler:
    """``n -> (n, D)`` int64 tensor draws of a :class:`GridDistribution` with its own numpy generator.

    ``state_dict()`` / ``load_state_dict()`` save and restore the generator, so the trainer's
    checkpoints resume a run that draws from it exactly.
    """

    def __init__(
        self, distribution: GridDistribution, rng: np.random.Generator, device: torch.device | str
    ) -> None:
        self.distribution, self.rng, self.device = distribution, rng, device

    def __call__(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.distribution.sample(n, self.rng)).to(self.device)

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def _check_size(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _sample_pmf(
    pmf: np.ndarray, n: int, rng: np.random.Generator, num_categories: int, dim: int
) -> np.ndarray:
    idx = rng.choice(pmf.size, size=n, p=pmf)
    powers = num_categories ** np.arange(dim - 1, -1, -1, dtype=np.int64)
    return (idx[:, None] // powers) % num_categories


@dataclass
class UniformGrid(GridDistribution):
    """Uniform over all ``K**D`` states ("noise")."""

    num_categories: int
    dim: int

    def __post_init__(self) -> None:
        _check_size("num_categories", self.num_categories, 2)
        _check_size("dim", self.dim, 1)
        self.name = f"uniform(K={self.num_categories}, D={self.dim})"

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.num_categories, size=(n, self.dim), dtype=np.int64)

    def pmf(self) -> np.ndarray:
        return np.full(self.num_states, 1.0 / self.num_states)


@dataclass
class DiscretisedGaussian1D(GridDistribution):
    """``q(k) proportional to exp(-(k - mean)^2 / (2 sd^2))`` on ``k = 0..K-1`` (docs/theory.md §4).

    Defaults: ``mean = (K-1)/2``, ``sd = K/10``.
    """

    num_categories: int
    mean: float | None = None
    sd: float | None = None

    def __post_init__(self) -> None:
        _check_size("num_categories", self.num_categories, 2)
        self.dim = 1
        if self.mean is None:
            self.mean = (self.num_categories - 1) / 2
        if self.sd is None:
            self.sd = self.num_categories / 10
        if not self.sd > 0:
            raise ValueError(f"sd must be > 0, got {self.sd}")
        self.name = f"gaussian(K={self.num_categories}, mean={self.mean:g}, sd={self.sd:g})"

    def pmf(self) -> np.ndarray:
        grid = np.arange(self.num_categories, dtype=np.float64)
        weights = np.exp(-0.5 * ((grid - self.mean) / self.sd) ** 2)
        return weights / weights.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _sample_pmf(self.pmf(), n, rng, self.num_categories, 1)


@dataclass(frozen=True)
class _Segment:
    """A curve piece ``t -> (x(t), y(t))``, ``t ~ U[t0, t1]``, chosen with probability ``weight``."""

    kind: str  # "outer_moon", "inner_moon", "roll", "outer_circle" or "inner_circle"
    t0: float
    t1: float
    weight: float

    def points(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "outer_moon":
            return np.cos(t), np.sin(t)
        if self.kind == "inner_moon":
            return 1.0 - np.cos(t), 0.5 - np.sin(t)
        if self.kind == "outer_circle":
            return np.cos(t), np.sin(t)
        if self.kind == "inner_circle":
            return 0.5 * np.cos(t), 0.5 * np.sin(t)
        return t * np.cos(t), t * np.sin(t)


class CurveDistribution(GridDistribution):
    """Noisy points around a union of curves, discretised on a ``K x K`` grid (module docstring).

    Args:
        name: description.
        segments: the curve pieces and their probabilities.
        noise: sd of the isotropic Gaussian noise, ``> 0``.
        num_categories: ``K >= 2`` cells per axis.
        margin: fraction of the grid side left empty on each side of the widened bounding box,
            in ``[0, 0.45]``.
    """

    def __init__(
        self,
        name: str,
        segments: tuple[_Segment, ...],
        noise: float,
        num_categories: int,
        margin: float = 0.05,
    ) -> None:
        self.num_categories = _check_size("num_categories", num_categories, 2)
        self.dim = 2
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0):
            raise ValueError(f"noise must be a finite number > 0, got {noise!r}")
        if not (isinstance(margin, (int, float)) and 0 <= margin <= 0.45):
            raise ValueError(f"margin must be in [0, 0.45], got {margin!r}")
        self.name, self.segments, self.noise, self.margin = name, segments, float(noise), float(margin)
        # bounding box of the noiseless curve, widened by 3 sd, made square, then the margin
        t = [np.linspace(s.t0, s.t1, 4097) for s in segments]
        xy = [s.points(tt) for s, tt in zip(segments, t)]
        xs = np.concatenate([p[0] for p in xy])
        ys = np.concatenate([p[1] for p in xy])
        lo = np.array([xs.min(), ys.min()]) - 3 * noise
        hi = np.array([xs.max(), ys.max()]) + 3 * noise
        side = float((hi - lo).max())
        centre = (lo + hi) / 2
        full = side / (1 - 2 * margin)
        self.origin = centre - full / 2  # (2,) lower-left corner of the grid
        self.cell = full / num_categories  # side of one cell

    def continuous_sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, 2)`` float64 points before discretisation."""
        weights = np.array([s.weight for s in self.segments])
        which = rng.choice(len(self.segments), size=n, p=weights / weights.sum())
        out = np.empty((n, 2))
        for k, seg in enumerate(self.segments):
            mask = which == k
            t = rng.uniform(seg.t0, seg.t1, size=int(mask.sum()))
            x, y = seg.points(t)
            out[mask, 0], out[mask, 1] = x, y
        return out + rng.normal(0.0, self.noise, size=out.shape)

    def to_grid(self, points: np.ndarray) -> np.ndarray:
        """``(n, 2)`` float points -> ``(n, 2)`` int64 cells (clipped onto the border)."""
        cells = np.floor((points - self.origin) / self.cell).astype(np.int64)
        return np.clip(cells, 0, self.num_categories - 1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.to_grid(self.continuous_sample(n, rng))

    def pmf(self) -> np.ndarray:
        K = self.num_categories
        edges = torch.arange(K + 1, dtype=torch.float64)
        total = torch.zeros((K, K), dtype=torch.float64)
        weights = np.array([s.weight for s in self.segments])
        weights = weights / weights.sum()
        for seg, weight in zip(self.segments, weights):
            # midpoint rule in t
            n = _QUADRATURE_POINTS
            t = seg.t0 + (np.arange(n) + 0.5) * (seg.t1 - seg.t0) / n
            x, y = seg.points(t)
            probs = []
            for axis, coord in enumerate((x, y)):
                # CDF of the noisy coordinate at the cell edges, in cell units; the outer edges
                # are +-inf, which is the clipping onto the border cells
                u = (torch.from_numpy(coord)[:, None] - self.origin[axis]) / self.cell
                cdf = torch.special.ndtr((edges[None, :] - u) * (self.cell / self.noise))
                cdf[:, 0], cdf[:, -1] = 0.0, 1.0
                probs.append(cdf[:, 1:] - cdf[:, :-1])  # (n, K)
            total += float(weight) / n * (probs[0].T @ probs[1])
        pmf = total.reshape(-1).numpy()
        return pmf / pmf.sum()


def moons(num_categories: int, noise: float = 0.1, margin: float = 0.05) -> CurveDistribution:
    """The two-moons data set on a ``K x K`` grid (module docstring)."""
    segments = (_Segment("outer_moon", 0.0, math.pi, 0.5), _Segment("inner_moon", 0.0, math.pi, 0.5))
    return CurveDistribution(
        f"moons(K={num_categories}, noise={noise:g})", segments, noise, num_categories, margin
    )


def swiss_roll(num_categories: int, noise: float = 1.0, margin: float = 0.05) -> CurveDistribution:
    """The 2D swiss roll (the ``(x, z)`` coordinates of the 3D roll) on a ``K x K`` grid."""
    segments = (_Segment("roll", 1.5 * math.pi, 4.5 * math.pi, 1.0),)
    return CurveDistribution(
        f"swiss_roll(K={num_categories}, noise={noise:g})", segments, noise, num_categories, margin
    )


def circles(num_categories: int, noise: float = 0.05, margin: float = 0.05) -> CurveDistribution:
    """Two concentric circles (radii 1 and 1/2) on a ``K x K`` grid (module docstring)."""
    segments = (
        _Segment("outer_circle", 0.0, 2 * math.pi, 0.5),
        _Segment("inner_circle", 0.0, 2 * math.pi, 0.5),
    )
    return CurveDistribution(
        f"circles(K={num_categories}, noise={noise:g})", segments, noise, num_categories, margin
    )


@dataclass
class Checkerboard(GridDistribution):
    """Uniform over the dark squares of a ``squares x squares`` checkerboard on the ``K x K`` grid.

    Cell ``(i, j)`` is dark when ``floor(squares i / K) + floor(squares j / K)`` is even.
    """

    num_categories: int
    squares: int = 4

    def __post_init__(self) -> None:
        _check_size("num_categories", self.num_categories, 2)
        _check_size("squares", self.squares, 2)
        if self.squares > self.num_categories:
            raise ValueError(f"squares must be <= num_categories = {self.num_categories}, got {self.squares}")
        self.dim = 2
        self.name = f"checkerboard(K={self.num_categories}, squares={self.squares})"

    def pmf(self) -> np.ndarray:
        K = self.num_categories
        square = np.arange(K) * self.squares // K  # (K,) square index of each cell along an axis
        dark = ((square[:, None] + square[None, :]) % 2 == 0).astype(np.float64)
        return (dark / dark.sum()).reshape(-1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _sample_pmf(self.pmf(), n, rng, self.num_categories, 2)


def make_moons(n: int, noise: float = 0.1, rng: np.random.Generator | None = None) -> np.ndarray:
    """``(n, 2)`` float64 continuous two-moons points (random ``t``; scikit-learn's layout)."""
    rng = rng if rng is not None else np.random.default_rng()
    return moons(2, noise).continuous_sample(_check_size("n", n, 0), rng)


def make_swiss_roll(n: int, noise: float = 1.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """``(n, 2)`` float64 continuous 2D swiss-roll points, the ``(x, z)`` of the 3D roll."""
    rng = rng if rng is not None else np.random.default_rng()
    return swiss_roll(2, noise).continuous_sample(_check_size("n", n, 0), rng)


class EmpiricalDistribution(GridDistribution):
    """The empirical law of a finite set of states (a data file).

    Args:
        states: ``(N, D)`` int64 states in ``[0, K)``, ``N >= 1``.
        num_categories: ``K``.
        name: description.
    """

    def __init__(self, states: np.ndarray, num_categories: int, name: str = "empirical") -> None:
        self.num_categories = _check_size("num_categories", num_categories, 2)
        states = np.asarray(states)
        if states.ndim != 2 or states.shape[0] < 1:
            raise ValueError(f"states must have shape (N, D) with N >= 1, got {states.shape}")
        if states.min() < 0 or states.max() >= num_categories:
            raise ValueError(
                f"states must lie in [0, {num_categories}), got [{states.min()}, {states.max()}]"
            )
        self.states = states.astype(np.int64)
        self.dim = states.shape[1]
        self.name = name

    @property
    def pmf_is_exact(self) -> bool:
        return False

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.states[rng.integers(0, self.states.shape[0], size=n)]

    def pmf(self) -> np.ndarray:
        from ..metrics import histogram

        counts = histogram(self.states, self.num_categories).astype(np.float64)
        return counts / counts.sum()


#: States in data files must be below this (a larger K could never be tabulated anyway).
MAX_STATE_VALUE = 2**31


def load_states(path: str | Path, *, name: str = "path") -> np.ndarray:
    """Integer states from a ``.npy`` or ``.csv`` file.

    A ``.npy`` file holds an integer array ``(N, D)`` (or ``(N,)`` for ``D = 1``). A ``.csv`` file
    holds one state per line, ``D`` comma-separated integers; a first line that is not numeric
    is taken as a header and skipped.

    Args:
        path: the file.
        name: the option's name, for error messages.

    Returns:
        ``(N, D)`` int64 array.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown suffix; non-numeric, non-integer, negative or huge values; wrong rank; no
            rows or columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".csv"):
        raise ValueError(f"{name} must be a .npy or .csv file, got {str(path)!r}")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with path.open() as handle:
                first = handle.readline()
            try:
                [float(v) for v in first.strip().split(",") if v.strip()]
                skip = 0
            except ValueError:
                skip = 1
            array = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:  # UnicodeDecodeError is a ValueError
        raise ValueError(
            f"{name} file {str(path)!r} is not a readable {suffix} file of integer states: {error}"
        ) from None
    array = np.asarray(array)
    where = f"{name} file {str(path)!r}"
    if array.dtype.kind not in "iuf" and array.dtype != np.bool_:
        raise ValueError(f"{where} must hold integer states, got values of dtype {array.dtype}")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{where} must hold an (N, D) array of states with N >= 1 and D >= 1, got shape {array.shape}"
        )
    if array.dtype.kind == "f" and (not np.all(np.isfinite(array)) or not np.all(array == np.round(array))):
        raise ValueError(f"{where} must hold integer states, found non-integer values")
    if array.min() < 0:
        raise ValueError(f"{where} must hold non-negative states, got minimum {array.min()}")
    if array.max() >= MAX_STATE_VALUE:
        raise ValueError(f"{where} holds state {array.max()}; states must be below {MAX_STATE_VALUE} (2**31)")
    array = array.astype(np.int64)
    return array
