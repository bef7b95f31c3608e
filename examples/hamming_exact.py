"""Exact ECD2G on a Hamming circuit: 8 binary coordinates, every move local.

A ``HammingCircuit`` joins a state only to itself and to the states one coordinate away, so a
walker at ``(l, z)`` chooses among ``2 (1 + D (K-1))`` edges and the sink, not among all ``K**D``
states of two layers. The exact field of a source and a target pmf carries one to the other
exactly: the bidirectional walk's output law equals ``q`` to rounding, for any number of layers,
also fewer than ``D`` (walkers then zigzag). The forward-only walk of the paper's inference is
biased. Prints both laws' distance to ``q``, the expected number of moves, and the TV of samples
drawn with each sampler backend.

    python examples/hamming_exact.py [--dim 8] [--num-layers 4] [--num-samples 100000] [--seed 0]

Task: ``p`` a product of independent biased bits, ``q`` a mixture of two such products (two
"prototypes" with 10% bit noise), both on ``{0, 1}^D``.
"""

from __future__ import annotations

import argparse
import time

import torch

import ecd2g_fast as E


def product_of_bits(bit_probabilities: torch.Tensor) -> torch.Tensor:
    """``(M,)`` float64 pmf of independent bits with ``P(z_c = 1) = bit_probabilities[c]`` (row-major states)."""
    pmf = torch.ones(1, dtype=torch.float64)
    for prob in bit_probabilities.tolist():
        pmf = torch.outer(pmf, torch.tensor([1 - prob, prob], dtype=torch.float64)).reshape(-1)
    return pmf


def make_task(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ``p`` and target ``q`` on ``{0, 1}^dim``, (M,) float64 each (module docstring)."""
    p = product_of_bits(torch.full((dim,), 0.3, dtype=torch.float64))
    first = torch.tensor([0.9 if c % 2 else 0.1 for c in range(dim)], dtype=torch.float64)
    q = 0.6 * product_of_bits(first) + 0.4 * product_of_bits(1 - first)
    return p, q


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=8, help="D, binary coordinates (M = 2**D states)")
    parser.add_argument("--num-layers", type=int, default=4, help="L")
    parser.add_argument("--num-samples", type=int, default=100_000, help="walkers per backend")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    circuit = E.HammingCircuit(2, args.dim, args.num_layers)
    p, q = make_task(args.dim)
    field = E.ExactField(circuit, p, q)
    print(
        f"{circuit}: M = {circuit.num_states} states, {circuit.num_neighbours} edges per vertex and direction"
    )

    result: dict[str, float] = {}
    for mode in ("bidirectional", "forward"):
        law = E.exact_output_distribution(field, p, mode)
        result[f"tv_exact_{mode}"] = total_variation(law.pmf, q)
        print(
            f"exact output law, {mode:>13}: TV to q {result[f'tv_exact_{mode}']:.2e}, "
            f"{law.expected_moves:.2f} moves per walker"
        )

    generator = torch.Generator().manual_seed(args.seed)
    x0 = circuit.index_state(torch.multinomial(p, args.num_samples, replacement=True, generator=generator))
    # the floor: TV of num_samples exact draws from q itself
    exact_draws = torch.multinomial(q, args.num_samples, replacement=True, generator=generator)
    floor = total_variation(torch.bincount(exact_draws, minlength=circuit.num_states) / args.num_samples, q)
    print(
        f"samples ({args.num_samples:,} walkers, bidirectional); TV of as many exact draws of q: {floor:.4f}"
    )
    for backend in ("torch", "cpp"):
        start = time.perf_counter()
        try:
            out = E.sample(field, x0, backend=backend, generator=args.seed)
        except ValueError as error:  # the compiled extension is not built
            print(f"  {backend:>5}: skipped ({error})")
            continue
        seconds = time.perf_counter() - start
        freq = torch.bincount(circuit.state_index(out), minlength=circuit.num_states) / args.num_samples
        result[f"tv_samples_{backend}"] = total_variation(freq.double(), q)
        print(f"  {backend:>5}: TV to q {result[f'tv_samples_{backend}']:.4f} in {seconds:.2f} s")
    result["tv_floor"] = floor
    return result


if __name__ == "__main__":
    main()
