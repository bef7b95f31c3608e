"""Figures of an experiment (matplotlib, Agg backend, imported lazily).

* :func:`plot_histograms`: source / target / generated side by side (the paper's Figures 5 and 7):
  bar charts in 1D, heatmaps in 2D; the exact output law of the learned field is overlaid in 1D.
* :func:`plot_current_flow`: 1D only (Figure 6): the net current into every vertex ``(l, w)``,
  exact next to learned, and the per-layer edge currents ``I_l(z, w)``.
* :func:`plot_sample_grid`: high-dimensional runs: generated states drawn as images next to real
  ones; :func:`plot_marginals`: their per-coordinate means against the data's.
* :func:`plot_loss`: the training loss.

All functions take numpy arrays, write one PNG and return its path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "image_shape",
    "layer_currents",
    "plot_current_flow",
    "plot_histograms",
    "plot_loss",
    "plot_marginals",
    "plot_sample_grid",
    "vertex_inflow",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, **options) -> None:
    """Save ``fig`` as PNG atomically (temporary file, then rename) and close it."""
    from .folder import atomic_write

    try:
        atomic_write(Path(path), lambda handle: fig.savefig(handle, format="png", **options))
    finally:
        _pyplot().close(fig)


def _as_pmf(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return values / values.sum()


def plot_histograms(
    path: str | Path,
    num_categories: int,
    dim: int,
    panels: dict[str, np.ndarray],
    *,
    overlay: dict[str, np.ndarray] | None = None,
    title: str | None = None,
) -> Path:
    """Side-by-side histograms of distributions on ``{0..K-1}^D`` (``D`` 1 or 2).

    Args:
        path: output PNG.
        num_categories: ``K``.
        dim: ``D``; 1 gives bar charts, 2 heatmaps (first coordinate horizontal), other values
            a bar chart over the flat state index.
        panels: title -> ``(K**D,)`` histogram or pmf (normalised here), one panel each.
        overlay: 1D only: label -> ``(K,)`` pmf drawn as a line on the last panel (for example
            the target pmf and the exact output law of the learned field).
        title: figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    pmfs = {name: _as_pmf(values) for name, values in panels.items()}
    if dim == 2:
        vmax = max(float(p.max()) for p in pmfs.values())
        for ax, (name, pmf) in zip(axes[0], pmfs.items()):
            image = ax.imshow(
                pmf.reshape(num_categories, num_categories).T,
                origin="lower",
                cmap="viridis",
                vmin=0.0,
                vmax=vmax,
                interpolation="nearest",
            )
            ax.set_title(name)
            ax.set_xlabel("$z_0$")
            ax.set_ylabel("$z_1$")
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="probability")
    else:
        ymax = max(float(p.max()) for p in pmfs.values())
        for ax, (name, pmf) in zip(axes[0], pmfs.items()):
            ax.bar(np.arange(pmf.size), pmf, width=1.0, color="tab:blue", alpha=0.7)
            ax.set_title(name)
            ax.set_xlabel("state" if dim == 1 else "flat state index")
            ax.set_ylim(0, 1.15 * ymax)
        if overlay:
            for (label, pmf), style in zip(overlay.items(), ("k-", "r--", "g:")):
                axes[0][-1].plot(np.arange(pmf.size), _as_pmf(pmf), style, lw=1.2, label=label)
            axes[0][-1].legend(fontsize=8)
        axes[0][0].set_ylabel("probability")
        fig.tight_layout()
    if title:
        fig.suptitle(title, fontsize=10, y=0.95 if dim == 2 else 1.02)
    _save(fig, path, dpi=110, bbox_inches="tight")
    return path


@torch.no_grad()
def layer_currents(field) -> np.ndarray:
    """``(L, M, M)`` float64 edge currents ``I_l(z, w)`` of any field (small ``M`` only).

    Args:
        field: an :class:`~ecd2g_fast.fields.Field` with ``L M^2 <= 2**24``.

    Raises:
        ValueError: the circuit is too large to tabulate.
    """
    c = field.circuit
    M, L = c.num_states, c.num_layers
    if L * M * M > 2**24:
        raise ValueError(f"layer_currents tabulates L*M*M = {L * M * M} values; at most 2**24 are supported")
    states = torch.arange(M, device=field.device)
    out = np.empty((L, M, M))
    for layer in range(L):
        ids = torch.full((M,), layer, device=field.device)
        out[layer] = field.currents_to_next(ids, states, 0, M).to(torch.float64).cpu().numpy()
    return out


def vertex_inflow(currents: np.ndarray, source_pmf: np.ndarray) -> np.ndarray:
    """``(L+1, M)``: the net current into each vertex from the layer before (layer 0: the source).

    Row ``l >= 1`` is ``sum_z I_{l-1}(z, w)``; by Kirchhoff's law it is the layer's share of the
    unit current, morphing from ``p`` (row 0) to ``q`` (row L) for the exact field.
    """
    return np.concatenate([np.asarray(source_pmf, dtype=np.float64)[None, :], currents.sum(axis=1)], axis=0)


def plot_current_flow(
    path: str | Path,
    exact: np.ndarray,
    learned: np.ndarray,
    source_pmf: np.ndarray,
    *,
    title: str | None = None,
) -> Path:
    """Exact vs learned current flow of a 1D circuit (the paper's Figure 6).

    Top row: the net current into each vertex, ``(L+1) x M`` heatmaps (layer vertical), exact,
    learned and their difference. Bottom rows: the edge currents ``I_l(z, w)`` of every layer,
    exact above learned, on one symmetric-log colour scale (negative = flowing backward).

    Args:
        path: output PNG.
        exact: ``(L, M, M)`` exact edge currents (:func:`layer_currents` of the exact field).
        learned: ``(L, M, M)`` learned edge currents.
        source_pmf: ``(M,)`` source pmf (the current injected into layer 0).
        title: figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    from matplotlib.colors import SymLogNorm

    path = Path(path)
    L, M, _ = exact.shape
    flows = {"exact": vertex_inflow(exact, source_pmf), "learned": vertex_inflow(learned, source_pmf)}
    flows["learned - exact"] = flows["learned"] - flows["exact"]
    fig = plt.figure(figsize=(max(12.0, 1.6 * L), 8.0))
    grid = fig.add_gridspec(3, L, height_ratios=[2.2, 1, 1], hspace=0.35)
    top = grid[0, :].subgridspec(1, 3)
    vmax = float(max(np.abs(flows["exact"]).max(), np.abs(flows["learned"]).max()))
    for k, (name, flow) in enumerate(flows.items()):
        ax = fig.add_subplot(top[0, k])
        limit = vmax if k < 2 else max(float(np.abs(flow).max()), 1e-300)
        image = ax.imshow(flow, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"net current into (l, w): {name}", fontsize=9)
        ax.set_xlabel("state w")
        ax.set_ylabel("layer l")
        fig.colorbar(image, ax=ax, shrink=0.8)
    edge_max = float(max(np.abs(exact).max(), np.abs(learned).max()))
    lateral = np.abs(exact[:, ~np.eye(M, dtype=bool)])
    linthresh = float(max(np.quantile(lateral, 0.5), edge_max * 1e-6, 1e-300))
    norm = SymLogNorm(linthresh=linthresh, vmin=-edge_max, vmax=edge_max, base=10)
    for row, (name, table) in enumerate((("exact", exact), ("learned", learned)), start=1):
        for layer in range(L):
            ax = fig.add_subplot(grid[row, layer])
            image = ax.imshow(
                table[layer].T, origin="lower", cmap="RdBu_r", norm=norm, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} $I_{{{layer}}}(z, w)$", fontsize=7)
            if layer == 0:
                ax.set_ylabel("w (layer l+1)", fontsize=7)
            if row == 2:
                ax.set_xlabel("z (layer l)", fontsize=7)
    fig.colorbar(image, ax=fig.axes[-2 * L :], shrink=0.6, label="edge current (symlog)")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi=100, bbox_inches="tight")
    return path


def plot_loss(
    path: str | Path, losses: np.ndarray, *, title: str | None = None, ylabel: str = "normalised MSE"
) -> Path:
    """The training loss per step (log scale) with a running mean over 1 % of the steps.

    Args:
        path: output PNG.
        losses: ``(steps,)`` losses.
        title: figure title.
        ylabel: what the loss is.

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    losses = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, losses.size + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="per step")
    window = max(1, losses.size // 100)
    if losses.size >= window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean over {window} steps")
    if (losses > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path


def image_shape(dim: int) -> tuple[int, int]:
    """``(height, width)`` of a ``dim``-pixel image: the most nearly square factorisation,
    ``height <= width`` (64: 8 x 8, 256: 16 x 16, 8: 2 x 4; a prime: 1 x dim)."""
    height = max(h for h in range(1, math.isqrt(dim) + 1) if dim % h == 0)
    return height, dim // height


def _tile(states: np.ndarray, columns: int, shape: tuple[int, int]) -> np.ndarray:
    """``(n, D)`` states as one mosaic of ``columns`` images per row, one blank pixel between them
    (NaN, drawn as the background)."""
    h, w = shape
    rows = max(1, math.ceil(states.shape[0] / columns))
    mosaic = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for i, state in enumerate(states):
        r, c = divmod(i, columns)
        mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = state.reshape(h, w)
    return mosaic


def plot_sample_grid(
    path: str | Path,
    panels: dict[str, np.ndarray],
    num_categories: int,
    *,
    columns: int = 8,
    title: str | None = None,
) -> Path:
    """Panels of states drawn as images (row-major pixels, :func:`image_shape`), side by side.

    Args:
        path: output PNG.
        panels: title -> ``(n, D)`` int64 states in ``[0, K)`` (the first ``columns**2`` are drawn).
        num_categories: ``K``: level 0 is white, ``K - 1`` black.
        columns: images per row (and at most as many rows).
        title: figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    dims = {np.asarray(states).shape[1] for states in panels.values()}
    if len(dims) != 1:
        raise ValueError(f"panels must all hold (n, D) states of one D, got D in {sorted(dims)}")
    shape = image_shape(dims.pop())
    mosaics = {
        name: (_tile(np.asarray(states)[: columns * columns], columns, shape), len(states))
        for name, states in panels.items()
    }
    height, width = max(m.shape[0] for m, _ in mosaics.values()), max(m.shape[1] for m, _ in mosaics.values())
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2 * height / width + 0.8), squeeze=False)
    cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
    for ax, (name, (mosaic, total)) in zip(axes[0], mosaics.items()):
        ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=num_categories - 1, interpolation="nearest")
        ax.set_title(f"{name}: {min(total, columns * columns)} of {total}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi=110, bbox_inches="tight")
    return path


def plot_marginals(
    path: str | Path,
    data_means: np.ndarray,
    sample_means: np.ndarray,
    *,
    data_label: str = "data",
    ylabel: str = "generated",
    title: str | None = None,
) -> Path:
    """Per-coordinate means of the generated states against the data's, with the line ``y = x``.

    Args:
        path: output PNG.
        data_means, sample_means: ``(D,)`` float64 mean state value of each coordinate (the
            probability of a 1 for ``K = 2``).
        data_label: what the data means are of (the x-axis label).
        ylabel: what the generated means are of.
        title: figure title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    x, y = np.asarray(data_means, dtype=np.float64), np.asarray(sample_means, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.05 * max(high - low, 1e-9)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "k-", lw=0.8, label="y = x")
    ax.scatter(x, y, s=12, alpha=0.8, color="tab:blue", label=f"{x.size} coordinates")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"mean per coordinate: {data_label}")
    ax.set_ylabel(f"mean per coordinate: {ylabel}")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    return path
