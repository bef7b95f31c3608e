"""High-dimensional discrete data sets and the sample metrics that judge a generator on them.

Data sets (``(n, D)`` int64 states in ``[0, K)``):

* :class:`BernoulliMixture`: a mixture of ``C`` product-Bernoulli distributions on ``{0, 1}^D``
  (prototype bits flipped with per-coordinate probabilities in ``[0.05, 0.25]``, Dirichlet(3)
  weights): exact log-likelihood and component posteriors are known.
* :func:`load_digits`: scikit-learn's bundled 8 x 8 digits (1797 images, no download), at their 17
  grey levels (``K = 17``) or binarised at level 8 (``K = 2``), with their labels.

Metrics (:func:`sample_metrics`), each computed for the samples and for a *floor*: a set of exact
draws (or held-out data) of the same size, which is what a perfect sampler would score:

* ``marginal_tv``: mean over the coordinates of the TV between the per-coordinate marginals of the
  samples and of the reference data;
* ``correlation_error``: root mean square, over the coordinate pairs, of the difference between
  the Pearson correlations of the samples and of the reference data;
* with a :class:`BernoulliMixture`: ``loglik_gap`` (mean exact log-likelihood of exact draws minus
  that of the samples, in nats) and ``coverage_tv`` (TV between the histogram of the samples' most
  likely components and the mixture weights);
* with a :class:`DigitClassifier`: ``label_tv`` (TV between the histograms of the labels the
  classifier gives the states and the reference data);
* with :class:`CrossFittedLabels`: ``label_tv_crossfit``, the label TV against every real image
  rather than the held-out ones only. Each image is labelled by classifiers that did not see it,
  so the reference is as noisy as a histogram of all the images (1797 digits), not of the
  held-out quarter; its floor is simulated.

:func:`memorisation` compares the distances from samples to their nearest training image with
those from held-out images: a generator that copies its training set sits closer.
:func:`class_margin` compares how far the nearest training image of a second class is, beyond the
nearest image: a generator that blends the classes' images leaves samples between classes.

:class:`HighDimTarget` is the target of a high-dimensional ``ecd2g`` experiment
(:data:`HIGHDIM_TARGETS`): its training data, and the reference and floor its samples are judged
against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "HIGHDIM_TARGETS",
    "BernoulliMixture",
    "CrossFittedLabels",
    "DigitClassifier",
    "HighDimTarget",
    "class_margin",
    "load_digits",
    "memorisation",
    "sample_metrics",
    "split",
]


@dataclass(frozen=True)
class BernoulliMixture:
    """``q(x) = sum_c w_c prod_d theta_cd^x_d (1 - theta_cd)^(1 - x_d)`` on ``{0, 1}^D``.

    Attributes:
        theta: ``(C, D)`` float64 ``P(x_d = 1 | c)``.
        weights: ``(C,)`` float64 mixture weights.
    """

    theta: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def make(cls, dim: int, num_components: int = 10, seed: int = 0) -> BernoulliMixture:
        """A random mixture: prototypes of fair bits, each bit flipped with a probability drawn
        uniformly in ``[0.05, 0.25]``, weights Dirichlet(3, ..., 3); reproducible for ``seed``."""
        g = torch.Generator().manual_seed(seed)
        prototypes = torch.randint(0, 2, (num_components, dim), generator=g)
        flip = 0.05 + 0.2 * torch.rand(num_components, dim, generator=g, dtype=torch.float64)
        theta = torch.where(prototypes == 1, 1 - flip, flip)
        gamma = torch.distributions.Gamma(torch.full((num_components,), 3.0, dtype=torch.float64), 1.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            weights = gamma.sample()
        return cls(theta, weights / weights.sum())

    @property
    def dim(self) -> int:
        return self.theta.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, D)`` int64 states and ``(n,)`` int64 components of ``n`` exact draws."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        bits = torch.rand(n, self.dim, generator=generator, dtype=torch.float64) < self.theta[component]
        return bits.long(), component

    def component_log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C)`` float64 ``log w_c + log q(x | c)``."""
        x = x.to(torch.float64)
        log_one, log_zero = torch.log(self.theta), torch.log1p(-self.theta)
        return torch.log(self.weights) + x @ log_one.T + (1 - x) @ log_zero.T

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,)`` float64 exact ``log q(x)`` (nats)."""
        return torch.logsumexp(self.component_log_joint(x), dim=1)

    def components(self, x: torch.Tensor) -> torch.Tensor:
        """``(n,)`` int64 most likely component of each state."""
        return self.component_log_joint(x).argmax(dim=1)


def load_digits(binary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8 x 8 digits as ``(1797, 64)`` int64 states and ``(1797,)`` int64 labels.

    Args:
        binary: threshold the 17 grey levels at 8 (``K = 2``); else keep them (``K = 17``).

    Raises:
        ImportError: scikit-learn is not installed (``pip install scikit-learn``; its data set is
            bundled, nothing is downloaded).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data sets need scikit-learn: pip install scikit-learn") from error
    data = sklearn_digits()
    images = torch.as_tensor(data.data, dtype=torch.int64)
    if binary:
        images = (images >= 8).long()
    return images, torch.as_tensor(data.target, dtype=torch.int64)


def split(
    states: torch.Tensor, labels: torch.Tensor, held_out: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random ``(train_states, train_labels, held_out_states, held_out_labels)`` split; the
    fraction ``held_out`` of the rows (rounded) is held out; reproducible for ``seed``."""
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    order = torch.randperm(states.shape[0], generator=torch.Generator().manual_seed(seed))
    n_out = max(1, round(held_out * states.shape[0]))
    test, train = order[:n_out], order[n_out:]
    return states[train], labels[train], states[test], labels[test]


class DigitClassifier:
    """A small MLP classifier of ``(n, D)`` states in ``[0, K)`` (one-hot inputs), trained on real
    labelled data; judges generated images by the distribution of the labels it gives them.

    Args:
        states: ``(n, D)`` int64 training states; ``labels``: ``(n,)`` int64 in ``[0, C)``.
        num_categories: ``K``.
        hidden: hidden width; ``steps``: full-batch Adam steps (lr 1e-2, weight decay 1e-3);
        seed: initialisation seed.
    """

    def __init__(
        self,
        states: torch.Tensor,
        labels: torch.Tensor,
        num_categories: int,
        hidden: int = 128,
        steps: int = 300,
        seed: int = 0,
    ) -> None:
        self.num_categories = num_categories
        self.num_classes = int(labels.max()) + 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dim = states.shape[1] * num_categories
            self.net = torch.nn.Sequential(
                torch.nn.Linear(dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, self.num_classes)
            )
        optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-2, weight_decay=1e-3)
        inputs = self._inputs(states)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(self.net(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.net.eval()

    def _inputs(self, states: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(states.cpu(), self.num_categories).flatten(1).to(torch.float32)

    @torch.no_grad()
    def predict(self, states: torch.Tensor) -> torch.Tensor:
        """``(n,)`` int64 predicted labels of ``(n, D)`` states."""
        return self.net(self._inputs(states)).argmax(1)

    def accuracy(self, states: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of ``labels`` predicted right (held-out data: how far to trust :meth:`label_tv`)."""
        return float((self.predict(states) == labels.cpu()).double().mean())

    def histogram(self, states: torch.Tensor) -> torch.Tensor:
        """``(C,)`` float64 histogram of the labels predicted for ``(n, D)`` states (sums to 1)."""
        return _label_histogram(self.predict(states), self.num_classes)

    def label_tv(self, states: torch.Tensor, reference: torch.Tensor) -> float:
        """TV between the predicted-label histograms of ``states`` and of ``reference``."""
        return float(0.5 * (self.histogram(states) - self.histogram(reference)).abs().sum())


def _label_histogram(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C,)`` float64 frequencies of ``(n,)`` int64 labels in ``[0, num_classes)``."""
    return torch.bincount(labels, minlength=num_classes).to(torch.float64) / labels.shape[0]


class CrossFittedLabels:
    """The distribution of the labels classifiers give real images they did not see, from all of them.

    The images are split into ``folds`` folds; one :class:`DigitClassifier` is trained on all folds
    but each one. The reference is the histogram of the out-of-fold labels of every image. States
    are labelled by every classifier and their histograms averaged, so a perfect sampler of the
    images' distribution has the reference's expectation, and its label TV is only the sampling
    noise of the two histograms (:meth:`floor`). With every image in the reference that noise is
    that of all ``n`` images, not of a held-out part.

    Args:
        states: ``(n, D)`` int64 real images in ``[0, K)``; ``labels``: ``(n,)`` int64 in ``[0, C)``.
        num_categories: ``K``.
        folds: number of folds (>= 2).
        seed: the fold assignment's and the classifiers' seed.
        classifier_steps: full-batch Adam steps of each classifier.

    Attributes:
        classifiers: the ``folds`` classifiers (:class:`DigitClassifier`), classifier ``f`` not trained on fold ``f``.
        reference: ``(C,)`` float64 out-of-fold label histogram (sums to 1).
        num_reference: ``n``, the images behind :attr:`reference`.
        accuracy: fraction of out-of-fold labels that are right.

    Raises:
        ValueError: ``labels`` not of shape ``(n,)``, or ``folds`` not in ``[2, n]``.
    """

    def __init__(
        self,
        states: torch.Tensor,
        labels: torch.Tensor,
        num_categories: int,
        folds: int = 5,
        seed: int = 0,
        classifier_steps: int = 300,
    ) -> None:
        n = states.shape[0]
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) like states' rows, got {tuple(labels.shape)}")
        if not 2 <= folds <= n:
            raise ValueError(f"folds must be in [2, {n}] (the number of images), got {folds}")
        self.num_classes = int(labels.max()) + 1
        fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
        self.classifiers = []
        out_of_fold = torch.empty(n, dtype=torch.int64)
        for f in range(folds):
            held = fold == f
            classifier = DigitClassifier(
                states[~held], labels[~held], num_categories, steps=classifier_steps, seed=seed + f
            )
            out_of_fold[held] = classifier.predict(states[held])
            self.classifiers.append(classifier)
        self.reference = _label_histogram(out_of_fold, self.num_classes)
        self.accuracy = float((out_of_fold == labels.cpu()).double().mean())
        self.num_reference = n

    def histogram(self, states: torch.Tensor) -> torch.Tensor:
        """``(C,)`` float64 label histogram of ``(m, D)`` states, averaged over the classifiers."""
        return torch.stack([c.histogram(states) for c in self.classifiers]).mean(0)

    def label_tv(self, states: torch.Tensor) -> float:
        """TV between the label histogram of ``(m, D)`` states and :attr:`reference`."""
        return float(0.5 * (self.histogram(states) - self.reference).abs().sum())

    def floor(self, num_samples: int, repeats: int = 20_000, seed: int = 0) -> float:
        """Mean label TV of a perfect sampler of ``num_samples`` states: the TV between a
        multinomial histogram of ``num_samples`` draws and one of as many draws as the reference
        has images, both from :attr:`reference`, averaged over ``repeats`` simulations. (The
        classifiers' averaging makes a real sampler's histogram a little less noisy than a
        multinomial one, so this is a slight over-estimate.)"""
        rng = np.random.default_rng(seed)
        p = self.reference.numpy()
        a = rng.multinomial(num_samples, p, size=repeats) / num_samples
        b = rng.multinomial(self.num_reference, p, size=repeats) / self.num_reference
        return float((0.5 * np.abs(a - b).sum(1)).mean())


def memorisation(samples: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor) -> dict[str, float]:
    """Nearest-training-image Hamming distances of ``samples`` and of ``held_out`` images.

    Returns:
        ``{"samples_mean", "held_out_mean"}``: mean distance to the nearest row of ``train``;
        ``"samples_exact_copies"``, ``"held_out_exact_copies"``: fraction at distance 0. Samples
        closer to ``train`` than held-out images are (smaller mean, more copies) are memorised.
    """
    s, h = nearest_distances(samples.cpu(), train.cpu()), nearest_distances(held_out.cpu(), train.cpu())
    return {
        "samples_mean": float(s.double().mean()),
        "held_out_mean": float(h.double().mean()),
        "samples_exact_copies": float((s == 0).double().mean()),
        "held_out_exact_copies": float((h == 0).double().mean()),
    }


def class_margins(states: torch.Tensor, train: torch.Tensor, train_labels: torch.Tensor) -> torch.Tensor:
    """``(n,)`` int64 class margin of each of ``(n, D)`` ``states``: the Hamming distance to the nearest
    row of ``train`` whose label (``train_labels``, ``(m,)`` int64) differs from the nearest row's,
    minus the distance to the nearest row. 0 for a state as near to images of two classes (a tie);
    large for a state well inside one class's images. Needs at least two classes in ``train_labels``.
    """
    classes = torch.unique(train_labels)
    if classes.numel() < 2:
        raise ValueError(f"train_labels must hold at least two classes, got {classes.tolist()}")
    per_class = torch.stack([nearest_distances(states, train[train_labels == c]) for c in classes], 1)
    nearest_two = per_class.topk(2, dim=1, largest=False).values
    return nearest_two[:, 1] - nearest_two[:, 0]


def class_margin(
    samples: torch.Tensor, train: torch.Tensor, train_labels: torch.Tensor, held_out: torch.Tensor
) -> dict[str, float]:
    """:func:`class_margins` of ``samples`` and of ``held_out`` images, against the labelled ``train``
    images: whether samples sit inside one class as real images do, or between classes.

    Returns:
        ``{"samples_mean", "held_out_mean"}``: mean margin (coordinates); ``"samples_tied"``,
        ``"held_out_tied"``: fraction at margin 0 (as near to two classes).
    """
    train, train_labels = train.cpu(), train_labels.cpu()
    s = class_margins(samples.cpu(), train, train_labels)
    h = class_margins(held_out.cpu(), train, train_labels)
    return {
        "samples_mean": float(s.double().mean()),
        "held_out_mean": float(h.double().mean()),
        "samples_tied": float((s == 0).double().mean()),
        "held_out_tied": float((h == 0).double().mean()),
    }


def marginal_tv(a: torch.Tensor, b: torch.Tensor, num_categories: int) -> float:
    """Mean over the coordinates of the TV between the categorical marginals of ``(n, D)`` and ``(m, D)`` states."""
    pa = torch.nn.functional.one_hot(a, num_categories).to(torch.float64).mean(0)
    pb = torch.nn.functional.one_hot(b, num_categories).to(torch.float64).mean(0)
    return float(0.5 * (pa - pb).abs().sum(-1).mean())


def correlation_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS over the coordinate pairs of the difference of Pearson correlations (constant coordinates count as 0)."""

    def correlations(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        centred = x - x.mean(0)
        std = centred.pow(2).mean(0).sqrt()
        scaled = centred / torch.where(std > 0, std, 1.0)
        return (scaled.T @ scaled) / x.shape[0]

    difference = correlations(a) - correlations(b)
    upper = torch.triu_indices(a.shape[1], a.shape[1], offset=1)
    return float(difference[upper[0], upper[1]].pow(2).mean().sqrt())


def sample_metrics(
    samples: torch.Tensor,
    reference: torch.Tensor,
    floor: torch.Tensor,
    num_categories: int,
    mixture: BernoulliMixture | None = None,
    classifier: DigitClassifier | None = None,
    cross_fitted: CrossFittedLabels | None = None,
) -> dict[str, dict[str, float]]:
    """The metrics of the module docstring for ``samples`` and for ``floor``.

    Args:
        samples: ``(n, D)`` int64 generated states.
        reference: ``(m, D)`` int64 data the statistics are compared with (exact draws, or held-out data).
        floor: ``(n, D)`` int64 states of a perfect sampler of the same size (exact draws
            independent of ``reference``, or other held-out data).
        num_categories: ``K``.
        mixture: the exact distribution, when known (adds ``loglik_gap`` and ``coverage_tv``).
        classifier: a classifier trained on real labelled data (adds ``label_tv`` against
            ``reference``).
        cross_fitted: adds ``label_tv_crossfit``, against its out-of-fold labels of every image;
            its floor is :meth:`CrossFittedLabels.floor` of ``n`` samples (simulated, not ``floor``'s).

    Returns:
        ``{"samples": {metric: value}, "floor": {metric: value}}``.
    """
    out: dict[str, dict[str, float]] = {}
    for name, states in (("samples", samples), ("floor", floor)):
        metrics = {
            "marginal_tv": marginal_tv(states, reference, num_categories),
            "correlation_error": correlation_error(states, reference),
        }
        if mixture is not None:
            reference_ll = float(mixture.log_likelihood(reference).mean())
            metrics["loglik"] = float(mixture.log_likelihood(states).mean())
            metrics["loglik_gap"] = reference_ll - metrics["loglik"]
            counts = torch.bincount(mixture.components(states), minlength=mixture.weights.shape[0])
            metrics["coverage_tv"] = float(0.5 * (counts / states.shape[0] - mixture.weights).abs().sum())
        if classifier is not None:
            metrics["label_tv"] = classifier.label_tv(states, reference)
        if cross_fitted is not None:
            metrics["label_tv_crossfit"] = (
                cross_fitted.label_tv(states) if name == "samples" else cross_fitted.floor(samples.shape[0])
            )
        out[name] = metrics
    return out


def nearest_distances(
    queries: torch.Tensor, points: torch.Tensor, exclude_self: bool = False, return_indices: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``(n,)`` int64 Hamming distance from each of ``(n, D)`` ``queries`` to its nearest row of ``points``.

    ``exclude_self``: ``queries`` is ``points`` itself; the zero distance of a row to itself is skipped.
    ``return_indices``: also return the ``(n,)`` int64 index of that row in ``points`` (the first
    of equally near rows).
    """
    out = torch.empty(queries.shape[0], dtype=torch.int64)
    index = torch.empty(queries.shape[0], dtype=torch.int64)
    step = max(1, 2**22 // max(points.shape[0] * queries.shape[1], 1))
    for start in range(0, queries.shape[0], step):
        block = queries[start : start + step]
        distance = (block[:, None, :] != points[None, :, :]).sum(-1)
        if exclude_self:
            rows = torch.arange(block.shape[0])
            distance[rows, start + rows] = math.inf if distance.is_floating_point() else queries.shape[1] + 1
        nearest = distance.min(1)
        out[start : start + block.shape[0]] = nearest.values
        index[start : start + block.shape[0]] = nearest.indices
    return (out, index) if return_indices else out


# ---------------------------------------------------------------------------- experiment targets
@dataclass(frozen=True)
class HighDimSpec:
    """What a high-dimensional target spec fixes.

    Attributes:
        num_categories: ``K``.
        dim: ``D`` when the data fix it (the 8 x 8 digits: 64); None: any ``D``.
        default_dim: ``D`` when none is given.
        help: one line for the documentation.
    """

    num_categories: int
    dim: int | None
    default_dim: int
    help: str


#: The high-dimensional targets by spec; their runs learn a Hamming log-field from uniform noise.
HIGHDIM_TARGETS: dict[str, HighDimSpec] = {
    "bernoulli-mixture": HighDimSpec(
        2, None, 64, "BernoulliMixture.make(D, 10, seed=0): fresh exact draws every training step"
    ),
    "digits": HighDimSpec(17, 64, 64, "scikit-learn's 8 x 8 digits at 17 grey levels (training split)"),
    "digits-binary": HighDimSpec(2, 64, 64, "the 8 x 8 digits thresholded at grey level 8 (training split)"),
}
#: Fraction of the digits held out from training (the reference of the metrics), and the split's seed.
DIGITS_HELD_OUT, DIGITS_SPLIT_SEED = 0.25, 0
#: Mixture components and the seed of the mixture of ``bernoulli-mixture``.
MIXTURE_COMPONENTS, MIXTURE_SEED = 10, 0
#: Exact draws the samples of a ``bernoulli-mixture`` run are compared with.
MIXTURE_REFERENCE_SIZE = 20_000


class MixtureSampler:
    """``n -> (n, D)`` int64 fresh exact draws of a :class:`BernoulliMixture` (a training source).

    ``state_dict()`` / ``load_state_dict()`` save and restore its generator, so the trainer's
    checkpoints resume a run that draws from it exactly.
    """

    def __init__(self, mixture: BernoulliMixture, seed: int) -> None:
        self.mixture = mixture
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, n: int) -> torch.Tensor:
        return self.mixture.sample(n, self.generator)[0]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass(frozen=True, eq=False)
class HighDimTarget:
    """The target of a high-dimensional experiment (:data:`HIGHDIM_TARGETS`).

    Build it with :meth:`make`. A mixture run trains on fresh exact draws and is judged against
    :data:`MIXTURE_REFERENCE_SIZE` other exact draws; a digits run trains on the training split
    (``split(states, labels, DIGITS_HELD_OUT, DIGITS_SPLIT_SEED)``) and is judged against the
    held-out images, with a :class:`DigitClassifier` trained on the training split.

    Attributes:
        spec: its key in :data:`HIGHDIM_TARGETS`.
        num_categories: ``K``.
        dim: ``D``.
        mixture: the exact distribution (``bernoulli-mixture``), else None.
        train_states, train_labels: ``(n, D)`` int64 training images and ``(n,)`` int64 labels
            (digits), else None.
        held_out_states, held_out_labels: the held-out images and labels (digits), else None.
    """

    spec: str
    num_categories: int
    dim: int
    mixture: BernoulliMixture | None = None
    train_states: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    held_out_states: torch.Tensor | None = None
    held_out_labels: torch.Tensor | None = None

    @classmethod
    def make(cls, spec: str, dim: int) -> HighDimTarget:
        """The target ``spec`` at dimension ``dim`` (checked by the caller against the spec).

        Raises:
            ValueError: an unknown spec.
            ImportError: the digits without scikit-learn.
        """
        if spec not in HIGHDIM_TARGETS:
            raise ValueError(f"target must be one of {', '.join(HIGHDIM_TARGETS)}, got {spec!r}")
        K = HIGHDIM_TARGETS[spec].num_categories
        if spec == "bernoulli-mixture":
            return cls(spec, K, dim, mixture=BernoulliMixture.make(dim, MIXTURE_COMPONENTS, MIXTURE_SEED))
        states, labels = load_digits(binary=spec == "digits-binary")
        train_states, train_labels, held_states, held_labels = split(
            states, labels, DIGITS_HELD_OUT, DIGITS_SPLIT_SEED
        )
        return cls(spec, K, dim, None, train_states, train_labels, held_states, held_labels)

    @property
    def name(self) -> str:
        """Short description, for logs."""
        if self.mixture is not None:
            return f"bernoulli-mixture(C={MIXTURE_COMPONENTS}, D={self.dim})"
        return f"{self.spec}(K={self.num_categories}, {self.train_states.shape[0]} training images)"

    def sampler(self, rng: np.random.Generator, device: torch.device | str = "cpu"):
        """The training source: a :class:`MixtureSampler` seeded from ``rng``, or the ``(n, D)``
        int64 training images (the trainer draws from them with replacement). ``device`` is where
        the trainer puts them; the states are made on the CPU."""
        if self.mixture is not None:
            return MixtureSampler(self.mixture, int(rng.integers(0, 2**63 - 1)))
        return self.train_states

    def reference_and_floor(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reference, floor)``: the ``(m, D)`` int64 data the samples are compared with, and
        ``(n', D)`` int64 states a perfect sampler of the training distribution would give.

        Mixture: :data:`MIXTURE_REFERENCE_SIZE` exact draws, and ``n`` other exact draws. Digits:
        the held-out images, and ``n' = min(n, number of training images)`` training images drawn
        without replacement.
        """
        if self.mixture is not None:
            reference = self.mixture.sample(MIXTURE_REFERENCE_SIZE, generator)[0]
            return reference, self.mixture.sample(n, generator)[0]
        size = min(n, self.train_states.shape[0])
        rows = torch.randperm(self.train_states.shape[0], generator=generator)[:size]
        return self.held_out_states, self.train_states[rows]

    def real_examples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(min(n, available), D)`` int64 real states for figures (exact draws, or training images)."""
        if self.mixture is not None:
            return self.mixture.sample(n, generator)[0]
        rows = torch.randperm(self.train_states.shape[0], generator=generator)[:n]
        return self.train_states[rows]

    def data_means(self) -> tuple[torch.Tensor, str]:
        """``(D,)`` float64 mean state value per coordinate of the training distribution (exact
        for the mixture, else the training images'), and a label saying which."""
        if self.mixture is not None:
            return self.mixture.weights @ self.mixture.theta, "data (exact)"
        return self.train_states.to(torch.float64).mean(0), "training images"

    def classifier(self) -> DigitClassifier | None:
        """A :class:`DigitClassifier` trained on the training split (digits), else None."""
        if self.train_labels is None:
            return None
        return DigitClassifier(self.train_states, self.train_labels, self.num_categories)

    def cross_fitted_labels(self) -> CrossFittedLabels | None:
        """:class:`CrossFittedLabels` of every image, training and held-out (digits), else None."""
        if self.train_labels is None:
            return None
        states = torch.cat([self.train_states, self.held_out_states])
        labels = torch.cat([self.train_labels, self.held_out_labels])
        return CrossFittedLabels(states, labels, self.num_categories)
