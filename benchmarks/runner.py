"""How benchmark families run: under pytest-benchmark (``make bench``) and as commands.

Every family module (``bench_<family>.py``) ends with ``main(GROUPS, ...)`` from here, so
``python -m benchmarks.bench_<family>`` prints its table and appends its rows to
``benchmarks/results/<family>.jsonl``; ``benchmarks/conftest.py`` feeds the same ``GROUPS`` to
pytest-benchmark through :func:`parametrize_cases`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict

import torch

from .cases import Case, Group, Limits, Session, derive
from .harness import (
    RESULTS,
    append_jsonl,
    format_number,
    markdown_table,
    repo_path,
    run_metadata,
    synchronize,
)

__all__ = ["arg_parser", "main", "parametrize_cases", "run_benchmark", "run_groups", "start"]


# ----------------------------------------------------------------------------- pytest-benchmark
def parametrize_cases(metafunc, groups: dict[str, Group]) -> None:
    """``pytest_generate_tests`` of the family modules: parametrize the ``case`` argument with
    every case of ``groups`` on the CPU and, when present, CUDA (:meth:`Limits.from_env`);
    a skipped case is a skipped test with its reason."""
    import pytest

    params = []
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            params.append(pytest.param(None, id="cuda", marks=pytest.mark.skip(reason="no CUDA device")))
            continue
        session = Session(device, Limits.from_env(device))
        for group in groups.values():
            for item in group(session.device, session.limits):
                if isinstance(item, Case):
                    marks = [pytest.mark.skip(reason=item.skip)] if item.skip else []
                    params.append(pytest.param((session, item), id=f"{device}-{item.id}", marks=marks))
    metafunc.parametrize("case", params)


def run_benchmark(benchmark, case: tuple[Session, Case]) -> None:
    """Prepare (check) one case and time it with pytest-benchmark's ``benchmark`` fixture."""
    session, case = case
    prepared = case.prepare()

    def call():
        prepared.fn()
        synchronize(session.device)

    benchmark.extra_info.update(
        figure=case.figure,
        check=prepared.check,
        threads=torch.get_num_threads(),
        **case.params,
        **prepared.params,
    )
    long = case.long
    benchmark.pedantic(
        call, rounds=1 if long else session.limits.repeats, iterations=1, warmup_rounds=0 if long else 1
    )


# ----------------------------------------------------------------------------- command line
def arg_parser(description: str, groups: Sequence[str], default_groups: Sequence[str] | None = None):
    """The options every benchmark command line shares: ``--device``, ``--quick``, ``--threads``,
    ``--cases``, ``--backends``, ``--repeats``, ``--set``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--quick", action="store_true", help="shortened run: the CPU cost caps, fewer repeats"
    )
    parser.add_argument(
        "--cases", nargs="+", choices=groups, default=list(default_groups or groups), help="groups to run"
    )
    parser.add_argument("--backends", nargs="+", help="only these backends (default: all)")
    parser.add_argument("--repeats", type=int, help="timed calls of short cases (default: the limits')")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 with --quick on the CPU, else torch's default)",
    )
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override a field of Limits (sizes, caps)"
    )
    return parser


def start(args: argparse.Namespace, log: Callable[[str], None] = print) -> tuple[Session, dict]:
    """Apply the shared options (threads, device, limits) and open a :class:`Session`; returns
    it and the run's :func:`run_metadata` (with ``quick``, ``limits`` and ``groups``)."""
    if args.threads is None and args.quick and args.device == "cpu":
        args.threads = 1  # on a 2-core machine shared with other work, two threads were 5-50x slower
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    limits = Limits.for_run(args.device, args.quick).with_settings(args.set)
    if args.repeats:
        limits = dataclasses.replace(limits, repeats=args.repeats)
    meta = run_metadata(args.device)
    meta.update(quick=args.quick, limits=asdict(limits), groups=args.cases)
    session = Session(args.device, limits, run_id=meta["timestamp"], backends=args.backends, log=log)
    log(f"$ {meta['command']}")
    log(
        f"device={meta['device_name']} quick={args.quick} threads={torch.get_num_threads()} "
        f"load={meta['load_average']} commit={meta['git']['commit']}"
    )
    return session, meta


def run_groups(session: Session, groups: dict[str, Group], names: Iterable[str]) -> None:
    """Run the groups ``names`` (in the order of ``groups``), logging each group's time."""
    for name, group in groups.items():
        if name in names:
            session.log(f"[{name}]")
            begin = time.perf_counter()
            session.run_group(group)
            session.log(f"  ({time.perf_counter() - begin:.1f} s)")


def main(
    groups: dict[str, Group], description: str, family: str, argv: Sequence[str] | None = None
) -> list[dict]:
    """The command line of a family module (``python -m benchmarks.bench_<family>``): run its
    groups, print a table (value and ratio to the reference of the same run) and append every
    row, with the run's metadata, to ``benchmarks/results/<family>.jsonl`` (``--no-save``: not)."""
    parser = arg_parser(description, list(groups))
    parser.add_argument("--no-save", action="store_true", help="do not append to the JSONL file")
    parser.add_argument("--out", default=str(RESULTS / f"{family}.jsonl"), help="JSONL file to append to")
    args = parser.parse_args(argv)
    session, meta = start(args)
    run_groups(session, groups, args.cases)
    rows = derive(session.rows, {session.run_id: meta})
    table = [
        [
            r["figure"],
            r["backend"],
            format_number(r["value"]),
            r["unit"],
            format_number(r["seconds"]),
            "-" if r["ratio_to_reference"] is None else f"{r['ratio_to_reference']:.3g}",
        ]
        for r in rows
    ]
    print(markdown_table(["figure", "backend", "value", "unit", "best s", "x ref"], table))
    if not args.no_save:
        path = append_jsonl(args.out, ({"metadata": meta, **r} for r in rows))
        print(f"appended {len(rows)} rows to {repo_path(path)}")
    return rows
