"""Benchmarks of ecd2g_fast (not part of the installed package; run from the repository root).

==========================  ====================================================================
:mod:`.harness`             timing (``measure``), run metadata, limits, cases and rows, writers,
                            the pytest-benchmark glue and the family command line
``bench_targets.py``        the current-target pass, every backend
``bench_hamming_targets.py`` the Hamming-circuit target pass, every backend
``bench_sampler.py``        whole walks and one sampler move (complete and Hamming circuits)
``bench_training.py``       one training step; the paper's 2D training run (and its profile)
``bench_end_to_end.py``     sampling the paper's 2D experiment (trained CurrentNet, ExactField)
:mod:`.report`              runs the families' groups, evaluates ``goals.json``, writes
                            ``results/<device-slug>.{json,md,log}``
``dfm_comparison.py``       ECD2G next to discrete flow matching (quality and time, one run)
``sweep.py``                the training-defaults sweep (its results: ``results/sweep/``)
``highdim_learning.py``     training variants of the Hamming model at D = 64, measured against the
                            exact field (``results/highdim_learning.md``)
``highdim_comparison.py``   the Hamming model next to discrete flow matching at D = 64
``gpu_session.sh``          the GPU report cut into parts of under 10 minutes each
==========================  ====================================================================

Run a module from the repository root: ``python -m benchmarks.report --quick``,
``python -m benchmarks.bench_sampler --cases walk``; ``make bench`` runs every family's cases
under pytest-benchmark (``benchmarks/conftest.py`` parametrizes them).
"""
