// Per-walker bodies of the sampler ops (one move of Definition 3.1), shared by the CPU ops
// (csrc/cpu/sampler_cpu.cpp, one walker per loop iteration) and the CUDA kernels
// (csrc/cuda/sampler_cuda.cu, one walker per thread); the op wrappers around them are in
// csrc/sampler_ops.h. Header-only and free of torch.
//
// Outlet codes, as in ecd2g_fast/sampling/reference.py, over the N neighbour slots of a vertex:
// k in [0, N) is the edge to (l+1, w_k), N + k the edge to (l-1, w_k), 2N the sink at layer L. On
// the complete circuit N = M and w_k = k; on a Hamming circuit see HammingEdges.
#pragma once

#include <cmath>
#include <cstdint>

#include "philox.h"

namespace ecd2g {

// Bit flags of the per-walker status output.
constexpr int32_t kStatusNonFinite = 1;  // a non-finite current (or potential) was seen
constexpr int32_t kStatusNoOutflow = 2;  // the walker's vertex has no positive out-current
constexpr int32_t kStatusBadIndex = 4;   // a layer, state or row index out of range (caller bug)

ECD2G_HOST_DEVICE bool is_finite(double x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

ECD2G_HOST_DEVICE double positive_part(double x) { return x > 0.0 ? x : 0.0; }

// One chunk of the streaming weighted reservoir for one walker (reference.OutletDraw.consume).
// `weights` holds the n contiguous currents of the chunk (negated when `negate`); their positive
// parts have mass S. With running total T before the chunk, the draw moves into the chunk with
// probability S / (T + S) (uniform u0) and then to entry j with probability w_j / S (inverse CDF
// with uniform u1, a linear scan). Non-finite currents set kStatusNonFinite and leave the
// walker's total and choice untouched.
template <typename scalar_t>
ECD2G_HOST_DEVICE void consume_chunk_row(const scalar_t* weights, int64_t n, bool negate, int64_t outlet_offset,
                                         Uniform2 u, double* total, int64_t* choice, int32_t* status) {
  const double sign = negate ? -1.0 : 1.0;
  // two interleaved sums each: the pass is bound by the add latency otherwise
  double mass0 = 0.0, mass1 = 0.0, raw0 = 0.0, raw1 = 0.0;
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const double x0 = sign * static_cast<double>(weights[j]), x1 = sign * static_cast<double>(weights[j + 1]);
    mass0 += positive_part(x0);
    mass1 += positive_part(x1);
    raw0 += x0;  // any nan or inf among the x makes the raw sums non-finite
    raw1 += x1;
  }
  if (j < n) {
    const double x = sign * static_cast<double>(weights[j]);
    mass0 += positive_part(x);
    raw0 += x;
  }
  if (!is_finite(raw0 + raw1)) {
    *status |= kStatusNonFinite;
    return;
  }
  const double mass = mass0 + mass1;
  if (!(mass > 0.0)) return;
  const double new_total = *total + mass;
  *total = new_total;
  if (!(u.u0 * new_total < mass)) return;
  const double target = u.u1 * mass;
  double cumulative = 0.0;
  int64_t pick = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double x = positive_part(sign * static_cast<double>(weights[i]));
    cumulative += x;
    pick = x > 0.0 ? i : pick;  // branch-free: signs of currents come in no predictable order
    if (cumulative > target) break;
  }
  *choice = outlet_offset + pick;  // pick >= 0: mass > 0 means some x > 0
}

// Sum over w of max(phi0 - row[w], 0), and the plain sum of the differences (finiteness check),
// with four accumulators: the reduction is the hot loop of the potential op, and one accumulator
// would serialise it on the add latency. The order is fixed, so the result is deterministic.
ECD2G_HOST_DEVICE double positive_drop_sum(const double* row, int64_t M, double phi0, double* raw) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, r0 = 0.0, r1 = 0.0;
  int64_t w = 0;
  for (; w + 4 <= M; w += 4) {
    const double d0 = phi0 - row[w], d1 = phi0 - row[w + 1], d2 = phi0 - row[w + 2], d3 = phi0 - row[w + 3];
    s0 += positive_part(d0);
    s1 += positive_part(d1);
    s2 += positive_part(d2);
    s3 += positive_part(d3);
    r0 += d0 + d1;
    r1 += d2 + d3;
  }
  for (; w < M; ++w) {
    const double d = phi0 - row[w];
    s0 += positive_part(d);
    r0 += d;
  }
  *raw = r0 + r1;
  return (s0 + s1) + (s2 + s3);
}

// Scan the out-currents C(z, w) max(phi0 - row[w], 0), C = G + e [w == z], in order of w, adding
// them to `cumulative`; return the first w at which `cumulative` exceeds `target`, or -1 (then
// `last_positive` holds the last w with positive weight, or stays unchanged). Branch-free in the
// sign of the drop: about half the drops are positive in no predictable order, and a branch on
// it cost more than the rest of the scan (measured, K=12 D=2).
ECD2G_HOST_DEVICE int64_t scan_drops(const double* row, int64_t M, double phi0, int64_t z, double G, double e,
                                     double target, double* cumulative, int64_t* last_positive) {
  double c = *cumulative;
  int64_t last = *last_positive;
  for (int64_t w = 0; w < M; ++w) {
    const double x = positive_part(phi0 - row[w]) * (w == z ? G + e : G);
    c += x;
    last = x > 0.0 ? w : last;
    if (c > target) {
      *cumulative = c;
      *last_positive = last;
      return w;
    }
  }
  *cumulative = c;
  *last_positive = last;
  return -1;
}

// The local edges of a Hamming circuit (ecd2g_fast/hamming/circuit.py): from state z, slot 0 is z
// itself (the stay edge, conductance g) and slot 1 + c (K-1) + t is z with coordinate c (0 the most
// significant) set to its t-th other value in increasing order (conductance G). Outlet codes over
// the N = 1 + D (K-1) slots: k forward, N + k backward, 2N the sink.
struct HammingEdges {
  int64_t K, D, M;
  double g, G;

  ECD2G_HOST_DEVICE int64_t num_slots() const { return 1 + D * (K - 1); }

  // Adds C max(phi0 - row[w], 0) over the slots of z to `cumulative`, in slot order, and the raw
  // drops to `raw` (finiteness check). With `stop_at`, returns the first slot at which the sum
  // exceeds `target` (else -1); `last_positive` tracks the last slot of positive weight.
  ECD2G_HOST_DEVICE int64_t scan(const double* row, int64_t z, double phi0, bool stop_at, double target,
                                 double* cumulative, int64_t* last_positive, double* raw) const {
    double c = *cumulative, r = 0.0;
    int64_t last = *last_positive, slot = 0, found = -1;
    const double stay = phi0 - row[z];
    r += stay;
    c += g * positive_part(stay);
    last = stay > 0.0 ? 0 : last;
    if (stop_at && c > target) found = 0;
    int64_t place = M;
    for (int64_t coordinate = 0; coordinate < D && found < 0; ++coordinate) {
      place /= K;
      const int64_t digit = (z / place) % K;
      const int64_t base = z - digit * place;
      for (int64_t value = 0; value < K; ++value) {
        if (value == digit) continue;
        ++slot;
        const double drop = phi0 - row[base + value * place];
        r += drop;
        c += G * positive_part(drop);
        last = drop > 0.0 ? slot : last;
        if (stop_at && c > target) {
          found = slot;
          break;
        }
      }
    }
    *cumulative = c;
    *last_positive = last;
    *raw += r;
    return found;
  }

  ECD2G_HOST_DEVICE double total(const double* row, int64_t z, double phi0, double* raw) const {
    double sum = 0.0;
    int64_t last = -1;
    scan(row, z, phi0, false, 0.0, &sum, &last, raw);
    return sum;
  }

  ECD2G_HOST_DEVICE int64_t find(const double* row, int64_t z, double phi0, double target, double* cumulative,
                                 int64_t* last_positive) const {
    double raw = 0.0;
    return scan(row, z, phi0, true, target, cumulative, last_positive, &raw);
  }
};

// The all-to-all edges of the complete circuit: slot k of every state is state k, conductance
// G + e for the stay edge (w == z) and G otherwise.
struct CompleteEdges {
  int64_t M;
  double G, e;

  ECD2G_HOST_DEVICE int64_t num_slots() const { return M; }

  // The out-current of (l, z) towards the row's layer, sum_w C max(phi0 - row[w], 0); the raw
  // drops are added to `raw` (finiteness check).
  ECD2G_HOST_DEVICE double total(const double* row, int64_t z, double phi0, double* raw) const {
    double r = 0.0;
    const double sum = G * positive_drop_sum(row, M, phi0, &r) + e * positive_part(phi0 - row[z]);
    *raw += r;
    return sum;
  }

  // The first slot at which the running sum exceeds `target`, or -1 (scan_drops).
  ECD2G_HOST_DEVICE int64_t find(const double* row, int64_t z, double phi0, double target, double* cumulative,
                                 int64_t* last_positive) const {
    return scan_drops(row, M, phi0, z, G, e, target, cumulative, last_positive);
  }
};

// One move of one walker at (l, z) of a potential field, currents by Ohm's law from the table
// phi (L+1, M), row-major, along the edges of `Edges` (CompleteEdges or HammingEdges): forward
// weights C max(phi[l, z] - phi[l+1, w], 0) over the slots of z, backward weights likewise against
// layer l-1, and the sink weight max(sink[z], 0) at layer L. Two passes over the two neighbour
// rows: the group totals, then a scan of the chosen group for the inverse CDF at u * total. No
// weight is stored. Returns a status; writes the slot outlet code when it is 0.
template <class Edges>
ECD2G_HOST_DEVICE int32_t potential_move_row(const double* phi, const double* sink, int64_t L, const Edges& edges,
                                             int64_t l, int64_t z, bool bidirectional, double u, int64_t* outlet) {
  const int64_t M = edges.M, N = edges.num_slots();
  if (l < 0 || l > L || z < 0 || z >= M) return kStatusBadIndex;
  const double phi0 = phi[l * M + z];
  if (!is_finite(phi0)) return kStatusNonFinite;
  const bool has_forward = l < L, has_backward = bidirectional && l > 0, has_sink = bidirectional && l == L;
  const double* next = phi + (l + 1) * M;
  const double* prev = phi + (l - 1) * M;
  double forward = 0.0, backward = 0.0, sink_weight = 0.0, raw = 0.0;
  if (has_forward) forward = edges.total(next, z, phi0, &raw);
  if (has_backward) backward = edges.total(prev, z, phi0, &raw);
  if (!is_finite(raw)) return kStatusNonFinite;
  if (has_sink) {
    if (!is_finite(sink[z])) return kStatusNonFinite;
    sink_weight = positive_part(sink[z]);
  }
  const double total = forward + backward + sink_weight;
  if (!(total > 0.0)) return kStatusNoOutflow;
  const double target = u * total;
  // Scan only the group the target falls in; rounding differences between the totals and the
  // running sums of the scan are absorbed by falling back to the last positive outlet.
  double cumulative = 0.0;
  int64_t last = -1;
  if (has_forward && forward > 0.0 && target < forward) {
    const int64_t k = edges.find(next, z, phi0, target, &cumulative, &last);
    *outlet = k >= 0 ? k : last;
    return 0;
  }
  cumulative = forward;
  if (has_backward && backward > 0.0 && (target < forward + backward || sink_weight <= 0.0)) {
    const int64_t k = edges.find(prev, z, phi0, target, &cumulative, &last);
    *outlet = N + (k >= 0 ? k : last);
    return 0;
  }
  if (sink_weight > 0.0) {
    *outlet = 2 * N;
    return 0;
  }
  // Only the forward group has mass but the target rounded past it.
  cumulative = 0.0;
  edges.find(next, z, phi0, total, &cumulative, &last);
  *outlet = last;
  return 0;
}

// One move of one walker with the O(log M) tables of ecd2g_fast/sampling/potential.py
// (PotentialTables; all row-major, float64 unless noted): phi (L+1, M), order (L+1, M) int64,
// reference (L+1,), prefix (L+1, M+1), count (L+1, M, 2) int64, masses (L+1, M, 5). Same arithmetic
// as PotentialTables.draw: pick one of the five groups with u0, then for a lateral group the
// smallest j in [1, k] with F(j) = j (phi - c_m) - P[m, j] > u1 F(k) by binary search.
ECD2G_HOST_DEVICE int32_t sorted_move_row(const double* phi, const int64_t* order, const double* reference,
                                          const double* prefix, const int64_t* count, const double* masses,
                                          int64_t L, int64_t M, int64_t l, int64_t z, Uniform2 u,
                                          int64_t* outlet) {
  if (l < 0 || l > L || z < 0 || z >= M) return kStatusBadIndex;
  const int64_t vertex = l * M + z;
  const double* mass = masses + vertex * 5;
  double cumulative[5];
  double running = 0.0;
  for (int g = 0; g < 5; ++g) {
    running += mass[g];
    cumulative[g] = running;
  }
  const double total = cumulative[4];
  if (!is_finite(total)) return kStatusNonFinite;
  if (!(total > 0.0)) return kStatusNoOutflow;
  const double target = u.u0 * total;
  int group = 0;
  while (group < 4 && cumulative[group] <= target) ++group;
  if (!(mass[group] > 0.0)) {  // rounding put the target at the very top
    group = 4;
    while (!(mass[group] > 0.0)) --group;
  }
  if (group == 1 || group == 3 || group == 4) {
    *outlet = group == 1 ? z : (group == 3 ? M + z : 2 * M);
    return 0;
  }
  const bool backward = group == 2;
  const int64_t m = backward ? l - 1 : l + 1;
  const int64_t k = count[vertex * 2 + (backward ? 1 : 0)];
  if (m < 0 || m > L || k < 1 || k > M) return kStatusBadIndex;  // tables inconsistent with phi
  const double shifted = phi[vertex] - reference[m];
  const double* P = prefix + m * (M + 1);
  const double t = u.u1 * (static_cast<double>(k) * shifted - P[k]);
  int64_t lo = 1, hi = k;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<double>(mid) * shifted - P[mid] > t) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  *outlet = order[m * M + lo - 1] + (backward ? M : 0);
  return 0;
}

// One op call's arguments as raw pointers, with the body of walker (or row) i of the call as
// operator(): the CPU ops call it in a parallel loop, the CUDA kernel once per thread. The
// random stream of walker i is uniform2(seed, offset, row) with row its row in the move's batch.

// consume_outlets: row i of the (n, cols) chunk `weights` belongs to walker rows[i] of the batch.
template <typename scalar_t>
struct ConsumeOutletsOp {
  const scalar_t* weights;
  const int64_t* rows;
  int64_t cols;
  bool negate;
  int64_t outlet_offset, seed, offset;
  double* total;
  int64_t* choice;
  int32_t* status;

  ECD2G_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t row = rows[i];
    consume_chunk_row<scalar_t>(weights + i * cols, cols, negate, outlet_offset, uniform2(seed, offset, row),
                                total + row, choice + row, status + row);
  }
};

// potential_move: walker i at (layer[i], z[i]) of the potential table phi (L+1, M).
struct PotentialMoveOp {
  const double* phi;
  const double* sink;
  const int64_t* layer;
  const int64_t* z;
  int64_t L, M;
  double G, e;
  bool bidirectional;
  int64_t seed, offset;
  int64_t* outlet;
  int32_t* status;

  ECD2G_HOST_DEVICE void operator()(int64_t i) const {
    status[i] = potential_move_row(phi, sink, L, CompleteEdges{M, G, e}, layer[i], z[i], bidirectional,
                                   uniform2(seed, offset, i).u0, outlet + i);
  }
};

// hamming_move: walker i at (layer[i], z[i]) of the potential table phi (L+1, M) of a Hamming circuit.
struct HammingMoveOp {
  const double* phi;
  const double* sink;
  const int64_t* layer;
  const int64_t* z;
  int64_t L;
  HammingEdges edges;
  bool bidirectional;
  int64_t seed, offset;
  int64_t* outlet;
  int32_t* status;

  ECD2G_HOST_DEVICE void operator()(int64_t i) const {
    status[i] = potential_move_row(phi, sink, L, edges, layer[i], z[i], bidirectional, uniform2(seed, offset, i).u0,
                                   outlet + i);
  }
};

// potential_move_sorted: walker i at (layer[i], z[i]) with the tables of sorted_move_row.
struct SortedMoveOp {
  const double* phi;
  const int64_t* order;
  const double* reference;
  const double* prefix;
  const int64_t* count;
  const double* masses;
  const int64_t* layer;
  const int64_t* z;
  int64_t L, M, seed, offset;
  int64_t* outlet;
  int32_t* status;

  ECD2G_HOST_DEVICE void operator()(int64_t i) const {
    status[i] = sorted_move_row(phi, order, reference, prefix, count, masses, L, M, layer[i], z[i],
                                uniform2(seed, offset, i), outlet + i);
  }
};

// philox4x32: row i of counters (N, 4) holds four uint32 counter words; out (N, 4) the outputs.
struct Philox4x32Op {
  const int64_t* counters;
  uint64_t key;
  int64_t* out;

  ECD2G_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t* c = counters + 4 * i;
    const Philox4x32Out x =
        philox4x32_10(static_cast<uint32_t>(c[0]), static_cast<uint32_t>(c[1]), static_cast<uint32_t>(c[2]),
                      static_cast<uint32_t>(c[3]), static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
    for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<int64_t>(x.v[k]);
  }
};

}  // namespace ecd2g
