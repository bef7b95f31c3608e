"""The training-recipe sweep behind the package's defaults: encoding, optimiser, learning rate,
query distribution and Monte-Carlo batch, for both learned models, measured by TV exact.

Usage (from the repository root; one torch thread, one run at a time)::

    python -m benchmarks.sweep screen               # stage 1: reduced budget, 1D + 2D, seed 0
    python -m benchmarks.sweep confirm              # stage 2: the candidates, default budget,
                                                    #          1D + 2D, seeds 0 and 1
    python -m benchmarks.sweep heldout              # stage 3: the chosen recipes on the held-out
                                                    #          pair, seeds 0 and 1
    python -m benchmarks.sweep summary              # rewrite the markdown tables from the results
    python -m benchmarks.sweep screen --dry-run     # list the runs and what is already done
    python -m benchmarks.sweep time                 # time 500 steps of a 2D run of each model

Each run trains one model on one experiment pair (:data:`PAIRS`) with the settings of a
:class:`Run` and computes the exact output law of the learned field
(:func:`ecd2g_fast.exact_output_distribution`, no sampling noise): the bidirectional walk's, and
for the potential network the forward walk's too (for the current network it costs as much again:
a network call per edge). It trains exactly as ``ecd2g run PAIR`` does (same data seeds, same
trainer). Every finished run appends one JSON line to ``benchmarks/results/sweep/<stage>.jsonl``
(one ``write`` of the whole line on a file opened for appending, then ``fsync``, so an interrupted
sweep leaves whole lines only, and a torn last line is ignored on reading); a run whose key is
already in the file is skipped, so a sweep is resumed by running the same command again. Each line
holds every setting, ``tv_exact`` (bidirectional), ``tv_exact_forward``, the final loss (mean of
the last 10 % of steps), the training and exact-law seconds, the CPU model, the torch version and
the command. A walk that strands (a vertex without positive outflow) has ``tv_exact`` None and the
error in ``tv_exact_error``. ``summary`` (and every stage) writes
``benchmarks/results/sweep/tables.md`` from the jsonl files.

Stages (the held-out pair, circles -> checkerboard, is used in ``heldout`` only, after the choice):

* ``screen`` (:func:`screen_runs`): 2D (``moons-to-swissroll-2d``) and 1D
  (``uniform-to-gaussian-1d``) at a reduced budget (:data:`SCREEN_STEPS` steps), seed 0.
* ``confirm`` (:func:`confirm_runs`): the best two recipes per model of the screening
  (:data:`CANDIDATES`) at the default budget (10,000 steps), seeds 0 and 1, on the 1D and 2D
  pairs, and the paper's recipe for reference.
* ``heldout`` (:func:`heldout_runs`): the recipe chosen per model (:data:`CHOSEN`) and the paper's
  on the held-out pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, _cpu_model, command_line, markdown_table

__all__ = [
    "CANDIDATES",
    "CHOSEN",
    "PAIRS",
    "Run",
    "confirm_runs",
    "heldout_runs",
    "main",
    "run_one",
    "screen_runs",
]

#: Where the raw results and the generated tables go.
RESULTS = REPO / "benchmarks" / "results" / "sweep"

#: The experiment pairs: a shipped preset name, or (source, target) specs on a K = 32 grid, L = 10.
PAIRS = {
    "1d": "uniform-to-gaussian-1d",
    "2d": "moons-to-swissroll-2d",
    "heldout": ("circles", "checkerboard"),
}

#: Steps of the screening stage.
SCREEN_STEPS = 2500
#: Steps of the confirmation stage (the README's default budget).
CONFIRM_STEPS = 10_000
#: Queries per step in every run but the paper's recipe.
NUM_QUERIES = 512

#: Optimiser settings swept: (optimizer, lr, lr_schedule).
OPTIMISERS = (
    ("sgd", 0.01, "constant"),
    ("sgd", 0.03, "constant"),
    ("adam", 1e-3, "cosine"),
    ("adam", 3e-3, "cosine"),
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the sweep (every field is part of its key).

    Attributes:
        pair: a key of :data:`PAIRS`.
        model: ``"current"`` or ``"potential"``.
        encoding: ``"scaled"`` or ``"onehot"``.
        optimizer, lr, lr_schedule: the optimiser settings.
        queries: ``"data"`` or ``"uniform"``.
        batch_size: Monte-Carlo batch (samples per step).
        num_queries: queries per step (None: the batch size).
        steps: optimiser steps.
        ema_decay: weight averaging (None: the last iterate).
        seed: the master seed.
    """

    pair: str
    model: str
    encoding: str
    optimizer: str
    lr: float
    lr_schedule: str
    queries: str
    batch_size: int
    num_queries: int | None
    steps: int
    ema_decay: float | None = 0.999
    seed: int = 0

    @property
    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def recipe(self) -> str:
        """Short label of the recipe (everything but pair and seed)."""
        sched = "" if self.optimizer == "sgd" else f" {self.lr_schedule}"
        ema = "" if self.ema_decay == 0.999 else f", ema {self.ema_decay}"
        nq = "" if self.num_queries == NUM_QUERIES else f", {self.num_queries or self.batch_size} q"
        return (
            f"{self.encoding}, {self.optimizer} {self.lr:g}{sched}, {self.queries} queries, "
            f"batch {self.batch_size}, {self.steps} steps{nq}{ema}"
        )


def screen_runs() -> list[Run]:
    """Stage 1: reduced budget (:data:`SCREEN_STEPS`), seed 0, on the 2D and 1D pairs.

    Pruned to fit one shared CPU core (about 30-100 s per 2D run at this budget):

    * the current network, by the outside measurement of the issue (2D, full budget): SGD far
      behind Adam with the one-hot encoding (best SGD 0.032 at lr 0.03, against 0.0128-0.0225 for
      Adam 1e-3) and the scaled encoding far behind one-hot (0.278 against 0.082 with SGD 0.01).
      It is screened with one-hot and Adam (both learning rates, both query laws), Adam 1e-3 at
      both Monte-Carlo batches, SGD 0.03 with uniform queries, and the scaled encoding with Adam
      1e-3 (where a walk was seen to strand).
    * the potential network (nothing was known): both encodings x SGD 0.01 / Adam 1e-3 / Adam
      3e-3 x both query laws at batch 16384, and Adam 1e-3 one-hot at batch 4096 (2D).

    A current network's exact output law costs a network call per edge of the circuit (about
    30-60 s per walk mode in 2D on this machine), so only the bidirectional law is computed for
    it; the potential network's forward law is computed too.
    """
    runs = []

    def add(pair, model, encoding, optimizer, lr, queries, batch):
        schedule = "constant" if optimizer == "sgd" else "cosine"
        runs.append(
            Run(pair, model, encoding, optimizer, lr, schedule, queries, batch, NUM_QUERIES, SCREEN_STEPS)
        )

    for pair in ("2d", "1d"):
        for queries in ("uniform", "data"):
            add(pair, "current", "onehot", "adam", 1e-3, queries, 16_384)
            if pair == "2d":
                add(pair, "current", "onehot", "adam", 1e-3, queries, 4096)
            add(pair, "current", "onehot", "adam", 3e-3, queries, 16_384)
        add(pair, "current", "onehot", "sgd", 0.03, "uniform", 16_384)
        add(pair, "current", "scaled", "adam", 1e-3, "uniform", 16_384)
        for encoding in ("onehot", "scaled"):
            for optimizer, lr in (("adam", 1e-3), ("adam", 3e-3), ("sgd", 0.01)):
                for queries in ("data", "uniform"):
                    add(pair, "potential", encoding, optimizer, lr, queries, 16_384)
        if pair == "2d":
            for queries in ("data", "uniform"):
                add(pair, "potential", "onehot", "adam", 1e-3, queries, 4096)
    return runs


#: The candidates taken to the confirmation stage, per model: (encoding, optimizer, lr,
#: lr_schedule, queries, batch_size), the best two of the screening on the 2D and 1D pairs
#: (SUMMARY.md says why).
CANDIDATES: dict[str, list[tuple[str, str, float, str, str, int]]] = {
    "current": [
        ("onehot", "adam", 1e-3, "cosine", "uniform", 16_384),
        ("onehot", "adam", 3e-3, "cosine", "uniform", 16_384),
    ],
    "potential": [
        ("onehot", "adam", 1e-3, "cosine", "uniform", 16_384),
        ("onehot", "adam", 3e-3, "cosine", "uniform", 16_384),
    ],
}


def paper_runs(pairs: Iterable[str], seeds: Iterable[int]) -> list[Run]:
    """The paper's recipe (scaled, SGD 0.01, uniform queries, 5000 steps of batch 256, no EMA)."""
    return [
        Run(pair, model, "scaled", "sgd", 0.01, "constant", "uniform", 256, None, 5000, None, seed)
        for pair in pairs
        for seed in seeds
        for model in ("current", "potential")
    ]


def _candidate_run(pair: str, model: str, candidate: tuple, seed: int) -> Run:
    encoding, optimizer, lr, schedule, queries, batch = candidate
    return Run(
        pair,
        model,
        encoding,
        optimizer,
        lr,
        schedule,
        queries,
        batch,
        NUM_QUERIES,
        CONFIRM_STEPS,
        0.999,
        seed,
    )


def previous_run(pair: str, model: str, seed: int) -> Run:
    """The previous 2D preset's recipe (scaled coordinates, SGD 0.01, data queries, EMA) at the
    default budget."""
    return Run(
        pair,
        model,
        "scaled",
        "sgd",
        0.01,
        "constant",
        "data",
        16_384,
        NUM_QUERIES,
        CONFIRM_STEPS,
        0.999,
        seed,
    )


def confirm_runs() -> list[Run]:
    """Stage 2: the candidates at the default budget, seeds 0 and 1, on the 1D and 2D pairs (1D
    first: cheapest), then the paper's recipe and the previous 2D preset (seeds 0 and 1)
    for reference."""
    runs = [
        _candidate_run(pair, model, candidate, seed)
        for pair in ("1d", "2d")
        for seed in (0, 1)
        for model, candidates in CANDIDATES.items()
        for candidate in candidates
    ]
    # the previous 2D preset's recipe, for reference
    previous = [previous_run("2d", "potential", seed) for seed in (0, 1)] + [previous_run("2d", "current", 0)]
    return runs + paper_runs(("1d", "2d"), (0, 1)) + previous


#: The recipe chosen per model from the confirmation stage (the package defaults,
#: ``ecd2g_fast.training.config.RECIPES["default"]``).
CHOSEN: dict[str, tuple[str, str, float, str, str, int]] = {
    "current": ("onehot", "adam", 3e-3, "cosine", "uniform", 16_384),
    "potential": ("onehot", "adam", 3e-3, "cosine", "uniform", 16_384),
}


def heldout_runs() -> list[Run]:
    """Stage 3: the chosen recipes on the held-out pair, seeds 0 and 1; the paper's and the previous
    2D preset's recipes (seed 0) for reference.

    Run only after the choice: nothing measured here changes it.
    """
    runs = [_candidate_run("heldout", model, CHOSEN[model], seed) for seed in (0, 1) for model in CHOSEN]
    previous = [previous_run("heldout", model, 0) for model in ("current", "potential")]
    return runs + paper_runs(("heldout",), (0,)) + previous


STAGES = {"screen": screen_runs, "confirm": confirm_runs, "heldout": heldout_runs}


# ---------------------------------------------------------------------------- one run
def experiment_config(run: Run):
    """The :class:`~ecd2g_fast.experiments.ExperimentConfig` of ``run`` (its pair and settings)."""
    from ecd2g_fast.experiments.configs import EXPERIMENTS, ExperimentConfig
    from ecd2g_fast.training import TrainConfig

    pair = PAIRS[run.pair]
    if isinstance(pair, str):
        base = EXPERIMENTS[pair]
    else:
        base = ExperimentConfig(
            experiment=f"{pair[0]}-to-{pair[1]}-2d", source=pair[0], target=pair[1], num_categories=32, dim=2
        )
    train = TrainConfig(
        model=run.model,
        steps=run.steps,
        batch_size=run.batch_size,
        num_queries=run.num_queries,
        queries=run.queries,
        optimizer=run.optimizer,
        lr=run.lr,
        lr_schedule=run.lr_schedule,
        warmup_steps=0,
        momentum=0.9,
        weight_decay=0.0,
        ema_decay=run.ema_decay,
        model_kwargs={"encoding": run.encoding},
        seed=run.seed,
    )
    return base.replace(train=train, device="cpu")


def run_one(run: Run, *, forward: bool = True) -> dict:
    """Train ``run`` as ``ecd2g run`` would and measure the exact output laws; returns the record.

    Returns:
        A JSON-friendly dict: the run's settings, ``tv_exact`` and ``tv_exact_forward`` (None
        with ``exact_error`` when the walk is undefined), ``final_loss``, ``train_seconds``,
        ``exact_seconds``, the pair's source and target, and the machine. ``forward=False``
        skips the forward walk's law (as costly as the bidirectional one for the current network:
        a network call per edge of the circuit).
    """
    from ecd2g_fast import Circuit, metrics
    from ecd2g_fast.experiments.configs import resolve_datasets
    from ecd2g_fast.experiments.runner import Seeds
    from ecd2g_fast.sampling import FieldError, exact_output_distribution
    from ecd2g_fast.training import NonFiniteLossError, Trainer

    config, source, target = resolve_datasets(experiment_config(run))
    circuit = Circuit(config.num_categories, config.dim, config.num_layers, config.r, config.R)
    seeds = Seeds.of(config)
    src_rng, tgt_rng = (np.random.default_rng(s) for s in seeds.data.spawn(2))
    record: dict = {**dataclasses.asdict(run), "key": run.key, "recipe": run.recipe}
    record.update(source=config.source, target=config.target, K=config.num_categories, D=config.dim)
    start = time.perf_counter()
    try:
        trainer = Trainer(
            circuit,
            source.sampler(src_rng),
            target.sampler(tgt_rng),
            config.train,
            device="cpu",
            progress=False,
        )
        result = trainer.run()
    except NonFiniteLossError as error:
        record.update(train_seconds=time.perf_counter() - start, diverged=str(error).splitlines()[0])
        record.update(tv_exact=None, tv_exact_forward=None, final_loss=None)
        return record
    record["train_seconds"] = time.perf_counter() - start
    losses = result.losses.numpy()
    record["final_loss"] = float(losses[-max(1, len(losses) // 10) :].mean())
    q = target.pmf()
    p0 = torch.from_numpy(source.pmf())
    start = time.perf_counter()
    modes = (("bidirectional", "tv_exact"), ("forward", "tv_exact_forward"))
    for mode, key in modes if forward else modes[:1]:
        try:
            law = exact_output_distribution(result.field, p0, mode)
        except (FieldError, RuntimeError) as error:
            record[key] = None
            record[f"{key}_error"] = str(error).splitlines()[0][:300]
        else:
            record[key] = float(metrics.total_variation(law.pmf.cpu().numpy(), q))
    record["exact_seconds"] = time.perf_counter() - start
    return record


def machine() -> dict:
    """The CPU model, threads and versions a record was measured with."""
    import ecd2g_fast

    return {
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ecd2g_fast": getattr(ecd2g_fast, "__version__", None),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------------------- results files
def read_results(path: Path) -> list[dict]:
    """The records of a jsonl file (a torn last line, from a killed writer, is ignored)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` as one line: one ``write`` of the whole line, flushed and synced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, allow_nan=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def run_stage(stage: str, runs: list[Run], *, dry_run: bool, limit: int | None) -> None:
    path = RESULTS / f"{stage}.jsonl"
    done = {r["key"] for r in read_results(path)}
    todo = [r for r in runs if r.key not in done]
    print(f"[sweep] {stage}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to do", flush=True)
    if dry_run:
        for r in todo:
            print(f"  {r.pair:8s} {r.model:9s} seed {r.seed}: {r.recipe}")
        return
    command = command_line()
    wall = time.perf_counter()
    for i, r in enumerate(todo[:limit] if limit is not None else todo):
        # the forward law costs as much as the bidirectional one for the current network (a
        # network call per edge): the potential network's only
        forward = r.model == "potential"
        record = run_one(r, forward=forward)
        record.update(stage=stage, command=command, machine=machine())
        append_record(path, record)
        tv, fwd = record.get("tv_exact"), record.get("tv_exact_forward")
        show = lambda v: "  -   " if v is None else f"{v:.4f}"  # noqa: E731
        print(
            f"[sweep] {i + 1}/{len(todo)} {r.pair:8s} {r.model:9s} s{r.seed} {r.recipe}: TV exact {show(tv)} "
            f"(fwd {show(fwd)}), loss {record.get('final_loss') or float('nan'):.4g}, "
            f"{record['train_seconds']:.0f}+{record.get('exact_seconds', 0):.0f} s "
            f"[{time.perf_counter() - wall:.0f} s]",
            flush=True,
        )
    write_tables()


# ---------------------------------------------------------------------------- tables
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_tables() -> Path:
    """``tables.md``: one table per stage and pair, rows sorted by TV exact; and per-recipe means."""
    lines = ["# Sweep tables (generated by `python -m benchmarks.sweep summary`)", ""]
    for stage in STAGES:
        records = read_results(RESULTS / f"{stage}.jsonl")
        if not records:
            continue
        lines += [f"## {stage}", ""]
        for pair in PAIRS:
            rows = [r for r in records if r["pair"] == pair]
            if not rows:
                continue
            name = PAIRS[pair] if isinstance(PAIRS[pair], str) else "-to-".join(PAIRS[pair]) + " (held out)"
            lines += [f"### {pair}: {name}", ""]
            groups: dict[tuple[str, str], list[dict]] = {}
            for r in rows:
                groups.setdefault((r["model"], r["recipe"]), []).append(r)

            def mean_tv(items: list[dict]) -> float:
                values = [r["tv_exact"] for r in items]
                return float("inf") if any(v is None for v in values) else float(np.mean(values))

            table = []
            for (model, recipe), items in sorted(groups.items(), key=lambda kv: (kv[0][0], mean_tv(kv[1]))):
                items = sorted(items, key=lambda r: r["seed"])
                tvs = [r["tv_exact"] for r in items]
                table.append(
                    [
                        model,
                        recipe,
                        " / ".join(_fmt(v) for v in tvs),
                        _fmt(mean_tv(items)) if len(items) > 1 and np.isfinite(mean_tv(items)) else "",
                        " / ".join(_fmt(r.get("tv_exact_forward")) for r in items),
                        " / ".join(
                            "-" if r.get("final_loss") is None else f"{r['final_loss']:.4g}" for r in items
                        ),
                        " / ".join(f"{r['train_seconds']:.0f}" for r in items),
                    ]
                )
            headers = [
                "model", "recipe", "TV exact (seeds)", "mean", "TV exact forward", "final loss", "train s",
            ]  # fmt: skip
            lines += [markdown_table(headers, table)]
            errors = [r for r in rows if r.get("tv_exact") is None]
            for r in errors:
                why = r.get("diverged") or r.get("tv_exact_error")
                lines.append(f"- {r['model']}, {r['recipe']}, seed {r['seed']}: no output law ({why})")
            if errors:
                lines.append("")
    machines = {
        json.dumps(r["machine"].get("cpu")) for s in STAGES for r in read_results(RESULTS / f"{s}.jsonl")
    }
    lines += ["Machines: " + ", ".join(sorted(machines)), ""]
    out = RESULTS / "tables.md"
    out.write_text("\n".join(lines))
    return out


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "summary", "time"])
    parser.add_argument("--dry-run", action="store_true", help="list the runs to do and exit")
    parser.add_argument("--limit", type=int, help="do at most this many runs now")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.stage == "summary":
        print(f"[sweep] wrote {write_tables().relative_to(REPO)}")
        return 0
    if args.stage == "time":
        for model in ("current", "potential"):
            r = Run("2d", model, "onehot", "adam", 1e-3, "cosine", "uniform", 16_384, NUM_QUERIES, 500)
            record = run_one(r)
            print(
                f"[sweep] {model}: 500 steps in {record['train_seconds']:.1f} s, exact laws "
                f"{record['exact_seconds']:.1f} s, TV exact {_fmt(record['tv_exact'])}",
                flush=True,
            )
        return 0
    run_stage(args.stage, STAGES[args.stage](), dry_run=args.dry_run, limit=args.limit)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
