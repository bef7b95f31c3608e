"""Run folders lose nothing and mix nothing: atomic stages, resume, manifest, lock, one-line errors.

Every case drives ``ecd2g_fast.cli.main`` in-process on a tiny 1D configuration (a second or so).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ecd2g_fast import cli
from ecd2g_fast.experiments.folder import RunFolder
from ecd2g_fast.training import Trainer, checkpoint, load_checkpoint

# the paper's recipe with the EMA: 20 Adam steps of the default recipe can leave a walker stranded
TINY = [
    "--num-categories",
    "6",
    "--num-layers",
    "2",
    "--batch-size",
    "16",
    "--recipe",
    "paper",
    "--ema-decay",
    "0.999",
    "--quiet",
    "--device",
    "cpu",
]


def _train(out, *extra: str) -> int:
    return cli.main(["train", "uniform-to-gaussian-1d", "--out", str(out), "--steps", "20", *TINY, *extra])


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(out) -> dict:
    return {p.name: _digest(p) for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture()
def trained(tmp_path):
    """A folder with a finished training, samples and metrics."""
    out = tmp_path / "run"
    assert _train(out) == 0
    assert cli.main(["sample", "--out", str(out), "--num-samples", "200", "--quiet"]) == 0
    assert cli.main(["evaluate", "--out", str(out), "--quiet"]) == 0
    return out


def test_a_failed_retrain_keeps_the_previous_run(trained, capsys):
    before = _snapshot(trained)
    assert _train(trained, "--lr", "1e12", "--steps", "200") == 1  # diverges
    err = capsys.readouterr().err
    assert "non-finite training loss" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    after = {k: v for k, v in _snapshot(trained).items() if not k.endswith(".partial")}
    assert after == before


def test_interrupted_training_exits_130_keeps_the_previous_run_and_resumes_bit_identically(
    trained, tmp_path, monkeypatch, capsys
):
    before = _snapshot(trained)
    original = Trainer.step

    def interrupted(self):
        if self.step_count == 12:
            raise KeyboardInterrupt
        return original(self)

    extra = ["--seed", "3", "--checkpoint-every", "5"]
    with monkeypatch.context() as m:
        m.setattr(Trainer, "step", interrupted)
        assert _train(trained, *extra) == 130
    assert "interrupted" in capsys.readouterr().err
    assert {k: v for k, v in _snapshot(trained).items() if not k.endswith(".partial")} == before
    assert load_checkpoint(trained / "checkpoint.pt.partial")["step"] == 10
    assert _train(trained, *extra, "--resume") == 0
    assert not (trained / "checkpoint.pt.partial").exists() and not (trained / "samples.npy").exists()
    whole = tmp_path / "whole"
    assert _train(whole, *extra) == 0
    resumed, uninterrupted = (
        load_checkpoint(trained / "checkpoint.pt"),
        load_checkpoint(whole / "checkpoint.pt"),
    )
    assert torch.equal(resumed["losses"], uninterrupted["losses"])
    for key, tensor in uninterrupted["ema_model"].items():
        assert torch.equal(resumed["ema_model"][key], tensor), key


def test_resume_refuses_an_unfinished_training_of_another_configuration(trained, monkeypatch, capsys):
    original = Trainer.step

    def interrupted(self):
        if self.step_count == 7:
            raise KeyboardInterrupt
        return original(self)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "step", interrupted)
        assert _train(trained, "--checkpoint-every", "5") == 130
    assert _train(trained, "--checkpoint-every", "5", "--lr", "0.05", "--resume") == 1
    assert "another configuration" in capsys.readouterr().err


def test_a_corrupted_checkpoint_is_refused(trained, capsys):
    path = trained / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = b"\x7f\x7f\x7f\x7f"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted|not a readable"):
        load_checkpoint(path)
    assert cli.main(["sample", "--out", str(trained), "--quiet"]) == 1
    assert "checkpoint.pt" in capsys.readouterr().err


def test_checkpoint_with_non_finite_weights_is_refused(trained):
    ckpt = load_checkpoint(trained / "checkpoint.pt")
    first = next(iter(ckpt["ema_model"]))
    ckpt["ema_model"][first][0] = float("nan")
    ckpt["checksum"] = checkpoint.tensor_checksum(ckpt)
    torch.save(ckpt, trained / "nan.pt")
    with pytest.raises(ValueError, match="non-finite weights"):
        load_checkpoint(trained / "nan.pt")


def test_a_crafted_checkpoint_cannot_make_the_loader_allocate(trained):
    ckpt = load_checkpoint(trained / "checkpoint.pt")
    ckpt["model_config"]["hidden"] = [10**6] * 3
    ckpt["checksum"] = checkpoint.tensor_checksum(ckpt)
    torch.save(ckpt, trained / "huge.pt")
    with pytest.raises(ValueError, match="larger than its stored weights"):
        checkpoint.load_model(trained / "huge.pt", "cpu")


def test_files_from_another_run_are_refused(trained, tmp_path, capsys):
    other = tmp_path / "other"
    assert cli.main(["train", "uniform-to-gaussian-1d", "--out", str(other), "--steps", "5", "--num-layers", "3",
                     "--num-categories", "6", "--batch-size", "16", "--quiet", "--device", "cpu"]) == 0  # fmt: skip
    (trained / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    assert cli.main(["sample", "--out", str(trained), "--quiet"]) == 1
    assert "checkpoint.pt" in capsys.readouterr().err
    np.save(trained / "samples.npy", np.zeros((200, 1), dtype=np.int64))
    assert cli.main(["evaluate", "--out", str(trained), "--quiet"]) == 1
    assert "samples.npy" in capsys.readouterr().err


def test_a_second_process_on_the_same_folder_is_refused(trained, capsys):
    with RunFolder(trained).locked():
        assert _train(trained) == 1
        assert cli.main(["evaluate", "--out", str(trained), "--quiet"]) == 1
    assert capsys.readouterr().err.count("another ecd2g process") == 2
    assert cli.main(["evaluate", "--out", str(trained), "--quiet"]) == 0  # the lock went with its holder


def test_run_ids_tie_the_files_together(trained):
    run_id = json.loads((trained / "config.json").read_text())["run_id"]
    assert load_checkpoint(trained / "checkpoint.pt")["metadata"]["run_id"] == run_id
    assert json.loads((trained / "metrics.json").read_text())["run_id"] == run_id
    files = json.loads((trained / "run.json").read_text())["files"]
    assert {files[name]["run_id"] for name in ("checkpoint.pt", "samples.npy", "source_samples.npy")} == {
        run_id
    }


def test_an_interrupted_sample_stage_changes_nothing(trained, monkeypatch):
    before = _snapshot(trained)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ecd2g_fast.experiments.runner.sample", interrupted)
    assert cli.main(["sample", "--out", str(trained), "--num-samples", "300", "--quiet"]) == 130
    assert _snapshot(trained) == before


def test_bad_sampling_options_leave_config_json_alone(trained, capsys):
    before = (trained / "config.json").read_text()
    with pytest.raises(SystemExit):
        cli.main(["sample", "--out", str(trained), "--backend", "bogus"])
    assert (trained / "config.json").read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{file}"], "not a folder"),
        (["--device", "meta"], ""),
        (["--seed", str(2**64)], None),  # a usage error: exit 2
    ],
    ids=["out-is-a-file", "device-meta", "seed-too-large"],
)
def test_expected_failures_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    args = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    argv = ["train", "uniform-to-gaussian-1d", "--steps", "2", *TINY[:-2], *args]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "run")]
    if message is None:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        return
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and message in err


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        cli.main(["train", "uniform-to-gaussian-1d", "--out", str(tmp_path / "file"), "--debug", *TINY])


def test_malformed_config_json_is_one_line(trained, capsys):
    (trained / "config.json").write_text("{not json")
    assert cli.main(["evaluate", "--out", str(trained), "--quiet"]) == 1
    assert "config.json" in capsys.readouterr().err


def test_sampling_more_walkers_than_memory_is_one_line(trained, capsys):
    assert cli.main(["sample", "--out", str(trained), "--num-samples", "1000000000000", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[1e300], [2.0]]), "below"),
        (np.array([["a"], ["b"]]), "dtype"),
        (np.zeros((5, 0), dtype=np.int64), "D >= 1"),
        (np.array([[1 + 2j], [3 + 0j]]), "dtype"),
        (np.array([[2**40]]), "below"),
    ],
    ids=["1e300", "strings", "no-columns", "complex", "2**40"],
)
def test_bad_data_files_get_clear_messages(tmp_path, capsys, array, message):
    np.save(tmp_path / "source.npy", array)
    out = tmp_path / "run"
    assert cli.main(["train", "custom", "--source", str(tmp_path / "source.npy"), "--target", "uniform",
                     "--out", str(out), "--steps", "2", "--quiet", "--device", "cpu"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_inferred_num_categories_is_bounded_before_allocation(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.array([[0], [2**30]]))
    assert cli.main(["train", "custom", "--source", str(tmp_path / "a.npy"), "--target", "uniform",
                     "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu"]) == 1  # fmt: skip
    assert "2**24" in capsys.readouterr().err


def test_checkpoint_path_that_is_a_folder_fails_at_once(tmp_path):
    from ecd2g_fast import Circuit

    with pytest.raises(ValueError, match="is a folder"):
        Trainer(Circuit(4, 1, 2), torch.zeros(3, 1, dtype=torch.int64), torch.zeros(3, 1, dtype=torch.int64),
                checkpoint_path=tmp_path)  # fmt: skip


def test_absurd_thread_counts_are_usage_errors(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "uniform-to-gaussian-1d", "--threads", "100000", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
