// CPU implementations of the sampler ops: at::parallel_for over walkers, each walker's draw from
// its own Philox stream, so results do not depend on the number of threads.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "../sampler_checks.h"
#include "../sampler_kernels.h"

namespace {

// Walkers per parallel task: about 32k weights of work, so that small batches stay serial and
// large ones split evenly across threads.
int64_t grain_for(int64_t work_per_walker) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_walker)); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> consume_outlets_cpu(const at::Tensor& weights, const at::Tensor& rows,
                                                                   const at::Tensor& total, const at::Tensor& choice,
                                                                   const at::Tensor& status, int64_t outlet_offset,
                                                                   bool negate, int64_t seed, int64_t offset) {
  ecd2g::check_consume_args(weights, rows, total, choice, status);
  at::Tensor new_total = total.clone(at::MemoryFormat::Contiguous);
  at::Tensor new_choice = choice.clone(at::MemoryFormat::Contiguous);
  at::Tensor new_status = status.clone(at::MemoryFormat::Contiguous);
  const at::Tensor w = weights.contiguous();
  const at::Tensor r = rows.contiguous();
  const int64_t n = w.size(0), cols = w.size(1), batch = total.size(0);
  if (n == 0 || cols == 0) return {new_total, new_choice, new_status};
  ecd2g::check_rows_range(r, batch);
  double* total_p = new_total.data_ptr<double>();
  int64_t* choice_p = new_choice.data_ptr<int64_t>();
  int32_t* status_p = new_status.data_ptr<int32_t>();
  const int64_t* rows_p = r.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "consume_outlets_cpu", [&] {
    const scalar_t* w_p = w.data_ptr<scalar_t>();
    at::parallel_for(0, n, grain_for(cols), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t row = rows_p[i];
        ecd2g::consume_chunk_row<scalar_t>(w_p + i * cols, cols, negate, outlet_offset,
                                           ecd2g::uniform2(seed, offset, row), total_p + row, choice_p + row,
                                           status_p + row);
      }
    });
  });
  return {new_total, new_choice, new_status};
}

std::tuple<at::Tensor, at::Tensor> potential_move_cpu(const at::Tensor& phi, const at::Tensor& sink,
                                                      const at::Tensor& layer, const at::Tensor& z, double G,
                                                      double e, bool bidirectional, int64_t seed, int64_t offset) {
  ecd2g::check_potential_args(phi, sink, layer, z);
  const at::Tensor phi_c = phi.contiguous(), sink_c = sink.contiguous();
  const at::Tensor layer_c = layer.contiguous(), z_c = z.contiguous();
  const int64_t batch = layer.size(0), L = phi.size(0) - 1, M = phi.size(1);
  at::Tensor outlet = at::full({batch}, -1, layer.options());
  at::Tensor status = at::zeros({batch}, layer.options().dtype(at::kInt));
  const double* phi_p = phi_c.data_ptr<double>();
  const double* sink_p = sink_c.data_ptr<double>();
  const int64_t* layer_p = layer_c.data_ptr<int64_t>();
  const int64_t* z_p = z_c.data_ptr<int64_t>();
  int64_t* outlet_p = outlet.data_ptr<int64_t>();
  int32_t* status_p = status.data_ptr<int32_t>();
  at::parallel_for(0, batch, grain_for(2 * M), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double u = ecd2g::uniform2(seed, offset, i).u0;
      status_p[i] = ecd2g::potential_move_row(phi_p, sink_p, L, M, layer_p[i], z_p[i], G, e, bidirectional, u,
                                              outlet_p + i);
    }
  });
  return {outlet, status};
}

std::tuple<at::Tensor, at::Tensor> potential_move_sorted_cpu(const at::Tensor& phi, const at::Tensor& order,
                                                             const at::Tensor& reference, const at::Tensor& prefix,
                                                             const at::Tensor& count, const at::Tensor& masses,
                                                             const at::Tensor& layer, const at::Tensor& z, int64_t seed,
                                                             int64_t offset) {
  ecd2g::check_sorted_args(phi, order, reference, prefix, count, masses, layer, z);
  const at::Tensor phi_c = phi.contiguous(), order_c = order.contiguous(), ref_c = reference.contiguous();
  const at::Tensor prefix_c = prefix.contiguous(), count_c = count.contiguous(), masses_c = masses.contiguous();
  const at::Tensor layer_c = layer.contiguous(), z_c = z.contiguous();
  const int64_t batch = layer.size(0), L = phi.size(0) - 1, M = phi.size(1);
  at::Tensor outlet = at::full({batch}, -1, layer.options());
  at::Tensor status = at::zeros({batch}, layer.options().dtype(at::kInt));
  const double* phi_p = phi_c.data_ptr<double>();
  const int64_t* order_p = order_c.data_ptr<int64_t>();
  const double* ref_p = ref_c.data_ptr<double>();
  const double* prefix_p = prefix_c.data_ptr<double>();
  const int64_t* count_p = count_c.data_ptr<int64_t>();
  const double* masses_p = masses_c.data_ptr<double>();
  const int64_t* layer_p = layer_c.data_ptr<int64_t>();
  const int64_t* z_p = z_c.data_ptr<int64_t>();
  int64_t* outlet_p = outlet.data_ptr<int64_t>();
  int32_t* status_p = status.data_ptr<int32_t>();
  // ~log2(M) dependent loads per walker
  at::parallel_for(0, batch, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      status_p[i] = ecd2g::sorted_move_row(phi_p, order_p, ref_p, prefix_p, count_p, masses_p, L, M, layer_p[i],
                                           z_p[i], ecd2g::uniform2(seed, offset, i), outlet_p + i);
    }
  });
  return {outlet, status};
}

at::Tensor philox4x32_cpu(const at::Tensor& counters, int64_t seed) {
  ecd2g::check_philox_args(counters);
  const at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* c_p = c.data_ptr<int64_t>();
  int64_t* o_p = out.data_ptr<int64_t>();
  const uint64_t key = static_cast<uint64_t>(seed);
  at::parallel_for(0, c.size(0), 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t* ci = c_p + 4 * i;
      const ecd2g::Philox4x32Out x = ecd2g::philox4x32_10(
          static_cast<uint32_t>(ci[0]), static_cast<uint32_t>(ci[1]), static_cast<uint32_t>(ci[2]),
          static_cast<uint32_t>(ci[3]), static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
      for (int k = 0; k < 4; ++k) o_p[4 * i + k] = static_cast<int64_t>(x.v[k]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ecd2g_fast, CPU, m) {
  m.impl("consume_outlets", &consume_outlets_cpu);
  m.impl("potential_move", &potential_move_cpu);
  m.impl("potential_move_sorted", &potential_move_sorted_cpu);
  m.impl("philox4x32", &philox4x32_cpu);
}
