"""Throughput report of issue 6: every measurement, checked, timed, compared, written.

Usage::

    python benchmarks/report.py [--device cpu|cuda] [--quick] [--out benchmarks/results]
                                [--cases GROUP ...] [--merge] [--threads T]
    python benchmarks/report.py --render benchmarks/results/<device-slug>.json   # markdown only

Groups (all by default): ``targets`` (the current-target pass, Q = B in {256, 8192, 65536},
D in {1, 2, 64}; workload of ``bench_targets.py``), ``move`` (one sampler move, B x M with
M in {50, 2500, 65536}; ``bench_end_to_end.py``), ``train-step`` (one training step, batch 256
and 65536, both models; ``bench_training.py``), ``train-2d`` (the paper's 2D training run and a
torch.profiler breakdown of its steps), ``sample-2d`` (256 and 1,000,000 samples with a
CurrentNet and with the ExactField; ``bench_end_to_end.py``).

Every backend available on the device runs, the plain-torch reference of each figure in the same
run ("reference" target pass, or the "torch" walk); each fast path is checked against it (or
against the exact law it must sample) before it is timed, and a check failure stops the report.
Timing is :func:`harness.measure` (best of several calls after warm-up, median and spread kept).

Writes ``<out>/<device-slug>.json`` (metadata of the run, every row with all timed calls, the
skipped cases with their reasons, the goals, the training profile), ``<out>/<device-slug>.md``
(the tables) and ``<out>/<device-slug>.log`` (the command and its raw output). ``--merge`` keeps the rows of earlier runs in the JSON for figures this run did not
measure (so a GPU session can run the groups as separate commands under a time limit); ratios
are only ever taken between rows of the same run.

``--quick`` shortens the run to about 3-5 minutes on a 2-core CPU: the cost caps of
:class:`bench_end_to_end.Limits` (every case skipped by a cap is listed with its reason), fewer
repeats, and one torch thread unless ``--threads`` says otherwise (on a 2-core machine shared
with other work, two threads were 5-50x slower than one); on CUDA it also trains 100 steps
instead of 5000. A figure that was not measured is left out, never estimated.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_end_to_end as e2e  # noqa: E402  (benchmarks/ is not a package)
import harness  # noqa: E402

GROUPS = ("targets", "move", "train-step", "train-2d", "sample-2d")

#: The issue's goals (on one H100 or A100).
GOAL_DEVICES = ("H100", "A100")
TARGETS_GOAL_QPS = 1e9
TARGETS_GOAL_RATIO = 10.0
TRAIN_GOAL_SPEEDUP = 20.0
SAMPLE_GOAL_SPEEDUP = 25.0
POTENTIAL_GOAL_SPS = 1e7

TARGETS_FIGURE = "current_targets D=2 Q=B=65536"
TRAIN_FIGURE = f"train-2d CurrentNet {e2e.TRAIN_STEPS} steps B={e2e.TRAIN_BATCH}"
SAMPLE_FIGURE = "sample-2d current-net B=256"
POTENTIAL_FIGURE = "sample-2d exact B=1000000"

BYTES_NOTE = {
    "targets": "compulsory DRAM traffic, a lower bound: read layer (8 B) and z, w (2 x 8 D B) per "
    "query, x, y (2 x 8 D B) per batch row, write 8 B per query; the count table (or the sort of "
    "the batch keys) and the count gathers (or binary searches) are not counted",
    "potential": "8-byte words per walker-move: 9 table gathers (5 masses, count, phi, reference, "
    "order), ceil(log2 M) + 1 prefix-sum gathers of the binary search, 4 walker-state reads/writes "
    "(+8 for the walk loop's bookkeeping in whole walks); the mean number of moves is measured",
}
FLOPS_NOTE = (
    "MLP FLOPs, 2 per multiply-accumulate of every nn.Linear: training 3x forward (forward + "
    "backward) per query, bf16 tensor-core peak (autocast); CurrentNet sampling the MLP body "
    "(the first layer is shared per walker and state) for every (walker, neighbour) pair, fp32 "
    "non-tensor peak"
)


# ----------------------------------------------------------------------------- the run
class Report:
    """Rows, skipped cases and notes of one run."""

    def __init__(self, device: torch.device, limits: e2e.Limits, quick: bool, run_id: str, log=print):
        self.device, self.limits, self.quick, self.run_id, self.log = device, limits, quick, run_id, log
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.profile: dict | None = None

    def add(
        self,
        group: str,
        figure: str,
        backend: str,
        timing: harness.Timing,
        *,
        work: float,
        unit: str,
        reference: str,
        check: str,
        params: dict | None = None,
        paper_seconds: float | None = None,
        bytes_moved: float | None = None,
        bytes_note: str | None = None,
        flops: float | None = None,
        flops_dtype: str | None = None,
        resolved: str | None = None,
    ) -> dict:
        row = {
            "run": self.run_id,
            "group": group,
            "figure": figure,
            "backend": backend,
            "resolved_backend": resolved,
            "reference_backend": reference,
            "params": params or {},
            "seconds": timing.best,
            "timing": timing.to_dict(),
            "work": work,
            "value": work / timing.best,
            "unit": unit,
            "paper_seconds": paper_seconds,
            "bytes": bytes_moved,
            "bytes_note": bytes_note,
            "flops": flops,
            "flops_dtype": flops_dtype,
            "check": check,
        }
        self.rows.append(row)
        self.log(
            f"  {figure:<44} {backend:<16} {harness.format_number(timing.best):>10} s "
            f"{harness.format_number(row['value']):>10} {unit:<14} (median {harness.format_number(timing.median)} s, "
            f"{timing.to_dict()['runs']} runs, spread {timing.spread:.0%})"
        )
        return row

    def skip(self, group: str, figure: str, backend: str, reason: str) -> None:
        self.skipped.append({"group": group, "figure": figure, "backend": backend, "reason": reason})
        self.log(f"  {figure:<44} {backend:<16} skipped: {reason}")

    def measure(self, fn, *, warmup: int = 1, warmup_fn=None, long: bool = False) -> harness.Timing:
        limits = self.limits
        return harness.measure(
            fn,
            device=self.device,
            warmup=warmup,
            warmup_fn=warmup_fn,
            repeats=1 if long and self.device.type == "cpu" else limits.repeats,
            min_time=0.0 if long else 0.2,
            max_time=limits.max_time,
        )


# ----------------------------------------------------------------------------- targets
def _check_targets(case, out: torch.Tensor, expected: torch.Tensor, name: str, oracle: str) -> str:
    """The tolerance of ``bench_targets.check_against_torch``: 1e-12 of each target's terms."""
    circuit, layer, z, w = case[:4]
    a, b = circuit.a.to(layer.device), circuit.b.to(layer.device)
    terms = (2 * layer + 1).double() * circuit.s + 2 * (a[layer] + b[layer] + a[layer + 1] + b[layer + 1])
    scale = torch.where((z == w).all(1), circuit.g * terms, circuit.G * terms)
    error = (out - expected).abs() / scale
    bad = int((error > 1e-12).sum())
    if bad:
        raise AssertionError(f"current_targets {name}: {bad} targets differ from {oracle}; not timed")
    return f"equal to {oracle} (max err {float(error.max()):.1e} of the terms' scale)"


def run_targets(rep: Report) -> None:
    import bench_targets as bt

    from ecd2g_fast.targets import current_targets

    for dim in bt.DIMS:
        for size in bt.SIZES:
            figure = f"current_targets D={dim} Q=B={size}"
            case = bt.workload(size, dim, str(rep.device))
            outputs: dict[str, torch.Tensor] = {}
            for name in bt.BACKENDS:
                if name == "reference":
                    work = size * size * dim
                    why = (
                        f"pairwise reference is O(Q B D): {work:.1e} > cap {rep.limits.max_reference_target_work:.1e}"
                        if work > rep.limits.max_reference_target_work
                        else None
                    )
                else:
                    why = bt.runnable(name, size, dim, rep.device)
                if why:
                    rep.skip("targets", figure, name, why)
                    continue
                # check_values=False: the pass as the trainer calls it; the default range check
                # adds a device-to-host copy (a sync on CUDA) to every call.
                out = current_targets(*case, backend=name, check_values=False)  # also the first warm-up call
                oracle = "reference" if "reference" in outputs else "torch"
                if name == "reference":
                    check = "is the reference"
                elif name == "torch" and oracle == "torch":
                    check = "not checked here: the reference was skipped (tests compare torch with it)"
                else:
                    check = _check_targets(case, out, outputs[oracle], name, oracle)
                outputs[name] = out
                timing = rep.measure(
                    functools.partial(current_targets, *case, backend=name, check_values=False), warmup=0
                )
                bytes_moved = 8 * size + 16 * size * dim + 16 * size * dim + 8 * size
                rep.add(
                    "targets",
                    figure,
                    name,
                    timing,
                    work=size,
                    unit="queries/s",
                    reference="reference",
                    check=check,
                    params={"Q": size, "B": size, "D": dim, "K": bt.K, "L": bt.L},
                    bytes_moved=bytes_moved,
                    bytes_note=BYTES_NOTE["targets"],
                )


# ----------------------------------------------------------------------------- moves
def _move_words(num_states: int) -> int:
    return 9 + math.ceil(math.log2(num_states)) + 1 + 4


def run_moves(rep: Report) -> None:
    for kind, names in e2e.MOVE_BACKENDS.items():
        for num_states in e2e.MOVE_GRIDS:
            for walkers in rep.limits.move_walkers:
                figure = f"move {kind} M={num_states} B={walkers}"
                field = e2e.move_field(kind, num_states, str(rep.device))
                layer, z = e2e.move_walkers(field, walkers)
                stat = e2e.stat_walkers_for(kind, num_states, rep.limits)
                for name in names:
                    why = e2e.move_skip_reason(kind, name, walkers, num_states, rep.device, rep.limits)
                    if why:
                        rep.skip("move", figure, name, why)
                        continue
                    draw = e2e.move_drawer(name, field, walkers)
                    check = e2e.check_move(name, field, draw, layer, z, stat)
                    g = torch.Generator(field.device).manual_seed(3)
                    timing = rep.measure(functools.partial(draw, layer, z, g), warmup=0)
                    flops = bytes_moved = None
                    if kind == "current-net":
                        L = field.circuit.num_layers
                        pairs = num_states * float((layer < L).sum() + (layer > 0).sum())
                        flops = 2.0 * e2e.mlp_macs(field.net.body) * pairs
                    if name == "potential":
                        bytes_moved = 8.0 * walkers * _move_words(num_states)
                    K, D = e2e.MOVE_GRIDS[num_states]
                    rep.add(
                        "move",
                        figure,
                        name,
                        timing,
                        work=walkers,
                        unit="walker-moves/s",
                        reference="torch",
                        check=check,
                        params={
                            "field": kind,
                            "M": num_states,
                            "K": K,
                            "D": D,
                            "L": e2e.MOVE_LAYERS,
                            "B": walkers,
                            "check_walkers": stat,
                        },
                        flops=flops,
                        flops_dtype="fp32" if flops else None,
                        bytes_moved=bytes_moved,
                        bytes_note=BYTES_NOTE["potential"] if bytes_moved else None,
                    )


# ----------------------------------------------------------------------------- training steps
def run_train_steps(rep: Report) -> None:
    import bench_training as btr

    from ecd2g_fast import backends

    for model in btr.MODELS:
        op = "current_targets" if model == "current" else "potential_targets"
        resolved = backends.select(op, "auto", rep.device).name
        for batch in btr.BATCHES:
            figure = f"train step {model} B={batch}"
            first_losses: dict[str, float] = {}
            for name in ("reference", "auto"):
                work = batch * batch * btr.D
                if name == "reference" and work > rep.limits.max_reference_target_work:
                    rep.skip(
                        "train-step",
                        figure,
                        name,
                        f"pairwise reference target pass is O(Q B D): "
                        f"{work:.1e} > cap {rep.limits.max_reference_target_work:.1e}",
                    )
                    continue
                trainer = btr.make_trainer(model, batch, str(rep.device))
                trainer.opt = replace(trainer.opt, backend=name)
                step_model = trainer.wrap()
                first_losses[name] = btr.checked_step(trainer, step_model)
                if name == "reference":
                    check = "is the reference (first-step loss finite)"
                elif "reference" in first_losses:
                    ref = first_losses["reference"]
                    if not math.isclose(first_losses[name], ref, rel_tol=1e-3, abs_tol=1e-6):
                        raise AssertionError(
                            f"{figure} {name}: first-step loss {first_losses[name]} != reference {ref}"
                        )
                    check = "first-step loss equal to the reference's (rtol 1e-3)"
                else:
                    check = "first-step loss finite (reference skipped)"
                timing = rep.measure(functools.partial(trainer.train_step, step_model), warmup=1)
                flops = 6.0 * e2e.mlp_macs(trainer.net) * batch
                rep.add(
                    "train-step",
                    figure,
                    name,
                    timing,
                    work=1,
                    unit="steps/s",
                    reference="reference",
                    check=check,
                    params={
                        "model": model,
                        "batch": batch,
                        "queries": batch,
                        "K": btr.K,
                        "D": btr.D,
                        "L": btr.L,
                    },
                    flops=flops,
                    flops_dtype="bf16" if rep.device.type == "cuda" else "fp32",
                    resolved=resolved if name == "auto" else "reference",
                )


# ----------------------------------------------------------------------------- 2D training
def _device_time(event) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attr):
            return float(getattr(event, attr))
    return 0.0


def _is_device_event(event) -> bool:
    """Kernels and copies (events that ran on the GPU), as opposed to host-side operators."""
    return "CUDA" in str(getattr(event, "device_type", ""))


def profile_training(data: e2e.Paper2D, steps: int = 30, top: int = 12) -> dict:
    """torch.profiler over a short train-2d run: per step, the host operators with the largest
    self CPU time and (CUDA) the kernels with the largest GPU time, and their totals."""
    from torch.profiler import ProfilerActivity, profile

    cuda = data.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    e2e.train_2d(data, 5)  # warm-up outside the profile
    harness.synchronize(data.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        e2e.train_2d(data, steps)
        harness.synchronize(data.device)
    wall = time.perf_counter() - start
    events = list(prof.key_averages())
    host = [ev for ev in events if not _is_device_event(ev)]
    device = [ev for ev in events if _is_device_event(ev)]

    def entry(ev) -> dict:
        return {
            "op": ev.key,
            "calls_per_step": ev.count / steps,
            "self_cpu_ms_per_step": ev.self_cpu_time_total / 1e3 / steps,
            "self_device_ms_per_step": _device_time(ev) / 1e3 / steps,
        }

    return {
        "steps": steps,
        "wall_ms_per_step_profiled": wall / steps * 1e3,
        "self_cpu_ms_per_step_total": sum(ev.self_cpu_time_total for ev in host) / 1e3 / steps,
        "device_ms_per_step_total": sum(_device_time(ev) for ev in device) / 1e3 / steps if cuda else None,
        "device_events_per_step": sum(ev.count for ev in device) / steps if cuda else None,
        "top_ops": [
            entry(ev) for ev in sorted(host, key=lambda ev: ev.self_cpu_time_total, reverse=True)[:top]
        ],
        "top_kernels": [entry(ev) for ev in sorted(device, key=_device_time, reverse=True)[:top]]
        if cuda
        else None,
    }


def run_train_2d(rep: Report) -> None:
    data = e2e.paper_2d_data(str(rep.device))
    steps = rep.limits.train_steps
    figure = f"train-2d CurrentNet {steps} steps B={e2e.TRAIN_BATCH}"
    check = e2e.check_training(data, "auto")  # runs auto and reference: also the warm-up
    from ecd2g_fast import backends

    resolved = backends.select("current_targets", "auto", rep.device).name
    net = e2e.E.CurrentNet(data.circuit)
    flops = 6.0 * e2e.mlp_macs(net) * e2e.TRAIN_BATCH * steps
    for name in ("reference", "auto"):
        timing = rep.measure(functools.partial(e2e.train_2d, data, steps, name), warmup=0, long=True)
        rep.add(
            "train-2d",
            figure,
            name,
            timing,
            work=steps,
            unit="steps/s",
            reference="reference",
            check="is the reference" if name == "reference" else check,
            params={
                "model": "current",
                "steps": steps,
                "batch": e2e.TRAIN_BATCH,
                "queries": "uniform",
                "K": e2e.K2,
                "D": 2,
                "L": e2e.L2,
                "data": "moons -> swissroll",
            },
            paper_seconds=e2e.PAPER_TRAIN_SECONDS if steps == e2e.TRAIN_STEPS else None,
            flops=flops,
            flops_dtype="bf16" if rep.device.type == "cuda" else "fp32",
            resolved=resolved if name == "auto" else "reference",
        )
    if steps != e2e.TRAIN_STEPS:
        rep.skip(
            "train-2d",
            f"train-2d CurrentNet {e2e.TRAIN_STEPS} steps B={e2e.TRAIN_BATCH}",
            "all",
            f"shortened to {steps} steps (--quick); the 5000-step figure is not extrapolated",
        )
    rep.log("  profiling 30 training steps (torch.profiler)")
    rep.profile = profile_training(data)


# ----------------------------------------------------------------------------- 2D sampling
def run_sampling(rep: Report) -> None:
    data = e2e.paper_2d_data(str(rep.device))
    limits = rep.limits
    M = data.circuit.num_states
    for kind, names in e2e.SAMPLE_BACKENDS.items():
        for walkers in e2e.SAMPLE_SIZES:
            figure = f"sample-2d {kind} B={walkers}"
            runnable = []
            for name in names:
                why = e2e.sample_skip_reason(kind, name, walkers, data.circuit, rep.device, limits)
                if why:
                    rep.skip("sample-2d", figure, name, why)
                else:
                    runnable.append(name)
            if not runnable:
                continue
            field = e2e.sampling_field(kind, data, limits.train_steps)
            x0 = e2e.start_states(data, walkers)
            statistical = kind == "exact" or limits.statistical_currentnet
            for name in runnable:
                # the check run is also the warm-up; CurrentNet walks are checked on 32 walkers
                # when no statistical test is run (CPU: cost), else on 16384 to 65536 walkers
                if kind == "current-net" and not statistical:
                    check_x0 = x0[:32]
                elif kind == "current-net":
                    check_x0 = e2e.start_states(data, max(min(walkers, 65536), 16384), seed=5)
                else:
                    check_x0 = x0
                mean_moves = None
                if name == "potential":
                    states, moves = e2e.E.sample(
                        field,
                        check_x0,
                        backend="potential",
                        return_moves=True,
                        generator=torch.Generator(data.device).manual_seed(1),
                    )
                    terminal = data.circuit.state_index(states)
                    mean_moves = float(moves.double().mean())
                else:
                    terminal = e2e.sample_flat(name, field, check_x0)
                check = e2e.check_sampling(kind, name, field, data, terminal, statistical)
                # no extra warm-up: the check run went through the same code path
                timing = rep.measure(functools.partial(e2e.sample_flat, name, field, x0), warmup=0)
                flops = bytes_moved = None
                if kind == "current-net":
                    flops = e2e.currentnet_walk_flops(field, walkers)
                if mean_moves is not None:
                    bytes_moved = 8.0 * walkers * mean_moves * (_move_words(M) + 8)
                rep.add(
                    "sample-2d",
                    figure,
                    name,
                    timing,
                    work=walkers,
                    unit="samples/s",
                    reference="torch",
                    check=check,
                    params={
                        "field": kind,
                        "walkers": walkers,
                        "K": e2e.K2,
                        "D": 2,
                        "L": e2e.L2,
                        "mode": "bidirectional",
                        "mean_moves": mean_moves,
                        "train_steps": limits.train_steps if kind == "current-net" else None,
                    },
                    paper_seconds=e2e.PAPER_SAMPLE_256_SECONDS
                    if (kind, walkers) == ("current-net", 256)
                    else None,
                    flops=flops,
                    flops_dtype="fp32" if flops else None,
                    bytes_moved=bytes_moved,
                    bytes_note=BYTES_NOTE["potential"] if bytes_moved else None,
                )


# ----------------------------------------------------------------------------- derived metrics
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
        meta = runs.get(row["run"], {})
        peak = (meta.get("gpu") or {}).get("peaks")
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


# ----------------------------------------------------------------------------- goals
def _on_goal_device(meta: dict) -> bool:
    return meta.get("device") == "cuda" and any(d in meta.get("device_name", "") for d in GOAL_DEVICES)


def _best(rows: list[dict], figure: str, backends: tuple[str, ...] | None = None, exclude: str | None = None):
    found = [
        r
        for r in rows
        if r["figure"] == figure
        and (backends is None or r["backend"] in backends)
        and r["backend"] != exclude
    ]
    return max(found, key=lambda r: r["value"]) if found else None


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _factor(needed: float, achieved: float | None) -> str:
    if achieved is None:
        return "not measured"
    if achieved >= needed:
        return "met"
    return f"missed by {needed / achieved:.3g}x" if achieved > 0 else "missed"


def evaluate_goals(rows: list[dict], meta: dict) -> list[dict]:
    """Each goal of the issue: ``met``, ``missed by X`` (X: how many times faster it must get) or
    ``not measured``, from derived ``rows`` of one device; ``meta`` is that run's metadata.

    On a CPU every goal is ``not measured on this device`` (the goals are for one H100 or A100);
    the CPU figure is still shown for information. On another GPU the status is qualified.
    """
    goals = []

    def add(name, target, figure, row, status, measured):
        if meta.get("device") != "cuda":
            info = f"{measured} on this CPU ({status})" if row is not None else "figure not measured"
            status, measured = "not measured on this device (goal: one H100 or A100)", info
        elif row is not None and not _on_goal_device(meta) and status != "not measured":
            status = f"{status} (on {meta.get('device_name')}, not an H100/A100)"
        goals.append(
            {
                "goal": name,
                "target": target,
                "figure": figure,
                "backend": None if row is None else row["backend"],
                "measured": measured,
                "status": status,
            }
        )

    # 1. current-target pass
    row = _best(rows, TARGETS_FIGURE, exclude="reference")
    if row is None:
        add(
            "current-target pass, Q = B = 65536, D = 2",
            ">= 1e9 queries/s and >= 10x the reference",
            TARGETS_FIGURE,
            None,
            "not measured",
            "-",
        )
    else:
        rate = _factor(TARGETS_GOAL_QPS, row["value"])
        ratio = row.get("ratio_to_reference")
        vs_ref = _factor(TARGETS_GOAL_RATIO, ratio)
        status = "met" if rate == "met" and vs_ref == "met" else f"rate: {rate}; vs reference: {vs_ref}"
        if vs_ref == "not measured" and rate == "met":
            status = "rate met; ratio to the reference not measured"
        measured = f"{harness.format_number(row['value'])} queries/s, " + (
            f"{ratio:.3g}x the reference" if ratio is not None else "reference not measured"
        )
        add(
            "current-target pass, Q = B = 65536, D = 2",
            ">= 1e9 queries/s and >= 10x the reference",
            TARGETS_FIGURE,
            row,
            status,
            measured,
        )

    # 2. training the paper's 2D configuration
    row = _best(rows, TRAIN_FIGURE, exclude="reference")
    target = f">= {TRAIN_GOAL_SPEEDUP:g}x faster than the paper's {e2e.PAPER_TRAIN_SECONDS:g} s (<= {e2e.PAPER_TRAIN_SECONDS / TRAIN_GOAL_SPEEDUP:g} s)"
    if row is None:
        add(
            "training the 2D configuration (5000 steps, batch 256)",
            target,
            TRAIN_FIGURE,
            None,
            "not measured",
            "-",
        )
    else:
        add(
            "training the 2D configuration (5000 steps, batch 256)",
            target,
            TRAIN_FIGURE,
            row,
            _factor(TRAIN_GOAL_SPEEDUP, row["ratio_to_paper"]),
            f"{_duration(row['seconds'])}, {row['ratio_to_paper']:.3g}x the paper",
        )

    # 3. sampling 256 2D samples with CurrentNet
    row = _best(rows, SAMPLE_FIGURE, exclude=None)
    target = f">= {SAMPLE_GOAL_SPEEDUP:g}x faster than the paper's {e2e.PAPER_SAMPLE_256_SECONDS:g} s (<= {e2e.PAPER_SAMPLE_256_SECONDS / SAMPLE_GOAL_SPEEDUP * 1e3:.3g} ms)"
    if row is None:
        add("sampling 256 2D samples with CurrentNet", target, SAMPLE_FIGURE, None, "not measured", "-")
    else:
        add(
            "sampling 256 2D samples with CurrentNet",
            target,
            SAMPLE_FIGURE,
            row,
            _factor(SAMPLE_GOAL_SPEEDUP, row["ratio_to_paper"]),
            f"{_duration(row['seconds'])}, {row['ratio_to_paper']:.3g}x the paper",
        )

    # 4. potential sampler at 1,000,000 samples
    row = _best(rows, POTENTIAL_FIGURE, backends=("potential", "potential-torch"))
    target = ">= 1e7 samples/s"
    if row is None:
        add("potential sampler, 1,000,000 samples", target, POTENTIAL_FIGURE, None, "not measured", "-")
    else:
        add(
            "potential sampler, 1,000,000 samples",
            target,
            POTENTIAL_FIGURE,
            row,
            _factor(POTENTIAL_GOAL_SPS, row["value"]),
            f"{harness.format_number(row['value'])} samples/s",
        )
    return goals


# ----------------------------------------------------------------------------- markdown
def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.3g}%"


def render_markdown(payload: dict) -> str:
    """The markdown report of a payload written by :func:`main` (or synthetic, in tests)."""
    runs = payload["runs"]
    latest = runs[payload["latest_run"]]
    rows = payload["rows"]
    lines = [f"# ecd2g_fast throughput: {latest['device_name']}", ""]
    for run_id, meta in runs.items():
        gpu = meta.get("gpu") or {}
        versions = meta["versions"]
        dev = (
            f"{gpu.get('name')} (driver {gpu.get('driver_version', 'unknown')}, CUDA {gpu.get('cuda_runtime')})"
            if gpu
            else f"{meta['cpu']['model']}, {meta['cpu']['usable_cpus']} CPUs, {meta['cpu']['torch_threads']} torch threads"
        )
        load = meta.get("load_average")
        lines += [
            (
                f"Run `{run_id}`: {dev}; torch {versions['torch']}, triton {versions['triton']}, python "
                f"{versions['python']}; commit {(meta['git']['commit'] or 'unknown')[:12]}"
                f"{' (dirty tree)' if meta['git'].get('dirty') else ''}; {meta['timestamp']}; load average at "
                f"start {'-' if load is None else ', '.join(f'{v:.2f}' for v in load)}"
                f"{'; --quick' if meta.get('quick') else ''}."
            ),
            "",
            f"Command: `{meta['command']}`",
            "",
        ]
    peak = (latest.get("gpu") or {}).get("peaks")
    if latest["device"] == "cuda":
        lines.append(
            f"Peaks used ({peak['name']}, {peak['source']}): {peak['bandwidth'] / 1e12:g} TB/s DRAM, "
            f"{peak['fp32_flops'] / 1e12:g} TFLOP/s fp32, {peak['bf16_flops'] / 1e12:g} TFLOP/s dense bf16."
            if peak
            else f"No peak table entry for {latest['device_name']}: fractions of peak left out."
        )
    else:
        lines.append(
            "CPU run: no fractions of peak (the peak table covers the GPUs of the goals). The CPU is "
            "shared with other work; the load average above inflates the times."
        )
    lines += [
        "",
        "Times are the best of the timed calls (median and spread `(max-min)/median` in the JSON); "
        "`x ref` = reference time / time, both from the same run (reference: `reference` target pass, "
        "`torch` walk); `x paper` = paper time / time. Bytes: "
        + "; ".join(f"{k}: {v}" for k, v in BYTES_NOTE.items())
        + ". FLOPs: "
        + FLOPS_NOTE
        + ".",
        "",
        "## Figures",
        "",
    ]
    table = []
    for r in rows:
        table.append(
            [
                r["figure"],
                r["backend"]
                + (
                    f" ({r['resolved_backend']})"
                    if r.get("resolved_backend") not in (None, r["backend"])
                    else ""
                ),
                harness.format_number(r["value"]),
                r["unit"],
                harness.format_number(r["seconds"]),
                f"{r['timing']['runs']}, {r['timing']['spread']:.0%}",
                "-" if r.get("ratio_to_reference") is None else f"{r['ratio_to_reference']:.3g}",
                "-" if r.get("ratio_to_paper") is None else f"{r['ratio_to_paper']:.3g}",
                _pct(r.get("bandwidth_fraction"))
                + (
                    ""
                    if r.get("achieved_bandwidth") is None
                    else f" ({r['achieved_bandwidth'] / 1e9:.3g} GB/s)"
                ),
                _pct(r.get("flops_fraction"))
                + ("" if r.get("achieved_flops") is None else f" ({r['achieved_flops'] / 1e9:.3g} GFLOP/s)"),
                r["check"],
            ]
        )
    lines.append(
        harness.markdown_table(
            [
                "figure",
                "backend",
                "value",
                "unit",
                "best s",
                "runs, spread",
                "x ref",
                "x paper",
                "% peak BW",
                "% peak FLOP/s",
                "check before timing",
            ],
            table,
        )
    )
    lines += ["## Goals (issue 6, on one H100 or A100)", ""]
    lines.append(
        harness.markdown_table(
            ["goal", "target", "measured", "status"],
            [[g["goal"], g["target"], g["measured"], g["status"]] for g in payload["goals"]],
        )
    )
    profile = payload.get("profile")
    if profile:
        device_total = profile.get("device_ms_per_step_total")
        lines += [
            "## Where a training step's time goes (train-2d, torch.profiler)",
            "",
            f"{profile['steps']} steps profiled: {profile['wall_ms_per_step_profiled']:.3g} ms wall per step under the "
            f"profiler; host operators' self CPU time {profile['self_cpu_ms_per_step_total']:.3g} ms/step"
            + (
                f"; GPU busy {device_total:.3g} ms/step in {profile['device_events_per_step']:.0f} kernels and "
                "copies per step (wall minus GPU time: launch and synchronisation overhead)"
                if device_total is not None
                else ""
            )
            + ". Host operators by self CPU time:",
            "",
            harness.markdown_table(
                ["op", "calls/step", "self CPU ms/step"],
                [
                    [o["op"], f"{o['calls_per_step']:.3g}", f"{o['self_cpu_ms_per_step']:.3g}"]
                    for o in profile["top_ops"]
                ],
            ),
        ]
        if profile.get("top_kernels"):
            lines += [
                "GPU kernels and copies by GPU time:",
                "",
                harness.markdown_table(
                    ["kernel", "calls/step", "GPU ms/step"],
                    [
                        [o["op"], f"{o['calls_per_step']:.3g}", f"{o['self_device_ms_per_step']:.3g}"]
                        for o in profile["top_kernels"]
                    ],
                ),
            ]
    if payload.get("skipped"):
        lines += ["## Not measured in this run", ""]
        lines.append(
            harness.markdown_table(
                ["figure", "backend", "why"],
                [[s["figure"], s["backend"], s["reason"]] for s in payload["skipped"]],
            )
        )
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- main
RUNNERS = {
    "targets": run_targets,
    "move": run_moves,
    "train-step": run_train_steps,
    "train-2d": run_train_2d,
    "sample-2d": run_sampling,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--quick", action="store_true", help="shortened run (~5 min on a 2-core CPU)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--cases", nargs="+", choices=GROUPS, default=list(GROUPS), help="groups to run")
    parser.add_argument("--merge", action="store_true", help="keep earlier rows of other figures in the JSON")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 with --quick on the CPU, else torch's default)",
    )
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite the markdown of a results JSON, no measuring"
    )
    args = parser.parse_args(argv)
    if args.render:
        payload = json.loads(Path(args.render).read_text())
        md_path = Path(args.render).with_suffix(".md")
        md_path.write_text(render_markdown(payload))
        print(f"wrote {md_path}")
        return payload
    if args.threads is None and args.quick and args.device == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    limits = e2e.Limits.for_run(device, args.quick)
    meta = harness.run_metadata(
        device, argv=[str(Path(sys.argv[0])), *(sys.argv[1:] if argv is None else argv)]
    )
    meta.update(quick=args.quick, limits=asdict(limits), groups=args.cases)
    run_id = meta["timestamp"]
    output: list[str] = [f"$ {meta['command']}"]

    def log(line: str) -> None:
        print(line, flush=True)
        output.append(line)

    rep = Report(device, limits, args.quick, run_id, log=log)
    log(
        f"device={meta['device_name']} quick={args.quick} threads={torch.get_num_threads()} "
        f"load={meta['load_average']} commit={meta['git']['commit']}"
    )
    start = time.perf_counter()
    for group in GROUPS:
        if group in args.cases:
            log(f"[{group}]")
            t0 = time.perf_counter()
            RUNNERS[group](rep)
            log(f"  ({time.perf_counter() - t0:.1f} s)")
    meta["wall_seconds"] = time.perf_counter() - start
    try:
        meta["load_average_end"] = list(os.getloadavg())
    except OSError:
        meta["load_average_end"] = None

    out = Path(args.out)
    slug = harness.device_slug(meta)
    runs = {run_id: meta}
    rows, skipped = rep.rows, rep.skipped
    profile = rep.profile
    json_path = out / f"{slug}.json"
    if args.merge and json_path.is_file():
        old = json.loads(json_path.read_text())
        measured = {(r["figure"], r["backend"]) for r in rows}
        kept = [r for r in old.get("rows", []) if (r["figure"], r["backend"]) not in measured]
        runs = {**{k: v for k, v in old.get("runs", {}).items() if any(r["run"] == k for r in kept)}, **runs}
        rows = kept + rows
        fresh = measured | {(s["figure"], s["backend"]) for s in skipped}
        skipped = [s for s in old.get("skipped", []) if (s["figure"], s["backend"]) not in fresh] + skipped
        profile = profile or old.get("profile")
    derive(rows, runs)
    payload = {
        "format": 1,
        "device_slug": slug,
        "latest_run": run_id,
        "runs": runs,
        "rows": rows,
        "skipped": skipped,
        "goals": evaluate_goals(rows, meta),
        "profile": profile,
        "notes": {"bytes": BYTES_NOTE, "flops": FLOPS_NOTE},
    }
    harness.write_json(json_path, payload)
    md_path = out / f"{slug}.md"
    md_path.write_text(render_markdown(payload))
    log(f"wrote {json_path} and {md_path} ({meta['wall_seconds']:.0f} s)")
    log_path = out / f"{slug}.log"
    with log_path.open("a" if args.merge else "w") as f:
        f.write("\n".join(output) + "\n")
    print(f"raw output in {log_path}")
    return payload


if __name__ == "__main__":
    main()
