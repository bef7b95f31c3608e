"""Fixtures shared by the test modules, and the hypothesis profiles of tests/test_fuzz.py."""

import os

import pytest
import torch

try:
    # Imported here, before any test sets TRITON_INTERPRET: Triton decorates its own library
    # functions in the mode of its first import, and a first import in interpreter mode breaks
    # compiled kernels later in the same process (the GPU test run mixes both).
    import triton  # noqa: F401
except ImportError:
    pass


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny ops on one intra-op thread: on a loaded 2-core machine a second OpenMP
    thread only adds spin-waiting (measured: 2 ms -> 130 ms per batch-256 MLP backward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Hypothesis profiles of tests/test_fuzz.py (its module docstring describes them); chosen with
# ECD2G_FUZZ_PROFILE, "ci" by default. Guarded so that the rest of the suite runs without hypothesis.
try:
    from hypothesis import HealthCheck, Phase, settings
except ImportError:
    pass
else:
    settings.register_profile(
        "ci",
        max_examples=10,
        deadline=None,
        derandomize=True,  # the same examples on every run: CI is reproducible
        database=None,  # nothing written to .hypothesis/, nothing replayed from an earlier run
        phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure is reported at once
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    settings.register_profile(
        "long",
        max_examples=400,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    settings.load_profile(os.environ.get("ECD2G_FUZZ_PROFILE", "ci"))
