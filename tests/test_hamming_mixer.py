"""The MLP-mixer log-field network of Hamming circuits (ecd2g_fast/hamming/mixer.py): its values at
the neighbours, its errors, training, checkpoints, sampling and size. Tiny circuits, one thread."""

from __future__ import annotations

import pytest
import torch

import ecd2g_fast as E
from ecd2g_fast.hamming import HammingCircuit, HammingMixer, HammingNetField
from ecd2g_fast.hamming.learning import BregmanLogLoss, KernelQueries
from ecd2g_fast.hamming.model import _LAYER_FREQUENCIES
from ecd2g_fast.training import load_model
from ecd2g_fast.training.config import CIRCUIT_MODELS, MODELS, RECIPES

from .testing import assert_samples_follow

TINY = {"width": 16, "token_hidden": 8, "channel_hidden": 32, "depth": 2}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one torch thread (conftest.one_thread)."""


def random_mixer(circuit: HammingCircuit, seed: int = 0, scale: float = 0.5, **kwargs) -> HammingMixer:
    torch.manual_seed(seed)
    net = HammingMixer(circuit, **{**TINY, **kwargs})
    with torch.no_grad():  # a non-trivial output (the head starts at zero)
        net.head.weight.normal_(0, scale)
    return net.eval()


def mixer_parameters(
    K: int, D: int, L: int, width=128, token_hidden=256, channel_hidden=512, depth=4, smooth=True
):
    """The parameter count of :class:`HammingMixer` by its architecture."""
    layer_input = (4 * _LAYER_FREQUENCIES + 1) * width if smooth else (L + 1) * width
    token_mlp = D * token_hidden + token_hidden + token_hidden * D + D
    channel_mlp = width * channel_hidden + channel_hidden + channel_hidden * width + width
    block = 2 * (2 * width) + token_mlp + channel_mlp  # two LayerNorms
    return D * K * width + layer_input + depth * block + 2 * width + width + 1  # final norm, head


@pytest.mark.parametrize("K,D,L", [(3, 5, 4), (2, 6, 3)])
@pytest.mark.parametrize("layer_encoding", ["smooth", "embedding"])
def test_outlet_values_are_the_networks_values_at_the_neighbours(K, D, L, layer_encoding, monkeypatch):
    """Every layer, 0 and L (clipped) included; also with blocks smaller than one walker's rows."""
    c = HammingCircuit(K, D, L)
    net = random_mixer(c, layer_encoding=layer_encoding)
    N = c.num_neighbours
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, K, (3 * (L + 1), D), generator=g)
    layer = torch.arange(L + 1).repeat(3)
    heads = c.neighbour_vectors(z, 0, N).reshape(-1, D)
    up = (layer + 1).clamp_max(L).repeat_interleave(N)
    down = (layer - 1).clamp_min(0).repeat_interleave(N)
    with torch.no_grad():
        expected = (net(layer, z), net(up, heads).view(-1, N), net(down, heads).view(-1, N))
        assert float(expected[0].abs().max()) > 0.1  # a non-trivial network
        # the default blocks (all walkers at once), blocks of two whole walkers, and 5 rows (a
        # walker's 2N + 1 rows split over calls, two neighbour slots at a time)
        for rows in (None, 2 * (2 * N + 1) + 1, 5):
            if rows is not None:
                monkeypatch.setattr(net, "rows_per_block", lambda rows=rows: rows)
            got = net.outlet_values(layer, z)
            for value, want in zip(got, expected):
                assert value.dtype == torch.float32 and value.shape == want.shape
                torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6)
    # at layer L the walker's own row and the stay slot ahead are the same state and layer
    top = layer == L
    torch.testing.assert_close(got[1][top, 0], got[0][top], rtol=1e-5, atol=1e-6)
    bottom = layer == 0
    torch.testing.assert_close(got[2][bottom, 0], got[0][bottom], rtol=1e-5, atol=1e-6)


def test_initial_output_is_zero_and_config_rebuilds_the_network():
    c = HammingCircuit(3, 5, 4)
    net = HammingMixer(c, **TINY)
    g = torch.Generator().manual_seed(1)
    z, layer = torch.randint(0, 3, (20, 5), generator=g), torch.randint(0, 5, (20,), generator=g)
    with torch.no_grad():
        assert torch.equal(net(layer, z), torch.zeros(20))
        here, ahead, behind = net.outlet_values(layer, z)
    assert not (here.any() or ahead.any() or behind.any())
    assert net.config() == {
        **TINY,
        "layer_encoding": "smooth",
        "output_scale": "none",
        "sink": "inflow",
        "head": "scalar",
    }
    again = HammingMixer(c, **net.config())
    assert again.config() == net.config()
    assert sum(p.numel() for p in again.parameters()) == mixer_parameters(3, 5, 4, **TINY)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"width": 2.0}, TypeError, "width"),
        ({"width": 0}, ValueError, "width"),
        ({"token_hidden": True}, TypeError, "token_hidden"),
        ({"token_hidden": 0}, ValueError, "token_hidden"),
        ({"channel_hidden": -1}, ValueError, "channel_hidden"),
        ({"depth": "2"}, TypeError, "depth"),
        ({"depth": 0}, ValueError, "depth"),
        ({"layer_encoding": "sinusoid"}, ValueError, "layer_encoding"),
        ({"output_scale": "noise"}, ValueError, "output_scale"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    with pytest.raises(error, match=name):
        HammingMixer(HammingCircuit(2, 4, 3), **kwargs)


def test_a_complete_circuit_is_refused():
    with pytest.raises(TypeError, match="circuit must be an ecd2g_fast.HammingCircuit"):
        HammingMixer(E.Circuit(2, 2, 2))


def test_the_mixer_is_registered_with_the_hamming_recipe():
    assert MODELS["hamming-mixer"] is HammingMixer
    assert "hamming-mixer" in CIRCUIT_MODELS[HammingCircuit]
    recipe, hamming = RECIPES["default"].for_model("hamming-mixer"), RECIPES["default"].for_model("hamming")
    assert recipe == {**hamming, "model": "hamming-mixer"}
    with pytest.raises(ValueError, match="'hamming-mixer' does not fit a Circuit"):
        E.TrainConfig.recipe("default", model="hamming-mixer").build_model(E.Circuit(2, 2, 2))


def _data(c: HammingCircuit, n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform noise and data concentrated on a face of the cube."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(c.dim) % 2 == 0).to(torch.int64)
    y = torch.randint(0, c.num_categories, (n, c.dim), generator=g) * mask
    x = torch.randint(0, c.num_categories, (n, c.dim), generator=g)
    return x, y


def test_training_with_the_recipe_lowers_the_loss():
    """100 recipe steps (shorter warm-up; the recipe's ratio head) lower the recipe's loss on fixed
    held-out queries below 0.8 of the untrained loss."""
    c = HammingCircuit(3, 5, 4)
    x, y = _data(c)
    config = E.TrainConfig.recipe(
        "default", model="hamming-mixer", steps=100, batch_size=128, num_queries=64, warmup_steps=5,
        model_kwargs={**TINY, "head": "ratios"},
    )  # fmt: skip
    result = E.train(c, x, y, config, progress=False, device="cpu")
    assert isinstance(result.model, HammingMixer) and isinstance(result.field, HammingNetField)
    assert result.config.queries == "kernel-walk" and result.model.config() == {
        **TINY,
        "layer_encoding": "smooth",
        "output_scale": "none",
        "sink": "inflow",
        "head": "ratios",
    }
    g = torch.Generator().manual_seed(7)
    queries = KernelQueries(c)(y, 2000, g)
    loss = BregmanLogLoss(c, ratio_weight=config.ratio_weight)
    with torch.no_grad():
        untrained = float(loss(HammingMixer(c, **TINY, head="ratios"), queries, None, y)) / 2000
        trained = float(loss(result.model, queries, None, y)) / 2000
    assert trained < 0.8 * untrained, (trained, untrained)
    # the model override alone picks the mixer's recipe on a Hamming circuit
    quick = E.train(
        c,
        x,
        y,
        model="hamming-mixer",
        steps=2,
        batch_size=32,
        num_queries=8,
        model_kwargs=TINY,
        progress=False,
    )
    assert quick.config.queries == "kernel-walk" and quick.config.ratio_weight == config.ratio_weight == 256


def test_checkpoints_save_load_and_resume_the_mixer(tmp_path):
    c = HammingCircuit(3, 5, 4)
    x, y = _data(c)
    config = E.TrainConfig.recipe(
        "default", model="hamming-mixer", steps=10, batch_size=64, num_queries=16, warmup_steps=2,
        model_kwargs=TINY, checkpoint_every=5,
    )  # fmt: skip
    straight = E.train(c, x, y, config, progress=False, device="cpu")
    ck = tmp_path / "ck.pt"
    interrupted = E.Trainer(c, x, y, config, device="cpu", checkpoint_path=ck, progress=False)
    for _ in range(5):
        interrupted.step()
    interrupted.save()
    resumed = E.train(c, x, y, config, checkpoint_path=ck, resume=True, progress=False, device="cpu")
    assert torch.equal(resumed.losses, straight.losses)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    loaded = load_model(ck, "cpu")
    assert isinstance(loaded, HammingMixer) and loaded.config() == resumed.model.config()
    states = c.unflatten(torch.arange(c.num_states))
    layer = torch.arange(c.num_states) % (c.num_layers + 1)
    # identical weights give the same outputs up to float32 rounding (a module whose parameters
    # require gradients may take another matmul kernel: ~1e-8 apart)
    close = dict(rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(layer, states), resumed.model(layer, states), **close)
        reloaded = E.training.load_field(ck)
        torch.testing.assert_close(
            reloaded.log_field(layer, states), resumed.field.log_field(layer, states), **close
        )


def test_the_sampler_walks_the_mixers_field_to_its_exact_output_law():
    """A random field without dead ends (the exact law does not bridge them), walked by the sampler."""
    c = HammingCircuit(2, 4, 3)
    net = random_mixer(c, seed=3, scale=0.1)
    field = net.field()
    p = torch.full((c.num_states,), 1.0 / c.num_states, dtype=torch.float64)
    with torch.no_grad():
        exact = E.exact_output_distribution(net.field(), p)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 2, (4000, c.dim), generator=g)
    out = E.sample(field, x0, generator=11)
    assert out.shape == x0.shape and out.dtype == torch.int64
    assert int(field.bridged) == 0
    counts = torch.bincount(c.state_index(out), minlength=c.num_states)
    assert_samples_follow(counts, exact.pmf / exact.pmf.sum())


def test_parameter_counts_at_784_dimensions():
    """A few million parameters at D = 784 (K = 2, L = 64): the defaults, and width 256, depth 8."""
    c = HammingCircuit(2, 784, 64)
    for kwargs in ({}, {"width": 256, "depth": 8}):
        net = HammingMixer(c, layer_encoding="embedding", **kwargs)
        count = sum(p.numel() for p in net.parameters())
        assert count == mixer_parameters(2, 784, 64, smooth=False, **kwargs)
        assert 1_000_000 < count < 10_000_000, count
    smooth = HammingMixer(c, width=256, depth=8)  # the recipe's layer input
    assert sum(p.numel() for p in smooth.parameters()) == mixer_parameters(2, 784, 64, width=256, depth=8)


def test_the_cli_trains_the_mixer_on_a_high_dimensional_target(tmp_path):
    pytest.importorskip("matplotlib")
    from ecd2g_fast import cli
    from ecd2g_fast.training import load_checkpoint

    out = tmp_path / "mixer"
    sizes = '{"width": 8, "token_hidden": 8, "channel_hidden": 8, "depth": 1}'
    args = [
        *("train", "bernoulli-mixture-64", "--out", str(out), "--model", "hamming-mixer", "--dim", "8"),
        *("--num-layers", "4", "--steps", "3", "--batch-size", "32", "--num-queries", "8", "--quiet"),
        *("--device", "cpu", "--model-kwargs", sizes),
    ]  # fmt: skip
    assert cli.main(args) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["model"] == "hamming-mixer"
    assert isinstance(load_model(out / "checkpoint.pt", "cpu"), HammingMixer)
