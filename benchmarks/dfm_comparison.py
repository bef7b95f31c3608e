"""ECD2G next to discrete flow matching (Gat et al. 2024) on the discretised moons -> swiss roll task.

Both methods learn to carry the 2D moons distribution to the 2D swiss roll on the same
``K x K = 32 x 32`` grid (:mod:`ecd2g_fast.experiments.datasets`), from the same data streams,
with the same number of gradient steps, networks of comparable size, and are evaluated the same
way on the same machine in one run:

* **ECD2G**: :class:`~ecd2g_fast.models.CurrentNet` (the paper's network) and
  :class:`~ecd2g_fast.models.PotentialNet` (docs/theory.md §6), trained by :func:`ecd2g_fast.training.train`
  with the ``moons-to-swissroll-2d`` settings (batch 16384 samples for the Monte-Carlo targets,
  512 queries drawn around the data per step, SGD with the trainer's defaults), ``L = 10``, both
  walk modes. The potential network's field is the exact field of its density estimates
  projected onto pmfs (:class:`~ecd2g_fast.models.PotentialNetField`).
* **DFM** through the ``flow_matching`` package (1.0.10, CC BY-NC: an optional extra, never a
  dependency of ``ecd2g_fast``): :class:`~flow_matching.path.MixtureDiscreteProbPath` with
  :class:`~flow_matching.path.scheduler.PolynomialConvexScheduler` (``n = 2``, as the package's 2D
  example), :class:`~flow_matching.loss.MixturePathGeneralizedKL`, and
  :class:`~flow_matching.solver.MixtureDiscreteEulerSolver` with categorical draws in float64.
  Source ``x_0`` ~ moons, independent of ``x_1`` ~ swiss roll (independent coupling). The network
  is an MLP on ``[x_t scaled to [-1, 1] per coordinate, t]`` with hidden sizes (112, 112, 112),
  ReLU, and ``2 K`` outputs (per-coordinate logits of ``x_1``): 33.0k parameters against ECD2G's
  33.7k/33.8k. Adam, lr 1e-3 (the package example's optimiser); batch 512 pairs per step (the
  number of network evaluations per step of ECD2G's 512 queries) and 4096 pairs (the package
  example's batch; 8 times the compute per step); ``t ~ U[0, 1 - 1e-3)``.
  Sampling steps (NFE) ``L``, ``2 L``, ``5 L``, ``20 L`` on the time grid ``[0, 1 - 1e-3]``.

Reported for every method: TV and JS (bits) of ``n`` generated samples against the exact target
pmf with the noise floor of ``n``; **TV and JS of the sampler's exact output law** (no sampling
noise: ECD2G by :func:`ecd2g_fast.exact_output_distribution`; DFM by propagating the exact law of
the Euler solver, whose step is a product of per-coordinate kernels
``T^i(y | x) = a p^i_{1|t}(y | x) + (1 - a) [y = x^i]`` with ``a = 1 - exp(-h kappa'_t / (1 - kappa_t))``
and ``a = 1`` at the last step; the sampled histogram is checked against it); training time;
sampling time and samples/s; network evaluations per sample. All start states come from one
pool of moons samples.

Usage::

    python -m benchmarks.dfm_comparison                     # ~12 min on a 2-core CPU
    python -m benchmarks.dfm_comparison --steps 200 --quick # smoke run

Writes ``benchmarks/results/dfm_comparison.md`` and ``.json`` (``--out-stem`` to change), with the
run's metadata (:func:`benchmarks.harness.run_metadata`). Times are single runs
(:func:`benchmarks.harness.timed`): a training run or a sampling run is not repeated.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys

import numpy as np
import torch
from torch import nn

import ecd2g_fast as E
from ecd2g_fast import metrics as M
from ecd2g_fast.experiments.datasets import moons, swiss_roll
from ecd2g_fast.experiments.evaluation import density_projection_info
from ecd2g_fast.fields import Field
from ecd2g_fast.sampling import MODES
from ecd2g_fast.training import TrainConfig, train

from . import harness

EPSILON = 1e-3  # DFM trains on t in [0, 1 - eps) and samples up to 1 - eps (the package's example)


# ---------------------------------------------------------------------------- fields and networks
class CountingField(Field):
    """Forwards every query to ``inner`` and counts the (walker, neighbour) current evaluations."""

    def __init__(self, inner: Field) -> None:
        self.inner, self.circuit, self.acyclic = inner, inner.circuit, inner.acyclic
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
    """``x_t`` ``(B, D)`` int64 and ``t`` ``(B,)`` -> ``(B, D, K)`` logits of ``x_1``."""

    def __init__(self, num_categories: int, dim: int, hidden=(112, 112, 112)) -> None:
        super().__init__()
        self.K, self.D = num_categories, dim
        widths = [dim + 1, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], dim * num_categories))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scaled = 2.0 * x.float() / (self.K - 1) - 1.0
        return self.net(torch.cat([scaled, t.float().reshape(-1, 1)], dim=1)).reshape(-1, self.D, self.K)


def _scores(counts: np.ndarray, q: np.ndarray, law: np.ndarray | None) -> dict:
    out = {"tv": M.total_variation(counts, q), "js": M.js_divergence(q, counts)}
    if law is not None:
        out.update(tv_exact=M.total_variation(law, q), js_exact=M.js_divergence(q, law))
        # sanity check of the exact law: a perfect sampler of it scores tv_floor_of_law at this n
        out["tv_samples_vs_law"] = M.total_variation(counts, law)
        out["tv_floor_of_law"] = M.tv_floor(law, int(counts.sum()), np.random.default_rng(0))
    return out


# ---------------------------------------------------------------------------- DFM
def train_dfm(args, batch_size, source, target, device, rngs):
    from flow_matching.loss import MixturePathGeneralizedKL
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from tqdm.auto import tqdm

    K = args.num_categories
    torch.manual_seed(args.seed)
    net = DFMNet(K, 2).to(device)
    path = MixtureDiscreteProbPath(scheduler=PolynomialConvexScheduler(n=2.0))
    loss_fn = MixturePathGeneralizedKL(path=path)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.dfm_lr)
    draw_x0, draw_x1 = source.sampler(rngs[0], device), target.sampler(rngs[1], device)

    def run() -> None:
        steps = tqdm(
            range(args.steps),
            desc=f"train dfm (batch {batch_size})",
            disable=not args.progress,
            dynamic_ncols=True,
        )
        for _ in steps:
            x_0, x_1 = draw_x0(batch_size), draw_x1(batch_size)  # independent coupling
            t = torch.rand(x_1.shape[0], device=device) * (1 - EPSILON)
            sample = path.sample(t=t, x_0=x_0, x_1=x_1)
            loss = loss_fn(logits=net(sample.x_t, sample.t), x_1=x_1, x_t=sample.x_t, t=sample.t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    _, seconds = harness.timed(run, device)
    return net.eval(), path, seconds


@torch.no_grad()
def dfm_exact_law(net: DFMNet, path, p0: torch.Tensor, time_grid: torch.Tensor) -> np.ndarray:
    """Exact law of ``MixtureDiscreteEulerSolver.sample`` (div_free 0) started from ``p0``."""
    K, D = net.K, net.D
    device = time_grid.device
    states = torch.cartesian_prod(*[torch.arange(K, device=device)] * D).reshape(-1, D)  # row-major
    mass = p0.to(device=device, dtype=torch.float64)
    steps = time_grid.shape[0] - 1
    eye = torch.eye(K, dtype=torch.float64, device=device)
    for i in range(steps):
        t, h = time_grid[i], time_grid[i + 1] - time_grid[i]
        post = torch.softmax(net(states, t.repeat(states.shape[0])).double(), dim=-1)  # (M, D, K)
        if i == steps - 1:
            a = torch.ones((), dtype=torch.float64, device=device)
        else:
            out = path.scheduler(t=t.reshape(1))
            rate = (out.d_alpha_t / (1 - out.alpha_t)).double()
            a = -torch.expm1(-h.double() * rate)[0]
        kernel = a * post + (1 - a) * eye[states]  # (M, D, K): T^d(y | x)
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

    solver = MixtureDiscreteEulerSolver(model=Probabilities(net), path=path, vocabulary_size=net.K)
    grid = torch.linspace(0.0, 1.0 - EPSILON, nfe + 1, device=device)
    torch.manual_seed(seed)  # the solver draws from torch's global generator
    out, seconds = harness.timed(
        lambda: solver.sample(x_init=x0, step_size=None, time_grid=grid, dtype_categorical=torch.float64),
        device,
    )
    return out, seconds, grid


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-categories", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5000, help="gradient steps of every method")
    parser.add_argument("--batch-size", type=int, default=16384, help="ECD2G samples per step")
    parser.add_argument("--num-queries", type=int, default=512, help="ECD2G queries per step")
    parser.add_argument(
        "--dfm-batch-size",
        type=int,
        nargs="+",
        default=[512, 4096],
        help="DFM (x0, x1) pairs per step, one run each",
    )
    parser.add_argument("--dfm-lr", type=float, default=1e-3)
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
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.progress = not args.quiet and sys.stderr.isatty()
    if args.quick:
        args.num_samples, args.current_samples = 5000, 200
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    K, L = args.num_categories, args.num_layers
    nfes = args.nfe or [L, 2 * L, 5 * L, 20 * L]
    source, target = moons(K), swiss_roll(K)
    p, q = source.pmf(), target.pmf()
    circuit = E.Circuit(K, 2, L)
    seeds = np.random.SeedSequence(args.seed).spawn(6)
    pool = source.sample(max(args.num_samples, args.current_samples), np.random.default_rng(seeds[0]))
    floor_rng = np.random.default_rng(seeds[1])
    floors = {n: M.tv_floor(q, n, floor_rng) for n in {args.num_samples, args.current_samples}}
    rows: list[dict] = []

    def log(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    # ---------------- ECD2G
    for model in args.models:
        data_rngs = [np.random.default_rng(s) for s in seeds[2].spawn(2)]
        run = functools.partial(
            train,
            circuit,
            source.sampler(data_rngs[0]),
            target.sampler(data_rngs[1]),
            model=model,
            steps=args.steps,
            batch_size=args.batch_size,
            num_queries=args.num_queries,
            queries="data",
            device=device,
            seed=args.seed,
            progress=args.progress,
        )
        result, train_seconds = harness.timed(run, device)
        field, projection = result.field, density_projection_info(result.field)
        params = sum(t.numel() for t in result.model.parameters())
        log(f"ECD2G {model}: trained in {train_seconds:.1f} s")
        for mode in MODES:
            n = args.num_samples if model == "potential" else args.current_samples
            counting = CountingField(field) if model == "current" else None
            x0 = torch.from_numpy(pool[:n]).to(device)
            generator = torch.Generator(device=device).manual_seed(args.seed + 1)
            try:
                run = functools.partial(
                    E.sample, counting or field, x0, mode, generator=generator, return_moves=True
                )
                (samples, moves), sample_seconds = harness.timed(run, device)
                run = functools.partial(
                    E.exact_output_distribution, field, torch.from_numpy(p).to(device), mode
                )
                law, exact_seconds = harness.timed(run, device)
                law = law.pmf.cpu().numpy()
            except E.FieldError as error:  # a learned current field may trap walkers
                rows.append(
                    {
                        "method": f"ECD2G {model}",
                        "mode": mode,
                        "error": str(error),
                        "train_seconds": train_seconds,
                    }
                )
                log(f"  {mode}: {error}")
                continue
            if model == "current":
                calls = counting.evaluations / n
                calls_note = "current-network evaluations per sample (one per walker and neighbour state)"
            else:
                calls = circuit.num_states / n
                calls_note = "potential-network evaluations per sample (the M-state density table, once)"
            rows.append(
                {
                    "method": f"ECD2G {model}",
                    "mode": mode,
                    "sampling_steps": f"{float(moves.double().mean()):.2f} moves",
                    "num_samples": n,
                    "tv_floor": floors[n],
                    **_scores(M.histogram(samples, K), q, law),
                    "train_seconds": train_seconds,
                    "sample_seconds": sample_seconds,
                    "samples_per_second": n / sample_seconds,
                    "exact_law_seconds": exact_seconds,
                    "model_calls_per_sample": calls,
                    "model_calls_note": calls_note,
                    "parameters": params,
                    **projection,
                }
            )
            log(f"  {mode}: TV {rows[-1]['tv']:.4f} exact {rows[-1]['tv_exact']:.4f}, {sample_seconds:.1f} s")

    # ---------------- DFM
    x0 = torch.from_numpy(pool[: args.num_samples]).to(device)
    for batch_size in args.dfm_batch_size:
        data_rngs = [np.random.default_rng(s) for s in seeds[3].spawn(2)]
        net, path, dfm_train_seconds = train_dfm(args, batch_size, source, target, device, data_rngs)
        params = sum(t.numel() for t in net.parameters())
        log(f"DFM batch {batch_size}: trained in {dfm_train_seconds:.1f} s")
        for nfe in nfes:
            samples, seconds, grid = sample_dfm(net, path, x0, nfe, device, args.seed + 2)
            law, exact_seconds = harness.timed(
                functools.partial(dfm_exact_law, net, path, torch.from_numpy(p), grid), device
            )
            rows.append(
                {
                    "method": f"DFM, batch {batch_size}",
                    "mode": "Euler, float64 categorical",
                    "sampling_steps": f"{nfe} NFE",
                    "num_samples": args.num_samples,
                    "tv_floor": floors[args.num_samples],
                    **_scores(M.histogram(samples.cpu().numpy(), K), q, law),
                    "train_seconds": dfm_train_seconds,
                    "sample_seconds": seconds,
                    "samples_per_second": args.num_samples / seconds,
                    "exact_law_seconds": exact_seconds,
                    "model_calls_per_sample": float(nfe),
                    "model_calls_note": "DFM network evaluations per sample (one per solver step)",
                    "parameters": params,
                }
            )
            log(f"  NFE {nfe}: TV {rows[-1]['tv']:.4f} exact {rows[-1]['tv_exact']:.4f}, {seconds:.1f} s")

    import flow_matching

    defaults = TrainConfig()
    meta = {
        "task": f"moons -> swiss roll on a {K} x {K} grid (exact target pmf), L = {L} for ECD2G",
        "steps": args.steps,
        "ecd2g": {
            "batch_size": args.batch_size,
            "num_queries": args.num_queries,
            "queries": "data",
            "optimizer": (
                f"SGD lr {defaults.lr}, momentum {defaults.momentum}, EMA {defaults.ema_decay} (the trainer's defaults)"
            ),
        },
        "dfm": {
            "batch_sizes": args.dfm_batch_size,
            "optimizer": f"Adam lr {args.dfm_lr}",
            "scheduler": "PolynomialConvexScheduler(n=2)",
            "coupling": "independent",
        },
        "flow_matching": getattr(flow_matching, "__version__", "1.0.10"),
        **harness.run_metadata(device, None if argv is None else ["-m", "benchmarks.dfm_comparison", *argv]),
    }
    harness.write_json(harness.RESULTS / f"{args.out_stem}.json", {"meta": meta, "rows": rows})
    (harness.RESULTS / f"{args.out_stem}.md").write_text(render_markdown(meta, rows))
    print(render_markdown(meta, rows))
    return 0


def render_markdown(meta: dict, rows: list[dict]) -> str:
    def fmt(x, digits=4):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

    lines = [
        "# ECD2G vs discrete flow matching: moons -> swiss roll",
        "",
        (
            f"{meta['task']}; {meta['steps']} gradient steps for every method; device {meta['device_name']} "
            f"({meta['cpu']['torch_threads']} thread(s)), torch {meta['versions']['torch']}, flow_matching "
            f"{meta['flow_matching']}, commit {(meta['git']['commit'] or 'unknown')[:7]}, {meta['timestamp']}."
        ),
        f"Command: `{meta['command']}`",
        "",
        (
            "TV / JS: sampled histogram of n samples vs the exact target pmf (floor: a perfect sampler's TV "
            "at that n). Exact: the sampler's exact output law, no sampling noise. JS in bits. "
            "Calls/sample: network evaluations per generated sample."
        ),
        "",
        "| method | mode | steps | n | TV | TV floor | TV exact | JS | JS exact | train s | sample s | samples/s | calls/sample | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['method']} | {r['mode']} | failed: {r['error']} | | | | | | | {r['train_seconds']:.1f} | | | | |"
            )
            continue
        lines.append(
            f"| {r['method']} | {r['mode']} | {r['sampling_steps']} | {r['num_samples']} | {fmt(r['tv'])} | "
            f"{fmt(r['tv_floor'])} | {fmt(r.get('tv_exact'))} | {fmt(r['js'])} | {fmt(r.get('js_exact'))} | "
            f"{r['train_seconds']:.1f} | {r['sample_seconds']:.2f} | {r['samples_per_second']:.0f} | "
            f"{r['model_calls_per_sample']:.3g} | {r['parameters']} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
