"""Fused Triton kernel of the Hamming circuit's target pass, and its launcher.

Loaded by :func:`ecd2g_fast.hamming.targets._triton_module`, once per mode (compiled or
interpreted: ``@triton.jit`` picks the mode when it decorates), so the kernels call only Triton
builtins, never the ``@jit`` helpers of ``triton.language.standard`` (see
``ecd2g_fast/targets/_triton_kernels.py``).

One program handles ``BLOCK_Q`` queries and streams each batch past them in tiles of ``BLOCK_B``
samples. Per query-sample pair: the Hamming distance from bit-packed states (``BITS`` bits per
coordinate, ``32 / BITS`` coordinates per int32 word; XOR, fold each field's bits onto its lowest
one, popcount: for ``K = 2`` one XOR and one popcount per 32 coordinates), the table entry
``Ã_row(h)`` as mantissa and exponent, and the online superposition over the batch (the running
sum is kept at the largest exponent seen so far and rescaled by an exact power of two when a
larger one arrives, as in an online log-sum-exp). For current targets the head ``w``'s distance
comes from the tail's: ``h(w, x) = h(z, x) + [x_d == z_d] - [x_d == w_d]`` with ``d`` the changed
coordinate, one field read per pair.
"""

import torch
import triton
import triton.language as tl

# "No term yet": below every real exponent of the tables (|e| < 2**27), int32 differences safe.
_NO_TERM = tl.constexpr(-(2**30))
# Queries and samples per tile. Conventional sizes, not tuned on a GPU.
_BLOCK_Q = 32
_BLOCK_B = 32


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


# The interpreter recognises tl.standard's combine functions and reduces with numpy (any other
# runs element by element in Python); the compiler needs functions decorated in its own mode.
_sum_combine = _add if isinstance(_add, triton.runtime.JITFunction) else tl.standard._sum_combine
_max_combine = _maximum if isinstance(_maximum, triton.runtime.JITFunction) else tl.standard._elementwise_max


@triton.jit
def _popcount(v):
    """Set bits of each int32 (SWAR; arithmetic shifts are harmless: every mask clears the sign)."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    return v & 0x3F


@triton.jit
def _differing_fields(v, BITS: tl.constexpr, LOW: tl.constexpr):
    """Number of ``BITS``-wide fields of the int32 ``v = a ^ b`` that are not 0."""
    if BITS >= 16:
        v = v | (v >> 8)
    if BITS >= 8:
        v = v | (v >> 4)
    if BITS >= 4:
        v = v | (v >> 2)
    if BITS >= 2:
        v = (v | (v >> 1)) & LOW
    return _popcount(v)


@triton.jit
def _pow2(k):
    """``2.0**k`` for int32 ``k <= 0``, exactly, built from its bits (0.0 for ``k < -1022``)."""
    bits = (tl.maximum(k, -1023) + 1023).to(tl.int64) << 52
    return bits.to(tl.float64, bitcast=True)


@triton.jit
def _accumulate(acc, top, mant, expo, row, dist, valid):
    """Add the tile's terms ``Ã_row(dist)`` to the running sums ``acc * 2**top`` ``(BLOCK_Q,)``."""
    offset = row[:, None] + dist
    m = tl.load(mant + offset, mask=valid, other=0.0)
    e = tl.load(expo + offset, mask=valid, other=_NO_TERM)
    new_top = tl.maximum(top, tl.reduce(e, 1, _max_combine))
    scaled = tl.where(valid, m * _pow2(e - new_top[:, None]), 0.0)
    return acc * _pow2(top - new_top) + tl.reduce(scaled, 1, _sum_combine), new_top


@triton.jit(do_not_specialize=["nx", "ny", "Q"])
def hamming_sums_kernel(
    out_m, out_e, mant, expo, layer_in, z, coord_in, zval_in, wval_in, x, nx, y, ny, Q, L, W, ROW,
    CURRENT: tl.constexpr, BITS: tl.constexpr, PER_WORD: tl.constexpr, LOW: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    """Per query, the kernel sums ``sum_b Ã_row(h(., sample_b))`` over both batches.

    Pointers: ``out_m`` ``(Q, 4)`` float64 and ``out_e`` ``(Q, 4)`` int32: the sums as
    ``out_m * 2**out_e``, columns ``(x, row l, z)``, ``(x, row l+1, w)``, ``(y, row L-l, z)``,
    ``(y, row L-l-1, w)`` (columns 1 and 3 only when ``CURRENT``); ``mant`` ``(L+1, D+1)``
    float64 and ``expo`` int32 (row stride ``ROW = D+1``), the tables; ``layer_in`` ``(Q,)``
    int64; ``z`` ``(Q, W)``, ``x`` ``(nx, W)``, ``y`` ``(ny, W)`` int32 packed states;
    ``coord_in``, ``zval_in``, ``wval_in`` ``(Q,)`` int32: the changed coordinate and the values
    of ``z`` and ``w`` there (``CURRENT`` only).
    """
    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < Q
    layer = tl.load(layer_in + q, mask=qmask, other=0)
    field_mask = (1 << BITS) - 1
    if CURRENT:
        coord = tl.load(coord_in + q, mask=qmask, other=0)
        word = coord // PER_WORD
        shift = (coord % PER_WORD) * BITS
        zval = tl.load(zval_in + q, mask=qmask, other=0)
        wval = tl.load(wval_in + q, mask=qmask, other=0)
    for side in tl.static_range(2):
        if side == 0:
            batch, n = x, nx
            row_z, row_w = layer * ROW, (layer + 1) * ROW
        else:
            batch, n = y, ny
            row_z, row_w = (L - layer) * ROW, (L - layer - 1) * ROW
        acc_z = tl.full([BLOCK_Q], 0.0, tl.float64)
        acc_w = tl.full([BLOCK_Q], 0.0, tl.float64)
        top_z = tl.full([BLOCK_Q], _NO_TERM, tl.int32)
        top_w = tl.full([BLOCK_Q], _NO_TERM, tl.int32)
        for b0 in range(0, n, BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
            bmask = b < n
            valid = qmask[:, None] & bmask[None, :]
            dist = tl.full([BLOCK_Q, BLOCK_B], 0, tl.int32)
            for k in range(0, W):
                zw = tl.load(z + q * W + k, mask=qmask, other=0)
                bw = tl.load(batch + b * W + k, mask=bmask, other=0)
                dist += _differing_fields(zw[:, None] ^ bw[None, :], BITS, LOW)
            acc_z, top_z = _accumulate(acc_z, top_z, mant, expo, row_z, dist, valid)
            if CURRENT:
                bw = tl.load(batch + b[None, :] * W + word[:, None], mask=valid, other=0)
                value = (bw >> shift[:, None]) & field_mask
                dist += (value == zval[:, None]).to(tl.int32) - (value == wval[:, None]).to(tl.int32)
                acc_w, top_w = _accumulate(acc_w, top_w, mant, expo, row_w, dist, valid)
        tl.store(out_m + q * 4 + 2 * side, acc_z, mask=qmask)
        tl.store(out_e + q * 4 + 2 * side, top_z, mask=qmask)
        if CURRENT:
            tl.store(out_m + q * 4 + 2 * side + 1, acc_w, mask=qmask)
            tl.store(out_e + q * 4 + 2 * side + 1, top_w, mask=qmask)


def field_bits(num_categories: int) -> int:
    """Bits per packed coordinate: the least power of two ``>= log2 K`` (1 for ``K = 2``)."""
    needed = max(1, (num_categories - 1).bit_length())
    return 1 << (needed - 1).bit_length()


def pack(states: torch.Tensor, bits: int) -> torch.Tensor:
    """``(N, D)`` int64 states as ``(N, ceil(D / (32 / bits)))`` int32 words; coordinate ``c`` in
    word ``c // (32 / bits)`` at bit ``(c % (32 / bits)) * bits``, unused fields 0."""
    per_word = 32 // bits
    N, D = states.shape
    W = -(-D // per_word)
    padded = torch.zeros(N, W * per_word, dtype=torch.int64, device=states.device)
    padded[:, :D] = states
    shifts = torch.arange(per_word, device=states.device) * bits
    words = (padded.view(N, W, per_word) << shifts).sum(dim=2)  # disjoint fields: sum = or
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()


def batch_sums(circuit, consts, layer, z, w, x, y) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The kernel's weighted sums ``(1/B) sum_b Ã(h)`` as ``(m, e)`` pairs: four for edges
    ``z -> w`` (``w`` not None: tail and head against ``x``, then against ``y``), two for
    potentials (``z`` against ``x``, then ``y``).

    Raises:
        ValueError: ``K > 65536`` (packed fields are at most 16 bits wide).
    """
    from .targets import changed_coordinate

    K, D, L = circuit.num_categories, circuit.dim, circuit.num_layers
    if K > 2**16:
        raise ValueError(f"backend 'triton' for Hamming targets needs num_categories <= 65536, got {K}")
    bits = field_bits(K)
    per_word = 32 // bits
    low = sum(1 << (i * bits) for i in range(per_word)) if bits > 1 else 1
    device = layer.device
    Q = z.shape[0]
    out_m = torch.zeros(Q, 4, dtype=torch.float64, device=device)
    out_e = torch.zeros(Q, 4, dtype=torch.int32, device=device)
    if Q == 0:
        return [(out_m[:, 0], out_e[:, 0].long())] * (4 if w is not None else 2)
    current = w is not None
    if current:
        coord, zval, wval = (t.to(torch.int32).contiguous() for t in changed_coordinate(z, w))
    else:
        coord = zval = wval = out_e
    packed_z, packed_x, packed_y = (pack(t, bits) for t in (z, x, y))
    grid = (triton.cdiv(Q, _BLOCK_Q),)
    hamming_sums_kernel[grid](
        out_m,
        out_e,
        consts.mantissa.contiguous(),
        consts.exponent.to(torch.int32).contiguous(),
        layer.contiguous(),
        packed_z,
        coord,
        zval,
        wval,
        packed_x,
        x.shape[0],
        packed_y,
        y.shape[0],
        Q,
        L,
        packed_z.shape[1],
        D + 1,
        CURRENT=current,
        BITS=bits,
        PER_WORD=per_word,
        LOW=low,
        BLOCK_Q=_BLOCK_Q,
        BLOCK_B=_BLOCK_B,
    )
    weights = (1.0 / x.shape[0], 1.0 / x.shape[0], 1.0 / y.shape[0], 1.0 / y.shape[0])
    columns = (0, 1, 2, 3) if current else (0, 2)
    return [(out_m[:, c] * weights[c], out_e[:, c].to(torch.int64)) for c in columns]
