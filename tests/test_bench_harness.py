"""The benchmark harness, cases and report pieces (benchmarks/harness.py, cases.py, report.py) on
synthetic rows and cases: timing, device peaks, metadata, writers, limits, the case runner,
derived ratios and the goal evaluation."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import cases
from benchmarks import harness as harness_module
from benchmarks import report as report_module


@pytest.fixture(scope="module")
def harness():
    return harness_module


@pytest.fixture(scope="module")
def report():
    return report_module


H100 = "NVIDIA H100 80GB HBM3"
#: The figures of the first four goals of benchmarks/goals.json, in its order.
TARGETS_FIGURE, TRAIN_FIGURE, SAMPLE_FIGURE, POTENTIAL_FIGURE = (
    g["figure"] for g in report_module.load_goals()["goals"][:4]
)


def _meta(harness, device="cuda", name=H100):
    gpu = None
    if device == "cuda":
        peak = harness.device_peak(name)
        gpu = {"name": name, "driver_version": "555.42", "cuda_runtime": "12.4", "peaks": peak and vars(peak)}
    return {
        "device": device,
        "device_name": name,
        "gpu": gpu,
        "cpu": {"model": "Test CPU", "usable_cpus": 2, "torch_threads": 2},
        "versions": {"torch": "2.13", "triton": "3.9", "python": "3.11"},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "timestamp": "2026-01-01T00:00:00+00:00",
        "command": "python -m benchmarks.report",
        "load_average": [0.5, 0.5, 0.5],
    }


def _row(figure, backend, seconds, work, unit, reference, **extra):
    return {
        "run": "r1",
        "group": "test",
        "figure": figure,
        "backend": backend,
        "reference_backend": reference,
        "seconds": seconds,
        "timing": {"runs": 3, "spread": 0.1},
        "work": work,
        "value": work / seconds,
        "unit": unit,
        "check": "synthetic",
        "bytes": extra.pop("bytes", None),
        "flops": extra.pop("flops", None),
        "flops_dtype": extra.pop("flops_dtype", None),
        "paper_seconds": extra.pop("paper_seconds", None),
        **extra,
    }


def _rows(report):
    Q = 65536
    return [
        _row(TARGETS_FIGURE, "reference", 1e-2, Q, "queries/s", "reference"),
        _row(TARGETS_FIGURE, "triton", 1e-4, Q, "queries/s", "reference", bytes=6.7e6),
        _row(TRAIN_FIGURE, "reference", 10.0, 5000, "steps/s", "reference", paper_seconds=120.0),
        _row(
            TRAIN_FIGURE,
            "auto",
            5.0,
            5000,
            "steps/s",
            "reference",
            paper_seconds=120.0,
            flops=1e12,
            flops_dtype="bf16",
        ),
        _row(SAMPLE_FIGURE, "torch", 0.05, 256, "samples/s", "torch", paper_seconds=0.13),
        _row(SAMPLE_FIGURE, "cpp", 0.01, 256, "samples/s", "torch", paper_seconds=0.13),
    ]


def test_measure_times_are_positive_and_follow_the_stopping_rule(harness):
    calls = []
    timing = harness.measure(lambda: calls.append(sum(range(1000))), warmup=2, repeats=3)
    assert len(timing.seconds) == 3 and len(calls) == 5
    assert all(t > 0 for t in timing.seconds)
    assert timing.best <= timing.median and timing.spread >= 0
    timing = harness.measure(lambda: sum(range(1000)), warmup=0, repeats=1, min_time=0.01)
    assert sum(timing.seconds) >= 0.01
    timing = harness.measure(lambda: sum(range(1000)), warmup=0, repeats=10**6, max_time=0.005)
    assert sum(timing.seconds[:-1]) <= 0.005 < sum(timing.seconds) + 1e-9
    assert timing.to_dict()["runs"] == len(timing.seconds)
    many = harness.Timing([float(i) for i in range(1, 101)]).to_dict()
    assert "all_s" not in many and many["p10_s"] == 10.0 and many["p90_s"] == 90.0 and many["best_s"] == 1.0
    with pytest.raises(ValueError):
        harness.measure(lambda: None, repeats=0)


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("Tesla T4", None),
    ],
)
def test_device_peak_table(harness, name, peak):
    found = harness.device_peak(name)
    assert (found and found.name) == peak


def test_metadata_and_slug(harness):
    meta = harness.run_metadata("cpu", argv=["benchmarks/report.py", "--quick"])
    assert meta["device"] == "cpu" and meta["command"].endswith("benchmarks/report.py --quick")
    assert meta["versions"]["torch"] and meta["timestamp"]
    assert harness.device_slug(meta).startswith("cpu-")
    assert harness.device_slug(_meta(harness)) == "cuda-nvidia-h100-80gb-hbm3"
    json.dumps(meta)


def test_writers_produce_valid_json_and_markdown(harness, tmp_path):
    path = harness.write_json(tmp_path / "x" / "r.json", {"a": [1.0, math.nan, math.inf], "b": {"c": 2}})
    assert json.loads(path.read_text()) == {"a": [1.0, None, None], "b": {"c": 2}}
    table = harness.markdown_table(["x", "y"], [[1, "a|b"], [2, "c"]]).splitlines()
    assert table[0] == "| x | y |" and table[1] == "|---|---|"
    assert table[2] == "| 1 | a\\|b |" and len(table) == 4
    with pytest.raises(ValueError):
        harness.markdown_table(["x"], [[1, 2]])
    assert harness.format_number(None) == "-" and harness.format_number(1.5e9) == "1.50e+09"


def test_derive_ratios_and_peak_fractions(harness, report):
    rows = cases.derive(_rows(report), {"r1": _meta(harness)})
    by = {(r["figure"], r["backend"]): r for r in rows}
    triton = by[(TARGETS_FIGURE, "triton")]
    assert triton["ratio_to_reference"] == pytest.approx(100.0)
    assert triton["bandwidth_fraction"] == pytest.approx(6.7e6 / 1e-4 / 3.35e12)
    auto = by[(TRAIN_FIGURE, "auto")]
    assert auto["ratio_to_paper"] == pytest.approx(24.0)
    assert auto["ratio_to_reference"] == pytest.approx(2.0)
    assert auto["flops_fraction"] == pytest.approx(1e12 / 5.0 / 989e12)
    # rows of another run are never compared with this run's reference
    other = dict(triton, run="r2")
    assert cases.derive([other], {"r2": _meta(harness)})[0]["ratio_to_reference"] is None


def test_goal_evaluation(harness, report):
    meta = _meta(harness)
    rows = cases.derive(_rows(report), {"r1": meta})
    goals = {g["figure"]: g for g in report.evaluate_goals(rows, meta)}
    # 65536 / 1e-4 = 6.55e8 queries/s: 1e9 / 6.55e8 = 1.53x short; 100x the reference
    assert goals[TARGETS_FIGURE]["status"] == "rate: missed by 1.53x; vs reference: met"
    assert goals[TRAIN_FIGURE]["status"] == "met"
    # 0.13 / 0.01 = 13x the paper, 25 / 13 = 1.92x short
    assert goals[SAMPLE_FIGURE]["status"] == "missed by 1.92x"
    assert goals[SAMPLE_FIGURE]["backend"] == "cpp"
    assert goals[POTENTIAL_FIGURE]["status"] == "not measured"

    cpu = report.evaluate_goals(rows, _meta(harness, "cpu", "Test CPU"))
    assert all(g["status"].startswith("not measured on this device") for g in cpu[:4])
    h200 = report.evaluate_goals(rows, _meta(harness, "cuda", "NVIDIA H200"))
    assert h200[1]["status"] == "met (on NVIDIA H200, not an H100/A100)"


def test_render_markdown(harness, report):
    meta = _meta(harness)
    rows = cases.derive(_rows(report), {"r1": meta})
    payload = {
        "latest_run": "r1",
        "runs": {"r1": meta},
        "rows": rows,
        "skipped": [{"figure": "f", "backend": "b", "reason": "too big"}],
        "goals": report.evaluate_goals(rows, meta),
        "profile": {
            "steps": 30,
            "wall_ms_per_step_profiled": 1.5,
            "self_cpu_ms_per_step_total": 1.2,
            "device_ms_per_step_total": 0.3,
            "device_events_per_step": 120.0,
            "top_ops": [{"op": "aten::mm", "calls_per_step": 8.0, "self_cpu_ms_per_step": 0.1}],
            "top_kernels": [{"op": "sm90_gemm", "calls_per_step": 8.0, "self_device_ms_per_step": 0.05}],
        },
    }
    text = report.render_markdown(payload)
    assert "| sm90_gemm | 8 | 0.05 |" in text and "120 kernels and copies per step" in text
    assert "| figure | backend | value |" in text and "## Goals" in text and "too big" in text
    assert "3.35 TB/s" in text and "driver 555.42" in text
    assert text.count(f"| {TARGETS_FIGURE} |") == 2  # its two rows


def test_recorded_command_is_repo_relative(harness):
    assert (
        harness.command_line(["-m", "benchmarks.report", "--quick"]) == "python -m benchmarks.report --quick"
    )
    script, out = harness.REPO / "benchmarks" / "report.py", harness.REPO / "benchmarks" / "results"
    assert (
        harness.command_line([str(script), "--out", str(out)])
        == "python benchmarks/report.py --out benchmarks/results"
    )
    assert harness.repo_path("/elsewhere/x.json") == "/elsewhere/x.json"


def test_limits_settings(harness):
    limits = cases.Limits.for_run("cpu", quick=True)
    changed = limits.with_settings(
        ["target_sizes=256,8192", "repeats=2", "max_time=1.5", "statistical_currentnet=1"]
    )
    assert changed.target_sizes == (256, 8192) and changed.repeats == 2 and changed.max_time == 1.5
    assert changed.statistical_currentnet is True and changed.max_dense_currents == limits.max_dense_currents
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        limits.with_settings(["no_such_field=1"])


def test_session_runs_cases_into_rows_and_skips(harness):
    lines = []
    session = cases.Session("cpu", cases.Limits(repeats=2, max_time=0.05), run_id="r1", log=lines.append)
    prepared = cases.Prepared(
        lambda: sum(range(100)), "checked", params={"found": 1}, flops=10.0, flops_dtype="fp32"
    )
    case = cases.Case(
        "g", "figure one", "fast", lambda: prepared, unit="items/s", work=100, params={"n": 100}
    )
    row = session.run(case)
    assert (
        row["figure"] == "figure one"
        and row["params"] == {"n": 100, "found": 1}
        and row["check"] == "checked"
    )
    assert row["value"] == pytest.approx(100 / row["seconds"]) and row["timing"]["runs"] >= 2
    assert session.run(cases.Case("g", "figure one", "slow", skip="too slow")) is None
    assert session.skipped == [
        {"group": "g", "figure": "figure one", "backend": "slow", "reason": "too slow"}
    ]
    assert case.id == "figure-one-fast" and len(lines) == 2 and "skipped: too slow" in lines[1]

    def failing():
        raise AssertionError("differs from the reference; not timed")

    with pytest.raises(AssertionError, match="not timed"):
        session.run(cases.Case("g", "figure two", "wrong", failing))
    assert len(session.rows) == 1
