"""The ``ecd2g`` command: the paper's experiments end to end.

Usage::

    ecd2g run moons-to-swissroll-2d                 # train + sample + evaluate + figures
    ecd2g run uniform-to-gaussian-1d --steps 2000 --out runs/gauss
    ecd2g run custom --source a.npy --target b.csv --num-categories 16 --num-layers 10
    ecd2g train moons-to-swissroll-2d --model current --out runs/m2s-current
    ecd2g run uniform-to-gaussian-1d --recipe paper --out runs/gauss-paper  # the paper's recipe
    ecd2g sample --out runs/m2s-current --mode forward --num-samples 20000
    ecd2g evaluate --out runs/m2s-current
    ecd2g run bernoulli-mixture-64                  # noise -> 64-bit mixture, Hamming circuit
    ecd2g run digits-64 --steps 10000 --num-samples 256
    ecd2g run custom --source uniform --target bernoulli-mixture --dim 128 --model hamming --R none
    ecd2g list

``run`` and ``train`` start from a preset (``ecd2g list``) and apply the options given. Its
training settings come from a named recipe: ``--recipe default`` (the preset's, measured per
model: ``benchmarks/results/sweep/SUMMARY.md``) or ``--recipe paper`` (the paper's Algorithm 1
and budget with its current network); ``--model`` applies the preset's recipe for that model, and
single training options (``--lr``, ``--steps``, ...) override the recipe's values.
``sample`` and ``evaluate`` reuse the ``config.json`` of an existing output folder, with the
sampling options given overriding it. The default folder is ``runs/EXPERIMENT``. Progress bars
go to standard error and are off when it is not a terminal or with ``--quiet``.

Exit status: 0 on success, 1 on a failed run (one line names the cause; ``--debug`` shows the
traceback), 2 on bad usage, 130 when interrupted (Ctrl-C): the folder then holds the last complete
files, and ``--resume`` continues an interrupted training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "default_threads", "main"]


#: Most torch threads ``--threads`` accepts (far more than any machine has cores; torch itself
#: crashes on absurd counts).
MAX_THREADS = 1024


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_THREADS}, got {value}")
    return value


def default_threads(device: str | None) -> int:
    """Torch CPU threads when ``--threads`` is not given.

    On the CPU: ``max(1, min(4, cpu_count // 2))`` (1 on a 2-core machine). The networks are
    small (hidden width 128, a few hundred queries per step): intra-op threads gain little, while
    a thread count at the core count collapses when anything else runs. Measured on the project's
    2-core CPU with other jobs running: 5000 training steps of ``moons-to-swissroll-2d``'s
    potential network took 42 s with 1 thread and 402 s with torch's default of 2. With a GPU
    (``device`` None and CUDA available, or a CUDA device) torch's own default is kept.
    """
    import os

    import torch

    if (device is None and torch.cuda.is_available()) or (device is not None and device.startswith("cuda")):
        return torch.get_num_threads()
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _add_common(parser: argparse.ArgumentParser) -> None:
    from .experiments.configs import ExperimentConfig
    from .settings import add_options

    parser.add_argument("--out", type=Path, help="output folder (default runs/EXPERIMENT)")
    add_options(parser, ExperimentConfig, groups=("device",))
    parser.add_argument(
        "--threads", type=_thread_count, help="torch CPU threads (default on the CPU: half the cores, 1 to 4)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")


def build_parser() -> argparse.ArgumentParser:
    """The ``ecd2g`` argument parser (sub-commands ``run``, ``train``, ``sample``, ``evaluate``, ``list``).

    The options of ``run`` and ``train`` are generated from the fields of
    :class:`~ecd2g_fast.experiments.configs.ExperimentConfig` and
    :class:`~ecd2g_fast.training.TrainConfig` (:mod:`ecd2g_fast.settings`); ``sample`` takes the
    sampling ones.
    """
    from .experiments.configs import EXPERIMENTS, ExperimentConfig
    from .settings import add_options
    from .training import TrainConfig

    names = [*EXPERIMENTS, "custom"]
    parser = argparse.ArgumentParser(
        prog="ecd2g",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, text in (
        ("run", "train, sample, evaluate and draw an experiment"),
        ("train", "train the field of an experiment (writes config.json, checkpoint.pt, loss.png)"),
    ):
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument("experiment", choices=names, metavar="EXPERIMENT", help=f"one of: {', '.join(names)}")
        _add_common(p)
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue an interrupted training of the same configuration in --out",
        )
        preset = " (default: the preset's value, `ecd2g list`)"
        add_options(
            p.add_argument_group("data and circuit" + preset),
            ExperimentConfig,
            groups=("data", "circuit"),
            show_defaults=False,
        )
        training = p.add_argument_group("training" + preset)
        add_options(training, ExperimentConfig, groups=("training",), show_defaults=False)
        add_options(training, TrainConfig, show_defaults=False)
        add_options(
            p.add_argument_group("sampling" + preset),
            ExperimentConfig,
            groups=("sample",),
            show_defaults=False,
        )
    for command, text in (
        ("sample", "sample from the trained field of an output folder (writes samples.npy)"),
        ("evaluate", "metrics and figures of an output folder's samples (writes metrics.json, *.png)"),
    ):
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument(
            "experiment", nargs="?", choices=names, metavar="EXPERIMENT", help="locates runs/EXPERIMENT"
        )
        _add_common(p)
        if command == "sample":
            group = p.add_argument_group("sampling (default: the folder's config.json)")
            add_options(group, ExperimentConfig, groups=("sample",), show_defaults=False)
    sub.add_parser("list", help="list the shipped experiments", description="list the shipped experiments")
    return parser


def _config_from_args(args: argparse.Namespace):
    """The preset named on the command line with the options given applied (validated)."""
    from .experiments.configs import EXPERIMENTS, ExperimentConfig
    from .experiments.highdim import HIGHDIM_TARGETS
    from .settings import options_from_args
    from .training import TrainConfig

    changes = options_from_args(args, ExperimentConfig)
    if args.experiment == "custom":
        if "source" not in changes or "target" not in changes:
            raise ValueError("the custom experiment needs --source and --target")
        base = ExperimentConfig(experiment="custom")
    else:
        base = EXPERIMENTS[args.experiment]
        if "source" in changes or "target" in changes:
            # a preset's K and D belong to its own data sets; infer them again for the new ones
            changes.setdefault("experiment", f"{args.experiment} (modified)")
            changes.setdefault("dim", None)
            if "num_categories" not in changes and (
                any(str(changes.get(role, "")).endswith((".npy", ".csv")) for role in ("source", "target"))
                or changes.get("target") in HIGHDIM_TARGETS
            ):
                changes["num_categories"] = None
    # a recipe sets many training settings at once: --recipe NAME, or the preset's recipe again
    # for another --model (the potential and current networks have their own measured settings);
    # the training options given then override single settings
    options = options_from_args(args, TrainConfig)
    train = base.train
    if "recipe" in changes or options.get("model", train.model) != train.model:
        train = train.with_recipe(changes.get("recipe", base.recipe), options.get("model"))
    return base.replace(**changes, train=train.replace(**options))


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    if args.experiment is None:
        raise ValueError("give --out DIR or an EXPERIMENT (whose folder is runs/EXPERIMENT)")
    return Path("runs") / args.experiment


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ecd2g`` console script.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when the run fails (the error is printed to standard
        error), 2 for bad usage (raised by argparse as ``SystemExit(2)``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        from .experiments.configs import EXPERIMENTS

        for name, config in EXPERIMENTS.items():
            print(
                f"{name:<24} K={config.num_categories} D={config.dim} L={config.num_layers} "
                f"model={config.train.model} recipe={config.recipe}: {config.notes}"
            )
        return 0

    import torch

    from .experiments import runner
    from .experiments.configs import ExperimentConfig
    from .experiments.folder import RunFolder
    from .settings import options_from_args

    progress = not args.quiet and sys.stderr.isatty()

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    device = getattr(args, "device", None)
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads if args.threads is not None else default_threads(device))
        if args.command in ("run", "train"):
            config = _config_from_args(args)
            out = args.out if args.out is not None else Path("runs") / args.experiment
            if args.command == "run":
                metrics = runner.run(config, out, resume=args.resume, progress=progress, log=log)
                log(f"[ecd2g] wrote {out}/ (metrics.json: {_headline(metrics)})")
            else:
                with RunFolder(out).locked() as folder:
                    run = runner.Run.resolve(config, folder)
                    runner.train_stage(run, resume=args.resume, progress=progress, log=log)
                log(f"[ecd2g] wrote {out}/config.json and {out}/checkpoint.pt")
            return 0
        with RunFolder(_out_dir(args)).locked() as folder:
            changes = {} if device is None else {"device": device}
            if args.command == "sample":
                sampling = options_from_args(args, ExperimentConfig, groups=("sample",))
                run = runner.Run.of_folder(folder, **sampling, **changes)
                runner.sample_stage(run, run.load_field(), progress=progress, log=log)
            else:
                runner.evaluate_stage(runner.Run.of_folder(folder, **changes), progress=progress, log=log)
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            "ecd2g: interrupted; the folder holds the last complete files "
            "(`ecd2g train --resume` or `ecd2g run --resume` continues a training)",
            file=sys.stderr,
        )
        return 130
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError) as error:
        if args.debug:
            raise
        print(f"ecd2g: error: {_one_line(error)}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads_before)  # main() may run in-process (tests, notebooks)


#: metrics.json keys the final line of ``ecd2g run`` shows when present (grid and high-dimensional runs).
HEADLINE_METRICS = ("tv", "tv_exact", "marginal_tv", "loglik_gap", "label_tv", "finished_fraction")


def _headline(metrics: dict) -> str:
    """``tv=0.0123, ..., wall 12.3 s``: the :data:`HEADLINE_METRICS` a run wrote, and its wall time."""
    shown = [f"{key}={metrics[key]:.4f}" for key in HEADLINE_METRICS if metrics.get(key) is not None]
    return ", ".join([*shown, f"wall {metrics['wall_seconds']:.1f} s"])


def _one_line(error: BaseException) -> str:
    """The first line of an expected failure's message, with its type where the message is bare."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    kind = type(error).__name__
    if isinstance(error, MemoryError) or not text:
        return f"{kind}: {text or 'out of memory'}"
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
        return f"{text} ({error.filename})"
    return text


if __name__ == "__main__":
    sys.exit(main())
