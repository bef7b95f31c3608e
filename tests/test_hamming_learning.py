"""The learned noise-to-data field of Hamming circuits: network, targets, loss, queries, training."""

from __future__ import annotations

import copy

import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast.hamming import HammingCircuit, HammingMixer
from ecd2g_fast.hamming.learning import BregmanLogLoss, WalkQueries, log_targets, point_occupancy
from ecd2g_fast.hamming.log_field import DataLogField
from ecd2g_fast.hamming.model import HammingNet

from .testing import assert_samples_follow, total_variation


def random_net(circuit: HammingCircuit, seed: int = 0, output_scale: str = "none") -> HammingNet:
    torch.manual_seed(seed)
    net = HammingNet(circuit, width=32, depth=2, output_scale=output_scale)
    with torch.no_grad():  # a non-trivial output (the head starts at zero)
        net.head.weight.normal_(0, 0.5)
    return net.eval()


@pytest.mark.parametrize("K,D,L,output_scale", [(2, 5, 3, "none"), (3, 4, 2, "none"), (2, 5, 4, "sharpness")])
def test_outlet_values_are_the_networks_values_at_the_neighbours(K, D, L, output_scale):
    c = HammingCircuit(K, D, L)
    net = random_net(c, output_scale=output_scale)
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, K, (17, D), generator=g)
    layer = torch.randint(0, L + 1, (17,), generator=g)
    with torch.no_grad():
        here, ahead, behind = net.outlet_values(layer, z)
        N = c.num_neighbours
        heads = c.neighbour_vectors(z, 0, N).reshape(-1, D)
        up = (layer + 1).clamp_max(L).repeat_interleave(N)
        down = (layer - 1).clamp_min(0).repeat_interleave(N)
        torch.testing.assert_close(here, net(layer, z), rtol=0, atol=1e-5)
        torch.testing.assert_close(ahead.reshape(-1), net(up, heads), rtol=0, atol=1e-5)
        torch.testing.assert_close(behind.reshape(-1), net(down, heads), rtol=0, atol=1e-5)


def ratio_net(
    circuit: HammingCircuit, network: str, seed: int = 0, output_scale: str = "none"
) -> torch.nn.Module:
    """A network with a ratio head and non-trivial outputs (the heads start at zero)."""
    torch.manual_seed(seed)
    if network == "HammingNet":
        net = HammingNet(circuit, width=32, depth=2, head="ratios", sink="learned", output_scale=output_scale)
    else:
        net = HammingMixer(
            circuit, width=16, token_hidden=8, channel_hidden=32, depth=2, head="ratios",
            output_scale=output_scale,
        )  # fmt: skip
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if "head" in name:
                parameter.normal_(0, 0.5)
    return net.eval()


@pytest.mark.parametrize("network", ["HammingNet", "HammingMixer"])
@pytest.mark.parametrize("K,D,L", [(2, 5, 3), (3, 4, 2)])
def test_ratio_head_outlet_values_are_its_log_ratios_in_slot_order(network, K, D, L):
    """With head="ratios" one row per walker gives f there and f + g at its outlets, g read off the
    (direction, coordinate, new value) grid of the head (per token for the mixer) at each slot's
    change: checked against the neighbour states built explicitly."""
    c = HammingCircuit(K, D, L)
    net = ratio_net(c, network)
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, K, (9, D), generator=g)
    layer = torch.randint(0, L + 1, (9,), generator=g)
    with torch.no_grad():
        here, ahead, behind = net.outlet_values(layer, z)
        torch.testing.assert_close(here, net(layer, z), rtol=0, atol=1e-6)
        if network == "HammingNet":
            raw = net.ratio_head(net.hidden(net.embed_states(z) + net.embed_layers(layer)))
            stay, grid = raw[:, :2], raw[:, 2:].view(9, 2, D, K)
        else:
            x = net.state_embedding[z + net.offsets] + net.embed_layers(layer)[:, None, :]
            for block in net.blocks:
                x = block(x)
            x = net.norm(x)
            stay, grid = net.ratio_head(x.mean(1)), net.token_ratio_head(x).view(9, D, 2, K).transpose(1, 2)
    states = c.neighbour_vectors(z, 0, c.num_neighbours)
    for b in range(9):
        torch.testing.assert_close(ahead[b, 0] - here[b], stay[b, 0], rtol=0, atol=1e-5)
        torch.testing.assert_close(behind[b, 0] - here[b], stay[b, 1], rtol=0, atol=1e-5)
        for slot in range(1, c.num_neighbours):
            (coordinate,) = (states[b, slot] != z[b]).nonzero()[0].tolist()
            value = int(states[b, slot, coordinate])
            torch.testing.assert_close(
                ahead[b, slot] - here[b], grid[b, 0, coordinate, value], rtol=0, atol=1e-5
            )
            torch.testing.assert_close(
                behind[b, slot] - here[b], grid[b, 1, coordinate, value], rtol=0, atol=1e-5
            )
    assert net.config()["head"] == "ratios"
    with pytest.raises(ValueError, match="head must be one of 'scalar', 'ratios'"):
        HammingNet(c, head="neighbours")
    with pytest.raises(ValueError, match="ratios needs a network built with head='ratios'"):
        HammingNet(c, width=8, depth=1)(layer, z, ratios=True)


@pytest.mark.parametrize(
    "network", ["HammingNet", "HammingMixer", "HammingNet-ratios", "HammingMixer-ratios"]
)
def test_network_field_one_call_moves_match_the_flat_contract(network):
    """outlet_currents (one outlet_values call per move) gives the flat methods' currents, for
    both log-field networks, with the scalar head and with the ratio head (whose flat methods read
    the vertex's own ratios)."""
    c = HammingCircuit(2, 4, 3)
    if network.endswith("-ratios"):
        net = ratio_net(c, network.split("-")[0])
    elif network == "HammingNet":
        net = random_net(c)
    else:
        torch.manual_seed(0)
        net = HammingMixer(c, width=16, token_hidden=8, channel_hidden=32, depth=2)
        with torch.no_grad():
            net.head.weight.normal_(0, 0.5)
    field = net.eval().field()
    field.bridge_dead_ends = False  # the flat methods give the field as it is
    states = torch.arange(c.num_states)
    N, L = c.num_neighbours, c.num_layers
    with torch.no_grad():
        for l in range(L + 1):
            layer = torch.full_like(states, l)
            out = field.outlet_currents(layer, c.unflatten(states), "bidirectional")
            if l < L:
                torch.testing.assert_close(
                    out[:, :N], field.currents_to_next(layer, states, 0, N), rtol=1e-5, atol=1e-6
                )
            if l > 0:
                torch.testing.assert_close(
                    out[:, N : 2 * N], -field.currents_from_prev(layer, states, 0, N), rtol=1e-5, atol=1e-6
                )
            if l == L:
                torch.testing.assert_close(
                    out[:, 2 * N].clamp_min(0), field.sink_currents(states), rtol=1e-5, atol=1e-6
                )


def test_log_targets_of_the_whole_support_are_the_exact_log_field():
    c = HammingCircuit(3, 3, 4)
    states = c.unflatten(torch.arange(c.num_states))
    y = states[torch.tensor([0, 5, 5, 11, 26])]
    exact = DataLogField(c, y)
    layer = torch.arange(c.num_states) % (c.num_layers + 1)
    got = log_targets(exact.tables, layer, states, y, 3)
    torch.testing.assert_close(got, exact.log_field(layer, states), rtol=0, atol=1e-12)


def test_loss_gradient_is_one_minus_t_over_rho_and_vanishes_at_log_mean_t():
    c = HammingCircuit(2, 4, 2)
    loss = BregmanLogLoss(c)
    layer = torch.tensor([1, 1, 1])
    z = torch.zeros(3, 4, dtype=torch.int64)
    targets = torch.stack([loss.targets(layer[:1], z[:1], y[None]) for y in torch.eye(4, dtype=torch.int64)])
    mean = torch.logsumexp(targets.double(), 0) - torch.log(torch.tensor(4.0, dtype=torch.float64))

    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = torch.nn.Parameter(torch.tensor(float(value)))

        def forward(self, layer, z):
            return self.value.expand(layer.shape[0])

    # at f = log mean t the gradients of the four batches cancel; elsewhere they do not
    for value, vanishes in ((float(mean), True), (float(mean) + 0.3, False)):
        f = Constant(value)
        total = sum(loss(f, (layer[:1], z[:1]), None, y[None]) for y in torch.eye(4, dtype=torch.int64))
        total.backward()
        assert (abs(float(f.value.grad)) < 1e-5) == vanishes


def test_point_occupancy_is_the_lumped_exact_walk():
    """Its total visits are 1 + the expected moves of the exact walk to a single point."""
    c = HammingCircuit(3, 4, 3)
    p = torch.full((c.num_states,), 1.0 / c.num_states, dtype=torch.float64)
    law = E.exact_output_distribution(DataLogField(c, torch.zeros(1, 4, dtype=torch.int64)), p)
    assert float(point_occupancy(c).sum()) - 1 == pytest.approx(law.expected_moves, rel=1e-9)


def test_walk_queries_change_the_drawn_number_of_coordinates():
    c = HammingCircuit(5, 12, 6)
    queries = WalkQueries(c)
    data = torch.randint(0, 5, (1, 12))
    layer, z = queries(data.expand(4000, 12), 4000, torch.Generator().manual_seed(0))
    distance = (z != data).sum(1)
    assert int(layer.min()) >= 0 and int(layer.max()) <= c.num_layers
    # mean distance per layer decreases towards layer L (the walk approaches the data)
    means = [float(distance[layer == l].double().mean()) for l in (0, c.num_layers)]
    assert means[0] > means[1]


def two_mode_target() -> tuple[HammingCircuit, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(circuit, states, q, p)`` at ``K = 2, D = 6, L = 6``: ``q`` a 2-component mixture around
    all-zeros and all-ones, ``p`` uniform; ``states`` all ``M`` states in flat order."""
    c = HammingCircuit(2, 6, 6)
    states = c.unflatten(torch.arange(c.num_states))
    q = torch.exp(-2.0 * torch.minimum(states.sum(1), 6 - states.sum(1)).double())
    q /= q.sum()
    p = torch.full((c.num_states,), 1.0 / c.num_states, dtype=torch.float64)
    return c, states, q, p


def test_short_training_beats_the_untrained_field():
    """300 steps on a 2-component mixture at D = 6 bring the exact output law closer to q."""
    torch.manual_seed(0)
    c, states, q, p = two_mode_target()
    net = HammingNet(c, width=64, depth=2)
    untrained = total_variation(E.exact_output_distribution(net.field(), p).pmf, q)
    loss_fn, queries = BregmanLogLoss(c), WalkQueries(c)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        y = states[torch.multinomial(q, 256, replacement=True, generator=g)]
        layer, z = queries(states[torch.multinomial(q, 256, replacement=True, generator=g)], 256, g)
        loss = loss_fn(net, (layer, z), None, y) / 256
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        trained = total_variation(E.exact_output_distribution(copy.deepcopy(net).eval().field(), p).pmf, q)
    assert trained < 0.5 * untrained, (trained, untrained)


def test_dead_ends_of_a_learned_field_are_bridged_and_counted():
    """A vertex without positive outflow below layer L gets a unit forward stay edge, and is counted."""
    c = HammingCircuit(2, 4, 3)
    field = random_net(c).field()
    states = c.unflatten(torch.arange(c.num_states))
    N = c.num_neighbours
    with torch.no_grad():
        for l in range(c.num_layers):
            layer = torch.full((c.num_states,), l)
            field.bridge_dead_ends = False
            raw = field.outlet_currents(layer, states, "bidirectional")
            stuck = raw.clamp_min(0).sum(1) <= 0
            field.bridge_dead_ends = True
            before = int(field.bridged)
            bridged = field.outlet_currents(layer, states, "bidirectional")
            assert int(field.bridged) - before == int(stuck.sum())
            assert bool((bridged[stuck, 0] == 1.0).all())
            torch.testing.assert_close(bridged[~stuck], raw[~stuck])
            assert bool((bridged[:, : 2 * N + 1].clamp_min(0).sum(1) > 0).all())
    assert int(field.bridged) > 0  # the random network has dead ends to bridge


def test_train_picks_the_hamming_model_checkpoints_and_resumes_exactly(tmp_path):
    c = HammingCircuit(2, 5, 4)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (500, 5), generator=g) * torch.tensor([1, 1, 0, 0, 1])
    x = torch.randint(0, 2, (500, 5), generator=g)
    settings = dict(steps=40, batch_size=64, num_queries=64, progress=False, checkpoint_every=20)
    straight = E.train(c, x, y, **settings)
    assert straight.config.model == "hamming" and straight.config.queries == "kernel-walk"
    assert straight.model.head_kind == "ratios"
    assert isinstance(straight.model, HammingNet)
    ck = tmp_path / "ck.pt"
    # an interrupted run: 20 of its 40 steps, then a checkpoint
    interrupted = E.Trainer(c, x, y, straight.config, device="cpu", checkpoint_path=ck, progress=False)
    for _ in range(20):
        interrupted.step()
    interrupted.save()
    resumed = E.train(c, x, y, **settings, checkpoint_path=ck, resume=True)
    assert torch.equal(resumed.losses, straight.losses)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    # a checkpoint written before output_scale existed was made with its default: it resumes, and a
    # run with another output_scale is refused
    from ecd2g_fast.training import checkpoint

    old = torch.load(ck, weights_only=False)
    del old["model_config"]["output_scale"]
    old["checksum"] = checkpoint.tensor_checksum(old)
    torch.save(old, tmp_path / "old.pt")
    again = E.train(c, x, y, **settings, checkpoint_path=tmp_path / "old.pt", resume=True)
    assert torch.equal(again.losses, straight.losses)
    # one written before the ratio head existed had the scalar head: not this run
    del old["model_config"]["head"]
    old["checksum"] = checkpoint.tensor_checksum(old)
    torch.save(old, tmp_path / "scalar.pt")
    with pytest.raises(ValueError, match="holds a different run .*head"):
        E.train(c, x, y, **settings, checkpoint_path=tmp_path / "scalar.pt", resume=True)
    sharp = straight.config.replace(
        model_kwargs={"layer_encoding": "smooth", "output_scale": "sharpness", "head": "ratios"}
    )
    with pytest.raises(ValueError, match="holds a different run .*output_scale"):
        E.Trainer(c, x, y, sharp, device="cpu", checkpoint_path=tmp_path / "old.pt", progress=False).run(
            resume=True
        )
    reloaded = E.training.load_field(ck)
    states = c.unflatten(torch.arange(c.num_states))
    layer = torch.zeros(c.num_states, dtype=torch.int64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.log_field(layer, states), resumed.field.log_field(layer, states))
    with pytest.raises(ValueError, match="model 'current' does not fit a HammingCircuit"):
        E.train(c, x, y, model="current", steps=1, progress=False)
    with pytest.raises(ValueError, match="model 'hamming' does not fit a Circuit"):
        E.train(E.Circuit(2, 2, 2), x[:, :2], y[:, :2], model="hamming", steps=1, progress=False)


def test_smoothed_data_states_follow_the_normalised_data_field():
    """States drawn by smoothed_data_states follow rho^data_l / (M alpha*): chi-square on all M."""
    from ecd2g_fast.hamming.learning import smoothed_data_states
    from ecd2g_fast.hamming.log_field import DataLogField

    c = HammingCircuit(3, 3, 4)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 3, (5, 3), generator=g)
    field = DataLogField(c, data)
    for l in (0, 2, 4):
        layer = torch.full((c.num_states,), l)
        law = torch.exp(
            field.log_field(layer, c.unflatten(torch.arange(c.num_states))) - field.tables.log_norm[l]
        )
        law = law / c.num_states
        assert float(law.sum()) == pytest.approx(1.0, abs=1e-12)
        draws = smoothed_data_states(field.tables, torch.full((40_000,), l), data, 3, g)
        assert_samples_follow(torch.bincount(c.flatten(draws), minlength=c.num_states), law)


def test_layer_mean_ratios_are_zero_for_exact_fields_and_see_a_scale_error():
    from ecd2g_fast.experiments.highdim import BernoulliMixture
    from ecd2g_fast.hamming.learning import layer_mean_ratios
    from ecd2g_fast.hamming.log_field import ProductMixtureLogField

    mix = BernoulliMixture.make(24, 4, seed=0)
    c = HammingCircuit(2, 24, 6)
    exact = ProductMixtureLogField(c, torch.stack([1 - mix.theta, mix.theta], -1), mix.weights)
    data = mix.sample(3000, torch.Generator().manual_seed(1))[0]
    estimates, errors = layer_mean_ratios(exact, data, num_states=2000, generator=2)
    assert bool((estimates.abs() < 5 * errors + 0.02).all()), (estimates, errors)

    class Scaled(ProductMixtureLogField):
        def log_field(self, layer, z):
            return super().log_field(layer, z) + 0.2 * (layer == 3)

    scaled = Scaled(c, torch.stack([1 - mix.theta, mix.theta], -1), mix.weights)
    shifted, _ = layer_mean_ratios(scaled, data, num_states=2000, generator=2)
    assert float(shifted[3] - estimates[3]) == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize(
    "walk_fraction, correction_fraction, stay_fraction, K",
    [(0.0, 0.0, 0.0, 2), (0.5, 0.0, 0.0, 2), (0.0, 0.5, 0.0, 2), (0.0, 0.0, 0.4, 2), (0.5, 0.5, 0.0, 3), (0.0, 0.4, 0.3, 3)],
)  # fmt: skip
def test_denoising_ratio_targets_average_to_the_exact_ratios(
    walk_fraction, correction_fraction, stay_fraction, K
):
    """Given z, the anchor of a kernel query follows the posterior (or, with walk-occupancy
    distances mixed in or slots drawn among the corrections towards the anchor or the stay slot,
    carries the importance weight that restores it), so the mean of the weighted residual e^d - tau
    over the queries of one (layer, z, edge) cell vanishes at the exact ratio rho_l'(w) / rho_l(z):
    the ratio term's gradient is zero on average at the exact field."""
    from ecd2g_fast.hamming.learning import KernelQueries

    c = HammingCircuit(K, 4, 3)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, K, (5, 4), generator=g)
    exact = DataLogField(c, data)
    loss = BregmanLogLoss(c)
    sampler = KernelQueries(
        c, walk_fraction=walk_fraction, correction_fraction=correction_fraction, stay_fraction=stay_fraction
    )
    queries = sampler(data, 400_000 if K == 2 else 1_200_000, g)
    layer, z, anchor, slot, forward = queries[:5]
    E = slot.shape[1]
    weighted = walk_fraction > 0 or correction_fraction > 0 or stay_fraction > 0
    assert len(queries) == (6 if weighted else 5)
    weight = queries[5] if weighted else torch.ones(layer.shape[0], E, dtype=torch.float64)
    other, w = loss.edge_states(layer, z, slot, forward)
    f_here = exact.log_field(layer, z) - exact.tables.log_norm[layer]
    f_there = (exact.log_field(other.reshape(-1), w) - exact.tables.log_norm[other.reshape(-1)]).view(-1, E)
    d = exact.tables.log_norm[other] - exact.tables.log_norm[layer][:, None] + f_there - f_here[:, None]
    h_here = (z != anchor).sum(1)
    h_there = (w != anchor.repeat_interleave(E, 0)).sum(1).view(-1, E)
    tau = torch.exp(exact.tables.log_kernel[other, h_there] - exact.tables.log_kernel[layer, h_here][:, None])
    cell = ((layer[:, None] * c.num_states + c.flatten(z)[:, None]) * c.num_neighbours + slot) * 2 + forward
    cell = cell.reshape(-1)
    weights = weight.reshape(-1)

    def scores(model_d):
        """Per cell: weighted mean of e^d - tau over its standard error."""
        residual = weights * (torch.exp(model_d) - tau).reshape(-1)
        count = torch.bincount(cell).clamp_min(1)
        total = torch.bincount(cell, weights).clamp_min(1e-300)
        mean = torch.bincount(cell, residual) / count
        spread = (torch.bincount(cell, residual**2) / count - mean**2).clamp_min(0)
        return mean.abs() / ((spread / count).sqrt() + 1e-12), torch.bincount(cell) >= 300, total

    exact_scores, used, _ = scores(d)
    assert int(used.sum()) > 100
    assert float(exact_scores[used].max()) < 5.5
    # a wrong field (layer 2 scaled) is seen
    wrong_scores, _, _ = scores(d + 0.3 * ((other == 2).double() - (layer == 2).double()[:, None]))
    assert float(wrong_scores[used].max()) > 20
    # the term itself: zero when the model's ratio equals tau, positive otherwise
    terms = loss.ratio_terms(layer[:4], z[:4], anchor[:4], other[:4], w[: 4 * E], f_here[:4], f_there[:4])
    assert bool((terms >= -1e-12).all())
    if correction_fraction > 0:
        # about b of the edges of queries away from their anchor are corrections: h drops by one
        h = (z != anchor).sum(1)
        h_there = (w != anchor.repeat_interleave(E, 0)).sum(1).view(-1, E)
        away = h > 0
        corrected = (h_there == h[:, None] - 1)[away].double().mean()
        assert float(corrected) > correction_fraction
    if stay_fraction > 0:
        # about s of the edges (plus the uniform share 1/N) are stay edges
        stays = float((slot == 0).double().mean())
        assert stays == pytest.approx(
            stay_fraction + (1 - stay_fraction - correction_fraction) / c.num_neighbours, abs=0.01
        )


@pytest.mark.parametrize("K,walk_fraction", [(2, 0.0), (3, 0.5)])
def test_all_edge_ratio_terms_are_the_sampled_terms_of_every_edge_and_vanish_at_the_exact_ratios(
    K, walk_fraction
):
    """A ratio head trains on every edge of a query: the all-edge term equals the sampled-edge
    term (:meth:`ratio_terms`, neighbour states built explicitly) averaged over all existing edges;
    and averaged over the exact posterior of the anchor given z (q(y) Ã_{L-l}(h(z, y)), enumerated),
    its gradient in the head's log-ratios vanishes at the exact field's ratios and not at a wrong one."""
    from ecd2g_fast.hamming.learning import KernelQueries

    c = HammingCircuit(K, 4, 3)
    L, N = c.num_layers, c.num_neighbours
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, K, (6, 4), generator=g)
    exact, loss = DataLogField(c, data), BregmanLogLoss(c)
    layer, z, anchor = KernelQueries(c, walk_fraction=walk_fraction)(data, 40, g)[:3]
    layer[:3] = torch.tensor([0, L, 1])  # both one-sided layers
    norm = exact.tables.log_norm
    here, ahead, behind = exact.outlet_log_fields(layer, z)
    exact_g = torch.stack([ahead - here[:, None], behind - here[:, None]], dim=1)
    exact_g = (
        exact_g - torch.stack([norm[(layer + 1).clamp_max(L)], norm[(layer - 1).clamp_min(0)]], 1)[:, :, None]
    )
    exact_g = exact_g + norm[layer][:, None, None]
    log_ratios = exact_g + 0.3 * torch.randn(exact_g.shape, generator=g, dtype=torch.float64)
    # 1. every edge, explicitly
    all_terms = loss.all_edge_ratio_terms(layer, z, anchor, log_ratios)
    f_here = torch.zeros(40, dtype=torch.float64)
    for q in range(40):
        terms = []
        for direction, step in ((0, 1), (1, -1)):
            if not 0 <= int(layer[q]) + step <= L:
                continue
            other = torch.full((1, N), int(layer[q]) + step)
            w = c.neighbour_vectors(z[q : q + 1], 0, N).reshape(N, -1)
            terms.append(
                loss.ratio_terms(
                    layer[q : q + 1],
                    z[q : q + 1],
                    anchor[q : q + 1],
                    other,
                    w,
                    f_here[q : q + 1],
                    log_ratios[q : q + 1, direction],
                )
            )
        torch.testing.assert_close(all_terms[q], torch.cat(terms).mean(), rtol=1e-12, atol=1e-12)
    # 2. the posterior mean of the gradient vanishes at the exact ratios
    posterior = (
        exact.log_weights[None, :] + exact.tables.log_kernel[layer[:, None], (z[:, None, :] != data).sum(2)]
    )
    posterior = torch.softmax(posterior, dim=1)  # (Q, n)

    def posterior_gradient(point):
        point = point.clone().requires_grad_(True)
        total = sum(
            (posterior[:, i] * loss.all_edge_ratio_terms(layer, z, data[i].expand_as(z), point)).sum()
            for i in range(data.shape[0])
        )
        (grad,) = torch.autograd.grad(total, point)
        return grad

    assert float(posterior_gradient(exact_g).abs().max()) < 1e-12
    assert float(posterior_gradient(log_ratios).abs().max()) > 1e-3
    # the weight multiplies a query's term
    weight = torch.rand(40, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        loss.all_edge_ratio_terms(layer, z, anchor, log_ratios, weight), all_terms * weight
    )


@pytest.mark.parametrize("network", ["HammingNet", "HammingMixer"])
@pytest.mark.parametrize("output_scale", ["none", "sharpness"])
def test_edge_log_ratio_is_one_outlet_of_the_ratio_head(network, output_scale):
    """``edge=(direction, slot)`` gives ``f`` and each row's one entry of the full ``(n, 2, N)``
    log-ratios (stay and lateral slots, both directions, layers 0 and L), with gradients; asking for
    both, or for an edge of a scalar head, is refused by name."""
    c = HammingCircuit(3, 4, 3)
    net = ratio_net(c, network, output_scale=output_scale)
    g = torch.Generator().manual_seed(2)
    n = 40
    z = torch.randint(0, 3, (n, 4), generator=g)
    layer = torch.randint(0, 4, (n,), generator=g)
    direction = torch.randint(0, 2, (n,), generator=g)
    slot = torch.randint(0, c.num_neighbours, (n,), generator=g)
    slot[:5] = 0
    f_all, g_all = net(layer, z, ratios=True)
    f_one, g_one = net(layer, z, edge=(direction, slot))
    torch.testing.assert_close(f_one, f_all, rtol=0, atol=1e-6)
    torch.testing.assert_close(g_one, g_all[torch.arange(n), direction, slot], rtol=0, atol=1e-5)
    g_one.sum().backward()
    assert float(net.ratio_head.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="give ratios or edge, not both"):
        net(layer, z, ratios=True, edge=(direction, slot))
    with pytest.raises(ValueError, match="edge needs a network built with head='ratios'"):
        HammingNet(c, width=8, depth=1)(layer, z, edge=(direction, slot))


class PotentialRatioNet(torch.nn.Module):
    """A ratio-head stand-in whose log-ratios derive from one potential, the exact log-field of
    ``data``: its two edge ends agree."""

    head_kind, sink = "ratios", "inflow"

    def __init__(self, circuit: HammingCircuit, data: torch.Tensor) -> None:
        super().__init__()
        self.exact = DataLogField(circuit, data)

    def forward(self, layer, z, sink_logit=False, ratios=False, edge=None):
        norm, L = self.exact.tables.log_norm, self.exact.circuit.num_layers
        here, ahead, behind = self.exact.outlet_log_fields(layer, z)
        far = torch.stack([norm[(layer + 1).clamp_max(L)], norm[(layer - 1).clamp_min(0)]], 1)
        g = (
            torch.stack([ahead, behind], 1)
            - here[:, None, None]
            - far[:, :, None]
            + norm[layer][:, None, None]
        )
        f = here - norm[layer]
        if edge is not None:
            return f, g[torch.arange(z.shape[0]), edge[0], edge[1]]
        return (f, g) if ratios else f


def test_consistency_terms_read_both_ends_of_a_walk_drawn_edge_and_vanish_for_a_potential():
    """The edge-consistency term of a ratio head is ``(g(z -> w) + g(w -> z))^2`` over one outlet
    of each query, drawn at the given uniform by inverse CDF over the positive out-currents the
    network's own field walks by (``HammingNetField.outlet_currents``, bidirectional; so never an
    edge that does not exist, at layers 0 and L), the far end read at ``w`` by its outlet back to
    ``z`` (checked by rebuilding both ends in full), and 0 where no out-current is positive; it is 0
    for log-ratios that derive from a potential (the exact field) and gives gradients to both ends."""
    from ecd2g_fast.hamming.learning import KernelQueries

    c = HammingCircuit(3, 4, 3)
    L, N = c.num_layers, c.num_neighbours
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 3, (6, 4), generator=g)
    loss = BregmanLogLoss(c, ratio_weight=1.0, consistency_weight=2.0)
    layer, z = KernelQueries(c, walk_fraction=0.5)(data, 40, g)[:2]
    layer[:2] = torch.tensor([0, L])
    uniform = torch.rand(40, generator=g, dtype=torch.float64)
    exact = PotentialRatioNet(c, data)
    terms = loss.consistency_terms(exact, layer, z, *exact(layer, z, ratios=True), uniform)
    assert float(terms.abs().max()) < 1e-20
    net = ratio_net(c, "HammingNet")
    f, log_ratios = net(layer, z, ratios=True)
    terms = loss.consistency_terms(net, layer, z, f, log_ratios, uniform)
    with torch.no_grad():
        walk = net.field().outlet_currents(layer, z, "bidirectional")[:, : 2 * N].clamp_min(0)
    for q in range(40):
        cumulative = walk[q].cumsum(0)
        if cumulative[-1] == 0:  # every edge flows in: nothing to tie
            assert terms[q] == 0
            continue
        drawn = int((cumulative < uniform[q] * cumulative[-1]).sum())
        direction, slot = divmod(drawn, N)
        assert walk[q, drawn] > 0
        there = int(layer[q]) + (1 if direction == 0 else -1)
        w = c.apply_slot(z[q : q + 1], torch.tensor([slot]))
        far = net(torch.tensor([there]), w, ratios=True)[1][0, 1 - direction]
        back = [s for s in range(N) if torch.equal(c.apply_slot(w, torch.tensor([s])), z[q : q + 1])]
        assert len(back) == 1
        want = (log_ratios[q, direction, slot] + far[back[0]]).double() ** 2
        torch.testing.assert_close(terms[q], want, rtol=1e-5, atol=1e-9)
    # gradients reach both ends: the head's rows at z (through log_ratios) and at w
    (grad,) = torch.autograd.grad(terms.sum(), log_ratios, retain_graph=True)
    assert int((grad != 0).flatten(1).sum(1).eq(1).sum()) == int((terms > 0).sum())
    net.zero_grad()
    loss.consistency_terms(net, layer, z, f.detach(), log_ratios.detach(), uniform).sum().backward()
    assert float(net.ratio_head.weight.grad.abs().sum()) > 0


@pytest.mark.slow
def test_the_consistency_term_brings_the_edge_ends_together_in_training():
    """300 steps with ``consistency_weight`` leave the two ends of the edges the walk takes closer
    than the same run without it; a scalar head refuses the setting by name."""
    c, states, q, _ = two_mode_target()
    g = torch.Generator().manual_seed(1)
    data = states[torch.multinomial(q, 4096, replacement=True, generator=g)]
    settings = dict(
        model="hamming", queries="kernel", batch_size=256, num_queries=256, lr=3e-3, progress=False,
        steps=300, model_kwargs={"width": 64, "depth": 2, "head": "ratios"},
    )  # fmt: skip
    source = lambda n: torch.zeros(n, 6, dtype=torch.int64)  # noqa: E731
    probe = BregmanLogLoss(c)
    from ecd2g_fast.hamming.learning import KernelQueries

    layer, z = KernelQueries(c)(data, 2000, torch.Generator().manual_seed(5))[:2]
    mismatch = {}
    for weight in (0.0, 256.0):
        net = E.train(c, source, data, consistency_weight=weight, **settings).model.eval()
        with torch.no_grad():
            uniform = torch.rand(2000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
            mismatch[weight] = float(
                probe.consistency_terms(net, layer, z, *net(layer, z, ratios=True), uniform).mean()
            )
    print(mismatch)
    assert mismatch[256.0] < 0.2 * mismatch[0.0], mismatch
    with pytest.raises(ValueError, match="consistency_weight=1.0 ties the two ends .* head='scalar'"):
        E.train(c, source, data, **{**settings, "model_kwargs": {"width": 8}, "consistency_weight": 1.0})


def test_a_ratio_head_trains_through_the_trainer_and_bad_settings_are_named():
    """``model_kwargs={"head": "ratios"}``: 300 steps of kernel queries bring the exact output law
    of the ratio head's walk closer to q; walk queries and edge options are refused, naming them."""
    torch.manual_seed(0)
    c, states, q, p = two_mode_target()
    g = torch.Generator().manual_seed(1)
    data = states[torch.multinomial(q, 4096, replacement=True, generator=g)]
    settings = dict(
        model="hamming", queries="kernel", batch_size=256, num_queries=256, lr=3e-3, progress=False,
        model_kwargs={"width": 64, "depth": 2, "head": "ratios"},
    )  # fmt: skip
    untrained = HammingNet(c, width=64, depth=2, head="ratios")
    trained = E.train(c, lambda n: torch.zeros(n, 6, dtype=torch.int64), data, steps=300, **settings).model
    tv = [
        total_variation(E.exact_output_distribution(net.eval().field(), p).pmf, q)
        for net in (untrained, trained)
    ]
    assert tv[1] < 0.5 * tv[0], tv
    with pytest.raises(ValueError, match="head='ratios' needs queries='kernel' or 'kernel-walk'"):
        E.train(c, lambda n: n, data, steps=1, **{**settings, "queries": "walk"})
    with pytest.raises(ValueError, match="query_kwargs 'edges' chooses edges"):
        E.train(c, lambda n: n, data, steps=1, **settings, query_kwargs={"edges": 4})


def test_training_at_seventeen_levels_stays_finite():
    """At K = 17, D = 64 the first targets are ~170 nats above the untrained output: the loss is
    float64 and e^u is continued linearly beyond U_MAX, so the float32 gradients stay finite."""
    from ecd2g_fast.hamming.learning import U_MAX

    c = HammingCircuit(17, 64, 8)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 17, (64, 64), generator=g)
    loss = BregmanLogLoss(c)
    net = HammingNet(c, width=16, depth=1)
    layer = torch.full((8,), 8)
    u = loss.targets(layer, data[:8], data)
    assert float(u.max()) > 2 * U_MAX  # the regime of the test
    value = loss(net, (layer, data[:8]), None, data)
    value.backward()
    assert bool(torch.isfinite(value))
    assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters() if p.grad is not None)
    # below U_MAX the loss is e^u - u - 1 exactly
    small = torch.tensor([-3.0, 0.0, 5.0], dtype=torch.float64)
    capped = small.clamp_max(U_MAX)
    assert torch.equal(torch.exp(capped) * (1 + small - capped) - small - 1, torch.exp(small) - small - 1)
    result = E.train(
        c,
        lambda n: torch.randint(0, 17, (n, 64)),
        data,
        steps=3,
        batch_size=64,
        num_queries=16,
        model_kwargs={"width": 16, "depth": 1},
        progress=False,
    )
    assert bool(torch.isfinite(result.losses).all())


def test_the_sharpness_output_scale_multiplies_each_layer_by_its_kernel_cost():
    """``output_scale="sharpness"``: the same network's output times ``lambda_l / lambda_L``, a gain
    that grows with the layer to 1 at ``L``; recorded in the config; a bad value is named."""
    from ecd2g_fast.hamming.model import layer_sharpness

    c = HammingCircuit(2, 6, 5)
    plain, scaled = random_net(c), random_net(c, output_scale="sharpness")
    assert scaled.config()["output_scale"] == "sharpness" and plain.config()["output_scale"] == "none"
    gain = layer_sharpness(c) / layer_sharpness(c)[-1]
    assert float(gain[-1]) == 1.0 and bool((gain.diff() > 0).all()) and float(gain[0]) < 0.2
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 2, (12, 6), generator=g)
    layer = torch.arange(6).repeat(2)
    with torch.no_grad():
        torch.testing.assert_close(
            scaled(layer, z), plain(layer, z) * gain[layer].float(), rtol=1e-6, atol=1e-7
        )
    with pytest.raises(ValueError, match="output_scale must be one of 'none', 'sharpness'"):
        HammingNet(c, output_scale="noise")
    # a ratio head's log-ratios: each direction times the gain of the layer it leads to
    nets = []
    for output_scale in ("none", "sharpness"):
        torch.manual_seed(3)
        net = HammingNet(c, width=16, depth=1, head="ratios", output_scale=output_scale)
        with torch.no_grad():
            net.ratio_head.weight.normal_(0, 0.5)
        nets.append(net)
    with torch.no_grad():
        plain_g, scaled_g = (net(layer, z, ratios=True)[1] for net in nets)
    far = torch.stack([(layer + 1).clamp_max(5), (layer - 1).clamp_min(0)], 1)
    torch.testing.assert_close(scaled_g, plain_g * gain[far][:, :, None].float(), rtol=1e-6, atol=1e-7)


def test_bad_layer_encoding_and_walk_fraction_are_named():
    from ecd2g_fast.hamming.learning import KernelQueries

    c = HammingCircuit(2, 4, 3)
    with pytest.raises(ValueError, match="layer_encoding"):
        HammingNet(c, layer_encoding="sinusoid")
    with pytest.raises(ValueError, match="walk_fraction"):
        KernelQueries(c, walk_fraction=1.0)
    smooth = HammingNet(c, width=8, depth=1, layer_encoding="smooth")
    assert smooth.config()["layer_encoding"] == "smooth"
    assert smooth(torch.arange(4), torch.zeros(4, 4, dtype=torch.int64)).shape == (4,)


def test_query_kwargs_reach_the_kernel_queries_and_bad_ones_are_named():
    """``TrainConfig.query_kwargs`` sets the kernel queries' options (here 3 edges, half of them
    corrections, so the edges carry importance weights); unknown options, options for other
    queries and bad values raise errors naming them."""
    from ecd2g_fast.training.data import DataSource, QuerySampler

    c = HammingCircuit(2, 6, 4)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 2, (50, 6), generator=g)
    sources = tuple(DataSource(name, data, c, torch.device("cpu")) for name in ("source", "target"))
    sampler = QuerySampler("kernel", "hamming", c, sources, {"edges": 3, "correction_fraction": 0.5})
    layer, z, anchor, slot, forward, weight = sampler.draw(200, g, torch.device("cpu"))
    assert slot.shape == forward.shape == weight.shape == (200, 3) and weight.dtype == torch.float64
    assert sampler.walk.walk_fraction == 0.0
    walk = QuerySampler("kernel-walk", "hamming", c, sources, {"edges": 1})
    assert walk.walk.walk_fraction == 0.5 and walk.draw(10, g, torch.device("cpu"))[3].shape == (10, 1)
    with pytest.raises(ValueError, match="query_kwargs: unknown option 'edge'"):
        QuerySampler("kernel", "hamming", c, sources, {"edge": 3})
    with pytest.raises(ValueError, match="query_kwargs are options of kernel queries"):
        QuerySampler("walk", "hamming", c, sources, {"edges": 3})
    with pytest.raises(ValueError, match="edges must be >= 1"):
        QuerySampler("kernel", "hamming", c, sources, {"edges": 0})
    with pytest.raises(TypeError, match="correction_fraction must be a float"):
        QuerySampler("kernel", "hamming", c, sources, {"correction_fraction": "half"})
    with pytest.raises(ValueError, match="correction_fraction must be in"):
        QuerySampler("kernel", "hamming", c, sources, {"correction_fraction": 1.0})
    with pytest.raises(ValueError, match="correction_fraction \\+ stay_fraction must be below 1"):
        QuerySampler("kernel", "hamming", c, sources, {"correction_fraction": 0.5, "stay_fraction": 0.5})
    # the trainer passes them on (to a scalar head: the recipe's ratio head refuses edge options)
    config = E.TrainConfig.recipe(
        "default",
        model="hamming",
        steps=1,
        batch_size=16,
        num_queries=4,
        model_kwargs={"layer_encoding": "smooth"},
    )
    assert config.query_kwargs == {}
    trainer = E.training.Trainer(c, data, data, config.replace(query_kwargs={"edges": 5}), progress=False)
    assert trainer.queries.walk.edges == 5
