"""benchmarks/edge_consistency.py: a scalar head's two edge ends agree (a potential), a ratio
head's need not."""

from __future__ import annotations

import torch

from benchmarks import edge_consistency as bench
from ecd2g_fast.hamming import HammingCircuit, HammingNet


def test_scalar_heads_agree_across_edges_and_ratio_heads_need_not():
    c = HammingCircuit(2, 6, 4)
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 2, (40, 6), generator=g)
    layer = torch.randint(0, 4, (40,), generator=g)
    slot = torch.randint(0, c.num_neighbours, (40,), generator=g)
    mismatches = {}
    for head in ("scalar", "ratios"):
        torch.manual_seed(0)
        net = HammingNet(c, width=16, depth=1, head=head)
        with torch.no_grad():
            for name, parameter in net.named_parameters():
                if "head" in name:
                    parameter.normal_(0, 0.5)
        forward, mismatch = bench.edge_disagreement(net.eval().field(), layer, z, slot)
        assert bool(forward.abs().max() > 0.01)
        mismatches[head] = float(mismatch.abs().max())
    assert mismatches["scalar"] < 1e-5 and mismatches["ratios"] > 0.1, mismatches


def test_walk_edges_follow_the_positive_currents_and_agree_for_a_scalar_head():
    """Edges drawn as the walk draws them have a positive out-current (either direction, none
    from a vertex that only flows into the sink), and a scalar head's two ends agree on them."""
    c = HammingCircuit(3, 4, 3)
    g = torch.Generator().manual_seed(2)
    z = torch.randint(0, 3, (60, 4), generator=g)
    layer = torch.randint(0, 4, (60,), generator=g)
    torch.manual_seed(0)
    field = HammingNet(c, width=16, depth=1).eval().field()
    with torch.no_grad():
        for parameter in field.net.parameters():
            parameter.normal_(0, 0.3)
    keep, direction, slot = bench.walk_edges(field, layer, z, g)
    currents = field.outlet_currents(layer, z, "bidirectional")[:, : 2 * c.num_neighbours]
    assert bool((currents[keep].gather(1, (direction * c.num_neighbours + slot)[:, None]) > 0).all())
    assert not bool((currents[~keep] > 0).any())
    assert bool((direction[layer[keep] == 0] == 0).all()) and bool((direction[layer[keep] == 3] == 1).all())
    d, mismatch = bench.edge_disagreement(field, layer[keep], z[keep], slot, direction)
    assert bool(d.abs().max() > 0.01) and float(mismatch.abs().max()) < 1e-5
    # backward edges too (every vertex above layer 0)
    up = layer > 0
    slot = torch.randint(0, c.num_neighbours, (int(up.sum()),), generator=g)
    d, mismatch = bench.edge_disagreement(field, layer[up], z[up], slot, torch.ones_like(slot))
    assert bool(d.abs().max() > 0.01) and float(mismatch.abs().max()) < 1e-5
