"""Shared test axes and helpers: devices, statistical tests, fast-path vs reference comparison."""

from __future__ import annotations

import pytest
import torch

from ecd2g_fast import metrics


def devices() -> list:
    """CPU always; CUDA as a cleanly skipped case when absent (CUDA is never touched at import)."""
    return [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif("not __import__('torch').cuda.is_available()")),
    ]


def chi_square_critical(dof: int, z: float = metrics.CHI_SQUARE_Z) -> float:
    """Upper critical value of chi^2 with ``dof`` degrees of freedom (Wilson-Hilferty); the
    default ``z`` (the standard-normal quantile of ``1 - 1e-6``) makes a test that rejects above
    it fail falsely with probability about 1e-6. See :func:`ecd2g_fast.metrics.chi_square_critical`."""
    return metrics.chi_square_critical(dof, z)


def assert_samples_follow(counts: torch.Tensor, pmf: torch.Tensor, min_expected: float = 5.0) -> None:
    """Pearson chi-square goodness of fit of integer ``counts`` (M,) to ``pmf`` (M,), false-failure
    rate about 1e-6; cells with expected count below ``min_expected`` are pooled into one cell
    (:func:`ecd2g_fast.metrics.chi_square_test` with ``pooling="together"``)."""
    result = metrics.chi_square_test(counts, pmf, min_expected=min_expected, pooling="together")
    assert result.passed, f"samples do not follow the pmf: {result}"


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a.to(torch.float64) - b.to(torch.float64)).abs().sum())


def assert_close_to_reference(
    actual: torch.Tensor, reference: torch.Tensor, *, rtol: float, scale: torch.Tensor | float | None = None
) -> None:
    """``|actual - reference| <= rtol * scale`` elementwise (``scale`` defaults to ``|reference|``);
    the failure message shows the max error, mismatch count and first mismatching indices."""
    actual = actual.to(torch.float64).cpu()
    reference = reference.to(torch.float64).cpu()
    assert actual.shape == reference.shape, f"shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    if scale is None:
        scale = reference.abs()
    scale = torch.as_tensor(scale, dtype=torch.float64).cpu()
    err = (actual - reference).abs()
    bad = err > rtol * scale
    if bool(bad.any()):
        idx = torch.nonzero(bad)[:5].tolist()
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} values differ beyond rtol={rtol}: max abs error "
            f"{float(err.max()):.3e}, max relative {float((err / scale.clamp_min(1e-300)).max()):.3e}; "
            f"first at {idx}"
        )


def assert_equal_to_reference(actual: torch.Tensor, reference: torch.Tensor) -> None:
    """Exact equality of integer results (counts, indices); the failure message shows the
    mismatch count, the largest difference and the first mismatching indices with both values."""
    actual, reference = actual.cpu(), reference.cpu()
    assert actual.shape == reference.shape, f"shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    bad = actual != reference
    if bool(bad.any()):
        idx = torch.nonzero(bad)[:5]
        first = [(i, actual[tuple(i)].item(), reference[tuple(i)].item()) for i in idx.tolist()]
        raise AssertionError(
            f"{int(bad.sum())} of {bad.numel()} values differ: max |difference| "
            f"{(actual - reference).abs().max().item()}; first (index, actual, reference): {first}"
        )


def discretised_gaussian(K: int) -> torch.Tensor:
    """docs/theory.md §4's target on {0..K-1}: mean (K-1)/2, standard deviation K/10; (K,) float64."""
    x = torch.arange(K, dtype=torch.float64)
    w = torch.exp(-0.5 * ((x - (K - 1) / 2) / (K / 10)) ** 2)
    return w / w.sum()


def dirichlet_pair(M: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent Dirichlet(1, ..., 1) pmfs of length M (normalised Exp(1) variables),
    from their own generator: the global RNG is untouched."""
    g = torch.Generator().manual_seed(seed)
    e = -torch.log(torch.rand((2, M), dtype=torch.float64, generator=g))
    return e[0] / e[0].sum(), e[1] / e[1].sum()
