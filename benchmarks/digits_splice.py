"""Which layers of a learned digits field pick the wrong digits: walks spliced with the training images' field.

A finished ``ecd2g run binary-digits-64`` (or ``digits-64``) folder's network is walked with the
exact field of the training images (:class:`~ecd2g_fast.hamming.DataLogField`) on one side of a
layer. At the early layers that field is the training images smoothed by a wide kernel, close to
the data's own law; at layer ``L`` it is the training images themselves. For each ``--splice``
layer, two walks of ``--walkers`` walkers from uniform noise (the same start states and seed):

* ``learned_below``: the network below the layer, the training images' field from it on. The
  walks end on training images, so their labels are right; their histogram shows which digits the
  network had steered the walkers to by that layer.
* ``learned_above``: the training images' field below the layer, the network (and its own sink)
  from it on.

``--sharpen C [C ...]`` (with ``--sharpen-from LAYER``) adds walks of the network with its output
``f`` (``S_l = log alpha*_{L-l} + f``) multiplied by ``C`` from ``LAYER`` on (:class:`SharpenedField`,
``sharpened``): whether a steeper field in the last layers would keep the digits. A diagnostic,
not a sampler: the walk no longer follows the learned currents.

``--inflow`` adds a walk of the network alone, left by its inflow instead of its learned sink
head (``inflow_walk``): whether the sink head makes the errors. ``--noise-flips K [K ...]`` scores
the training images (each twice) with ``K`` random coordinates of each changed
(``noised_images``): how far noise alone moves the labels. ``--rises LAYER [LAYER ...]`` measures,
at those layers, how much the log-field rises from each of the run's own samples (its first 1000)
to its nearest training image, per coordinate between them (``rises``: :func:`rises`), for the
network and for the training images' field, and from each held-out image to its nearest training
image: how sharp the learned field's peaks at the images are (drawn by ``--summary`` in
``digits_splice_rises.png``).

The splices, the sharpened walks and ``--rises`` evaluate the network at chosen states, which a
network with a ratio head (``head="ratios"``) does not walk by: for such a run they are refused
(``--inflow`` and the run's own samples are still scored).

Each walk is scored like the run itself (:func:`~ecd2g_fast.experiments.highdim.sample_metrics`
against the held-out images, with the cross-fitted label reference), plus its label histogram,
the nearest-training-image distances and the class margins
(:func:`~ecd2g_fast.experiments.highdim.class_margin`: whether samples sit between digits). The run's own samples (``samples.npy``) are scored the same
way for comparison. Rows go to ``benchmarks/results/digits_splice.jsonl``; ``--summary`` writes the
table ``digits_splice.md``.

    python -m benchmarks.digits_splice RUN_FOLDER TAG --splice 16 32 48 --walkers 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import ecd2g_fast as E
from ecd2g_fast.experiments import runner
from ecd2g_fast.experiments.evaluation import load_plots
from ecd2g_fast.experiments.folder import RunFolder
from ecd2g_fast.experiments.highdim import class_margin, memorisation, nearest_distances, sample_metrics
from ecd2g_fast.hamming import DataLogField, HammingNetField, LogField

from . import harness
from .highdim_learning import DiagnosticField, SplicedField, has_ratio_head

RESULTS = Path(__file__).parent / "results" / "digits_splice.jsonl"
SUMMARY = RESULTS.with_suffix(".md")
RISES_FIGURE = RESULTS.with_name("digits_splice_rises.png")


def score(states: torch.Tensor, target, classifier, cross_fitted) -> dict:
    """The run's metrics of ``(n, D)`` int64 samples, their label histogram and memorisation."""
    K, n = target.num_categories, states.shape[0]
    # sample_metrics' other floors need real states; the label floor is simulated
    rows = torch.randperm(target.train_states.shape[0], generator=torch.Generator().manual_seed(0))
    floor = target.train_states[rows[: min(n, rows.shape[0])]]
    metrics = sample_metrics(
        states, target.held_out_states, floor, K, classifier=classifier, cross_fitted=cross_fitted
    )
    return {
        **metrics["samples"],
        "label_tv_crossfit_floor": metrics["floor"]["label_tv_crossfit"],
        "label_histogram": cross_fitted.histogram(states).tolist(),
        "memorisation": memorisation(states, target.train_states, target.held_out_states),
        "class_margin": class_margin(
            states, target.train_states, target.train_labels, target.held_out_states
        ),
        "num_samples": n,
    }


class SharpenedField(DiagnosticField):
    """A :class:`~ecd2g_fast.hamming.HammingNetField`'s log-field with the network's output ``f``
    times ``factor`` from ``layer`` on; its own sink (learned or inflow) at layer ``L``."""

    def __init__(self, field: HammingNetField, factor: float, layer: int) -> None:
        super().__init__(field)
        self.factor, self.layer = factor, layer

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        norm = self.tables.log_norm[layer]
        f = self.field.log_field(layer, z) - norm
        return norm + torch.where(layer >= self.layer, self.factor * f, f)

    def sink_over_rho(self, z: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        return self.field.sink_over_rho(z, backward)


def noised(states: torch.Tensor, flips: int, num_categories: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, D)`` states with ``flips`` distinct random coordinates of each row changed to another
    of the ``num_categories`` values, uniformly."""
    coordinate = torch.rand(states.shape, generator=generator).argsort(1)[:, :flips]
    shift = torch.randint(1, num_categories, coordinate.shape, generator=generator)
    values = (states.gather(1, coordinate) + shift) % num_categories
    return states.scatter(1, coordinate, values)


@torch.no_grad()
def rises(field: LogField, layer: int, start: torch.Tensor, end: torch.Tensor) -> dict:
    """Mean of ``S_l(end) - S_l(start)`` over ``(n, D)`` state pairs at ``layer``, per pair and per
    coordinate between them (pairs at distance 0 left out of the latter)."""
    layers = torch.full((start.shape[0],), layer, device=field.device)
    rise = (field.log_field(layers, end) - field.log_field(layers, start)).double().cpu()
    distance = (start != end).sum(1)
    apart = distance > 0
    return {
        "rise": float(rise.mean()),
        "rise_per_coordinate": float((rise[apart] / distance[apart]).mean()),
        "distance": float(distance.double().mean()),
    }


def nearest_rows(states: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(n, D)``: the nearest row of ``points`` (Hamming distance) to each of ``(n, D)`` ``states``."""
    return points[nearest_distances(states, points, return_indices=True)[1]]


def run(args: argparse.Namespace) -> dict:
    with RunFolder(args.run_folder).locked() as folder:
        run_ = runner.Run.of_folder(folder)
        network = run_.load_field()
        own_samples = torch.from_numpy(np.load(folder / "samples.npy"))
        config = json.loads((folder / "config.json").read_text())
    target = run_.target
    if target.train_labels is None:
        raise ValueError(f"run_folder must hold a digits run, got target {target.spec!r}")
    circuit = network.circuit
    sharpen_from = [args.sharpen_from] if args.sharpen else []
    for name, layers, low in (
        ("--splice", args.splice, 1),
        ("--sharpen-from", sharpen_from, 1),
        ("--rises", args.rises, 0),
    ):
        if not all(low <= layer <= circuit.num_layers for layer in layers):
            raise ValueError(f"{name} layers must be in {low}..{circuit.num_layers}, got {layers}")
    if args.rises and has_ratio_head(network):
        raise ValueError(
            "--rises compares the network's values at states, which a network with head='ratios' does "
            "not walk by (its walk reads the ratio head): use a run with head='scalar'"
        )
    images = DataLogField(circuit, target.train_states)
    classifier, cross_fitted = target.classifier(), target.cross_fitted_labels()
    x0 = torch.randint(
        0, circuit.num_categories, (args.walkers, circuit.dim), generator=torch.Generator().manual_seed(15)
    )

    def walk(field) -> dict:
        start = time.perf_counter()
        with torch.no_grad():
            states, moves = E.sample(
                field, x0, generator=13, max_moves=args.max_moves, unfinished="keep", return_moves=True
            )
        seconds, finished = time.perf_counter() - start, moves >= 0
        return {
            **score(states[finished], target, classifier, cross_fitted),
            "finished": int(finished.sum()),
            "seconds": seconds,
        }

    row: dict = {
        "tag": args.tag,
        "run_config": config,
        "reference_histogram": cross_fitted.reference.tolist(),
        "crossfit_accuracy": cross_fitted.accuracy,
        "walkers": args.walkers,
        "network_samples": score(own_samples, target, classifier, cross_fitted),
        "splices": [],
    }
    if args.inflow:
        row["inflow_walk"] = walk(HammingNetField(network.net, sink="inflow"))
    row["sharpened"] = {str(c): walk(SharpenedField(network, c, args.sharpen_from)) for c in args.sharpen}
    if args.sharpen:
        row["sharpen_from"] = args.sharpen_from
    generator = torch.Generator().manual_seed(0)
    images_twice = target.train_states.repeat(2, 1)
    row["noised_images"] = {
        str(k): score(
            noised(images_twice, k, circuit.num_categories, generator), target, classifier, cross_fitted
        )
        for k in args.noise_flips
    }
    if args.rises:
        samples = own_samples[:1000]
        nearest = nearest_rows(samples, target.train_states)
        held_nearest = nearest_rows(target.held_out_states, target.train_states)
        row["rises"] = {
            str(layer): {
                "network": rises(network, layer, samples, nearest),
                "training_images_field": rises(images, layer, samples, nearest),
                "network_held_out": rises(network, layer, target.held_out_states, held_nearest),
            }
            for layer in args.rises
        }
    for layer in args.splice:
        row["splices"].append(
            {
                "layer": layer,
                "learned_below": walk(SplicedField(network, images, layer)),
                "learned_above": walk(SplicedField(images, network, layer)),
            }
        )
        if not args.quiet:
            print(json.dumps(row["splices"][-1]["layer"]), flush=True)
    return row


def plot_rises(rows: list[dict], path: Path) -> bool:
    """Draw the ``--rises`` of every row that has them: the network's rise per layer (solid) and
    the training images' field's (dashed), per coordinate. False (nothing drawn) without
    matplotlib or without such rows."""
    plots = load_plots(lambda message: None)
    measured = [r for r in rows if r.get("rises")]
    if plots is None or not measured:
        return False
    fig, ax = plots._pyplot().subplots(figsize=(6.4, 4.2))
    for index, r in enumerate(measured):
        layers = sorted(int(layer) for layer in r["rises"])
        color = f"C{index % 10}"
        for kind, style in (("network", "-"), ("training_images_field", "--")):
            values = [r["rises"][str(layer)][kind]["rise_per_coordinate"] for layer in layers]
            label = r["tag"] if kind == "network" else None
            ax.plot(layers, values, style, color=color, marker="o", markersize=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("rise of S_l per coordinate (nats)")
    ax.set_title(
        "sample -> its nearest training image: network (solid), training images' field (dashed)", fontsize=9
    )
    ax.legend(fontsize=7)
    plots._save(fig, path, dpi=110, bbox_inches="tight")
    return True


def summary() -> str:
    """``digits_splice.md``: one line per walk of every row; ``digits_splice_rises.png``."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    headers = [
        "tag",
        "walk",
        "label TV, all images (floor)",
        "label histogram (digits 0-9)",
        "marginal TV",
        "corr. error",
        "NN distance (held-out)",
        "class margin (held-out)",
        "finished",
    ]

    def margin(w: dict) -> str:
        m = w.get("class_margin")  # rows written before the metric lack it
        return f"{m['samples_mean']:.2f} ({m['held_out_mean']:.2f})" if m else "n/a"

    def cells(tag: str, name: str, w: dict) -> list[str]:
        return [
            tag,
            name,
            f"{w['label_tv_crossfit']:.3f} ({w['label_tv_crossfit_floor']:.3f})",
            " ".join(f"{p:.3f}" for p in w["label_histogram"]),
            f"{w['marginal_tv']:.4f}",
            f"{w['correlation_error']:.3f}",
            f"{w['memorisation']['samples_mean']:.2f} ({w['memorisation']['held_out_mean']:.2f})",
            margin(w),
            str(w.get("finished", w["num_samples"])),
        ]

    table = []
    for r in rows:
        table.append(
            [
                r["tag"],
                "reference (out-of-fold labels of all images)",
                "",
                " ".join(f"{p:.3f}" for p in r["reference_histogram"]),
                "",
                "",
                "",
                "",
                "",
            ]
        )
        table.append(cells(r["tag"], "the run's own samples", r["network_samples"]))
        if "inflow_walk" in r:
            table.append(cells(r["tag"], "the network left by its inflow", r["inflow_walk"]))
        for c, walked in r.get("sharpened", {}).items():
            name = f"the network with f x {c} from layer {r['sharpen_from']}"
            table.append(cells(r["tag"], name, walked))
        for k, images in r.get("noised_images", {}).items():
            table.append(cells(r["tag"], f"training images, {k} random coordinates changed", images))
        for s in r["splices"]:
            table.append(
                cells(
                    r["tag"], f"learned below {s['layer']}, training images' field above", s["learned_below"]
                )
            )
            table.append(
                cells(
                    r["tag"], f"training images' field below {s['layer']}, learned above", s["learned_above"]
                )
            )
    rise_table = [
        [
            r["tag"],
            layer,
            f"{m['network']['rise']:.2f} ({m['network']['rise_per_coordinate']:.2f})",
            f"{m['training_images_field']['rise']:.2f} ({m['training_images_field']['rise_per_coordinate']:.2f})",
            f"{m['network']['distance']:.2f}",
            f"{m['network_held_out']['rise']:.2f} ({m['network_held_out']['rise_per_coordinate']:.2f})",
        ]
        for r in rows
        for layer, m in r.get("rises", {}).items()
    ]
    rise_headers = [
        "tag",
        "layer",
        "network: sample -> nearest training image (per coordinate)",
        "training images' field: the same",
        "distance",
        "network: held-out image -> nearest training image",
    ]
    meta = rows[-1]["meta"] if rows else {}
    text = "\n".join(
        [
            "# Digits: walks of a learned field spliced with the training images' exact field",
            "",
            "Written by `python -m benchmarks.digits_splice --summary` from `digits_splice.jsonl` (each row has its "
            "command, commit and machine). Label TV against the cross-fitted labels of all 1797 images (floor: "
            "simulated perfect sampler of the same size); the histogram is the mean over the five classifiers. "
            "NN distance: mean Hamming distance to the nearest training image (held-out images in brackets). "
            "Class margin: mean distance to the nearest training image of a second class beyond the nearest "
            "image (held-out images in brackets; 0: as near to two classes).",
            "",
            f"Last row: {meta.get('command', '')}, commit {(meta.get('git') or {}).get('commit', '')[:7]}.",
            "",
            harness.markdown_table(headers, table).rstrip("\n"),
            "",
            "## How sharp the field's peaks at the images are (`--rises`)",
            "",
            "Mean rise of the log-field `S_l` (nats) from each of the run's first 1000 samples to its nearest "
            "training image, and per coordinate between them (in brackets).",
            "",
            harness.markdown_table(rise_headers, rise_table).rstrip("\n"),
            "",
        ]
    )
    SUMMARY.write_text(text)
    plot_rises(rows, RISES_FIGURE)
    return text


def main(argv: list[str] | None = None) -> dict | str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", nargs="?", help="a finished digits run's output folder")
    parser.add_argument("tag", nargs="?", help="name of the row in the results file")
    parser.add_argument("--splice", type=int, nargs="*", default=[32], metavar="LAYER")
    parser.add_argument("--inflow", action="store_true", help="also walk the network left by its inflow")
    parser.add_argument(
        "--noise-flips",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="also score noised training images",
    )
    parser.add_argument("--sharpen", type=float, nargs="*", default=[], metavar="C")
    parser.add_argument("--sharpen-from", type=int, default=48, metavar="LAYER")
    parser.add_argument("--rises", type=int, nargs="*", default=[], metavar="LAYER")
    parser.add_argument("--walkers", type=int, default=1000)
    parser.add_argument("--max-moves", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary", action="store_true", help="write digits_splice.md and stop")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.summary:
        return summary()
    if args.run_folder is None or args.tag is None:
        parser.error("give RUN_FOLDER and TAG (or --summary)")
    torch.set_num_threads(args.threads)
    meta = harness.run_metadata("cpu", argv)
    row = {**run(args), "meta": meta}
    harness.append_jsonl(RESULTS, [row])
    summary()
    return row


if __name__ == "__main__":
    main()
