"""Multi-process training: 2 gloo processes under torchrun match one process with the same batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecd2g_fast import distributed
from ecd2g_fast.training import load_checkpoint, train

from ._distributed_train import distributed_cases

HELPER = Path(__file__).with_name("_distributed_train.py")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(HELPER.parent.parent))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(HELPER),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(distributed_cases()))
def test_two_gloo_processes_match_one(two_process_run, case):
    out, ranks = two_process_run
    c, x, y, kwargs = distributed_cases()[case]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(c, x, y, **kwargs)
    finally:
        torch.set_num_threads(threads)
    for rank in ranks:
        got = rank[case]
        assert got["world_size"] == 2
        torch.testing.assert_close(got["losses"], single.losses, rtol=1e-5, atol=1e-7)
        for key in ("model", "last_iterate"):
            want = getattr(single, key).state_dict()
            for name, tensor in want.items():
                torch.testing.assert_close(got[key][name], tensor, rtol=1e-4, atol=1e-6, msg=f"{key}.{name}")
    # both processes hold the same weights exactly (DDP all-reduces the gradients)
    for name, tensor in ranks[0][case]["model"].items():
        assert torch.equal(tensor, ranks[1][case]["model"][name]), name
    # rank 0 wrote the checkpoints
    ckpt = load_checkpoint(out / f"{case}.pt")
    assert ckpt["step"] == kwargs["steps"] and ckpt["world_size"] == 2


def test_setup_without_torchrun_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.device, ctx.owns_group) == (0, 1, torch.device("cpu"), False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup("cpu").world_size == 1
    distributed.shutdown()  # nothing to destroy


def test_setup_rejects_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.setup("cpu")


def test_resolve_device():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(TypeError, match="device"):
        distributed.resolve_device(0.5)
    with pytest.raises(ValueError, match="device"):
        distributed.resolve_device("nonsense")
    if not torch.cuda.is_available():
        assert distributed.resolve_device(None) == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            distributed.resolve_device("cuda")
