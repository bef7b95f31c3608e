"""benchmarks/edge_consistency.py: a scalar head's two edge ends agree (a potential), a ratio
head's need not; the reverse slot leads back."""

from __future__ import annotations

import torch

from benchmarks import edge_consistency as bench
from ecd2g_fast.hamming import HammingCircuit, HammingNet


def test_reverse_slot_leads_back_for_every_slot():
    c = HammingCircuit(3, 4, 2)
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 3, (c.num_neighbours, 4), generator=g)
    slot = torch.arange(c.num_neighbours)
    w = c.apply_slot(z, slot)
    assert torch.equal(c.apply_slot(w, bench.reverse_slot(c, z, w)), z)


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
