"""train(): quality at the paper's budget and with the measured defaults, checkpoints and
bit-identical resume, bad input."""

from __future__ import annotations

import math
import os
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import ecd2g_fast as E
import ecd2g_fast.training as training
from ecd2g_fast.training import NonFiniteLossError, TrainConfig, TrainResult, load_checkpoint, train

from .testing import assert_samples_follow, discretised_gaussian, total_variation

pytestmark = pytest.mark.usefixtures("one_thread")

K, L = 50, 10


def gauss_task():
    """docs/theory.md §4: K=50, D=1, L=10, r=0.1, R=100, uniform -> discretised Gaussian."""
    c = E.Circuit(K, 1, L, r=0.1, R=100.0)
    p = torch.full((K,), 1.0 / K, dtype=torch.float64)
    q = discretised_gaussian(K)
    g = torch.Generator().manual_seed(1234)
    source = lambda n: torch.multinomial(p, n, replacement=True, generator=g).unsqueeze(1)  # noqa: E731
    target = lambda n: torch.multinomial(q, n, replacement=True, generator=g).unsqueeze(1)  # noqa: E731
    return c, p, q, source, target


def small_data(n: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(K, (n, 1), generator=g), torch.randint(15, 35, (n, 1), generator=g)


def current_table(field, c: E.Circuit) -> torch.Tensor:
    M = c.num_states
    states = torch.arange(M)
    return torch.stack(
        [field.currents_to_next(torch.full((M,), l), states, 0, M) for l in range(c.num_layers)]
    )


# ---------------------------------------------------------------------------- quality (paper budget)
@pytest.fixture(scope="module")
def trained():
    """Both models trained once with the paper's recipe (SGD 0.01, scaled coordinates, 5000 steps of
    batch 256, uniform queries) and the package's weight average (EMA 0.999)."""
    out = {}
    for model in ("potential", "current"):
        c, p, q, source, target = gauss_task()
        config = TrainConfig.recipe("paper", model=model, ema_decay=0.999)
        out[model] = (c, p, q, train(c, source, target, config, seed=0, progress=False))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model, bound", [("potential", 0.05), ("current", 0.10)])
def test_trained_field_output_tv(trained, model, bound):
    c, p, q, result = trained[model]
    assert isinstance(result, TrainResult) and result.losses.shape == (5000,)
    out = E.exact_output_distribution(result.field, p)
    assert out.residual_mass <= 1e-15
    tv = total_variation(out.pmf, q)
    assert tv <= bound, f"TV(output, q) = {tv:.4f} > {bound}"
    # the walk stays short (no cycles in the learned current field)
    assert out.expected_moves < L + 2


@pytest.mark.slow
def test_trained_currents_match_exact(trained):
    c, p, q, result = trained["current"]
    exact = c.currents(p, q)
    learned = current_table(result.field, c)
    rel = float((learned - exact).norm() / exact.norm())
    assert rel <= 0.2, f"relative L2 error of the currents {rel:.4f} > 0.2"


@pytest.mark.slow
def test_trained_potential_field_currents_match_exact(trained):
    c, p, q, result = trained["potential"]
    exact = c.currents(p, q)
    rel = float((current_table(result.field, c) - exact).norm() / exact.norm())
    assert rel <= 0.1, f"relative L2 error of the currents {rel:.4f} > 0.1"


@pytest.mark.slow
@pytest.mark.parametrize("model, n, bound", [("potential", 20000, 0.05), ("current", 2000, 0.10)])
def test_trained_field_sampled(trained, model, n, bound):
    """Sampling the learned field follows its exact output law (chi-square, false-failure ~1e-6)
    and lands within the TV bound of q plus the sampling noise of n draws."""
    c, p, q, result = trained[model]
    gen = torch.Generator().manual_seed(7)
    x0 = torch.multinomial(p, n, replacement=True, generator=gen).unsqueeze(1)
    samples = E.sample(result.field, x0, generator=gen)
    counts = torch.bincount(samples[:, 0], minlength=K)
    law = E.exact_output_distribution(result.field, p).pmf
    assert_samples_follow(counts, law)
    # E[TV(empirical, q)] <= 0.5 sum sqrt(q / n); allow three times that
    slack = 3 * 0.5 * float(torch.sqrt(q / n).sum())
    tv = total_variation(counts / n, q)
    assert tv <= bound + slack, f"TV(samples, q) = {tv:.4f} > {bound} + {slack:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["potential", "current"])
def test_measured_defaults_learn_the_1d_task(model):
    """The measured per-model recipe (``RECIPES["default"]``) at a quarter of its budget (2500 of
    10,000 steps, batch 4096 instead of 16384) already reaches TV <= 0.05 on the 1D task."""
    c, p, q, source, target = gauss_task()
    config = TrainConfig.recipe("default", model=model, steps=2500, batch_size=4096)
    result = train(c, source, target, config, progress=False)
    assert result.model.encoding.kind == "onehot" and config.optimizer == "adam"
    out = E.exact_output_distribution(result.field, p)
    tv = total_variation(out.pmf, q)
    assert tv <= 0.05, f"TV(output, q) = {tv:.4f} > 0.05"


# ---------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("queries", ["uniform", "data"])
@pytest.mark.parametrize("model", ["current", "potential"])
def test_short_training_learns_and_is_deterministic(model, queries):
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    kwargs = dict(model=model, steps=60, batch_size=64, queries=queries, seed=3, progress=False)
    a = train(c, x, y, **kwargs)
    b = train(c, x, y, **kwargs)
    assert torch.equal(a.losses, b.losses)
    assert all(
        torch.equal(u, v) for u, v in zip(a.model.state_dict().values(), b.model.state_dict().values())
    )
    assert bool(torch.isfinite(a.losses).all())
    assert float(a.losses[-20:].mean()) < float(a.losses[:5].mean())
    field_cls = E.models.CurrentNetField if model == "current" else E.models.PotentialNetField
    assert isinstance(a.field, field_cls) and a.field.net is a.model
    assert not a.model.training
    other = train(c, x, y, **{**kwargs, "seed": 4})
    assert not torch.equal(a.losses, other.losses)


def test_ema_off_returns_last_iterate():
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    r = train(c, x, y, model="potential", steps=5, batch_size=16, ema_decay=None, progress=False)
    assert r.model is r.last_iterate
    r = train(c, x, y, model="potential", steps=5, batch_size=16, progress=False)
    assert r.model is not r.last_iterate


def test_callable_sources_and_num_queries():
    c = E.Circuit(6, 2, 3)
    calls = []

    def source(n):
        calls.append(n)
        return torch.randint(6, (n, 2))

    r = train(
        c,
        source,
        source,
        model="current",
        steps=3,
        batch_size=8,
        num_queries=5,
        queries="data",
        progress=False,
    )
    assert r.config.num_queries == 5 and r.losses.shape == (3,)
    # per step: x and y (8 each), then 2 x 2 anchor draws of 5 for the data queries of z and w
    assert calls[:6] == [8, 8, 5, 5, 5, 5]


def test_progress_bar_runs(capsys):
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    train(c, x, y, model="potential", steps=12, batch_size=16, progress=True)
    assert "train potential" in capsys.readouterr().err


aten = torch.ops.aten
#: ATen ops that make the host wait for a CUDA device, or whose output shape depends on the data;
#: ``lift_fresh`` is ``torch.tensor(python data)``, on CUDA a blocking host-to-device copy.
SYNC_OPS = {
    aten.lift_fresh.default,
    aten._local_scalar_dense.default,
    aten.item.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.masked_select.default,
}
#: Tensor methods that copy to the host; on the CPU they reach no ATen op, so the dispatch mode misses them.
HOST_READS = {"tolist", "numpy", "cpu"}


def _caller() -> str:
    """``file:line function`` of the innermost ecd2g_fast frame on the stack (the phase of a step)."""
    frames = [f for f in traceback.extract_stack() if f"{os.sep}ecd2g_fast{os.sep}" in f.filename]
    if not frames:
        return "outside ecd2g_fast (autograd engine?)"
    f = frames[-1]
    return f"{f.filename.split(f'ecd2g_fast{os.sep}')[-1]}:{f.lineno} {f.name}"


class SyncRecorder(TorchDispatchMode):
    """While ``armed``, records the ATen ops that sync (:data:`SYNC_OPS`, ``repeat_interleave``
    without ``output_size``) as ``(op, caller)`` pairs in ``syncs``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed, self.syncs = False, []

    def record(self, op: str) -> None:
        if self.armed:
            self.syncs.append((op, _caller()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNC_OPS or (func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None):
            self.record(str(func))
        return func(*args, **kwargs)


class HostReads(TorchFunctionMode):
    """Passes the :data:`HOST_READS` calls to a :class:`SyncRecorder`."""

    def __init__(self, recorder: SyncRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in HOST_READS:
            self.recorder.record(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("queries", ["uniform", "data"])
@pytest.mark.parametrize("model", ["current", "potential"])
def test_steps_between_check_points_do_not_sync(model, queries, monkeypatch):
    """From the second step to the check point at the end, nothing makes the host wait for the
    device: the losses stay on it, and the targets pass skips its value checks."""
    c = E.Circuit(16, 2, 4)  # M = 256: exact state keys
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(16, (200, 2), generator=g), torch.randint(4, 12, (200, 2), generator=g)
    steps = 4
    assert steps < training.CHECK_EVERY
    recorder = SyncRecorder()
    checked_at = []
    train_step, check = training.Trainer.step, training.Trainer.check

    def recorded_step(self):
        # from the second step on: the first fills per-device caches (key weights, coefficients)
        recorder.armed = self.step_count >= 1
        return train_step(self)

    def unrecorded_check(self):
        recorder.armed = False
        checked_at.append(self.step_count)
        check(self)

    monkeypatch.setattr(training.Trainer, "step", recorded_step)
    monkeypatch.setattr(training.Trainer, "check", unrecorded_check)
    with recorder, HostReads(recorder):
        # SGD: torch's Adam reads its step counter with .item() every step; that counter is a host
        # tensor unless capturable (no device wait), but it would show up here
        result = train(
            c, x, y, model=model, steps=steps, batch_size=32, queries=queries, optimizer="sgd", progress=True
        )
    assert checked_at == [steps] and result.losses.shape == (steps,)
    assert recorder.syncs == [], f"syncs between check points: {recorder.syncs}"


# ---------------------------------------------------------------------------- checkpoints and resume
class Interrupt(Exception):
    pass


def fail_on_call(monkeypatch, name: str, call: int, *, nan: bool):
    """Make training's target function raise (or return nan) on its ``call``-th invocation."""
    original = getattr(training.loss, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        out = original(*args, **kwargs)
        if count["n"] == call:
            if not nan:
                raise Interrupt
            out = out.clone()
            out[0] = math.nan
        return out

    monkeypatch.setattr(training.loss, name, wrapped)


RESUME_CASES = {
    # tensor sources, data queries
    "current-data": ("current", "data", False),
    # callable sources drawing from torch's global RNG (checkpointed too), uniform queries
    "potential-uniform-callable": ("potential", "uniform", True),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_is_bit_identical(case, tmp_path, monkeypatch):
    model, queries, use_callable = RESUME_CASES[case]
    c = E.Circuit(K, 1, L)
    if use_callable:
        x = y = lambda n: torch.randint(K, (n, 1))  # noqa: E731
    else:
        x, y = small_data()
    kwargs = dict(
        model=model, steps=30, batch_size=32, queries=queries, seed=11, checkpoint_every=10, progress=False
    )

    torch.manual_seed(5)
    whole = train(c, x, y, checkpoint_path=tmp_path / "whole.pt", **kwargs)

    path = tmp_path / "run.pt"
    torch.manual_seed(5)
    with monkeypatch.context() as m:
        fail_on_call(m, f"{model}_targets", 17, nan=False)
        with pytest.raises(Interrupt):
            train(c, x, y, checkpoint_path=path, **kwargs)
    assert load_checkpoint(path)["step"] == 10
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    torch.manual_seed(999)  # the checkpoint restores the global RNG as well
    resumed = train(c, x, y, checkpoint_path=path, resume=True, **kwargs)

    assert resumed.start_step == 10
    assert torch.equal(resumed.losses, whole.losses)
    for net_a, net_b in ((whole.model, resumed.model), (whole.last_iterate, resumed.last_iterate)):
        for (k, u), v in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            assert torch.equal(u, v), k
    final = load_checkpoint(path)
    assert final["step"] == 30 and final["config"]["model"] == model
    assert torch.equal(final["losses"], whole.losses)


def test_resume_extends_a_finished_run(tmp_path):
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    # a constant schedule: a cosine one depends on `steps`, so a run of 12 steps is not the start of
    # one of 20
    kwargs = dict(
        model="potential", batch_size=16, seed=2, checkpoint_every=7, lr_schedule="constant", progress=False
    )
    whole = train(c, x, y, steps=20, **kwargs)
    path = tmp_path / "ck.pt"
    train(c, x, y, steps=12, checkpoint_path=path, **kwargs)
    assert load_checkpoint(path)["step"] == 12  # the last step is always saved
    resumed = train(c, x, y, steps=20, checkpoint_path=path, resume=True, **kwargs)
    assert torch.equal(resumed.losses, whole.losses)


def test_resume_without_file_starts_fresh(tmp_path):
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    r = train(
        c,
        x,
        y,
        model="potential",
        steps=3,
        batch_size=8,
        checkpoint_path=tmp_path / "new.pt",
        resume=True,
        progress=False,
    )
    assert r.start_step == 0 and load_checkpoint(tmp_path / "new.pt")["step"] == 3


def test_resume_rejects_a_different_run(tmp_path):
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    path = tmp_path / "ck.pt"
    train(c, x, y, model="potential", steps=3, batch_size=8, checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(
            c,
            x,
            y,
            model="potential",
            steps=6,
            batch_size=8,
            lr=0.5,
            checkpoint_path=path,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="model"):
        train(
            c, x, y, model="current", steps=6, batch_size=8, checkpoint_path=path, resume=True, progress=False
        )
    with pytest.raises(ValueError, match="steps=2"):
        train(
            c,
            x,
            y,
            model="potential",
            steps=2,
            batch_size=8,
            checkpoint_path=path,
            resume=True,
            progress=False,
        )
    (tmp_path / "junk.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        train(
            c,
            x,
            y,
            model="potential",
            steps=6,
            batch_size=8,
            checkpoint_path=tmp_path / "junk.pt",
            resume=True,
            progress=False,
        )


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    path = tmp_path / "ck.pt"
    fail_on_call(monkeypatch, "current_targets", 13, nan=True)
    with pytest.raises(NonFiniteLossError, match=r"step 13 of 30.*step 10"):
        train(
            c,
            x,
            y,
            model="current",
            steps=30,
            batch_size=16,
            checkpoint_path=path,
            checkpoint_every=5,
            progress=False,
        )
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 10 and len(ckpt["losses"]) == 10
    assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values())


def test_diverging_lr_raises():
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    with pytest.raises(NonFiniteLossError, match="step .* no checkpoint"):
        train(c, x, y, model="potential", steps=200, batch_size=16, lr=1e12, progress=False)


# ---------------------------------------------------------------------------- bad input
def bad_input_cases():
    x, y = small_data(50)
    c = E.Circuit(K, 1, L)
    return {
        "circuit-type": (dict(circuit="c"), TypeError, "circuit"),
        "D-mismatch": (
            dict(source=torch.zeros(50, 2, dtype=torch.int64)),
            ValueError,
            r"source must have shape \(B, 1\)",
        ),
        "K-mismatch": (dict(target=y + 30), ValueError, r"target must hold states in \[0, 50\)"),
        "negative-state": (dict(source=x - 60), ValueError, "source must hold states"),
        "float-states": (dict(source=x.double()), TypeError, "source must have dtype torch.int64"),
        "empty-source": (dict(source=x[:0]), ValueError, "source must hold at least one sample"),
        "source-type": (dict(source=[[1]]), TypeError, "source must be"),
        "callable-bad-shape": (
            dict(target=lambda n: torch.zeros(n, 3, dtype=torch.int64)),
            ValueError,
            r"target\(16\) output",
        ),
        "callable-bad-rows": (
            dict(target=lambda n: torch.zeros(n + 1, 1, dtype=torch.int64)),
            ValueError,
            "rows",
        ),
        "callable-out-of-range": (
            dict(target=lambda n: torch.full((n, 1), K)),
            ValueError,
            r"target\(16\) output must hold",
        ),
        "batch-1": (dict(batch_size=1), ValueError, "batch_size must be >= 2"),
        "batch-float": (dict(batch_size=16.0), TypeError, "batch_size"),
        "steps-0": (dict(steps=0), ValueError, "steps"),
        "num-queries-0": (dict(num_queries=0), ValueError, "num_queries"),
        "model-name": (dict(model="flow"), ValueError, "model must be one of"),
        "queries-name": (dict(queries="importance"), ValueError, "queries must be one of"),
        "lr-negative": (dict(lr=-0.1), ValueError, "lr must be"),
        "lr-nan": (dict(lr=float("nan")), ValueError, "lr must be"),
        "lr-str": (dict(lr="0.1"), TypeError, "lr must be"),
        "momentum-1": (dict(momentum=1.0), ValueError, "momentum"),
        "weight-decay": (dict(weight_decay=-1.0), ValueError, "weight_decay"),
        "ema-1": (dict(ema_decay=1.0), ValueError, "ema_decay"),
        "seed": (dict(seed=-1), ValueError, "seed"),
        "model-kwargs": (dict(model_kwargs=[1]), TypeError, "model_kwargs"),
        "model-kwargs-encoding": (dict(model_kwargs={"encoding": "x"}), ValueError, "encoding"),
        "backend": (dict(targets_backend="nonesuch"), ValueError, "backend"),
        "device": (dict(device=3.5), TypeError, "device"),
        "resume-no-path": (dict(resume=True), ValueError, "checkpoint_path"),
        "checkpoint-every": (dict(checkpoint_every=0), ValueError, "checkpoint_every"),
        "amp": (dict(amp="yes"), TypeError, "amp"),
    }, dict(circuit=c, source=x, target=y, model="current", steps=2, batch_size=16, progress=False)


CASES, BASE = bad_input_cases()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case):
    override, error, match = CASES[case]
    kwargs = {**BASE, **override}
    with pytest.raises(error, match=match):
        train(**kwargs)


def test_lr_schedules_follow_their_definition():
    config = E.TrainConfig(steps=110, warmup_steps=10, lr=0.5, lr_schedule="cosine")
    assert [config.lr_factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert config.lr_factor(10) == 1.0 and math.isclose(config.lr_factor(60), 0.5)
    assert config.lr_factor(109) < 0.001 and config.lr_factor(500) == 0.0
    constant = E.TrainConfig(steps=50, warmup_steps=4, lr_schedule="constant")
    assert [constant.lr_factor(s) for s in (0, 3, 4, 49)] == [0.25, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_with_a_schedule_learns_and_resumes_bit_identically(optimizer, tmp_path, monkeypatch):
    c = E.Circuit(K, 1, L)
    x, y = small_data()
    kwargs = dict(model="potential", steps=80, batch_size=64, seed=5, optimizer=optimizer, lr=1e-2,
                  lr_schedule="cosine", warmup_steps=5, checkpoint_every=20, progress=False)  # fmt: skip
    whole = train(c, x, y, **kwargs)
    assert float(whole.losses[-20:].mean()) < float(whole.losses[:5].mean())
    path = tmp_path / "run.pt"
    with monkeypatch.context() as m:
        fail_on_call(m, "potential_targets", 47, nan=False)
        with pytest.raises(Interrupt):
            train(c, x, y, checkpoint_path=path, **kwargs)
    resumed = train(c, x, y, checkpoint_path=path, resume=True, **kwargs)
    assert resumed.start_step == 40 and torch.equal(resumed.losses, whole.losses)
    for (k, u), v in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(u, v), k
    with pytest.raises(ValueError, match="optimizer"):
        train(c, x, y, checkpoint_path=path, resume=True, **{**kwargs, "optimizer": "sgd"})


def test_grad_clip_bounds_the_step():
    """With SGD (no momentum) a step moves the parameters by lr times the clipped gradient, whose
    global norm is at most grad_clip; without clipping the same step moves them far more."""
    c = E.Circuit(K, 1, L, r=0.1, R=100.0)
    source, target = small_data()

    def step_norm(grad_clip):
        config = TrainConfig.recipe(
            "paper", model="potential", steps=1, momentum=0.0, ema_decay=None, lr=1.0, grad_clip=grad_clip
        )
        trainer = training.Trainer(c, source, target, config, progress=False)
        before = [p.detach().clone() for p in trainer.net.parameters()]
        trainer.step()
        moved = [p.detach() - b for p, b in zip(trainer.net.parameters(), before)]
        return float(torch.linalg.vector_norm(torch.cat([m.flatten() for m in moved])))

    assert step_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)
    assert step_norm(None) > 1e-2
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=0.0)
