"""High-dimensional data sets and sample metrics (ecd2g_fast/experiments/highdim.py)."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from ecd2g_fast.experiments.highdim import (
    BernoulliMixture,
    CrossFittedLabels,
    DigitClassifier,
    class_margin,
    class_margins,
    correlation_error,
    load_digits,
    marginal_tv,
    memorisation,
    nearest_distances,
    sample_metrics,
    split,
)


def test_mixture_log_likelihood_is_the_brute_force_sum():
    mix = BernoulliMixture.make(5, num_components=3, seed=2)
    states = torch.tensor(list(itertools.product([0, 1], repeat=5)))
    brute = torch.zeros(32, dtype=torch.float64)
    for c in range(3):
        theta = mix.theta[c]
        brute += mix.weights[c] * torch.prod(torch.where(states == 1, theta, 1 - theta), dim=1)
    torch.testing.assert_close(mix.log_likelihood(states), torch.log(brute), rtol=1e-12, atol=0)
    assert float(brute.sum()) == pytest.approx(1.0, abs=1e-12)


def test_mixture_is_reproducible_and_samples_follow_the_weights():
    a, b = BernoulliMixture.make(16, 4, seed=7), BernoulliMixture.make(16, 4, seed=7)
    assert torch.equal(a.theta, b.theta) and torch.equal(a.weights, b.weights)
    _, component = a.sample(40_000, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(component, minlength=4).to(torch.float64) / 40_000
    assert torch.allclose(frequencies, a.weights, atol=0.01)


def test_metrics_floor_is_small_and_a_wrong_sampler_is_caught():
    mix = BernoulliMixture.make(32, 5, seed=1)
    g = torch.Generator().manual_seed(3)
    reference, _ = mix.sample(20_000, g)
    floor, _ = mix.sample(2000, g)
    good, _ = mix.sample(2000, g)
    uniform = torch.randint(0, 2, (2000, 32), generator=g)
    good_metrics = sample_metrics(good, reference, floor, 2, mix)
    bad_metrics = sample_metrics(uniform, reference, floor, 2, mix)
    for name in ("marginal_tv", "correlation_error", "loglik_gap", "coverage_tv"):
        assert bad_metrics["samples"][name] > 3 * max(
            good_metrics["samples"][name], good_metrics["floor"][name], 0.01
        )
    assert abs(good_metrics["samples"]["loglik_gap"]) < 0.5


def test_marginal_and_correlation_statistics():
    a = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])
    assert marginal_tv(a, a, 2) == 0.0
    assert marginal_tv(a, torch.zeros_like(a), 2) == pytest.approx(0.5)
    assert correlation_error(a, a) == 0.0
    independent = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert correlation_error(a, independent) == pytest.approx(1.0)  # correlation -1 against 0


def test_nearest_distances():
    points = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0]])
    queries = torch.tensor([[0, 0, 1], [1, 1, 1]])
    assert nearest_distances(queries, points).tolist() == [1, 0]
    assert nearest_distances(points, points, exclude_self=True).tolist() == [1, 2, 1]
    distance, index = nearest_distances(queries, points, return_indices=True)
    assert distance.tolist() == [1, 0]
    assert torch.equal((queries != points[index]).sum(1), distance)
    g = torch.Generator().manual_seed(0)
    many, cloud = torch.randint(0, 3, (300, 9), generator=g), torch.randint(0, 3, (50, 9), generator=g)
    distance, index = nearest_distances(many, cloud, return_indices=True)
    brute = (many[:, None] != cloud[None]).sum(-1)
    assert torch.equal(distance, brute.min(1).values) and torch.equal(
        brute.gather(1, index[:, None])[:, 0], distance
    )


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")
def test_digits_are_bundled_and_binarised():
    images, labels = load_digits(binary=False)
    assert images.shape == (1797, 64) and int(images.max()) == 16 and labels.shape == (1797,)
    binary, _ = load_digits(binary=True)
    assert set(binary.unique().tolist()) == {0, 1}


def test_split_is_a_reproducible_partition():
    states = torch.arange(40).reshape(20, 2)
    labels = torch.arange(20)
    a = split(states, labels, 0.25, seed=3)
    b = split(states, labels, 0.25, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[2].shape[0] == 5 and a[0].shape[0] == 15
    assert sorted(torch.cat([a[1], a[3]]).tolist()) == list(range(20))
    with pytest.raises(ValueError, match="held_out"):
        split(states, labels, 1.5)


def test_classifier_label_tv_separates_right_and_wrong_label_laws():
    mix = BernoulliMixture.make(16, 3, seed=1)
    g = torch.Generator().manual_seed(0)
    states, labels = mix.sample(3000, g)
    clf = DigitClassifier(states[:2000], labels[:2000], 2, steps=200)
    assert clf.accuracy(states[2000:], labels[2000:]) > 0.9
    same = clf.label_tv(states[2000:2500], states[2500:])
    only_one = clf.label_tv(states[2000:][labels[2000:] == 0], states[2500:])
    assert same < 0.08 and only_one > 0.4
    metrics = sample_metrics(states[2000:2500], states[2500:], states[:500], 2, classifier=clf)
    assert metrics["samples"]["label_tv"] == pytest.approx(same)


def test_cross_fitted_labels_judge_fresh_draws_at_their_simulated_floor():
    mix = BernoulliMixture.make(16, 3, seed=1)
    g = torch.Generator().manual_seed(0)
    states, labels = mix.sample(1500, g)
    labels_of_all = CrossFittedLabels(states, labels, 2, folds=3, classifier_steps=200)
    assert labels_of_all.accuracy > 0.9 and len(labels_of_all.classifiers) == 3
    assert float(labels_of_all.reference.sum()) == pytest.approx(1.0, abs=1e-12)
    # out-of-fold labels follow the weights up to the classifiers' errors and the draw's noise
    assert torch.allclose(labels_of_all.reference, mix.weights, atol=0.04)
    # fresh draws of the same law score, on average over 20 sets, about the simulated floor
    floor = labels_of_all.floor(300)
    fresh = [labels_of_all.label_tv(mix.sample(300, g)[0]) for _ in range(20)]
    assert 0.5 * floor < sum(fresh) / 20 < 1.5 * floor
    # the floor is the multinomial noise of 300 and 1500 draws: about sqrt(1/300 + 1/1500) scaled
    assert labels_of_all.floor(300, seed=1) == pytest.approx(floor, rel=0.05)
    assert labels_of_all.floor(30_000) < 0.6 * floor
    one_component = mix.sample(3000, g)
    assert labels_of_all.label_tv(one_component[0][one_component[1] == 0][:300]) > 0.4
    metrics = sample_metrics(states[:300], states, states[300:600], 2, cross_fitted=labels_of_all)
    assert metrics["floor"]["label_tv_crossfit"] == floor
    assert metrics["samples"]["label_tv_crossfit"] == labels_of_all.label_tv(states[:300])
    with pytest.raises(ValueError, match="folds"):
        CrossFittedLabels(states, labels, 2, folds=1)
    with pytest.raises(ValueError, match="labels"):
        CrossFittedLabels(states, labels[:-1], 2)


def test_memorisation_tells_copies_from_fresh_draws():
    mix = BernoulliMixture.make(32, 4, seed=2)
    g = torch.Generator().manual_seed(0)
    train, held = mix.sample(500, g)[0], mix.sample(200, g)[0]
    copies = memorisation(train[:200], train, held)
    assert copies["samples_mean"] == 0 and copies["samples_exact_copies"] == 1
    fresh = memorisation(mix.sample(200, g)[0], train, held)
    assert fresh["samples_exact_copies"] < 0.1
    assert abs(fresh["samples_mean"] - fresh["held_out_mean"]) < 1.0


def test_class_margins_are_the_brute_force_margins_and_see_blends():
    g = torch.Generator().manual_seed(0)
    train, labels = torch.randint(0, 3, (40, 12), generator=g), torch.randint(0, 4, (40,), generator=g)
    states = torch.randint(0, 3, (25, 12), generator=g)
    distance = (states[:, None, :] != train[None, :, :]).sum(-1)
    per_class = torch.stack([distance[:, labels == c].min(1).values for c in range(4)], 1).sort(1).values
    assert torch.equal(class_margins(states, train, labels), per_class[:, 1] - per_class[:, 0])
    # two classes of 6 noisy copies of two prototypes 24 coordinates apart
    mix = BernoulliMixture(
        torch.stack([torch.full((24,), 0.05), torch.full((24,), 0.95)]).to(torch.float64),
        torch.tensor([0.5, 0.5], dtype=torch.float64),
    )
    train, labels = mix.sample(200, g)
    held, component = mix.sample(100, g)
    zeros, ones = held[component == 0][:30], held[component == 1][:30]
    blends = torch.cat([zeros[:, :12], ones[:, 12:]], 1)  # half of one class's image, half of the other's
    inside, between = class_margin(held, train, labels, held), class_margin(blends, train, labels, held)
    assert inside["samples_mean"] == inside["held_out_mean"] > 15
    assert between["samples_mean"] < 4 and inside["held_out_tied"] == 0
    with pytest.raises(ValueError, match="train_labels"):
        class_margins(states, train, torch.zeros(200, dtype=torch.int64))
