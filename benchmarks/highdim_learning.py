"""What makes the Hamming log-field learnable at D = 64: training variants measured against the exact field.

Task ``bernoulli-mixture-64``: uniform noise to the ten-component mixture of product-Bernoulli
distributions on ``{0, 1}^64`` (:class:`ecd2g_fast.experiments.highdim.BernoulliMixture`, seed 0),
``HammingCircuit(2, 64, --layers)``, fresh exact draws every training step. The mixture's exact
field is known at any ``D`` (:class:`~ecd2g_fast.hamming.log_field.ProductMixtureLogField`: the
distance to a draw of a product distribution is Poisson-binomial), so every variant is measured
against it, not only through its samples:

* ``field_error``: per layer (every 8th, and the last four), the mean and standard deviation of
  ``S_learned - S_exact`` over 512 states drawn from the data smoothed by the layer's kernel
  (:func:`~ecd2g_fast.hamming.learning.smoothed_data_states`, where the walk goes), and the
  standard deviation of the error of the layer step ``S_{l+1}(z) - S_l(z)`` at the same states
  (what the stay edge reads); and where the walk goes, at states whose distance to a data sample
  follows the exact walk's occupancy (:func:`~ecd2g_fast.hamming.learning.point_occupancy`), the
  standard deviation of ``S - S_exact`` (``walk_sd``) and of the error of the log-ratio across a
  forward edge that corrects one coordinate towards that sample (``correction_sd``: the edges that
  carry the walk's last moves); and at uniform noise states, the sd of ``S - S_exact``
  (``noise_sd``) and of the layer-step error (``noise_step_sd``: the stay edges a walker that never
  approaches the data keeps taking);
* ``field_slope``: the slope of ``S`` on ``S_exact`` at layers L-1 and L where the walk goes (1:
  neither flatter nor sharper than the exact field);
* ``sink_error``: :func:`sink_errors`, how well the field lets walkers leave at layer L (its sink
  times ``Ã_0(0)``, the posterior ``r`` that a state is a clean sample, and the share of the
  outflow that leaves, against the exact ones; where the walk goes, at data samples with 20
  coordinates changed, and at noise states);
* ``layer_mean_log_ratio``: :func:`~ecd2g_fast.hamming.learning.layer_mean_ratios` (0 when the
  layer means keep their closed-form values);
* the walk: ``--walkers`` bidirectional walks from uniform noise (at most ``--max-moves`` moves;
  walkers still moving then are counted, not scored), bridged dead ends, mean moves, and
  :func:`~ecd2g_fast.experiments.highdim.sample_metrics` against 20,000 exact draws, next to the
  floor of as many exact draws as finished walkers; ``gap_anatomy`` (:func:`gap_anatomy`: the
  gap's quantiles over the samples, the share of samples in the data's 1 % tail, noise bits); with
  ``--repeat-walk`` the same for a second walk of the same field with other seeds (the walk's own
  spread). ``--checkpoint FILE`` keeps the trained network, and a finished one is reused.
* ``--splice LAYER``: the same for two more walks, of the learned field below ``LAYER`` with the
  exact one from there on (:class:`SplicedField`), and the other way round: which layers' errors
  the samples suffer from; with ``--flatten SLOPE`` also of the exact field flattened to that
  slope from ``LAYER`` on (:class:`FlattenedField`: what the flatness alone costs; with
  ``--exact``, that walk only).

* ``component_errors`` (:func:`component_errors`): the errors of ``S_L`` and of the sink by mixture
  component, and their slope on the log-weights; ``--probe-only`` measures the learned field
  (this and the measurements above) without walking it.

* ``--trace``: one more walk of the field, followed move by move (:func:`trace_walk`: how far
  the tail's walkers and the others are from the data when they reach the last layers, and the
  share of the outflow the field's sink and the exact one take where they end).
* ``--exact-sink``: one more walk, of the learned field with the exact sink at layer L
  (:class:`ExactSinkField`: what the field's own sink costs). A network with a learned sink
  (``model_kwargs`` ``"sink": "learned"``) is also walked by its inflow (``inflow_sink``, same seeds
  as ``--repeat-walk``): the two sinks on one network.

``--exact`` walks the exact field instead of training (the oracle row: what a perfect field scores
with this walk). Training settings: the Hamming model's default recipe, ``--steps``, and
``--set NAME=JSON`` overrides of :class:`~ecd2g_fast.training.TrainConfig` settings.

    python -m benchmarks.highdim_learning TAG [--steps 3000] [--set queries='"walk"' ...]
        [--layers 64] [--walkers 300] [--max-moves 1000] [--exact] [--checkpoint FILE]
        [--repeat-walk] [--splice LAYER [--flatten SLOPE]] [--exact-sink] [--trace] [--probe-only]
        [--threads 1]
    python -m benchmarks.highdim_learning --summary

Each run appends one JSON line to ``benchmarks/results/highdim_learning.jsonl`` (settings,
seconds, the measurements, machine, the command); ``--summary`` writes
``benchmarks/results/highdim_learning.md`` from it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import ecd2g_fast as E
from ecd2g_fast.experiments.highdim import BernoulliMixture, sample_metrics
from ecd2g_fast.hamming.learning import (
    change_coordinates,
    layer_mean_ratios,
    point_occupancy,
    smoothed_data_states,
)
from ecd2g_fast.hamming.log_field import LogField, ProductMixtureLogField
from ecd2g_fast.hamming.model import HammingNetField

from . import harness

RESULTS = harness.RESULTS / "highdim_learning.jsonl"
SUMMARY = harness.RESULTS / "highdim_learning.md"
DIM = 64
#: States per layer of the field-error and layer-mean measurements.
PROBE_STATES = 512


def exact_field(mixture: BernoulliMixture, circuit: E.HammingCircuit) -> ProductMixtureLogField:
    """The exact noise-to-data field of ``mixture`` on ``circuit``."""
    return ProductMixtureLogField(
        circuit, torch.stack([1 - mixture.theta, mixture.theta], -1), mixture.weights
    )


def walk_laws(exact: ProductMixtureLogField) -> torch.Tensor:
    """``(L+1, D+1)`` float64: per layer, the law of the exact walk's distance to its data sample
    (:func:`~ecd2g_fast.hamming.learning.point_occupancy`, normalised per layer)."""
    visits = point_occupancy(exact.circuit, exact.tables)
    return visits / visits.sum(1, keepdim=True)


def walk_states(law: torch.Tensor, data: torch.Tensor, n: int, generator: torch.Generator):
    """``(z, anchor)``, two ``(n, D)`` int64 tensors: a distance of at least 1 drawn from ``law``
    ``(D+1,)``, a uniform row of ``data`` as the anchor, and that many of its coordinates changed."""
    distance = torch.multinomial(law[1:], n, replacement=True, generator=generator) + 1
    anchor = data[torch.randint(0, data.shape[0], (n,), generator=generator)]
    return change_coordinates(anchor, distance, 2, generator), anchor


@torch.no_grad()
def field_errors(field, exact, data: torch.Tensor, generator: torch.Generator) -> list[dict]:
    """Per probed layer: mean and sd of ``S - S_exact`` and sd of the layer-step error at draws of
    the kernel-smoothed data; and where the walk goes (module docstring): sd of ``S - S_exact`` and
    of the error of the log-ratio across a forward edge that corrects one coordinate towards the
    data sample the state was drawn around."""
    circuit = exact.circuit
    L = circuit.num_layers
    walk_law = walk_laws(exact)
    rows = []
    for l in sorted({*range(0, L + 1, 8), L - 3, L - 2, L - 1, L}):
        layer = torch.full((PROBE_STATES,), l)
        z = smoothed_data_states(exact.tables, layer, data, 2, generator)
        error = field.log_field(layer, z) - exact.log_field(layer, z)
        row = {"layer": l, "mean": float(error.mean()), "sd": float(error.std())}
        if l < L:
            ahead = field.log_field(layer + 1, z) - exact.log_field(layer + 1, z)
            row["step_sd"] = float((ahead - error).std())
        z, anchor = walk_states(walk_law[l], data, PROBE_STATES, generator)  # where the walk goes
        error = field.log_field(layer, z) - exact.log_field(layer, z)
        row["walk_sd"] = float(error.std())
        if l < L:
            # flip the first coordinate where z and its anchor differ
            first = (z != anchor).long().argmax(1)
            w = z.clone()
            w[torch.arange(PROBE_STATES), first] = anchor[torch.arange(PROBE_STATES), first]
            ahead = field.log_field(layer + 1, w) - exact.log_field(layer + 1, w)
            row["correction_sd"] = float((ahead - error).std())
        # far from the data (uniform noise, where the walk starts): where a walker that never
        # approaches the data goes, by stay edges whose ratio the field gets wrong
        z = torch.randint(0, 2, (PROBE_STATES, circuit.dim), generator=generator)
        error = field.log_field(layer, z) - exact.log_field(layer, z)
        row["noise_sd"] = float(error.std())
        if l < L:
            ahead = field.log_field(layer + 1, z) - exact.log_field(layer + 1, z)
            row["noise_step_sd"] = float((ahead - error).std())
        rows.append(row)
    return rows


def gap_anatomy(states: torch.Tensor, reference: torch.Tensor, mixture: BernoulliMixture) -> dict:
    """Where a log-likelihood gap comes from, for ``(n, D)`` ``states`` against exact draws ``reference``.

    ``quantiles``: the per-sample gap (the reference's mean log-likelihood minus the sample's) at
    the 10/50/90 % quantiles (a few outliers and a shift of every sample read differently);
    ``standard_error``: that of the mean gap over the samples (a heavy tail makes it large);
    ``tail``: the fraction of samples less likely than the reference's 1 % quantile (0.01 for exact
    draws); ``flips``: the mean number of coordinates that differ from the most likely value of the
    sample's most probable component (noise bits: each costs ``log((1 - f) / f)``, 1.1 to 2.9 nats
    at flip probabilities ``f`` in [0.05, 0.25]); ``component_shares``: the fraction of samples whose
    most probable component is each of the mixture's (against its weights: which modes a coverage
    error over- or under-visits).
    """
    reference_ll = mixture.log_likelihood(reference)
    ll = mixture.log_likelihood(states)
    gap = reference_ll.mean() - ll
    components = mixture.components(states)
    modes = (mixture.theta > 0.5).long()[components]
    shares = torch.bincount(components, minlength=mixture.weights.shape[0]).double() / components.numel()
    return {
        "quantiles": {f"{q:.1f}": float(gap.quantile(q)) for q in (0.1, 0.5, 0.9)},
        "standard_error": float(gap.std() / gap.numel() ** 0.5),
        "tail": float((ll < reference_ll.quantile(0.01)).double().mean()),
        "flips": float((states != modes).sum(1).double().mean()),
        "component_shares": shares.tolist(),
    }


@torch.no_grad()
def field_slopes(field, exact, data: torch.Tensor, generator: torch.Generator) -> dict:
    """The least-squares slope of ``S_learned`` on ``S_exact`` at layers L-1 and L, at states where the
    walk goes (:func:`field_errors`): 1 for a field that is neither flatter (slope < 1: a sampler
    noisier than the data) nor sharper than the exact one."""
    circuit = exact.circuit
    L = circuit.num_layers
    walk_law = walk_laws(exact)
    out = {}
    for l in (L - 1, L):
        layer = torch.full((4 * PROBE_STATES,), l)
        z, _ = walk_states(walk_law[l], data, layer.numel(), generator)
        truth = exact.log_field(layer, z).double()
        learned = field.log_field(layer, z).double()
        truth, learned = truth - truth.mean(), learned - learned.mean()
        out[str(l)] = float((truth * learned).sum() / truth.pow(2).sum())
    return out


#: Coordinates changed from a data sample for the ``far`` states of :func:`sink_errors`: about
#: where the walkers of the gap's tail reach layer ``L`` (23 coordinates from every mode).
FAR_DISTANCE = 20


@torch.no_grad()
def sink_errors(field, exact, data: torch.Tensor, generator: torch.Generator) -> dict:
    """How well ``field`` lets walkers leave at layer ``L``, at :data:`PROBE_STATES` states of each of
    three kinds: where the walk goes at layer ``L`` (``walk``), data samples with
    :data:`FAR_DISTANCE` coordinates changed (``far``, where a walker should go back and keep
    correcting), and uniform noise (``noise``). Per kind, the means of ``r``, the field's sink over
    ``rho_L`` times ``Ã_0(0)`` (for the exact field the posterior that a state is a clean sample, in
    ``[0, 1]``), and of the exact ``r``, their mean absolute difference, and the mean share of a
    vertex's outflow that goes to the sink (``exit``; ``exit_exact`` for the exact field)."""
    circuit = exact.circuit
    L, N = circuit.num_layers, circuit.num_neighbours
    walk, _ = walk_states(walk_laws(exact)[L], data, PROBE_STATES, generator)
    anchor = data[torch.randint(0, data.shape[0], (PROBE_STATES,), generator=generator)]
    far = change_coordinates(anchor, torch.full((PROBE_STATES,), FAR_DISTANCE), 2, generator)
    noise = torch.randint(0, 2, (PROBE_STATES, circuit.dim), generator=generator)
    layer = torch.full((PROBE_STATES,), L)
    clean = exact.tables.log_kernel[L, 0].exp()
    out = {}
    for name, z in (("walk", walk), ("far", far), ("noise", noise)):
        (r, exit), (r_exact, exit_exact) = (
            (currents[:, 2 * N] * clean, currents[:, 2 * N] / currents.sum(1))
            for currents in (
                f.outlet_currents(layer, z, "bidirectional").clamp_min(0) for f in (field, exact)
            )
        )
        out[name] = {
            "r": float(r.mean()),
            "r_exact": float(r_exact.mean()),
            "abs_error": float((r - r_exact).abs().mean()),
            "exit": float(exit.mean()),
            "exit_exact": float(exit_exact.mean()),
        }
    return out


#: Coordinates changed from clean draws of each component in :func:`component_errors`.
COMPONENT_DISTANCES = (0, 8)


@torch.no_grad()
def component_errors(field, exact, mixture: BernoulliMixture, generator: torch.Generator) -> dict:
    """The field's errors at layer ``L`` by mixture component: whether it favours heavy modes.

    For each distance ``k`` in :data:`COMPONENT_DISTANCES` and each component ``c``, at
    :data:`PROBE_STATES` draws of ``c`` with ``k`` coordinates changed: the mean of ``S_L - S_exact``
    (``field``: a field flatter at the light modes' peaks than at the heavy ones' pulls walkers
    towards the heavy ones) and of ``log r - log r_exact`` (``sink``, ``r`` as in :func:`sink_errors`),
    and the least-squares slope of each on ``log w_c`` (0: no preference; positive: heavier
    components' states are over-valued).
    """
    L, N = exact.circuit.num_layers, exact.circuit.num_neighbours
    layer = torch.full((PROBE_STATES,), L)
    log_w = mixture.weights.log()
    centred = log_w - log_w.mean()
    out = {}
    for k in COMPONENT_DISTANCES:
        errors: dict[str, list[float]] = {"field": [], "sink": []}
        for c in range(mixture.weights.shape[0]):
            draws = (
                torch.rand(PROBE_STATES, mixture.dim, generator=generator, dtype=torch.float64)
                < mixture.theta[c]
            ).long()
            z = change_coordinates(draws, torch.full((PROBE_STATES,), k), 2, generator) if k else draws
            errors["field"].append(float((field.log_field(layer, z) - exact.log_field(layer, z)).mean()))
            log_sinks = [  # the sink current over rho_L: r over Ã_0(0)
                f.outlet_currents(layer, z, "bidirectional")[:, 2 * N].clamp_min(1e-300).log()
                for f in (field, exact)
            ]
            errors["sink"].append(float((log_sinks[0] - log_sinks[1]).mean()))
        out[str(k)] = {
            **errors,
            **{  # centred has mean 0, so the values need no centring
                f"{name}_slope": float(
                    torch.tensor(values, dtype=torch.float64) @ centred / (centred @ centred)
                )
                for name, values in errors.items()
            },
        }
    return out


def trace_layers(num_layers: int) -> list[int]:
    """The layers at which :func:`trace_walk` reports how far its walkers are from the data: the
    middle, three quarters, and then closer towards ``L`` (32, 48, 56, 60, 62, 64 at ``L = 64``)."""
    L = num_layers
    return sorted({L // 2, 3 * L // 4, 7 * L // 8, L - 4, L - 2, L} & set(range(1, L + 1)))


@torch.no_grad()
def trace_walk(
    field, exact, mixture: BernoulliMixture, reference: torch.Tensor, walkers: int, max_moves: int, seed: int
) -> dict:
    """Where the gap's tail goes astray: ``walkers`` bidirectional walks of ``field`` from uniform
    noise, drawn move by move in plain torch from its ``outlet_currents`` (seed ``seed``; not the
    draws of :func:`ecd2g_fast.sample`). A walker is in the tail when its end state is less likely
    than the ``reference`` draws' 1 % quantile (:func:`gap_anatomy`). For the tail and the others:
    the mean number of coordinates from the nearest component mode when a walker first reaches
    each layer of :func:`trace_layers` (``reach_distance``) and at its end, the mean visits to
    layer ``L``, and the share of the outflow the sink takes at the end state, by ``field``
    (``exit_share``) and by the exact field (``exact_exit_share``: what the walker would have done
    there with the exact sink); ``tail_share``: the tail's share of the finished walkers."""
    circuit = exact.circuit
    L, N, D = circuit.num_layers, circuit.num_neighbours, circuit.dim
    generator = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (walkers, D), generator=generator)
    layer = torch.zeros(walkers, dtype=torch.int64)
    done = torch.zeros(walkers, dtype=torch.bool)
    modes = (mixture.theta > 0.5).long()
    layers = trace_layers(L)
    reach = torch.full((len(layers), walkers), float("nan"))
    visits = torch.zeros(walkers)

    def share(f, states):
        out = f.outlet_currents(torch.full((states.shape[0],), L), states, "bidirectional").clamp_min(0)
        return out[:, 2 * N] / out.sum(1)

    for _ in range(max_moves):
        moving = (~done).nonzero().squeeze(1)
        if moving.numel() == 0:
            break
        out = field.outlet_currents(layer[moving], z[moving], "bidirectional").clamp_min(0)
        slot = torch.multinomial(out / out.sum(1, keepdim=True), 1, generator=generator).squeeze(1)
        visits[moving] += (layer[moving] == L).float()
        leaves, forward = slot == 2 * N, slot < N
        stays = moving[~leaves]
        k = torch.where(forward, slot, slot - N).clamp_max(N - 1)[~leaves]
        z[stays] = circuit.apply_slot(z[stays], k)
        layer[stays] += torch.where(forward[~leaves], 1, -1)
        done[moving[leaves]] = True
        distance = (z[stays, None, :] != modes[None]).sum(2).min(1).values.float()
        for i, l in enumerate(layers):
            first = (layer[stays] == l) & reach[i, stays].isnan()
            reach[i, stays[first]] = distance[first]
    ll = mixture.log_likelihood(z)
    tail = (ll < mixture.log_likelihood(reference).quantile(0.01)) & done
    end_distance = (z[:, None, :] != modes[None]).sum(2).min(1).values.float()
    own, exact_share = share(field, z), share(exact, z)
    groups = {"tail": tail, "rest": done & ~tail}
    return {
        "finished": int(done.sum()),
        "tail_share": float(tail.double().sum() / max(int(done.sum()), 1)),
        **{
            name: {
                "walkers": int(members.sum()),
                "reach_distance": {str(l): float(reach[i, members].nanmean()) for i, l in enumerate(layers)},
                "end_distance": float(end_distance[members].mean()),
                "visits_to_L": float(visits[members].mean()),
                "exit_share": float(own[members].mean()),
                "exact_exit_share": float(exact_share[members].mean()),
            }
            for name, members in groups.items()
        },
    }


def has_ratio_head(field: LogField) -> bool:
    """Whether ``field`` is a network's whose walk reads a ratio head
    (:data:`~ecd2g_fast.hamming.model.HEADS`), not its values at the neighbour states."""
    return getattr(getattr(field, "net", None), "head_kind", "scalar") == "ratios"


class DiagnosticField(LogField):
    """A log-field derived from ``field`` (on its circuit and device) for a diagnostic walk: not
    exact, so its dead ends are bridged and its walks capped.

    A subclass that evaluates its fields at neighbour states (:attr:`reads_neighbours`) refuses a
    network with a ratio head: there the walk does not read those values, so the diagnostic
    would walk another field than the network's."""

    bridge_dead_ends = True
    acyclic = False
    reads_neighbours = True

    def __init__(self, field: LogField, *others: LogField) -> None:
        super().__init__(field.circuit, field.device)
        if self.reads_neighbours and any(has_ratio_head(f) for f in (field, *others)):
            raise ValueError(
                f"{type(self).__name__} evaluates the field at neighbour states, which a network with "
                "head='ratios' does not walk by: use a network with head='scalar'"
            )
        self.field = field


class SplicedField(DiagnosticField):
    """``below`` at the layers under ``layer`` and ``above`` from ``layer`` on (two log-fields of
    one circuit): which layers' errors a walk suffers from. Walkers leave by ``above``'s sink
    (a network's learned sink head, if it has one)."""

    def __init__(self, below: LogField, above: LogField, layer: int) -> None:
        super().__init__(above, below)
        self.below, self.above, self.layer = below, above, layer

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # each row from its own field only: the exact one costs several times the network per row
        below = layer < self.layer
        out = torch.empty(layer.shape, dtype=torch.float64, device=z.device)
        for rows, field in ((below, self.below), (~below, self.above)):
            if bool(rows.any()):
                out[rows] = field.log_field(layer[rows], z[rows]).to(torch.float64)
        return out

    def sink_over_rho(self, z: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        return self.above.sink_over_rho(z, backward)  # layer L is never below the splice


class ExactSinkField(DiagnosticField):
    """``field`` with the exact sink at layer ``L``: the walk of a learned field whose walkers leave
    where the exact field's would (what its own sink costs). The exact sink current is ``q(z)``
    (``log_q``: ``(n, D)`` states -> ``(n,)`` float64 log-probabilities of the target), given over
    ``field``'s own ``rho_L(z)`` as every current of a vertex."""

    reads_neighbours = False  # the field's own outlets

    def __init__(self, field: LogField, log_q) -> None:
        super().__init__(field)
        self.log_q = log_q

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.field.log_field(layer, z)

    def outlet_log_fields(self, layer: torch.Tensor, z: torch.Tensor):
        return self.field.outlet_log_fields(layer, z)

    def sink_over_rho(self, z: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
        top = torch.full((z.shape[0],), self.circuit.num_layers, device=z.device)
        return torch.exp(self.log_q(z) - self.field.log_field(top, z))


class FlattenedField(DiagnosticField):
    """The exact field with ``S_l`` pulled towards a centre ``m_l``, from layer ``layer`` on:
    ``m_l + slope (S_l - m_l)`` (a field with the learned fields' :func:`field_slopes` and no
    other error). ``m_l`` is the mean of ``S_l`` over one set of :data:`PROBE_STATES` states, the
    same at every layer (distances to a sample of ``data`` drawn from the walk's occupancy pooled
    over layers ``layer..L``): with a fresh set per layer the centres' sampling noise (about 0.3
    nats at layer ``L``) would change every layer step, ten times the exact steps there. Walkers
    leave by its own inflow."""

    def __init__(
        self,
        exact: ProductMixtureLogField,
        slope: float,
        layer: int,
        data: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        super().__init__(exact)
        self.slope, self.layer = slope, layer
        L = exact.circuit.num_layers
        z, _ = walk_states(walk_laws(exact)[layer:].mean(0), data, PROBE_STATES, generator)
        self.means = torch.zeros(L + 1, dtype=torch.float64)
        for l in range(layer, L + 1):
            self.means[l] = exact.log_field(torch.full((PROBE_STATES,), l), z).mean()

    def log_field(self, layer: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s, m = self.field.log_field(layer, z), self.means.to(z.device)[layer]
        return torch.where(layer >= self.layer, m + self.slope * (s - m), s)


def run(args: argparse.Namespace) -> dict:
    mixture = BernoulliMixture.make(DIM, 10, seed=0)
    circuit = E.HammingCircuit(2, DIM, args.layers)
    exact = exact_field(mixture, circuit)
    row: dict = {
        "tag": args.tag,
        "task": "bernoulli-mixture-64",
        "layers": args.layers,
        "mixture_weights": mixture.weights.tolist(),
    }
    if args.exact:
        field = exact
        row["field"] = "exact (ProductMixtureLogField)"
    else:
        data_rng = torch.Generator().manual_seed(1)
        overrides = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
        config = E.TrainConfig.recipe("default", model="hamming", steps=args.steps, **overrides)
        reused = args.checkpoint is not None and os.path.exists(args.checkpoint)
        start = time.perf_counter()
        result = E.training.Trainer(
            circuit,
            lambda n: torch.randint(0, 2, (n, DIM)),
            lambda n: mixture.sample(n, data_rng)[0],
            config,
            checkpoint_path=args.checkpoint,
            progress=not args.quiet,
        ).run(resume=args.checkpoint is not None)
        field = result.field
        row.update(
            field="learned",
            config=config.to_json(),
            overrides=overrides,
            parameters=sum(p.numel() for p in result.model.parameters()),
            train_seconds=None if reused else time.perf_counter() - start,
            reused_checkpoint=reused,
            final_loss=float(result.losses[-200:].mean()),
        )
        probe_rng = torch.Generator().manual_seed(7)
        probe_data = mixture.sample(2000, probe_rng)[0]
        row["field_error"] = field_errors(field, exact, probe_data, probe_rng)
        row["field_slope"] = field_slopes(field, exact, probe_data, probe_rng)
        row["sink_error"] = sink_errors(field, exact, probe_data, probe_rng)
        row["component_errors"] = component_errors(field, exact, mixture, torch.Generator().manual_seed(21))
        estimates, errors = layer_mean_ratios(field, probe_data, PROBE_STATES, generator=3)
        row["layer_mean_log_ratio"] = {
            "max_abs": float(estimates.abs().max()),
            "rms": float(estimates.pow(2).mean().sqrt()),
            "last_layer": float(estimates[-1]),
            "values": estimates.tolist(),
            "standard_errors": errors.tolist(),
        }
    if args.probe_only:
        return row
    x0 = torch.randint(0, 2, (args.walkers, DIM), generator=torch.Generator().manual_seed(5))
    bridged = int(getattr(field, "bridged", 0))
    start = time.perf_counter()
    with torch.no_grad():
        out, moves = E.sample(
            field, x0, generator=3, max_moves=args.max_moves, unfinished="keep", return_moves=True
        )
    finished = moves >= 0
    eval_rng = torch.Generator().manual_seed(4)
    reference = mixture.sample(20_000, eval_rng)[0]
    floor = mixture.sample(int(finished.sum()), eval_rng)[0]
    row.update(
        walkers=args.walkers,
        max_moves=args.max_moves,
        sample_seconds=time.perf_counter() - start,
        finished=int(finished.sum()),
        bridged_dead_ends=int(getattr(field, "bridged", 0)) - bridged,
        mean_moves=float(moves[finished].double().mean()) if bool(finished.any()) else None,
        metrics=sample_metrics(out[finished], reference, floor, 2, mixture),
        gap_anatomy={
            "samples": gap_anatomy(out[finished], reference, mixture),
            "floor": gap_anatomy(floor, reference, mixture),
        },
    )

    def walk_again(other_field: LogField) -> dict:
        """The sample metrics and gap anatomy of ``args.walkers`` other walks of ``other_field``."""
        x0 = torch.randint(0, 2, (args.walkers, DIM), generator=torch.Generator().manual_seed(15))
        with torch.no_grad():
            states, moves = E.sample(
                other_field, x0, generator=13, max_moves=args.max_moves, unfinished="keep", return_moves=True
            )
        states = states[moves >= 0]
        return {
            **sample_metrics(states, reference, floor[: states.shape[0]], 2, mixture)["samples"],
            "finished": int(states.shape[0]),
            "gap_anatomy": gap_anatomy(states, reference, mixture),
        }

    if args.repeat_walk:  # the walk's own spread: the same field, other walkers and draws
        row["repeat_walk"] = walk_again(field)
    if args.trace:
        row["trace"] = trace_walk(field, exact, mixture, reference, args.walkers, args.max_moves, seed=23)
    if args.exact_sink and not args.exact:  # the learned field left by the exact sink
        row["exact_sink"] = walk_again(ExactSinkField(field, mixture.log_likelihood))
    if not args.exact and field.sink == "learned":  # the same network left by its inflow
        inflow = HammingNetField(result.model, sink="inflow")
        row["inflow_sink"] = {
            "sink_error": sink_errors(inflow, exact, probe_data, torch.Generator().manual_seed(7)),
            "walk": walk_again(inflow),
        }
    if args.splice is not None:
        row["splice"] = {"layer": args.splice}
        if not args.exact:
            row["splice"]["learned_below"] = walk_again(SplicedField(field, exact, args.splice))
            row["splice"]["learned_above"] = walk_again(SplicedField(exact, field, args.splice))
        if args.flatten is not None:
            flat_data = mixture.sample(2000, torch.Generator().manual_seed(7))[0]
            flat = FlattenedField(
                exact, args.flatten, args.splice, flat_data, torch.Generator().manual_seed(8)
            )
            row["splice"]["flattened_exact"] = {"slope": args.flatten, **walk_again(flat)}
    return row


def _trace_cell(trace: dict, layers: int) -> str:
    """The summary's trace column: the tail's (and the others') distance from the nearest mode on
    first reaching layer L, and its share of the outflow taken by the field's sink, by the exact one."""
    tail, rest = trace["tail"], trace["rest"]
    return (
        f"{tail['reach_distance'][str(layers)]:.1f} ({rest['reach_distance'][str(layers)]:.1f}) / "
        f"{tail['exit_share']:.3f}, {tail['exact_exit_share']:.3f}"
    )


def _heaviest_and_lightest(weights: list[float]) -> tuple[int, int]:
    """Indices of the heaviest and the lightest mixture component."""
    order = sorted(range(len(weights)), key=weights.__getitem__)
    return order[-1], order[0]


def _heaviest_cell(row: dict) -> str:
    """The summary's share of the samples in the heaviest component, and its weight (rows with
    component shares)."""
    shares, weights = (
        row.get("gap_anatomy", {}).get("samples", {}).get("component_shares"),
        row.get("mixture_weights"),
    )
    if shares is None or weights is None:
        return "-"
    heaviest = _heaviest_and_lightest(weights)[0]
    return f"{shares[heaviest]:.3f} ({weights[heaviest]:.3f})"


def _splice_cell(splice: dict) -> str:
    """The summary's splice column: the layer, then gap and coverage TV of each spliced walk."""
    walks = [
        f"{splice[k]['loglik_gap']:.2f}, {splice[k]['coverage_tv']:.3f}" if k in splice else "not run"
        for k in ("learned_below", "learned_above")
    ]
    return f"{splice['layer']}: " + " / ".join(walks)


def _component_table(rows: list[dict]) -> str:
    """The summary's second table: :func:`component_errors` of the rows that measured them."""
    table = []
    for r in rows:
        if "component_errors" not in r:
            continue
        cells = [r["tag"], f"{r['config']['steps']} steps; seed {r['config']['seed']}"]
        heavy, light = _heaviest_and_lightest(r["mixture_weights"])
        for k in map(str, COMPONENT_DISTANCES):
            errors = r["component_errors"][k]
            cells += [
                f"{errors['field'][heavy]:+.2f} / {errors['field'][light]:+.2f}",
                f"{errors['field_slope']:+.2f}",
                f"{errors['sink_slope']:+.2f}",
            ]
        table.append(cells)
    if not table:
        return ""
    headers = ["tag", "training"]
    for k in COMPONENT_DISTANCES:
        headers += [
            f"k={k}: S_L err. heaviest / lightest",
            f"k={k}: slope of S_L err. on log w",
            f"k={k}: slope of log r err. on log w",
        ]
    return (
        "\n## The field's errors at layer L by mixture component\n\n"
        "`component_errors` (rows with it, walked or `--probe-only`): at draws of each component with "
        "`k` coordinates changed, the mean error of the learned `S_L` at the heaviest and the lightest "
        "component, and the slopes of the per-component errors of `S_L` and of the sink's `log r` on "
        "the log-weights (positive: the heavier a component, the more its states are over-valued "
        "relative to the others').\n\n" + harness.markdown_table(headers, table) + "\n"
    )


def summary() -> str:
    """``highdim_learning.md`` from the results file (one row per run, in file order)."""
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    headers = [
        "tag", "settings", "train s", "loglik gap (floor)", "coverage TV (floor)", "marginal TV (floor)",
        "corr. err. (floor)", "bridges / walker", "finished", "step err. sd l=L-1", "layer-mean max |log|",
        "walk: S err. sd l=L", "walk: correction err. sd l=L-1", "noise: step err. sd, max l>=48",
        "slope l=L", "tail share (floor)", "gap of a 2nd walk", "sink: exit share far (exact)",
        "2nd walk by the inflow: gap (tail)", "2nd walk by the exact sink: gap (tail)",
        "trace: tail (rest) distance at L / exit share, exact", "heaviest component share (weight)",
        "splice at layer: gap, coverage TV of learned below / above",
    ]  # fmt: skip
    table = []
    for r in rows:
        if "metrics" not in r:  # a --probe-only row: the component table below
            continue
        s, f = r["metrics"]["samples"], r["metrics"]["floor"]
        probes = {e["layer"]: e for e in r.get("field_error", [])}
        last, before = probes.get(r["layers"], {}), probes.get(r["layers"] - 1, {})
        anatomy = r.get("gap_anatomy")
        settings = "exact field" if r["field"] != "learned" else (
            f"{r['config']['steps']} steps; "
            + (", ".join(f"{k}={json.dumps(v)}" for k, v in r["overrides"].items()) or "the recipe")
        )  # fmt: skip
        if (
            r["field"] == "learned"
            and r["config"].get("query_kwargs")
            and "query_kwargs" not in r["overrides"]
        ):
            settings += f" (query_kwargs={json.dumps(r['config']['query_kwargs'])})"
        if (  # the recipe's sink since it learns one
            r["field"] == "learned"
            and r["config"].get("model_kwargs", {}).get("sink") == "learned"
            and "model_kwargs" not in r["overrides"]
        ):
            settings += f" (learned sink, sink_labels={json.dumps(r['config']['sink_labels'])})"
        table.append(
            [
                r["tag"],
                settings,
                harness.format_number(r.get("train_seconds")),
                f"{s['loglik_gap']:.2f} ({f['loglik_gap']:.2f})",
                f"{s['coverage_tv']:.3f} ({f['coverage_tv']:.3f})",
                f"{s['marginal_tv']:.3f} ({f['marginal_tv']:.3f})",
                f"{s['correlation_error']:.3f} ({f['correlation_error']:.3f})",
                f"{r['bridged_dead_ends'] / r['walkers']:.2f}",
                f"{r['finished']}/{r['walkers']}",
                harness.format_number(before.get("step_sd")),
                harness.format_number(r.get("layer_mean_log_ratio", {}).get("max_abs")),
                harness.format_number(last.get("walk_sd")),
                harness.format_number(before.get("correction_sd")),
                harness.format_number(
                    max(
                        (
                            e["noise_step_sd"]
                            for e in probes.values()
                            if e["layer"] >= 48 and "noise_step_sd" in e
                        ),
                        default=None,
                    )
                ),
                harness.format_number(r.get("field_slope", {}).get(str(r["layers"]))),
                f"{anatomy['samples']['tail']:.3f} ({anatomy['floor']['tail']:.3f})" if anatomy else "-",
                f"{r['repeat_walk']['loglik_gap']:.2f}" if "repeat_walk" in r else "-",
                (
                    f"{r['sink_error']['far']['exit']:.3f} ({r['sink_error']['far']['exit_exact']:.3f})"
                    if "far" in r.get("sink_error", {})
                    else "-"
                ),
                (
                    f"{r['inflow_sink']['walk']['loglik_gap']:.2f} "
                    f"({r['inflow_sink']['walk']['gap_anatomy']['tail']:.3f})"
                    if "inflow_sink" in r
                    else "-"
                ),
                (
                    f"{r['exact_sink']['loglik_gap']:.2f} ({r['exact_sink']['gap_anatomy']['tail']:.3f})"
                    if "exact_sink" in r
                    else "-"
                ),
                _trace_cell(r["trace"], r["layers"]) if "trace" in r else "-",
                _heaviest_cell(r),
                _splice_cell(r["splice"]) if "splice" in r else "-",
            ]
        )
    meta = rows[-1]["meta"] if rows else {}
    text = (
        "# Learning the Hamming log-field at D = 64: variants against the exact field\n\n"
        "Written by `python -m benchmarks.highdim_learning --summary` from `highdim_learning.jsonl` "
        "(each row's command, commit and machine are there). Machine of the last row: "
        f"{meta.get('device_name', '?')} ({meta.get('cpu', {}).get('logical_cpus', '?')} CPUs, "
        f"{meta.get('cpu', {}).get('torch_threads', '?')} torch thread), torch "
        f"{meta.get('versions', {}).get('torch', '?')}. 300 walkers per row unless `finished` says "
        "otherwise; the floor is as many exact draws. Settings not listed are the Hamming recipe's (`TrainConfig.recipe('default', "
        "model='hamming')`) at the row's commit. The `walk:` columns (rows measured since they were "
        "added) are the field's errors where the walk goes: the sd of `S - S_exact` at layer L and of "
        "the error of the log-ratio across a forward edge correcting one coordinate, at layer L-1; the "
        "`noise:` column the largest error of the layer step at uniform noise states in layers 48 and up; "
        "`slope` that of `S` on `S_exact` at layer L where the walk goes; the `tail share` the fraction "
        "of samples less likely than the data's 1 % quantile; `gap of a 2nd walk` that of a second walk "
        "of the same field with other seeds; `sink: exit share far` the share of a vertex's outflow "
        "that goes to the sink at layer L, at data samples with 20 coordinates changed (where the "
        "tail's walkers arrive), against the exact field's; the last two columns the second walk of the "
        "same network left by its inflow instead (a network with a learned sink) and by the exact "
        "sink (`--exact-sink`); `trace` (`--trace`) the tail's walkers' distance from the nearest mode "
        "when they first reach layer L (the others' in brackets), and the share of their outflow the "
        "field's sink and the exact one take where they end; the share of the samples in the heaviest "
        "component (its weight in brackets); `splice` (`--splice LAYER`) the walks of the learned field "
        "below LAYER with the exact one from there on, and the other way round (module docstring).\n\n"
        + harness.markdown_table(headers, table)
        + "\n"
        + _component_table(rows)
    )
    SUMMARY.write_text(text)
    return text


def main(argv: list[str] | None = None) -> dict | str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tag", nargs="?", help="name of the run in the results file")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=JSON", help="TrainConfig overrides")
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--walkers", type=int, default=300)
    parser.add_argument("--max-moves", type=int, default=1000)
    parser.add_argument("--exact", action="store_true", help="walk the exact field (no training)")
    parser.add_argument(
        "--checkpoint", help="train with this checkpoint file; resume from it (a finished run is reused)"
    )
    parser.add_argument("--repeat-walk", action="store_true", help="walk a second time with other seeds")
    parser.add_argument(
        "--splice", type=int, metavar="LAYER", help="also walk the field spliced with the exact one at LAYER"
    )
    parser.add_argument(
        "--flatten",
        type=float,
        metavar="SLOPE",
        help="with --splice: also walk the exact field flattened from LAYER",
    )
    parser.add_argument(
        "--exact-sink", action="store_true", help="also walk the learned field with the exact sink at layer L"
    )
    parser.add_argument(
        "--trace", action="store_true", help="also follow a walk move by move: where the tail goes astray"
    )
    parser.add_argument(
        "--probe-only",
        action="store_true",
        help="measure the learned field's errors without walking (a second table of the summary)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary", action="store_true", help="write highdim_learning.md and stop")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.summary:
        return summary()
    if args.tag is None:
        parser.error("give a TAG (or --summary)")
    if args.flatten is not None and args.splice is None:
        parser.error("--flatten needs --splice LAYER")
    if args.splice is not None and not 0 < args.splice <= args.layers:
        parser.error(f"--splice needs a LAYER in 1..{args.layers}")
    if args.probe_only and args.exact:
        parser.error("--probe-only measures a learned field; it has nothing to do with --exact")
    torch.set_num_threads(args.threads)
    meta = harness.run_metadata("cpu", argv)
    row = {**run(args), "meta": meta}
    harness.append_jsonl(RESULTS, [row])
    print(json.dumps({k: v for k, v in row.items() if k not in ("config", "meta")}, indent=1))
    return row


if __name__ == "__main__":
    main()
