"""Throughput report: every family's figures, checked, timed, compared with the goals, written.

Usage (from the repository root)::

    python -m benchmarks.report [--device cpu|cuda] [--quick] [--out benchmarks/results]
                                [--cases GROUP ...] [--merge] [--threads T] [--set FIELD=VALUE ...]
    python -m benchmarks.report --render benchmarks/results/<device-slug>.json   # markdown only

The report collects the rows of the family modules (each documents its workloads and checks):
``targets`` (:mod:`benchmarks.bench_targets`), ``hamming-targets``
(:mod:`benchmarks.bench_hamming_targets`), ``move`` and ``hamming-move``
(:mod:`benchmarks.bench_sampler`; its ``walk`` group runs only when named), ``train-step`` and ``train-2d``
(:mod:`benchmarks.bench_training`), ``sample-2d`` (:mod:`benchmarks.bench_end_to_end`). Every
backend available on the device runs, the plain-torch reference of each figure in the same run;
each fast path is checked against it (or against the exact law it must sample) before it is
timed, and a check failure stops the report. Timing is :func:`benchmarks.harness.measure`.

Writes ``<out>/<device-slug>.json`` (metadata of the run, every row with all timed calls, the
skipped cases with their reasons, the goals, the training profile), ``<out>/<device-slug>.md``
(the tables) and ``<out>/<device-slug>.log`` (the command and its raw output). ``--merge`` keeps
the rows of earlier runs in the JSON for figures this run did not measure (so a GPU session can
run the groups as separate commands under a time limit); ratios are only ever taken between
rows of the same run. The goals are data, ``benchmarks/goals.json`` (:func:`evaluate_goals`).

``--quick`` shortens the run to about 3-5 minutes on a 2-core CPU: the cost caps of
:meth:`benchmarks.cases.Limits.for_run` (every case skipped by a cap is listed with its
reason), fewer repeats, and one torch thread unless ``--threads`` says otherwise; on CUDA it also
trains 100 steps instead of 5000. A figure that was not measured is left out, never estimated.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import (
    bench_end_to_end,
    bench_hamming_targets,
    bench_sampler,
    bench_targets,
    bench_training,
    cases,
    harness,
    runner,
)

FAMILIES = (bench_targets, bench_hamming_targets, bench_sampler, bench_training, bench_end_to_end)
GROUPS = {name: group for family in FAMILIES for name, group in family.GROUPS.items()}
#: The groups a report runs unless ``--cases`` names others.
DEFAULT_GROUPS = ("targets", "hamming-targets", "move", "hamming-move", "train-step", "train-2d", "sample-2d")
NOTES = {
    "bytes": {k: v for family in FAMILIES for k, v in getattr(family, "NOTES", {}).get("bytes", {}).items()},
    "flops": bench_training.NOTES["flops"],
}
GOALS_FILE = Path(__file__).resolve().with_name("goals.json")


# ----------------------------------------------------------------------------- goals
def load_goals(path: str | os.PathLike = GOALS_FILE) -> dict:
    """The goals table: ``{"devices": [...], "on": text, "goals": [goal, ...]}``. A goal names its
    ``figure``, the rows that count (``backends`` to keep, ``exclude_backends`` to drop; the
    fastest counts) and ``criteria``: ``{"label", "metric", "at_least"}`` with ``metric`` a row
    key (``value``, ``ratio_to_reference``, ``ratio_to_paper``)."""
    return json.loads(Path(path).read_text())


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _factor(needed: float, achieved: float | None) -> str:
    if achieved is None:
        return "not measured"
    if achieved >= needed:
        return "met"
    return f"missed by {needed / achieved:.3g}x" if achieved > 0 else "missed"


def _measured(metric: str, row: dict) -> str:
    achieved = row.get(metric)
    if metric == "value":
        return f"{harness.format_number(achieved)} {row['unit']}"
    if metric == "ratio_to_reference":
        return "reference not measured" if achieved is None else f"{achieved:.3g}x the reference"
    return f"{_duration(row['seconds'])}, " + ("-" if achieved is None else f"{achieved:.3g}x the paper")


def evaluate_goals(rows: list[dict], meta: dict, table: dict | None = None) -> list[dict]:
    """Each goal of ``table`` (default :func:`load_goals`): ``met``, ``missed by X`` (X: how many
    times faster it must get) or ``not measured``, from derived ``rows`` of one device; ``meta``
    is that run's metadata. On a CPU every GPU goal is ``not measured on this device`` (the CPU
    figure is still shown for information) and the goals of ``table["cpu"]`` are evaluated (noting
    a run whose torch threads differ from theirs); on a GPU other than the goals' the status says so."""
    table = table or load_goals()
    on_goal_device = meta.get("device") == "cuda" and any(
        d in meta.get("device_name", "") for d in table["devices"]
    )
    goals = []
    cpu_goals = table.get("cpu", {}).get("goals", []) if meta.get("device") == "cpu" else []
    for goal in table["goals"] + cpu_goals:
        found = [
            r
            for r in rows
            if r["figure"] == goal["figure"]
            and r["backend"] not in goal.get("exclude_backends", ())
            and ("backends" not in goal or r["backend"] in goal["backends"])
        ]
        row = max(found, key=lambda r: r["value"]) if found else None
        status, measured = "not measured", "-"
        if row is not None:
            factors = [(c["label"], _factor(c["at_least"], row.get(c["metric"]))) for c in goal["criteria"]]
            verdicts = {f for _, f in factors}
            if len(factors) == 1 or verdicts == {"met"}:
                status = factors[0][1]
            else:  # "rate: missed by 2x; vs reference: met", or "rate met; vs reference not measured"
                sep = " " if verdicts == {"met", "not measured"} else ": "
                status = "; ".join(f"{label}{sep}{f}" for label, f in factors)
            measured = ", ".join(_measured(c["metric"], row) for c in goal["criteria"])
        if goal in cpu_goals:
            threads = meta.get("cpu", {}).get("torch_threads")
            if row is not None and threads != table["cpu"]["threads"]:
                status = f"{status} (with {threads} threads, not {table['cpu']['threads']})"
        elif meta.get("device") != "cuda":
            info = f"{measured} on this CPU ({status})" if row is not None else "figure not measured"
            status, measured = f"not measured on this device (goal: {table['on']})", info
        elif row is not None and not on_goal_device:
            status = f"{status} (on {meta.get('device_name')}, not an {'/'.join(table['devices'])})"
        goals.append(
            {
                "goal": goal["goal"],
                "target": goal["target"],
                "figure": goal["figure"],
                "backend": None if row is None else row["backend"],
                "measured": measured,
                "status": status,
            }
        )
    return goals


# ----------------------------------------------------------------------------- markdown
def _pct(fraction: float | None, achieved: float | None, unit: str) -> str:
    text = "-" if fraction is None else f"{fraction * 100:.3g}%"
    return text if achieved is None else f"{text} ({achieved / 1e9:.3g} {unit})"


def _run_line(run_id: str, meta: dict) -> str:
    gpu, versions, cpu = meta.get("gpu") or {}, meta["versions"], meta["cpu"]
    dev = (
        f"{gpu.get('name')} (driver {gpu.get('driver_version', 'unknown')}, CUDA {gpu.get('cuda_runtime')})"
        if gpu
        else f"{cpu['model']}, {cpu['usable_cpus']} CPUs, {cpu['torch_threads']} torch threads"
    )
    load = meta.get("load_average")
    return (
        f"Run `{run_id}`: {dev}; torch {versions['torch']}, triton {versions['triton']}, python "
        f"{versions['python']}; commit {(meta['git']['commit'] or 'unknown')[:12]}"
        f"{' (dirty tree)' if meta['git'].get('dirty') else ''}; {meta['timestamp']}; load average at "
        f"start {'-' if load is None else ', '.join(f'{v:.2f}' for v in load)}"
        f"{'; --quick' if meta.get('quick') else ''}.\n\nCommand: `{meta['command']}`\n"
    )


def _profile_lines(profile: dict) -> list[str]:
    device_total = profile.get("device_ms_per_step_total")
    lines = [
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
        kernels = [
            [o["op"], f"{o['calls_per_step']:.3g}", f"{o['self_device_ms_per_step']:.3g}"]
            for o in profile["top_kernels"]
        ]
        lines += [
            "GPU kernels and copies by GPU time:",
            "",
            harness.markdown_table(["kernel", "calls/step", "GPU ms/step"], kernels),
        ]
    return lines


def render_markdown(payload: dict) -> str:
    """The markdown report of a payload written by :func:`main` (or synthetic, in tests)."""
    runs = payload["runs"]
    latest = runs[payload["latest_run"]]
    lines = [f"# ecd2g_fast throughput: {latest['device_name']}", ""]
    lines += [_run_line(run_id, meta) for run_id, meta in runs.items()]
    peak = (latest.get("gpu") or {}).get("peaks")
    if latest["device"] != "cuda":
        lines.append(
            "CPU run: no fractions of peak (the peak table covers the GPUs of the goals). The CPU is "
            "shared with other work; the load average above inflates the times."
        )
    elif peak:
        lines.append(
            f"Peaks used ({peak['name']}, {peak['source']}): {peak['bandwidth'] / 1e12:g} TB/s DRAM, "
            f"{peak['fp32_flops'] / 1e12:g} TFLOP/s fp32, {peak['bf16_flops'] / 1e12:g} TFLOP/s dense bf16."
        )
    else:
        lines.append(f"No peak table entry for {latest['device_name']}: fractions of peak left out.")
    notes = payload.get("notes") or NOTES
    lines += [
        "",
        "Times are the best of the timed calls (median and spread `(max-min)/median` in the JSON); "
        "`x ref` = reference time / time, both from the same run (reference: `reference` target pass, "
        "`torch` walk); `x paper` = paper time / time. Bytes: "
        + "; ".join(f"{k}: {v}" for k, v in notes["bytes"].items())
        + f". FLOPs: {notes['flops']}.",
        "",
        "## Figures",
        "",
    ]
    table = [
        [
            r["figure"],
            r["backend"]
            + (
                f" ({r['resolved_backend']})" if r.get("resolved_backend") not in (None, r["backend"]) else ""
            ),
            harness.format_number(r["value"]),
            r["unit"],
            harness.format_number(r["seconds"]),
            f"{r['timing']['runs']}, {r['timing']['spread']:.0%}",
            "-" if r.get("ratio_to_reference") is None else f"{r['ratio_to_reference']:.3g}",
            "-" if r.get("ratio_to_paper") is None else f"{r['ratio_to_paper']:.3g}",
            _pct(r.get("bandwidth_fraction"), r.get("achieved_bandwidth"), "GB/s"),
            _pct(r.get("flops_fraction"), r.get("achieved_flops"), "GFLOP/s"),
            r["check"],
        ]
        for r in payload["rows"]
    ]
    headers = [
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
    ]
    lines.append(harness.markdown_table(headers, table))
    on = load_goals()["on"]
    goals = [[g["goal"], g["target"], g["measured"], g["status"]] for g in payload["goals"]]
    lines += [
        f"## Goals (on {on})",
        "",
        harness.markdown_table(["goal", "target", "measured", "status"], goals),
    ]
    if payload.get("profile"):
        lines += _profile_lines(payload["profile"])
    if payload.get("skipped"):
        skipped = [[s["figure"], s["backend"], s["reason"]] for s in payload["skipped"]]
        lines += [
            "## Not measured in this run",
            "",
            harness.markdown_table(["figure", "backend", "why"], skipped),
        ]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- main
def merge(old: dict, runs: dict, rows: list[dict], skipped: list[dict], profile: dict | None) -> tuple:
    """Keep ``old``'s rows (and their runs), skipped cases and profile for the figures and
    backends this run did not touch; returns ``(runs, rows, skipped, profile)``."""
    measured = {(r["figure"], r["backend"]) for r in rows}
    kept = [r for r in old.get("rows", []) if (r["figure"], r["backend"]) not in measured]
    runs = {**{k: v for k, v in old.get("runs", {}).items() if any(r["run"] == k for r in kept)}, **runs}
    fresh = measured | {(s["figure"], s["backend"]) for s in skipped}
    skipped = [s for s in old.get("skipped", []) if (s["figure"], s["backend"]) not in fresh] + skipped
    return runs, kept + rows, skipped, profile or old.get("profile")


def main(argv: list[str] | None = None) -> dict:
    parser = runner.arg_parser(__doc__.split("\n\n")[0], list(GROUPS), DEFAULT_GROUPS)
    parser.add_argument("--out", default=str(harness.RESULTS), help="folder of the results files")
    parser.add_argument("--merge", action="store_true", help="keep earlier rows of other figures in the JSON")
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite the markdown of a results JSON, no measuring"
    )
    args = parser.parse_args(argv)
    if args.render:
        payload = json.loads(Path(args.render).read_text())
        md_path = Path(args.render).with_suffix(".md")
        md_path.write_text(render_markdown(payload))
        print(f"wrote {harness.repo_path(md_path)}")
        return payload
    output: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        output.append(line)

    session, meta = runner.start(args, log=log)
    start = time.perf_counter()
    runner.run_groups(session, GROUPS, args.cases)
    meta["wall_seconds"] = time.perf_counter() - start
    try:
        meta["load_average_end"] = list(os.getloadavg())
    except OSError:
        meta["load_average_end"] = None

    out = Path(args.out)
    slug = harness.device_slug(meta)
    json_path, md_path, log_path = (out / f"{slug}.{ext}" for ext in ("json", "md", "log"))
    runs, rows, skipped = {session.run_id: meta}, session.rows, session.skipped
    profile = session.attachments.get("profile")
    if args.merge and json_path.is_file():
        runs, rows, skipped, profile = merge(json.loads(json_path.read_text()), runs, rows, skipped, profile)
    cases.derive(rows, runs)
    payload = {
        "format": 1,
        "device_slug": slug,
        "latest_run": session.run_id,
        "runs": runs,
        "rows": rows,
        "skipped": skipped,
        "goals": evaluate_goals(rows, meta),
        "profile": profile,
        "notes": NOTES,
    }
    harness.write_json(json_path, payload)
    md_path.write_text(render_markdown(payload))
    log(
        f"wrote {harness.repo_path(json_path)} and {harness.repo_path(md_path)} ({meta['wall_seconds']:.0f} s)"
    )
    with log_path.open("a" if args.merge else "w") as f:
        f.write("\n".join(output) + "\n")
    print(f"raw output in {harness.repo_path(log_path)}")
    return payload


if __name__ == "__main__":
    main()
