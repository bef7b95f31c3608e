"""Triton kernel of the current-target pass; loaded only by :mod:`ecd2g_fast.targets.triton`.

``@triton.jit`` chooses between compiling and interpreting (``TRITON_INTERPRET``) when it
decorates, so the launcher loads this file once per mode instead of importing it. For the same
reason the kernels call only Triton builtins (``tl.full``, ``tl.reduce``, ...), never the
``@jit`` helpers of ``triton.language.standard`` (``tl.sum``, ``tl.zeros_like``): those were
decorated in whatever mode was active when ``triton`` was first imported.

Kernel argument names must not clash with the locals of the launcher Triton generates
(``params``, ``options``, ``backend``, ``specialization``, ...): such an argument fails every
compiled launch ("failed to specialize argument of type: dict"), and the interpreter never shows it.
"""

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


# tl.sum's combine function: the interpreter recognises it and sums with numpy; any other combine
# function runs element by element in Python (a hashed pass of 257 queries: 25 s instead of 0.8 s).
# The compiled module must not take it from tl.standard, though: if triton was first imported under
# TRITON_INTERPRET, that one is an interpreted function, which the compiler rejects.
_sum_combine = (
    _add if isinstance(_add, triton.runtime.JITFunction) else getattr(tl.standard, "_sum_combine", _add)
)


@triton.jit
def _rows_equal(a_ptr, a_row, b_ptr, b_row, D, mask, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    # a_row, b_row: (BLOCK_Q,) int64 row indices; lanes outside mask compare as unequal.
    ndiff = tl.full([BLOCK_Q], 0, tl.int32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m = mask[:, None] & (d < D)[None, :]
        va = tl.load(a_ptr + a_row[:, None] * D + d[None, :], mask=m, other=0)
        vb = tl.load(b_ptr + b_row[:, None] * D + d[None, :], mask=m, other=0)
        ndiff += tl.reduce((va != vb).to(tl.int32), 1, _sum_combine)
    return mask & (ndiff == 0)


@triton.jit
def _row_keys(rows_ptr, r, D, weights, mask, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """``(BLOCK_Q,)`` int64 exact keys ``sum_d rows[r, d] * weights[d]`` of the rows ``r``."""
    key = tl.full([BLOCK_Q], 0, tl.int64)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        inside = d < D
        v = tl.load(rows_ptr + r[:, None] * D + d[None, :], mask=mask[:, None] & inside[None, :], other=0)
        weight = tl.load(weights + d, mask=inside, other=0)
        key += tl.reduce(v * weight[None, :], 1, _sum_combine)
    return key


# Sizes are runtime arguments: specialising them (Triton makes ints equal to 1 constants and
# compiles a variant per divisibility by 16) would recompile for new batch sizes, and for every
# new number of runs with hashed keys.
@triton.jit(do_not_specialize=["nx", "ny"])
def count_table_kernel(
    table, x, nx, y, ny, weights, M, D, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Histogram of both batches by exact key: ``table`` ``(2, M)`` int32, zeroed by the caller;
    rows ``[0, nx)`` of the grid are ``x`` (row 0 of the table), the next ``ny`` are ``y``."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    in_x = r < nx
    in_y = (r >= nx) & (r - nx < ny)  # not r < nx + ny: that sum is int32
    kx = _row_keys(x, r, D, weights, in_x, BLOCK_Q, BLOCK_D)
    ky = _row_keys(y, r - nx, D, weights, in_y, BLOCK_Q, BLOCK_D)
    one = tl.full([BLOCK_Q], 1, tl.int32)
    # a histogram needs no ordering: relaxed atomics compile to fire-and-forget reductions
    tl.atomic_add(table + kx, one, mask=in_x, sem="relaxed")
    tl.atomic_add(table + M + ky, one, mask=in_y, sem="relaxed")


@triton.jit
def _count(
    key, q, q_rows, mask, keys, counts, length, num_iter, rep, amb, rows, D,
    HASHED: tl.constexpr, DENSE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """How many rows of one batch equal each query: ``(count, flag)``, ``(BLOCK_Q,)``.

    ``DENSE``: ``counts`` is the batch's ``(M,)`` int32 count table, indexed by the exact key.
    Otherwise ``keys`` holds ``length`` sorted keys, searched in ``num_iter = bit_length(length)``
    halvings: exact keys are all ``B`` keys (count = upper bound - lower bound); hashed keys are
    run keys with their lengths in ``counts``, ``rep`` (first row of each run), ``amb`` (int8
    ambiguous-run flags) and ``rows`` (the batch, ``(B, D)``) for verification against the query
    rows ``q_rows[q]``; ``flag`` marks queries needing an exact recount (hashed keys only).
    """
    if DENSE:
        count = tl.load(counts + key, mask=mask, other=0).to(tl.int64)
        flag = mask & (count < 0)
    else:
        lo = tl.full([BLOCK_Q], 0, tl.int64)
        hi = lo + length
        for _ in range(num_iter):
            active = mask & (lo < hi)
            mid = (lo + hi) // 2
            v = tl.load(keys + mid, mask=active, other=0)
            lo = tl.where(active & (v < key), mid + 1, lo)
            hi = tl.where(active & (v >= key), mid, hi)
        if HASHED:
            inside = mask & (lo < length)
            key_hit = inside & (tl.load(keys + lo, mask=inside, other=0) == key)
            count = tl.load(counts + lo, mask=key_hit, other=0)
            first = tl.load(rep + lo, mask=key_hit, other=0)
            count = tl.where(_rows_equal(q_rows, q, rows, first, D, key_hit, BLOCK_Q, BLOCK_D), count, 0)
            flag = key_hit & (tl.load(amb + lo, mask=key_hit, other=0) != 0)
        else:
            upper = lo
            hi = tl.full([BLOCK_Q], 0, tl.int64) + length
            for _ in range(num_iter):
                active = mask & (upper < hi)
                mid = (upper + hi) // 2
                v = tl.load(keys + mid, mask=active, other=0)
                upper = tl.where(active & (v <= key), mid + 1, upper)
                hi = tl.where(active & (v > key), mid, hi)
            count = upper - lo
            flag = mask & (count < 0)
    return count, flag


@triton.jit
def _potential(layer, count_x, count_y, nx, ny, a, b, s, uniform, mask):
    # Same operation order as reference.potential_from_counts.
    a_l = tl.load(a + layer, mask=mask, other=0.0)
    b_l = tl.load(b + layer, mask=mask, other=0.0)
    p_hat = count_x.to(tl.float64) / nx
    q_hat = count_y.to(tl.float64) / ny
    return -layer.to(tl.float64) * s + a_l * (p_hat - uniform) - b_l * (q_hat - uniform)


@triton.jit
def _log_term(row, column: tl.constexpr, count, n, mask):
    """``row[column] + log(count / n)`` (``-inf`` for a count of 0): a log-term with its frequency."""
    return tl.load(row + column, mask=mask, other=0.0) + tl.log(count.to(tl.float64) / n)


@triton.jit
def _signed_exp_sum(m, positive, negative):
    """reference.signed_exp_sum of the terms' sums ``sum exp(t - m)``, ``m`` their maximum."""
    total = positive - negative
    return tl.where(total == 0.0, 0.0, total * tl.exp(m))


@triton.jit
def _normalized_potential(terms, layer, count_x, count_y, nx, ny, mask):
    """reference.potential_from_counts with ``normalize``: ``+ [beta_l, M alpha_l p] - [alpha_l, M beta_l q]``
    from the ``(L+1, 4)`` log-terms ``terms``."""
    row = terms + layer * 4
    t0 = tl.load(row, mask=mask, other=0.0)
    t1 = _log_term(row, 1, count_x, nx, mask)
    t2 = tl.load(row + 2, mask=mask, other=0.0)
    t3 = _log_term(row, 3, count_y, ny, mask)
    m = tl.maximum(tl.maximum(t0, t1), tl.maximum(t2, t3))
    return _signed_exp_sum(m, tl.exp(t0 - m) + tl.exp(t1 - m), tl.exp(t2 - m) + tl.exp(t3 - m))


@triton.jit
def _normalized_current(terms, layer, cxz, cyz, cxw, cyw, nx, ny, mask):
    """reference.current_from_counts with ``normalize``, from the ``(L, 9)`` log-terms ``terms``:
    ``+ [s, b_l/M, a_{l+1}/M, a_l p(z), b_{l+1} q(w)] - [a_l/M, b_{l+1}/M, b_l q(z), a_{l+1} p(w)]``."""
    row = terms + layer * 9
    t0 = tl.load(row, mask=mask, other=0.0)
    t1 = tl.load(row + 1, mask=mask, other=0.0)
    t2 = tl.load(row + 2, mask=mask, other=0.0)
    t3 = _log_term(row, 3, cxz, nx, mask)
    t4 = _log_term(row, 4, cyw, ny, mask)
    t5 = tl.load(row + 5, mask=mask, other=0.0)
    t6 = tl.load(row + 6, mask=mask, other=0.0)
    t7 = _log_term(row, 7, cyz, ny, mask)
    t8 = _log_term(row, 8, cxw, nx, mask)
    m = tl.maximum(tl.maximum(tl.maximum(t0, t1), tl.maximum(t2, t3)), t4)
    m = tl.maximum(m, tl.maximum(tl.maximum(t5, t6), tl.maximum(t7, t8)))
    positive = tl.exp(t0 - m) + tl.exp(t1 - m) + tl.exp(t2 - m) + tl.exp(t3 - m) + tl.exp(t4 - m)
    negative = tl.exp(t5 - m) + tl.exp(t6 - m) + tl.exp(t7 - m) + tl.exp(t8 - m)
    return _signed_exp_sum(m, positive, negative)


@triton.jit(do_not_specialize=["xlen", "xiter", "nx", "ylen", "yiter", "ny", "Q"])
def targets_kernel(
    out, flag_out, scalars, a, b, terms, layer_in, zk, z, wk, w,
    xk, xc, xlen, xiter, xrep, xamb, x, nx,
    yk, yc, ylen, yiter, yrep, yamb, y, ny,
    Q, D,
    CURRENT: tl.constexpr, HASHED: tl.constexpr, DENSE: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One query per lane: four counts, then eq. (12) (potential) or (13) (current), physical or
    (``NORMALIZE``) normalised.

    Pointers: ``out`` ``(Q,)`` float64; ``flag_out`` ``(Q,)`` int8 (hashed keys only);
    ``scalars`` float64 ``(s, 1/M, g, G)`` (a float scalar argument would be float32); ``a``,
    ``b`` ``(L+1,)`` float64; ``terms`` the float64 log-terms of the normalised targets
    (``Circuit.current_terms`` ``(L, 9)`` or ``Circuit.potential_terms`` ``(L+1, 4)``; read only
    with ``NORMALIZE``); ``layer_in`` ``(Q,)``; ``zk``, ``wk`` ``(Q,)`` int64 keys of the
    ``(Q, D)`` states ``z``, ``w`` (``w`` unused unless ``CURRENT``), or with ``DENSE`` both the
    ``(D,)`` exact-key weights (the keys are computed here); per batch ``x`` / ``y``
    ``(B, D)``: the arguments of :func:`_count` (keys, counts or count table, searched length,
    search steps, first row and ambiguous flag of each run, the rows) and the batch size.
    """
    q = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask = q < Q
    s = tl.load(scalars)
    uniform = tl.load(scalars + 1)
    layer = tl.load(layer_in + q, mask=mask, other=0)
    if DENSE:  # exact keys, computed here: zk, wk are the (D,) key weights
        kz = _row_keys(z, q, D, zk, mask, BLOCK_Q, BLOCK_D)
    else:
        kz = tl.load(zk + q, mask=mask, other=0)
    cxz, fxz = _count(kz, q, z, mask, xk, xc, xlen, xiter, xrep, xamb, x, D, HASHED, DENSE, BLOCK_Q, BLOCK_D)
    cyz, fyz = _count(kz, q, z, mask, yk, yc, ylen, yiter, yrep, yamb, y, D, HASHED, DENSE, BLOCK_Q, BLOCK_D)
    flag = fxz | fyz
    if CURRENT:
        if DENSE:
            kw = _row_keys(w, q, D, wk, mask, BLOCK_Q, BLOCK_D)
        else:
            kw = tl.load(wk + q, mask=mask, other=0)
        cxw, fxw = _count(
            kw, q, w, mask, xk, xc, xlen, xiter, xrep, xamb, x, D, HASHED, DENSE, BLOCK_Q, BLOCK_D
        )
        cyw, fyw = _count(
            kw, q, w, mask, yk, yc, ylen, yiter, yrep, yamb, y, D, HASHED, DENSE, BLOCK_Q, BLOCK_D
        )
        flag = flag | fxw | fyw
        if NORMALIZE:  # C(z, w) cancels
            result = _normalized_current(terms, layer, cxz, cyz, cxw, cyw, nx, ny, mask)
        else:
            phi_z = _potential(layer, cxz, cyz, nx, ny, a, b, s, uniform, mask)
            phi_w = _potential(layer + 1, cxw, cyw, nx, ny, a, b, s, uniform, mask)
            same = mask & (kz == kw)
            if HASHED:
                same = _rows_equal(z, q, w, q, D, same, BLOCK_Q, BLOCK_D)
            conductance = tl.where(same, tl.load(scalars + 2), tl.load(scalars + 3))
            result = conductance * (phi_z - phi_w)
    elif NORMALIZE:
        result = _normalized_potential(terms, layer, cxz, cyz, nx, ny, mask)
    else:
        result = _potential(layer, cxz, cyz, nx, ny, a, b, s, uniform, mask)
    tl.store(out + q, result, mask=mask)
    if HASHED:
        tl.store(flag_out + q, flag.to(tl.int8), mask=mask)
