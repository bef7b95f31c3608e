"""The ``ecd2g`` command: the paper's experiments end to end.

Usage::

    ecd2g run moons-to-swissroll-2d                 # train + sample + evaluate + figures
    ecd2g run uniform-to-gaussian-1d --steps 2000 --out runs/gauss
    ecd2g run custom --source a.npy --target b.csv --num-categories 16 --num-layers 10
    ecd2g train moons-to-swissroll-2d --model current --out runs/m2s-current
    ecd2g sample --out runs/m2s-current --mode forward --num-samples 20000
    ecd2g evaluate --out runs/m2s-current
    ecd2g list

``run`` and ``train`` start from a preset (``ecd2g list``) and apply the options given;
``sample`` and ``evaluate`` reuse the ``config.json`` of an existing output folder, with the
sampling options given overriding it. The default folder is ``runs/EXPERIMENT``. Progress bars
go to standard error and are off when it is not a terminal or with ``--quiet``.

Exit status: 0 on success, 1 on a failed run (the message names the cause), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "default_threads", "main"]


def _bounded(kind: type, low: float, inclusive: bool):
    """An argparse ``type=`` that parses ``kind`` and requires ``> low`` (``>= low`` if inclusive)."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not (value >= low if inclusive else value > low):
            raise argparse.ArgumentTypeError(f"expected {noun} {'>=' if inclusive else '>'} {low}, got {value}")
        return value

    return parse


_positive_int = _bounded(int, 1, inclusive=True)
_non_negative_int = _bounded(int, 0, inclusive=True)
_positive_float = _bounded(float, 0, inclusive=False)


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
    parser.add_argument("--out", type=Path, help="output folder (default runs/EXPERIMENT)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument(
        "--threads", type=_positive_int, help="torch CPU threads (default on the CPU: half the cores, 1 to 4)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=("bidirectional", "forward"), help="walk mode (default bidirectional)"
    )
    parser.add_argument("--backend", help="sampler backend: auto, torch, cpp, potential (default auto)")
    parser.add_argument("--num-samples", type=_positive_int, help="generated samples (default: the preset's)")
    parser.add_argument("--seed", type=_non_negative_int, help="master seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    """The ``ecd2g`` argument parser (sub-commands ``run``, ``train``, ``sample``, ``evaluate``, ``list``)."""
    from .experiments.configs import EXPERIMENTS

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
            "--model", choices=("current", "potential"), help="current (the paper's) or potential network"
        )
        p.add_argument("--steps", type=_positive_int, help="optimiser steps")
        p.add_argument("--batch-size", type=_positive_int, help="data samples per step (Monte-Carlo targets)")
        p.add_argument("--num-queries", type=_positive_int, help="queries per step (default: the batch size)")
        p.add_argument("--queries", choices=("uniform", "data"), help="query distribution")
        p.add_argument("--lr", type=_positive_float, help="SGD learning rate (default: the trainer's)")
        p.add_argument(
            "--source", help="source data set: uniform, gaussian, moons, swissroll or a .npy/.csv file"
        )
        p.add_argument("--target", help="target data set, as --source")
        p.add_argument(
            "--num-categories", type=_positive_int, help="K (default: the preset's, or inferred from files)"
        )
        p.add_argument("--num-layers", type=_positive_int, help="L (default: the preset's, or 10)")
        p.add_argument("--r", type=_positive_float, help="forward resistance (default 0.1)")
        p.add_argument("--R", type=_positive_float, help="lateral resistance (default 100)")
        _add_sampling(p)
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
            _add_sampling(p)
    sub.add_parser("list", help="list the shipped experiments", description="list the shipped experiments")
    return parser


_TRAIN_OPTIONS = {
    "model": "model",
    "steps": "steps",
    "batch_size": "batch_size",
    "num_queries": "num_queries",
    "queries": "queries",
    "lr": "lr",
    "source": "source",
    "target": "target",
    "num_categories": "num_categories",
    "num_layers": "num_layers",
    "r": "r",
    "R": "R",
}
_SAMPLE_OPTIONS = {
    "mode": "mode",
    "backend": "backend",
    "num_samples": "num_samples",
    "seed": "seed",
    "device": "device",
}


def _config_from_args(args: argparse.Namespace):
    from .experiments.configs import EXPERIMENTS, ExperimentConfig

    if args.experiment == "custom":
        if args.source is None or args.target is None:
            raise ValueError("the custom experiment needs --source and --target")
        config = ExperimentConfig(
            experiment="custom", source=args.source, target=args.target, num_samples=None
        )
    else:
        config = ExperimentConfig.from_json(EXPERIMENTS[args.experiment].to_json())
    for option, field in {**_TRAIN_OPTIONS, **_SAMPLE_OPTIONS}.items():
        value = getattr(args, option, None)
        if value is not None:
            setattr(config, field, value)
    if args.experiment != "custom" and (args.source is not None or args.target is not None):
        # a preset's K and D belong to its own data sets; infer them again for the new ones
        config.experiment = f"{args.experiment} (modified)"
        if args.num_categories is None and any(
            str(s).endswith((".npy", ".csv")) for s in (args.source, args.target)
        ):
            config.num_categories = None
        config.dim = None
    return config


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
                f"model={config.model}: {config.notes}"
            )
        return 0

    import torch

    from .experiments import runner
    from .experiments.configs import ExperimentConfig
    from .sampling import FieldError

    progress = not args.quiet and sys.stderr.isatty()

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads if args.threads is not None else default_threads(args.device))
        if args.command in ("run", "train"):
            config = _config_from_args(args)
            out = args.out if args.out is not None else Path("runs") / args.experiment
            if args.command == "run":
                metrics = runner.run(config, out, progress=progress, log=log)
                log(
                    f"[ecd2g] wrote {out}/ (metrics.json: tv={metrics['tv']:.4f}, wall {metrics['wall_seconds']:.1f} s)"
                )
            else:
                runner.train_stage(config, out, progress=progress, log=log)
                log(f"[ecd2g] wrote {out}/config.json and {out}/{runner.CHECKPOINT}")
            return 0
        out = _out_dir(args)
        config = ExperimentConfig.load(out / "config.json")
        if args.device is not None:
            config.device = args.device
        if args.command == "sample":
            for option, field in _SAMPLE_OPTIONS.items():
                value = getattr(args, option, None)
                if value is not None:
                    setattr(config, field, value)
            config.save(out / "config.json")
            runner.sample_stage(config, out, progress=progress, log=log)
        else:
            runner.evaluate_stage(config, out, progress=progress, log=log)
        return 0
    except (ValueError, TypeError, FileNotFoundError, FieldError) as error:
        print(f"ecd2g: error: {error}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads_before)  # main() may run in-process (tests, notebooks)


if __name__ == "__main__":
    sys.exit(main())
