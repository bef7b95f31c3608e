"""ecd2g_fast as a drop-in backend: your own network and optimiser, our target pass and sampler.

A plain torch MLP (one-hot states and layer in, one number out) is trained with Adam in an
ordinary loop on ``current_targets(..., normalize=True)``: the dimensionless Monte-Carlo targets,
of order one for any state space. Its output times ``exp(circuit.log_current_scale(...))`` is a
physical current; ``StateField`` turns that into a field ``sample`` and
``exact_output_distribution`` can walk, with no flat state indices in user code. Prints the TV to
the target of the exact output law (no sampling noise) and of samples.

    python examples/own_model.py [--steps 3000] [--num-samples 20000] [--seed 0]

Task: the paper's 1D transport, uniform -> discretised Gaussian on K = 30 categories, L = 10.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import ecd2g_fast as E


class EdgeMLP(nn.Module):
    """``f(l, z, w)`` ~ the normalised current of the edge ``(l, z) -> (l + 1, w)``."""

    def __init__(self, num_categories: int, dim: int, num_layers: int, width: int = 128) -> None:
        super().__init__()
        self.K, self.L = num_categories, num_layers
        self.body = nn.Sequential(
            nn.Linear(2 * dim * num_categories + num_layers, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 1),
        )

    def forward(self, layer: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``(Q,)`` layers, ``(Q, D)`` states -> ``(Q,)`` float32."""
        one_hot = nn.functional.one_hot
        features = [one_hot(z, self.K).flatten(1), one_hot(w, self.K).flatten(1), one_hot(layer, self.L)]
        return self.body(torch.cat(features, dim=1).float()).squeeze(-1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=1024, help="data samples per step")
    parser.add_argument("--queries", type=int, default=512, help="edges regressed per step")
    parser.add_argument("--num-samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    K, L = 30, 10
    circuit = E.Circuit(K, 1, L)
    p = torch.full((K,), 1.0 / K, dtype=torch.float64)
    k = torch.arange(K, dtype=torch.float64)
    q = torch.softmax(-0.5 * ((k - (K - 1) / 2) / (K / 10)) ** 2, 0)
    data = torch.Generator().manual_seed(args.seed)

    def draw(pmf: torch.Tensor, n: int) -> torch.Tensor:  # (n, 1) int64 samples
        return torch.multinomial(pmf, n, replacement=True, generator=data)[:, None]

    # --- your model, your optimiser, our targets
    net = EdgeMLP(K, 1, L)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for step in range(args.steps):
        x, y = draw(p, args.batch_size), draw(q, args.batch_size)
        layer = torch.randint(L, (args.queries,), generator=data)
        z = torch.randint(K, (args.queries, 1), generator=data)
        w = torch.where(
            torch.rand(args.queries, 1, generator=data) < 0.5,
            z,
            torch.randint(K, (args.queries, 1), generator=data),
        )
        target = E.current_targets(circuit, layer, z, w, x, y, normalize=True).float()
        loss = (net(layer, z, w) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 1000 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}")
    train_seconds = time.perf_counter() - start

    # --- our sampler on your network: physical currents from (layer, z states, w states)
    def currents(layer: int, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        B, S = z.shape[0], w.shape[0]
        zz, ww = z.repeat_interleave(S, 0), w.repeat(B, 1)
        layers = torch.full((B * S,), layer, dtype=torch.int64)
        scale = torch.exp(circuit.log_current_scale(layers, zz, ww))
        return (net(layers, zz, ww).double() * scale).reshape(B, S)

    field = E.StateField(circuit, currents)
    law = E.exact_output_distribution(field, p)
    x0 = draw(p, args.num_samples)
    samples = E.sample(field, x0, generator=args.seed)
    counts = torch.bincount(samples[:, 0], minlength=K).double()
    result = {
        "tv_exact": 0.5 * float((law.pmf - q).abs().sum()),
        "tv_samples": 0.5 * float((counts / counts.sum() - q).abs().sum()),
        "train_seconds": train_seconds,
    }
    print(
        f"trained {args.steps} steps in {train_seconds:.1f} s; TV to q: exact output law "
        f"{result['tv_exact']:.4f}, {args.num_samples} samples {result['tv_samples']:.4f}"
    )
    return result


if __name__ == "__main__":
    main()
