"""Benchmark cases and how they run: limits, cases, sessions, rows, pytest-benchmark and the CLI.

Cases: a family module (``bench_<family>.py``) maps each of its groups to a function
``(device, limits) -> iterable of Case | Attachment`` (its ``GROUPS``). A :class:`Case` is one
(figure, backend); its ``prepare()`` builds the inputs, checks the fast path against its
reference (raising ``AssertionError`` on a mismatch: the case is not timed) and returns the
call to time. :class:`Session` runs cases into rows (one JSON-friendly dict per case, the format
of ``report.py``'s JSON); :mod:`benchmarks.runner` runs the same cases under pytest-benchmark (``make bench``) and as each
family module's command line.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ecd2g_fast import metrics

from .harness import (
    Timing,
    format_number,
    measure,
)

__all__ = [
    "Attachment",
    "Case",
    "check_counts",
    "derive",
    "Group",
    "Limits",
    "mlp_macs",
    "Prepared",
    "Session",
]

# ----------------------------------------------------------------------------- limits
_CAP_NAMES = (
    "max_net_pairs",
    "max_move_net_pairs",
    "max_dense_currents",
    "max_compiled_currents",
    "max_reference_target_work",
)
#: CPU runs: log2 of the caps (in the order of ``_CAP_NAMES``), repeats and ``max_time``;
#: measured on a 2-core CPU, one torch thread: ~3e5 net pairs/s, ~1.2e7 dense currents/s,
#: ~3e8 compiled currents/s.
_CPU_CAPS = {"quick": ((23, 21, 26, 31, 27), 3, 5.0), "full": ((27, 25, 30, 35, 30), 5, 60.0)}


@dataclass(frozen=True)
class Limits:
    """Sizes and work caps of one run; a case above a cap is skipped, with the reason, never
    estimated.

    Costs are counted in units that track time on each path: ``net_pairs`` (walker x neighbour
    pairs through a CurrentNet's MLP), ``dense_currents`` (float64 currents built by the
    plain-torch walk), ``compiled_currents`` (currents computed on the fly by the compiled O(M)
    move). A walk costs about ``(L + 1)`` moves of ``2 M`` neighbours per walker.

    Attributes:
        train_steps: steps of the train-2d case (the paper's 5000 unless shortened).
        target_sizes, target_dims: the ``Q = B`` and ``D`` of the target-pass cases.
        train_batches: the batch sizes of the training-step cases.
        walkers: walkers of the whole-walk cases (12 x 12 grid).
        move_walkers: the ``B`` of the move cases.
        sample_sizes: walkers of the 2D sampling cases.
        max_net_pairs, max_dense_currents, max_compiled_currents: the caps (walks).
        max_move_net_pairs: the ``net_pairs`` cap of one move (and its chi-square test).
        max_reference_target_work: ``Q B D`` cap of the pairwise reference target pass.
        statistical_currentnet: check CurrentNet sampling against its exact output law.
        repeats: timed calls of short cases (long ones stop at ``max_time``).
        max_time: stop timing a case after this many seconds of timed calls.
    """

    train_steps: int = 5000
    target_sizes: tuple[int, ...] = (256, 8192, 65536)
    target_dims: tuple[int, ...] = (1, 2, 64)
    train_batches: tuple[int, ...] = (256, 65536)
    walkers: int = 100_000
    move_walkers: tuple[int, ...] = (256, 65536)
    sample_sizes: tuple[int, ...] = (256, 1_000_000)
    max_net_pairs: float = 2.0**36
    max_move_net_pairs: float = 2.0**36
    max_dense_currents: float = 2.0**36
    max_compiled_currents: float = 2.0**40
    max_reference_target_work: float = 2.0**34
    statistical_currentnet: bool = True
    repeats: int = 5
    max_time: float = 20.0

    @classmethod
    def for_run(cls, device: torch.device | str, quick: bool) -> Limits:
        """CUDA: the full workloads (``quick``: 100 training steps, fewer repeats). CPU: caps
        measured on a 2-core machine with one torch thread; ``quick`` keeps every case to about
        30 s and the whole report to about 3-5 minutes (the 5000 training steps take ~15 s
        with one thread, several minutes with two threads on a loaded 2-core machine)."""
        if torch.device(device).type == "cuda":
            return cls(train_steps=100 if quick else 5000, repeats=3 if quick else 5)
        exponents, repeats, max_time = _CPU_CAPS["quick" if quick else "full"]
        caps = {name: 2.0**e for name, e in zip(_CAP_NAMES, exponents)}
        return cls(**caps, statistical_currentnet=False, repeats=repeats, max_time=max_time)

    @classmethod
    def from_env(cls, device: torch.device | str) -> Limits:
        """pytest's limits: ``ECD2G_BENCH_QUICK`` (default 1 on the CPU, 0 on CUDA) picks
        :meth:`for_run`; ``ECD2G_BENCH_<FIELD>`` overrides a field (``ECD2G_BENCH_WALKERS=1000``);
        ``train_steps`` defaults to 100 when quick on the CPU, where pytest runs with torch's
        default threads, which a loaded 2-core machine slows down many times."""
        cpu = torch.device(device).type == "cpu"
        quick = os.environ.get("ECD2G_BENCH_QUICK", "1" if cpu else "0") == "1"
        limits = cls.for_run(device, quick)
        if quick and cpu:
            limits = dataclasses.replace(limits, train_steps=100)
        names = [f.name for f in dataclasses.fields(cls)]
        return limits.with_settings(
            f"{n}={os.environ[f'ECD2G_BENCH_{n.upper()}']}"
            for n in names
            if f"ECD2G_BENCH_{n.upper()}" in os.environ
        )

    def with_settings(self, settings: Iterable[str]) -> Limits:
        """A copy with ``FIELD=VALUE`` settings applied (tuples comma-separated:
        ``target_sizes=256,8192``; booleans ``0``/``1``)."""
        changes = {}
        for setting in settings:
            name, _, value = setting.partition("=")
            if name not in {f.name for f in dataclasses.fields(self)} or not value:
                raise ValueError(f"expected FIELD=VALUE with a field of Limits, got {setting!r}")
            old = getattr(self, name)
            if isinstance(old, tuple):
                changes[name] = tuple(int(v) for v in value.split(","))
            elif isinstance(old, bool):
                changes[name] = value.lower() in ("1", "true", "yes")
            else:
                changes[name] = type(old)(float(value)) if isinstance(old, int) else type(old)(value)
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- cases
@dataclass
class Prepared:
    """A case ready to time: what :attr:`Case.prepare` returns after its check passed.

    Attributes:
        fn: the call to time (its result is discarded).
        check: what was checked before timing, one line.
        params: parameters found while preparing (merged into the case's).
        flops, flops_dtype: floating-point work of one call and the peak it is compared with
            (``"bf16"``, ``"fp32"``).
        bytes_moved, bytes_note: compulsory DRAM traffic of one call and how it was counted.
        resolved: the backend ``"auto"`` resolved to.
        work_fraction: the fraction of the case's work one call of ``fn`` does (a reference too
            slow for the whole workload timed on a subsample): the row's ``seconds`` are the
            timed seconds divided by it, and the row records it.
    """

    fn: Callable[[], object]
    check: str
    params: dict = field(default_factory=dict)
    flops: float | None = None
    flops_dtype: str | None = None
    bytes_moved: float | None = None
    bytes_note: str | None = None
    resolved: str | None = None
    work_fraction: float = 1.0


@dataclass
class Case:
    """One (figure, backend) of a family.

    Attributes:
        group: the family's group (``--cases``).
        figure: the measured quantity, with its parameters (``current_targets D=2 Q=B=65536``).
        backend: the implementation timed.
        prepare: builds the inputs, checks the result against the reference (raises
            ``AssertionError`` on a mismatch) and returns :class:`Prepared`.
        reference: the backend whose time the ratios of this figure are taken against.
        unit: of ``work / seconds`` (``queries/s``, ``samples/s``, ...).
        work: units of work of one call.
        params: the workload's parameters.
        paper_seconds: the paper's time for the same work, if it reports one.
        skip: why the case is not run (then ``prepare`` is never called).
        warmup: untimed calls after ``prepare`` (which already ran the path once).
        long: a long call (a training run): timed once on the CPU, never repeated for
            ``min_time``.
    """

    group: str
    figure: str
    backend: str
    prepare: Callable[[], Prepared] | None = None
    reference: str = "torch"
    unit: str = ""
    work: float = 1.0
    params: dict = field(default_factory=dict)
    paper_seconds: float | None = None
    skip: str | None = None
    warmup: int = 0
    long: bool = False

    @property
    def id(self) -> str:
        """pytest id: ``current_targets-D=2-Q=B=256-torch`` (figures name their group)."""
        return re.sub(r"\s+", "-", f"{self.figure} {self.backend}")


@dataclass
class Attachment:
    """A result of a group that is not a timed row (a profile), stored under ``key``.

    Attributes:
        key: the results file's key (``"profile"``).
        description: logged before ``make`` runs.
        make: computes the JSON-friendly value.
    """

    key: str
    description: str
    make: Callable[[], dict]


#: A family's group: ``(device, limits) -> cases`` (and attachments), in run order.
Group = Callable[[torch.device, Limits], Iterable["Case | Attachment"]]


class Session:
    """One run: runs cases into rows (``self.rows``), skipped cases (``self.skipped``, each
    with its reason) and attachments (``self.attachments``), logging a line for each."""

    def __init__(
        self,
        device: torch.device | str,
        limits: Limits,
        *,
        run_id: str = "",
        backends: Sequence[str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.device, self.limits, self.run_id, self.log = torch.device(device), limits, run_id, log
        self.backends = None if backends is None else set(backends)
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.attachments: dict[str, dict] = {}

    def measure(self, fn: Callable[[], object], *, warmup: int = 0, long: bool = False) -> Timing:
        """:func:`measure` under this run's limits (a long call is timed once on the CPU)."""
        return measure(
            fn,
            device=self.device,
            warmup=warmup,
            repeats=1 if long and self.device.type == "cpu" else self.limits.repeats,
            min_time=0.0 if long else 0.2,
            max_time=self.limits.max_time,
        )

    def run_group(self, group: Group) -> None:
        """Run every case and attachment of ``group`` on this session's device and limits."""
        for item in group(self.device, self.limits):
            if isinstance(item, Attachment):
                self.log(f"  {item.description}")
                self.attachments[item.key] = item.make()
            else:
                self.run(item)

    def run(self, case: Case) -> dict | None:
        """Prepare (check), time and record one case; returns its row (None if skipped)."""
        if self.backends is not None and case.backend not in self.backends:
            return None
        if case.skip:
            self.skipped.append(
                {"group": case.group, "figure": case.figure, "backend": case.backend, "reason": case.skip}
            )
            self.log(f"  {case.figure:<44} {case.backend:<16} skipped: {case.skip}")
            return None
        prepared = case.prepare()
        timing = self.measure(prepared.fn, warmup=case.warmup, long=case.long)
        row = {
            "run": self.run_id,
            "group": case.group,
            "figure": case.figure,
            "backend": case.backend,
            "resolved_backend": prepared.resolved,
            "reference_backend": case.reference,
            "params": {**case.params, **prepared.params},
            "seconds": timing.best / prepared.work_fraction,
            "timing": timing.to_dict(),
            "work_fraction": prepared.work_fraction,
            "work": case.work,
            "value": case.work * prepared.work_fraction / timing.best,
            "unit": case.unit,
            "paper_seconds": case.paper_seconds,
            "bytes": prepared.bytes_moved,
            "bytes_note": prepared.bytes_note,
            "flops": prepared.flops,
            "flops_dtype": prepared.flops_dtype,
            "check": prepared.check,
        }
        self.rows.append(row)
        self.log(
            f"  {case.figure:<44} {case.backend:<16} {format_number(row['seconds']):>10} s "
            f"{format_number(row['value']):>10} {case.unit:<14} (median {format_number(timing.median)} s, "
            f"{len(timing.seconds)} runs, spread {timing.spread:.0%})"
        )
        return row


def derive(rows: list[dict], runs: dict[str, dict]) -> list[dict]:
    """Add ``ratio_to_reference`` (reference time / time, same figure *and* same run),
    ``ratio_to_paper`` (paper time / time), and for GPUs with a known peak the achieved bandwidth
    and FLOP rate with their fractions of the peak. Returns ``rows`` (modified in place)."""
    by_key = {(r["run"], r["figure"], r["backend"]): r for r in rows}
    for row in rows:
        ref = by_key.get((row["run"], row["figure"], row["reference_backend"]))
        row["ratio_to_reference"] = ref["seconds"] / row["seconds"] if ref is not None else None
        paper = row.get("paper_seconds")
        row["ratio_to_paper"] = paper / row["seconds"] if paper else None
        peak = (runs.get(row["run"], {}).get("gpu") or {}).get("peaks")
        row["achieved_bandwidth"] = row["bytes"] / row["seconds"] if row.get("bytes") else None
        row["achieved_flops"] = row["flops"] / row["seconds"] if row.get("flops") else None
        row["bandwidth_fraction"] = row["flops_fraction"] = None
        if peak:
            if row["achieved_bandwidth"] is not None:
                row["bandwidth_fraction"] = row["achieved_bandwidth"] / peak["bandwidth"]
            if row["achieved_flops"] is not None:
                peak_flops = peak["bf16_flops"] if row.get("flops_dtype") == "bf16" else peak["fp32_flops"]
                row["flops_fraction"] = row["achieved_flops"] / peak_flops
    return rows


# ----------------------------------------------------------------------------- checks and work
def check_counts(counts: torch.Tensor, pmf: torch.Tensor, what: str) -> str:
    """Chi-square test (:func:`ecd2g_fast.metrics.chi_square_test`, false-failure rate about
    1e-6, small outcomes pooled with their index neighbours) of ``(N,)`` ``counts`` against the
    ``(N,)`` ``pmf`` they must follow; returns its one-line summary.

    Raises:
        AssertionError: the test rejects (the case is not timed).
    """
    result = metrics.chi_square_test(counts, pmf)
    if not result.passed:
        raise AssertionError(f"{what}: {result}; not timed")
    return str(result)


def mlp_macs(module: torch.nn.Module) -> int:
    """Multiply-accumulates of one row through every ``nn.Linear`` of ``module``."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))
