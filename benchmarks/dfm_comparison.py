"""ECD2G next to discrete flow matching (Gat et al. 2024) on the discretised moons -> swiss roll task.

Both methods learn to carry the 2D moons distribution to the 2D swiss roll on the same
``K x K = 32 x 32`` grid (:mod:`ecd2g_fast.experiments.datasets`), with the same number of
gradient steps, networks of the same size, and are evaluated the same way on the same machine:

* **ECD2G**: :class:`~ecd2g_fast.models.PotentialNet` (docs/theory.md §6) and
  :class:`~ecd2g_fast.models.CurrentNet` (the paper's network), trained by
  :func:`ecd2g_fast.training.train` with the training settings of the package's
  ``moons-to-swissroll-2d`` preset (read from :data:`ecd2g_fast.experiments.EXPERIMENTS` at run
  time, only ``model`` changed; ``--ecd2g-set`` overrides single settings and is recorded), both
  walk modes. The current network's field is checked for dead ends before it is sampled
  (:func:`ecd2g_fast.sampling.find_dead_ends`).
* **DFM** through the ``flow_matching`` package (1.0.10, CC BY-NC: an optional extra, never a
  dependency of ``ecd2g_fast``): :class:`~flow_matching.path.MixtureDiscreteProbPath` with
  :class:`~flow_matching.path.scheduler.PolynomialConvexScheduler` (``n = 2``, as the package's 2D
  example), :class:`~flow_matching.loss.MixturePathGeneralizedKL`, and
  :class:`~flow_matching.solver.MixtureDiscreteEulerSolver` with categorical draws in float64.
  The network is built like the package's 2D discrete example (:class:`DFMNet`): a learned
  embedding of each coordinate's token (one table per coordinate), sinusoidal features of ``t``,
  an MLP with SiLU activations and ``D V`` outputs (per-coordinate logits of ``x_1`` over the
  ``V`` tokens), sized to ECD2G's parameter count. Two sources: ``moons`` (``x_0`` ~ moons,
  independent of ``x_1`` ~ swiss roll: the same data as ECD2G) and ``mask`` (``x_0`` = a
  ``(K+1)``-th mask token in every coordinate, the source the package's example and DFM papers
  prefer). Adam with a cosine learning-rate schedule; the learning rate swept over ``--dfm-lr``
  (default 1e-3 and 3e-3: two values, the effort ECD2G's own sweep spends per optimiser,
  ``benchmarks/sweep.py``); ``t ~ U[0, 1 - 1e-3)``. Batch sizes (``--dfm-batch-size``): by
  default the preset's queries per step (the network evaluations per step of ECD2G) and the
  preset's Monte-Carlo batch (the data per step of ECD2G: each DFM pair uses one source and one
  target sample). Solver steps ``L``, ``2 L``, ``5 L``, ``20 L`` on the grid ``[0, 1 - 1e-3]``.

Reported for every method: TV and JS (bits) of ``n`` generated samples against the exact target
pmf, with the noise floor of ``n``; **TV and JS of the sampler's exact output law** (no sampling
noise: ECD2G by :func:`ecd2g_fast.exact_output_distribution`; DFM by propagating the exact law of
the Euler solver over all ``V^D`` token states, whose step is a product of per-coordinate
kernels ``T^i(y | x) = a p^i_{1|t}(y | x) + (1 - a) [y = x^i]`` with
``a = 1 - exp(-h kappa'_t / (1 - kappa_t))`` and ``a = 1`` at the last step; mass left on a mask
token counts as error; the sampled histogram is checked against it); training wall time;
sampling time and samples/s; network evaluations per sample. Start states of the moons source
come from one pool of moons samples.

Each finished unit (an ECD2G model, or one DFM source / batch / learning rate with all its solver
steps) is appended to ``benchmarks/results/dfm_comparison_runs.jsonl`` under a key of its
settings; a rerun of the same command skips the units already there (``--fresh`` starts over),
so an interrupted run is resumed by running it again.

Usage::

    python -m benchmarks.dfm_comparison                      # the full grid (see the notes file)
    python -m benchmarks.dfm_comparison --steps 200 --quick --out-stem smoke --fresh   # smoke run

Writes ``benchmarks/results/dfm_comparison.md`` and ``.json`` (``--out-stem`` to change), with the
run's metadata (:func:`benchmarks.harness.run_metadata`). Times are single runs
(:func:`benchmarks.harness.timed`) on a shared machine: a training or sampling run is not repeated.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import ecd2g_fast as E
from ecd2g_fast import metrics as M
from ecd2g_fast.experiments import EXPERIMENTS
from ecd2g_fast.experiments.datasets import moons, swiss_roll
from ecd2g_fast.experiments.evaluation import density_projection_info
from ecd2g_fast.fields import Field
from ecd2g_fast.sampling import MODES, find_dead_ends
from ecd2g_fast.training import TrainConfig, train

from . import harness

#: The package preset whose training settings ECD2G uses.
PRESET = "moons-to-swissroll-2d"
#: DFM trains on t in [0, 1 - eps) and samples up to 1 - eps (the package's example).
EPSILON = 1e-3
SOURCES = ("moons", "mask")


# ---------------------------------------------------------------------------- fields and networks
class CountingField(Field):
    """Forwards every query to ``inner`` and counts the (walker, neighbour) current evaluations."""

    def __init__(self, inner: Field) -> None:
        self.inner, self.circuit, self.acyclic = inner, inner.circuit, inner.acyclic
        self.bytes_per_pair = inner.bytes_per_pair
        self.evaluations = 0

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def currents_to_next(self, layer, z, start, stop):
        self.evaluations += z.shape[0] * (stop - start)
        return self.inner.currents_to_next(layer, z, start, stop)

    def currents_from_prev(self, layer, z, start, stop):
        self.evaluations += z.shape[0] * (stop - start)
        return self.inner.currents_from_prev(layer, z, start, stop)

    def sink_currents(self, z):
        return self.inner.sink_currents(z)


class DFMNet(nn.Module):
    """The DFM posterior network, built like the ``flow_matching`` package's 2D discrete example.

    ``x_t`` ``(B, D)`` int64 tokens in ``[0, V)`` and ``t`` ``(B,)`` float -> ``(B, D, V)`` float32
    logits of ``x_1``. Each coordinate's token has its own embedding table (``V x embed``); ``t``
    enters as ``time_features`` sinusoidal features (``sin``/``cos`` of ``1000 t`` at geometric
    frequencies, as in diffusion models); the concatenation goes through SiLU, Linear(hidden),
    (SiLU, Linear(hidden)) x 2, SiLU, Linear(D V) (the example's layout).

    Args:
        vocab: ``V``, tokens per coordinate (``K``, or ``K + 1`` with the mask token).
        dim: ``D``.
        embed, hidden, time_features: the sizes (``time_features`` even).
    """

    def __init__(self, vocab: int, dim: int, embed: int = 48, hidden: int = 84, time_features: int = 32):
        super().__init__()
        if time_features % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        self.V, self.D, self.time_features = vocab, dim, time_features
        self.embeddings = nn.ModuleList(nn.Embedding(vocab, embed) for _ in range(dim))
        half = time_features // 2
        self.register_buffer("freqs", torch.exp(-math.log(10_000.0) * torch.arange(half) / half))
        self.main = nn.Sequential(
            nn.SiLU(),
            nn.Linear(dim * embed + time_features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim * vocab),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = 1000.0 * t.float().reshape(-1, 1) * self.freqs
        parts = [emb(x[:, d]) for d, emb in enumerate(self.embeddings)]
        h = torch.cat([*parts, torch.sin(angles), torch.cos(angles)], dim=1)
        return self.main(h).reshape(-1, self.D, self.V)


def _tv_js(law: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """TV and JS (bits) of two pmfs over the same states."""
    return M.total_variation(law, q), M.js_divergence(q, law)


def _scores(counts: np.ndarray, q: np.ndarray, law: np.ndarray | None) -> dict:
    """Sampled and exact scores; ``counts``, ``q``, ``law`` over the same states (``q`` may be 0
    on states, such as mask tokens, the generator should never end on)."""
    n = int(counts.sum())
    tv, js = _tv_js(counts / n, q)
    out = {"tv": tv, "js": js}
    if law is not None:
        out["tv_exact"], out["js_exact"] = _tv_js(law, q)
        # sanity check of the exact law: a perfect sampler of it scores tv_floor_of_law at this n
        out["tv_samples_vs_law"] = M.total_variation(counts, law)
        out["tv_floor_of_law"] = M.tv_floor(law, n, np.random.default_rng(0))
    return out


# ---------------------------------------------------------------------------- DFM
def train_dfm(args, source_kind, batch_size, lr, source, target, device, rngs):
    """Train one DFM network; returns ``(net, path, seconds, final_loss)``."""
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler

    K = args.num_categories
    V = K + 1 if source_kind == "mask" else K
    torch.manual_seed(args.seed)
    net = DFMNet(V, 2, args.dfm_embed, args.dfm_hidden, args.dfm_time_features).to(device)
    path = MixtureDiscreteProbPath(scheduler=PolynomialConvexScheduler(n=2.0))
    draw_x1 = target.sampler(rngs[1], device)
    if source_kind == "moons":  # independent coupling
        draw_x0 = source.sampler(rngs[0], device)
    else:  # the mask source is a point mass
        draw_x0 = lambda n: torch.full((n, 2), K, dtype=torch.int64, device=device)  # noqa: E731
    description = f"train dfm ({source_kind}, batch {batch_size}, lr {lr:g})"
    run = functools.partial(
        fit_dfm, net, path, draw_x0, draw_x1, args.steps, batch_size, lr, device, args.progress, description
    )
    losses, seconds = harness.timed(run, device)
    tail = torch.stack(losses[-max(1, len(losses) // 10) :]).mean()
    return net.eval(), path, seconds, float(tail)


def fit_dfm(
    net: nn.Module,
    path,
    draw_x0: Callable[[int], torch.Tensor],
    draw_x1: Callable[[int], torch.Tensor],
    steps: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    progress: bool = False,
    description: str = "train dfm",
) -> list[torch.Tensor]:
    """Train ``net`` in place: the DFM loop of both comparisons, for any ``D``.

    Args:
        net: the posterior network, on ``device``.
        path: the ``MixtureDiscreteProbPath``.
        draw_x0, draw_x1: ``n -> (n, D)`` int64 source and data states (any device).
        steps, batch_size, lr: Adam with a cosine schedule to 0 over ``steps``; ``batch_size`` pairs.

    Returns:
        The ``steps`` per-step losses (0-dim tensors).
    """
    from flow_matching.loss import MixturePathGeneralizedKL
    from tqdm.auto import tqdm

    loss_fn = MixturePathGeneralizedKL(path=path)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses: list[torch.Tensor] = []
    net.train()
    for _ in tqdm(range(steps), desc=description, disable=not progress, dynamic_ncols=True):
        x_1 = draw_x1(batch_size).to(device)
        x_0 = draw_x0(batch_size).to(device)  # independent coupling
        t = torch.rand(batch_size, device=device) * (1 - EPSILON)
        sample = path.sample(t=t, x_0=x_0, x_1=x_1)
        loss = loss_fn(logits=net(sample.x_t, sample.t), x_1=x_1, x_t=sample.x_t, t=sample.t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    return losses


@torch.no_grad()
def dfm_exact_law(net: DFMNet, path, p0: torch.Tensor, time_grid: torch.Tensor) -> np.ndarray:
    """Exact law of ``MixtureDiscreteEulerSolver.sample`` (div_free 0) started from ``p0``.

    Args:
        net: the network (``V`` tokens, ``D`` coordinates).
        path: the mixture path (its scheduler).
        p0: ``(V**D,)`` float start pmf over the token states, row-major.
        time_grid: ``(S+1,)`` the solver's time grid.

    Returns:
        ``(V**D,)`` float64 pmf of the solver's output.
    """
    V, D = net.V, net.D
    device = time_grid.device
    states = torch.cartesian_prod(*[torch.arange(V, device=device)] * D).reshape(-1, D)  # row-major
    mass = p0.to(device=device, dtype=torch.float64)
    steps = time_grid.shape[0] - 1
    eye = torch.eye(V, dtype=torch.float64, device=device)
    for i in range(steps):
        t, h = time_grid[i], time_grid[i + 1] - time_grid[i]
        post = torch.softmax(net(states, t.repeat(states.shape[0])).double(), dim=-1)  # (S, D, V)
        if i == steps - 1:
            a = torch.ones((), dtype=torch.float64, device=device)
        else:
            out = path.scheduler(t=t.reshape(1))
            rate = (out.d_alpha_t / (1 - out.alpha_t)).double()
            a = -torch.expm1(-h.double() * rate)[0]
        kernel = a * post + (1 - a) * eye[states]  # (S, D, V): T^d(y | x)
        joint = kernel[:, 0, :]
        for d in range(1, D):
            joint = (joint[:, :, None] * kernel[:, d, None, :]).reshape(states.shape[0], -1)
        mass = mass @ joint
    return mass.cpu().numpy()


def sample_dfm(net, path, x0, nfe, device, seed):
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    class Probabilities(ModelWrapper):
        def forward(self, x, t, **extras):
            return torch.softmax(self.model(x, t), dim=-1)

    solver = MixtureDiscreteEulerSolver(model=Probabilities(net), path=path, vocabulary_size=net.V)
    grid = torch.linspace(0.0, 1.0 - EPSILON, nfe + 1, device=device)
    torch.manual_seed(seed)  # the solver draws from torch's global generator
    out, seconds = harness.timed(
        lambda: solver.sample(x_init=x0, step_size=None, time_grid=grid, dtype_categorical=torch.float64),
        device,
    )
    return out, seconds, grid


def _token_grid(pmf: np.ndarray, K: int, V: int) -> np.ndarray:
    """A ``(K*K,)`` pmf on the ``V x V`` token grid (zero on mask tokens), flattened row-major."""
    out = np.zeros((V, V))
    out[:K, :K] = pmf.reshape(K, K)
    return out.reshape(-1)


def dfm_unit(args, key, source_kind, batch_size, lr, ctx) -> list[dict]:
    """Train one DFM configuration and evaluate it at every solver step count."""
    K, device = args.num_categories, ctx["device"]
    data_rngs = [np.random.default_rng(s) for s in ctx["seeds"][3].spawn(2)]
    net, path, train_seconds, final_loss = train_dfm(
        args, source_kind, batch_size, lr, ctx["source"], ctx["target"], device, data_rngs
    )
    V = net.V
    params = sum(t.numel() for t in net.parameters())
    ctx["log"](f"DFM {source_kind} batch {batch_size} lr {lr:g}: trained in {train_seconds:.1f} s")
    q_tokens = _token_grid(ctx["q"], K, V)
    if source_kind == "moons":
        x0 = torch.from_numpy(ctx["pool"][: args.num_samples]).to(device)
        p0 = _token_grid(ctx["p"], K, V)
    else:
        x0 = torch.full((args.num_samples, 2), K, dtype=torch.int64, device=device)
        p0 = np.zeros(V * V)
        p0[-1] = 1.0  # (mask, mask)
    rows = []
    for nfe in ctx["nfes"]:
        samples, seconds, grid = sample_dfm(net, path, x0, nfe, device, args.seed + 2)
        law, exact_seconds = harness.timed(
            functools.partial(dfm_exact_law, net, path, torch.from_numpy(p0), grid), device
        )
        flat = samples.cpu().numpy() @ np.array([V, 1])
        counts = np.bincount(flat, minlength=V * V).astype(np.float64)
        rows.append(
            {
                "key": key,
                "method": f"DFM, {source_kind} source",
                "source": source_kind,
                "batch_size": batch_size,
                "lr": lr,
                "mode": "Euler, float64 categorical",
                "sampling_steps": f"{nfe} NFE",
                "nfe": nfe,
                "num_samples": args.num_samples,
                "tv_floor": ctx["floors"][args.num_samples],
                **_scores(counts, q_tokens, law),
                "masked_fraction_exact": float(
                    law.reshape(V, V)[K:, :].sum() + law.reshape(V, V)[:K, K:].sum()
                )
                if V > K
                else 0.0,
                "train_seconds": train_seconds,
                "final_loss": final_loss,
                "sample_seconds": seconds,
                "samples_per_second": args.num_samples / seconds,
                "exact_law_seconds": exact_seconds,
                "model_calls_per_sample": float(nfe),
                "model_calls_note": "DFM network evaluations per sample (one per solver step)",
                "parameters": params,
            }
        )
        r = rows[-1]
        ctx["log"](f"  NFE {nfe}: TV {r['tv']:.4f} exact {r['tv_exact']:.4f}, {seconds:.1f} s")
    return rows


# ---------------------------------------------------------------------------- ECD2G
def ecd2g_config(model: str, overrides: list[str]) -> TrainConfig:
    """The preset's training settings with ``model`` and the ``KEY=VALUE`` overrides (JSON values)."""
    config = EXPERIMENTS[PRESET].train.replace(model=model)
    changes = {}
    for item in overrides:
        name, _, value = item.partition("=")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            changes[name] = value
    return config.replace(**changes) if changes else config


def ecd2g_unit(args, key, model, config, ctx) -> list[dict]:
    """Train one ECD2G model with ``config`` and evaluate both walk modes."""
    K, device, circuit = args.num_categories, ctx["device"], ctx["circuit"]
    data_rngs = [np.random.default_rng(s) for s in ctx["seeds"][2].spawn(2)]
    run = functools.partial(
        train,
        circuit,
        ctx["source"].sampler(data_rngs[0]),
        ctx["target"].sampler(data_rngs[1]),
        config,
        device=device,
        progress=args.progress,
    )
    result, train_seconds = harness.timed(run, device)
    losses = result.losses
    final_loss = float(losses[-max(1, len(losses) // 10) :].mean())
    field, projection = result.field, density_projection_info(result.field)
    params = sum(t.numel() for t in result.model.parameters())
    ctx["log"](f"ECD2G {model}: trained in {train_seconds:.1f} s")
    p_tensor = torch.from_numpy(ctx["p"]).to(device)
    rows = []
    for mode in MODES:
        n = args.num_samples if model == "potential" else args.current_samples
        base = {"key": key, "method": f"ECD2G {model}", "mode": mode, "train_seconds": train_seconds}
        if not field.acyclic:  # a learned current field may strand walkers: find out before sampling
            dead, check_seconds = harness.timed(
                functools.partial(find_dead_ends, field, mode, p_tensor > 0), device
            )
            base["dead_end_check_seconds"] = check_seconds
            if len(dead):
                rows.append({**base, "error": dead.describe(3)})
                ctx["log"](f"  {mode}: {rows[-1]['error']}")
                continue
        counting = CountingField(field) if model == "current" else None
        x0 = torch.from_numpy(ctx["pool"][:n]).to(device)
        generator = torch.Generator(device=device).manual_seed(args.seed + 1)
        run = functools.partial(E.sample, counting or field, x0, mode, generator=generator, return_moves=True)
        (samples, moves), sample_seconds = harness.timed(run, device)
        run = functools.partial(E.exact_output_distribution, field, p_tensor, mode)
        law, exact_seconds = harness.timed(run, device)
        law = law.pmf.cpu().numpy()
        if model == "current":
            calls = counting.evaluations / n
            calls_note = "current-network evaluations per sample (one per walker and neighbour state)"
        else:
            calls = circuit.num_states / n
            calls_note = "potential-network evaluations per sample (the M-state density table, once)"
        rows.append(
            {
                **base,
                "sampling_steps": f"{float(moves.double().mean()):.2f} moves",
                "num_samples": n,
                "tv_floor": ctx["floors"][n],
                **_scores(M.histogram(samples, K), ctx["q"], law),
                "final_loss": final_loss,
                "sample_seconds": sample_seconds,
                "samples_per_second": n / sample_seconds,
                "exact_law_seconds": exact_seconds,
                "model_calls_per_sample": calls,
                "model_calls_note": calls_note,
                "parameters": params,
                "config": config.to_json(),
                **projection,
            }
        )
        r = rows[-1]
        ctx["log"](f"  {mode}: TV {r['tv']:.4f} exact {r['tv_exact']:.4f}, {sample_seconds:.1f} s")
    return rows


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    preset = EXPERIMENTS[PRESET]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-categories", type=int, default=preset.num_categories)
    parser.add_argument("--num-layers", type=int, default=preset.num_layers)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"gradient steps of every method (default: the preset's, {preset.train.steps})",
    )
    parser.add_argument(
        "--ecd2g-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one ECD2G training setting of the preset (JSON value); repeatable",
    )
    parser.add_argument(
        "--dfm-batch-size",
        type=int,
        nargs="+",
        default=None,
        help="DFM (x0, x1) pairs per step (default: the preset's queries per step and its batch size)",
    )
    parser.add_argument("--dfm-lr", type=float, nargs="+", default=[1e-3, 3e-3], help="Adam peak lr (cosine)")
    parser.add_argument(
        "--dfm-tune-batch",
        type=int,
        default=None,
        help="the batch size of the lr sweep (default: the smallest); other batch sizes run only the "
        "lr with the lowest exact TV there, per source",
    )
    parser.add_argument("--dfm-source", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--dfm-embed", type=int, default=48)
    parser.add_argument("--dfm-hidden", type=int, default=84)
    parser.add_argument("--dfm-time-features", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=50_000, help="samples for the sampled TV")
    parser.add_argument(
        "--current-samples",
        type=int,
        default=1000,
        help="samples of the CurrentNet walk (B x M network calls per move)",
    )
    parser.add_argument("--nfe", type=int, nargs="+", help="DFM sampling steps (default L, 2L, 5L, 20L)")
    parser.add_argument(
        "--models", nargs="*", default=["potential", "current"], choices=["potential", "current"]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see ecd2g_fast.cli)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smaller sample counts (smoke run)")
    parser.add_argument("--out-stem", default="dfm_comparison", help="results/<stem>.md and .json")
    parser.add_argument("--fresh", action="store_true", help="ignore the finished units of an earlier run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.progress = not args.quiet and sys.stderr.isatty()
    if args.quick:
        args.num_samples, args.current_samples = 5000, 200
    configs = {m: ecd2g_config(m, args.ecd2g_set) for m in args.models}
    if args.steps is None:
        args.steps = preset.train.steps
    configs = {m: c.replace(steps=args.steps) for m, c in configs.items()}
    if args.dfm_batch_size is None:
        args.dfm_batch_size = sorted({preset.train.queries_per_step, preset.train.batch_size})
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    K, L = args.num_categories, args.num_layers
    source, target = moons(K), swiss_roll(K)
    seeds = np.random.SeedSequence(args.seed).spawn(6)
    pool = source.sample(max(args.num_samples, args.current_samples), np.random.default_rng(seeds[0]))
    floor_rng = np.random.default_rng(seeds[1])
    q = target.pmf()

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    ctx = {
        "device": device,
        "circuit": E.Circuit(K, 2, L),
        "source": source,
        "target": target,
        "p": source.pmf(),
        "q": q,
        "seeds": seeds,
        "pool": pool,
        "floors": {n: M.tv_floor(q, n, floor_rng) for n in sorted({args.num_samples, args.current_samples})},
        "nfes": args.nfe or [L, 2 * L, 5 * L, 20 * L],
        "log": log,
    }
    common = {"K": K, "L": L, "seed": args.seed, "num_samples": args.num_samples, "device": device.type}
    if args.dfm_tune_batch is None:
        args.dfm_tune_batch = min(args.dfm_batch_size)
    rows: list[dict] = []

    def best_lr(source_kind: str) -> float:
        """The swept lr whose DFM run at the tuning batch reached the lowest exact TV (any NFE)."""
        tuned = [r for r in rows if r.get("source") == source_kind and r["batch_size"] == args.dfm_tune_batch]
        return min(tuned, key=lambda r: r["tv_exact"])["lr"]

    def units():
        for model in args.models:
            settings = {"ecd2g": model, **common, "current_samples": args.current_samples}
            key = json.dumps({**settings, "config": configs[model].to_json()}, sort_keys=True)
            yield key, functools.partial(ecd2g_unit, args, key, model, configs[model], ctx)
        batches = [args.dfm_tune_batch] + [b for b in args.dfm_batch_size if b != args.dfm_tune_batch]
        for batch_size in batches:
            for source_kind in args.dfm_source:
                lrs = args.dfm_lr if batch_size == args.dfm_tune_batch else [best_lr(source_kind)]
                for lr in lrs:
                    settings = {
                        "dfm": source_kind,
                        **common,
                        "steps": args.steps,
                        "batch_size": batch_size,
                        "lr": lr,
                        "schedule": "cosine",
                        "net": [args.dfm_embed, args.dfm_hidden, args.dfm_time_features],
                        "nfe": ctx["nfes"],
                    }
                    key = json.dumps(settings, sort_keys=True)
                    yield key, functools.partial(dfm_unit, args, key, source_kind, batch_size, lr, ctx)

    import flow_matching

    meta = {
        "task": f"moons -> swiss roll on a {K} x {K} grid (exact target pmf), L = {L} for ECD2G",
        "steps": args.steps,
        "ecd2g": {
            "preset": PRESET,
            "overrides": args.ecd2g_set,
            "configs": {m: c.to_json() for m, c in configs.items()},
        },
        "dfm": {
            "sources": args.dfm_source,
            "batch_sizes": args.dfm_batch_size,
            "lrs": args.dfm_lr,
            "tune_batch": args.dfm_tune_batch,
            "optimizer": "Adam, cosine schedule to 0 over the steps",
            "scheduler": "PolynomialConvexScheduler(n=2)",
            "network": (
                f"per-coordinate embedding {args.dfm_embed}, {args.dfm_time_features} sinusoidal time "
                f"features, SiLU MLP of width {args.dfm_hidden} (4 linear layers)"
            ),
            "coupling": "independent (moons source); point mass (mask source)",
        },
        "flow_matching": getattr(flow_matching, "__version__", "1.0.10"),
        **harness.run_metadata(device, None if argv is None else ["-m", "benchmarks.dfm_comparison", *argv]),
    }

    harness.run_units(  # best_lr reads the rows so far
        units(), args.out_stem, fresh=args.fresh, meta=meta, render=render_markdown, log=log, rows=rows
    )
    print(render_markdown(meta, rows))
    return 0


def render_markdown(meta: dict, rows: list[dict]) -> str:
    def fmt(x, digits=4):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

    ecd2g = meta["ecd2g"]["configs"]
    recipe = "; ".join(
        f"{m}: {c['optimizer']} lr {c['lr']:g} {c['lr_schedule']}, batch {c['batch_size']}, "
        f"{c['num_queries']} {c['queries']} queries, EMA {c['ema_decay']}, model_kwargs {c['model_kwargs'] or '{}'}"
        for m, c in ecd2g.items()
    )
    lines = [
        "# ECD2G vs discrete flow matching: moons -> swiss roll",
        "",
        (
            f"{meta['task']}; {meta['steps']} gradient steps for every method; device {meta['device_name']} "
            f"({meta['cpu']['torch_threads']} thread(s)), torch {meta['versions']['torch']}, flow_matching "
            f"{meta['flow_matching']}, commit {(meta['git']['commit'] or 'unknown')[:7]}"
            f"{' (with uncommitted changes)' if meta['git']['dirty'] else ''}, {meta['timestamp']}."
        ),
        f"Command: `{meta['command']}`"
        + ("" if meta.get("complete", True) else " (**incomplete**: still running)"),
        "",
        f"ECD2G settings (preset `{meta['ecd2g']['preset']}`): {recipe}.",
        f"DFM: {meta['dfm']['network']}; {meta['dfm']['optimizer']}; {meta['dfm']['scheduler']}.",
        "",
        (
            "TV / JS: sampled histogram of n samples vs the exact target pmf (floor: a perfect sampler's TV "
            "at that n). Exact: the sampler's exact output law, no sampling noise. JS in bits. "
            "Calls/sample: network evaluations per generated sample. Train s: wall time of the training run."
        ),
        "",
        "| method | batch | lr | mode | steps | n | TV | TV floor | TV exact | JS | JS exact | train s | sample s | samples/s | calls/sample | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"].startswith("ECD2G"):
            c = ecd2g[r["method"].split()[-1]]
            batch, lr = f"{c['batch_size']} / {c['num_queries']} q", f"{c['lr']:g}"
        else:
            batch, lr = str(r["batch_size"]), f"{r['lr']:g}"
        if "error" in r:
            lines.append(
                f"| {r['method']} | {batch} | {lr} | {r['mode']} | not sampled: {r['error']} | | | | | | | "
                f"{r['train_seconds']:.1f} | | | | |"
            )
            continue
        lines.append(
            f"| {r['method']} | {batch} | {lr} | {r['mode']} | {r['sampling_steps']} | {r['num_samples']} | "
            f"{fmt(r['tv'])} | {fmt(r['tv_floor'])} | {fmt(r.get('tv_exact'))} | {fmt(r['js'])} | "
            f"{fmt(r.get('js_exact'))} | {r['train_seconds']:.1f} | {r['sample_seconds']:.2f} | "
            f"{r['samples_per_second']:.0f} | {r['model_calls_per_sample']:.3g} | {r['parameters']} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
