"""benchmarks/highdim_comparison.py end to end at its smallest: a D = 8 mixture and the binary digits,
ECD2G and both DFM sources, 20 steps and 20 samples; the rows' keys, the written files, the resume."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flow_matching")
pytest.importorskip("sklearn")

from benchmarks import harness  # noqa: E402
from benchmarks import highdim_comparison as hc  # noqa: E402

ARGS = [
    *("--dim", "8", "--layers", "4", "--width", "32", "--depth", "1", "--steps", "20"),
    *("--num-samples", "20", "--nfe", "4", "--dfm-lr", "3e-3", "--binary", "--quiet"),
    *("--out-stem", "test_highdim", "--fresh"),
]
COMMON_KEYS = {
    "key",
    "task",
    "method",
    "setting",
    "lr",
    "num_samples",
    "num_scored",
    "metrics",
    "train_seconds",
    "final_loss",
    "sample_seconds",
    "samples_per_second",
    "calls_per_sample",
    "rows_per_call",
    "rows_per_sample",
    "flops_per_row",
    "flops_per_sample",
    "parameters",
}


def test_smallest_run_writes_rows_and_resumes(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    assert hc.main(ARGS) == 0
    payload = json.loads((tmp_path / "test_highdim.json").read_text())
    rows, meta = payload["rows"], payload["meta"]
    assert meta["complete"] and "/tmp" not in meta["command"] and str(tmp_path) not in json.dumps(payload)
    assert set(meta["tasks"]) == {"bernoulli-mixture-8", "digits-64-binary"}
    assert [(r["task"], r["method"]) for r in rows] == [
        (task, method)
        for task in ("bernoulli-mixture-8", "digits-64-binary")
        for method in ("ECD2G", "DFM, mask source", "DFM, uniform source")
    ]
    for r in rows:
        assert COMMON_KEYS <= set(r), COMMON_KEYS - set(r)
        assert r["num_samples"] == 20 and r["train_seconds"] > 0 and r["parameters"] > 0
        if r["method"] == "ECD2G":
            assert {"unfinished_fraction", "bridged_dead_ends", "mean_moves", "config"} <= set(r)
            # the recipe's ratio head: one row per walker and move (the scalar head: 2 (1 + D) + 1 at K = 2)
            assert r["rows_per_call"] == 1 and r["calls_per_sample"] == r["rows_per_sample"]
            assert r["calls_per_sample"] >= 4  # at least one call per layer of L = 4
        else:
            assert {"source", "nfe", "masked_fraction"} <= set(r)
            assert r["calls_per_sample"] == r["rows_per_sample"] == 4  # one row per solver step
        if r["metrics"] is not None:
            expected = {"marginal_tv", "correlation_error"}
            expected |= (
                {"loglik_gap", "coverage_tv"}
                if r["task"].startswith("bernoulli")
                else {"label_tv", "label_tv_crossfit"}
            )
            assert expected <= set(r["metrics"]["samples"]) and expected <= set(r["metrics"]["floor"])
            if r["task"].startswith("digits"):
                assert "samples_mean" in r["metrics"]["memorisation"]
                assert r["metrics"]["class_margin"]["held_out_mean"] > 0
    markdown = (tmp_path / "test_highdim.md").read_text()
    assert "## bernoulli-mixture-8" in markdown and "## digits-64-binary" in markdown
    assert "| class margin |" in markdown
    journal = (tmp_path / "test_highdim_runs.jsonl").read_text().splitlines()
    assert len(journal) == 6  # one ECD2G and two DFM units per task

    # a rerun without --fresh trains nothing and reports the same rows
    def no_training(*args, **kwargs):
        raise AssertionError("a finished unit was run again")

    monkeypatch.setattr(hc, "ecd2g_unit", no_training)
    monkeypatch.setattr(hc, "dfm_unit", no_training)
    assert hc.main([a for a in ARGS if a != "--fresh"]) == 0
    again = json.loads((tmp_path / "test_highdim.json").read_text())["rows"]
    assert again == rows
    assert len((tmp_path / "test_highdim_runs.jsonl").read_text().splitlines()) == 6


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        hc.parse_args(["--out-stem", "../elsewhere"])
    with pytest.raises(SystemExit):
        hc.parse_args(["--nfe", "0"])


def test_quick_defaults_give_way_to_explicit_flags():
    args = hc.parse_args(["--quick", "--steps", "7"])
    assert args.steps == 7 and args.num_samples == 100 and args.dfm_lr == [3e-3]
