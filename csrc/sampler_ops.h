// The sampler ops on tensors, shared by the CPU (csrc/cpu/sampler_cpu.cpp) and CUDA
// (csrc/cuda/sampler_cuda.cu) implementations: argument checks, contiguous inputs, fresh outputs
// and the per-walker op of csrc/sampler_kernels.h. Only how the walkers are run differs, and
// each implementation supplies that as the policy `Exec`:
//
//   typename Exec::Guard guard(device);  // makes `device` current for the op (CUDA), or nothing
//   Exec::run(n, grain, op);             // op(i) for every i in [0, n): a parallel loop of tasks
//                                        // of `grain` iterations (CPU) or one thread each (CUDA)
//
// and registers the ops for its dispatch key with register_sampler_ops<Exec>.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "sampler_checks.h"
#include "sampler_kernels.h"

namespace ecd2g {

// Walkers per parallel CPU task: about 32k weights of work, so that small batches stay serial
// and large ones split evenly across threads.
inline int64_t grain_for(int64_t work_per_walker) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_walker));
}

template <class Exec>
std::tuple<at::Tensor, at::Tensor, at::Tensor> consume_outlets(const at::Tensor& weights, const at::Tensor& rows,
                                                               const at::Tensor& total, const at::Tensor& choice,
                                                               const at::Tensor& status, int64_t outlet_offset,
                                                               bool negate, int64_t seed, int64_t offset) {
  check_consume_args(weights, rows, total, choice, status);
  const typename Exec::Guard guard(weights.device());
  at::Tensor new_total = total.clone(at::MemoryFormat::Contiguous);
  at::Tensor new_choice = choice.clone(at::MemoryFormat::Contiguous);
  at::Tensor new_status = status.clone(at::MemoryFormat::Contiguous);
  const at::Tensor w = weights.contiguous();
  const at::Tensor r = rows.contiguous();
  const int64_t n = w.size(0), cols = w.size(1);
  if (n == 0 || cols == 0) return {new_total, new_choice, new_status};
  check_rows_range(r, total.size(0));
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "consume_outlets", [&] {
    Exec::run(n, grain_for(cols),
              ConsumeOutletsOp<scalar_t>{w.data_ptr<scalar_t>(), r.data_ptr<int64_t>(), cols, negate, outlet_offset,
                                         seed, offset, new_total.data_ptr<double>(), new_choice.data_ptr<int64_t>(),
                                         new_status.data_ptr<int32_t>()});
  });
  return {new_total, new_choice, new_status};
}

// The outputs of a move op for the walkers `layer` (B,): outlet codes (B,) int64, -1 until
// drawn, and status flags (B,) int32.
inline std::tuple<at::Tensor, at::Tensor> new_move_outputs(const at::Tensor& layer) {
  const int64_t batch = layer.size(0);
  return {at::full({batch}, -1, layer.options()), at::zeros({batch}, layer.options().dtype(at::kInt))};
}

template <class Exec>
std::tuple<at::Tensor, at::Tensor> potential_move(const at::Tensor& phi, const at::Tensor& sink,
                                                  const at::Tensor& layer, const at::Tensor& z, double G, double e,
                                                  bool bidirectional, int64_t seed, int64_t offset) {
  check_potential_args(phi, sink, layer, z);
  const typename Exec::Guard guard(phi.device());
  const at::Tensor phi_c = phi.contiguous(), sink_c = sink.contiguous();
  const at::Tensor layer_c = layer.contiguous(), z_c = z.contiguous();
  auto [outlet, status] = new_move_outputs(layer);
  const int64_t L = phi.size(0) - 1, M = phi.size(1);
  Exec::run(layer.size(0), grain_for(2 * M),
            PotentialMoveOp{phi_c.data_ptr<double>(), sink_c.data_ptr<double>(), layer_c.data_ptr<int64_t>(),
                            z_c.data_ptr<int64_t>(), L, M, G, e, bidirectional, seed, offset,
                            outlet.data_ptr<int64_t>(), status.data_ptr<int32_t>()});
  return {outlet, status};
}

template <class Exec>
std::tuple<at::Tensor, at::Tensor> hamming_move(const at::Tensor& phi, const at::Tensor& sink, const at::Tensor& layer,
                                                const at::Tensor& z, int64_t num_categories, int64_t dim, double g,
                                                double G, bool bidirectional, int64_t seed, int64_t offset) {
  check_hamming_args(phi, sink, layer, z, num_categories, dim);
  const typename Exec::Guard guard(phi.device());
  const at::Tensor phi_c = phi.contiguous(), sink_c = sink.contiguous();
  const at::Tensor layer_c = layer.contiguous(), z_c = z.contiguous();
  auto [outlet, status] = new_move_outputs(layer);
  const HammingEdges edges{num_categories, dim, phi.size(1), g, G};
  Exec::run(layer.size(0), grain_for(2 * edges.num_slots()),
            HammingMoveOp{phi_c.data_ptr<double>(), sink_c.data_ptr<double>(), layer_c.data_ptr<int64_t>(),
                          z_c.data_ptr<int64_t>(), phi.size(0) - 1, edges, bidirectional, seed, offset,
                          outlet.data_ptr<int64_t>(), status.data_ptr<int32_t>()});
  return {outlet, status};
}

template <class Exec>
std::tuple<at::Tensor, at::Tensor> potential_move_sorted(const at::Tensor& phi, const at::Tensor& order,
                                                         const at::Tensor& reference, const at::Tensor& prefix,
                                                         const at::Tensor& count, const at::Tensor& masses,
                                                         const at::Tensor& layer, const at::Tensor& z, int64_t seed,
                                                         int64_t offset) {
  check_sorted_args(phi, order, reference, prefix, count, masses, layer, z);
  const typename Exec::Guard guard(phi.device());
  const at::Tensor phi_c = phi.contiguous(), order_c = order.contiguous(), ref_c = reference.contiguous();
  const at::Tensor prefix_c = prefix.contiguous(), count_c = count.contiguous(), masses_c = masses.contiguous();
  const at::Tensor layer_c = layer.contiguous(), z_c = z.contiguous();
  auto [outlet, status] = new_move_outputs(layer);
  // ~log2(M) dependent loads per walker
  Exec::run(layer.size(0), 2048,
            SortedMoveOp{phi_c.data_ptr<double>(), order_c.data_ptr<int64_t>(), ref_c.data_ptr<double>(),
                         prefix_c.data_ptr<double>(), count_c.data_ptr<int64_t>(), masses_c.data_ptr<double>(),
                         layer_c.data_ptr<int64_t>(), z_c.data_ptr<int64_t>(), phi.size(0) - 1, phi.size(1), seed,
                         offset, outlet.data_ptr<int64_t>(), status.data_ptr<int32_t>()});
  return {outlet, status};
}

template <class Exec>
at::Tensor philox4x32(const at::Tensor& counters, int64_t seed) {
  check_philox_args(counters);
  const typename Exec::Guard guard(counters.device());
  const at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  Exec::run(c.size(0), 1024,
            Philox4x32Op{c.data_ptr<int64_t>(), static_cast<uint64_t>(seed), out.data_ptr<int64_t>()});
  return out;
}

// The implementations of the ops of csrc/sampler.cpp for one dispatch key.
template <class Exec>
void register_sampler_ops(torch::Library& m) {
  m.impl("consume_outlets", &consume_outlets<Exec>);
  m.impl("potential_move", &potential_move<Exec>);
  m.impl("potential_move_sorted", &potential_move_sorted<Exec>);
  m.impl("hamming_move", &hamming_move<Exec>);
  m.impl("philox4x32", &philox4x32<Exec>);
}

}  // namespace ecd2g
