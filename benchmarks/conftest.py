"""pytest-benchmark collection of the family modules (``make bench``): the ``case`` argument of a
module's ``test_bench`` runs over every case of the module's ``GROUPS``."""

from . import runner


def pytest_generate_tests(metafunc):
    groups = getattr(metafunc.module, "GROUPS", None)
    if groups is not None and "case" in metafunc.fixturenames:
        runner.parametrize_cases(metafunc, groups)
