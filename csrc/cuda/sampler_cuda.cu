// CUDA implementations of the sampler ops: one thread per walker running the same per-walker
// bodies as the CPU ops (csrc/sampler_kernels.h), with the same Philox streams, so a seed gives
// the same draws on CPU and GPU up to floating-point summation order.
//
// One thread per walker keeps the kernels identical to the CPU code. In consume_outlets a
// thread reads its own row of the (N, C) chunk, so loads are not coalesced across a warp; the
// generic-field path is bound by the field's own evaluation of the chunk, which dominates.
// potential_move reads the two neighbour rows of the (L+1, M) table, shared by all walkers on the
// same layer and served from L1/L2.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../sampler_checks.h"
#include "../sampler_kernels.h"

namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

template <typename scalar_t>
__global__ void consume_outlets_kernel(const scalar_t* __restrict__ weights, const int64_t* __restrict__ rows,
                                       int64_t n, int64_t cols, bool negate, int64_t outlet_offset, int64_t seed,
                                       int64_t offset, double* total, int64_t* choice, int32_t* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t row = rows[i];
  ecd2g::consume_chunk_row<scalar_t>(weights + i * cols, cols, negate, outlet_offset,
                                     ecd2g::uniform2(seed, offset, row), total + row, choice + row, status + row);
}

__global__ void potential_move_kernel(const double* __restrict__ phi, const double* __restrict__ sink,
                                      const int64_t* __restrict__ layer, const int64_t* __restrict__ z,
                                      int64_t batch, int64_t L, int64_t M, double G, double e, bool bidirectional,
                                      int64_t seed, int64_t offset, int64_t* outlet, int32_t* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= batch) return;
  const double u = ecd2g::uniform2(seed, offset, i).u0;
  status[i] = ecd2g::potential_move_row(phi, sink, L, M, layer[i], z[i], G, e, bidirectional, u, outlet + i);
}

__global__ void potential_move_sorted_kernel(const double* __restrict__ phi, const int64_t* __restrict__ order,
                                             const double* __restrict__ reference, const double* __restrict__ prefix,
                                             const int64_t* __restrict__ count, const double* __restrict__ masses,
                                             const int64_t* __restrict__ layer, const int64_t* __restrict__ z,
                                             int64_t batch, int64_t L, int64_t M, int64_t seed, int64_t offset,
                                             int64_t* outlet, int32_t* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= batch) return;
  status[i] = ecd2g::sorted_move_row(phi, order, reference, prefix, count, masses, L, M, layer[i], z[i],
                                     ecd2g::uniform2(seed, offset, i), outlet + i);
}

__global__ void philox_kernel(const int64_t* __restrict__ counters, int64_t n, int64_t seed, int64_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint64_t key = static_cast<uint64_t>(seed);
  const int64_t* c = counters + 4 * i;
  const ecd2g::Philox4x32Out x =
      ecd2g::philox4x32_10(static_cast<uint32_t>(c[0]), static_cast<uint32_t>(c[1]), static_cast<uint32_t>(c[2]),
                           static_cast<uint32_t>(c[3]), static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
  for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<int64_t>(x.v[k]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> consume_outlets_cuda(const at::Tensor& weights, const at::Tensor& rows,
                                                                    const at::Tensor& total, const at::Tensor& choice,
                                                                    const at::Tensor& status, int64_t outlet_offset,
                                                                    bool negate, int64_t seed, int64_t offset) {
  ecd2g::check_consume_args(weights, rows, total, choice, status);
  const c10::cuda::CUDAGuard guard(weights.device());
  at::Tensor new_total = total.clone(at::MemoryFormat::Contiguous);
  at::Tensor new_choice = choice.clone(at::MemoryFormat::Contiguous);
  at::Tensor new_status = status.clone(at::MemoryFormat::Contiguous);
  const at::Tensor w = weights.contiguous();
  const at::Tensor r = rows.contiguous();
  const int64_t n = w.size(0), cols = w.size(1);
  if (n == 0 || cols == 0) return {new_total, new_choice, new_status};
  ecd2g::check_rows_range(r, total.size(0));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "consume_outlets_cuda", [&] {
    consume_outlets_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        w.data_ptr<scalar_t>(), r.data_ptr<int64_t>(), n, cols, negate, outlet_offset, seed, offset,
        new_total.data_ptr<double>(), new_choice.data_ptr<int64_t>(), new_status.data_ptr<int32_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {new_total, new_choice, new_status};
}

std::tuple<at::Tensor, at::Tensor> potential_move_cuda(const at::Tensor& phi, const at::Tensor& sink,
                                                       const at::Tensor& layer, const at::Tensor& z, double G,
                                                       double e, bool bidirectional, int64_t seed, int64_t offset) {
  ecd2g::check_potential_args(phi, sink, layer, z);
  const c10::cuda::CUDAGuard guard(phi.device());
  const at::Tensor phi_c = phi.contiguous(), sink_c = sink.contiguous();
  const at::Tensor layer_c = layer.contiguous(), z_c = z.contiguous();
  const int64_t batch = layer.size(0), L = phi.size(0) - 1, M = phi.size(1);
  at::Tensor outlet = at::full({batch}, -1, layer.options());
  at::Tensor status = at::zeros({batch}, layer.options().dtype(at::kInt));
  if (batch == 0) return {outlet, status};
  potential_move_kernel<<<blocks_for(batch), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      phi_c.data_ptr<double>(), sink_c.data_ptr<double>(), layer_c.data_ptr<int64_t>(), z_c.data_ptr<int64_t>(),
      batch, L, M, G, e, bidirectional, seed, offset, outlet.data_ptr<int64_t>(), status.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {outlet, status};
}

std::tuple<at::Tensor, at::Tensor> potential_move_sorted_cuda(const at::Tensor& phi, const at::Tensor& order,
                                                              const at::Tensor& reference, const at::Tensor& prefix,
                                                              const at::Tensor& count, const at::Tensor& masses,
                                                              const at::Tensor& layer, const at::Tensor& z,
                                                              int64_t seed, int64_t offset) {
  ecd2g::check_sorted_args(phi, order, reference, prefix, count, masses, layer, z);
  const c10::cuda::CUDAGuard guard(phi.device());
  const at::Tensor phi_c = phi.contiguous(), order_c = order.contiguous(), ref_c = reference.contiguous();
  const at::Tensor prefix_c = prefix.contiguous(), count_c = count.contiguous(), masses_c = masses.contiguous();
  const at::Tensor layer_c = layer.contiguous(), z_c = z.contiguous();
  const int64_t batch = layer.size(0), L = phi.size(0) - 1, M = phi.size(1);
  at::Tensor outlet = at::full({batch}, -1, layer.options());
  at::Tensor status = at::zeros({batch}, layer.options().dtype(at::kInt));
  if (batch == 0) return {outlet, status};
  potential_move_sorted_kernel<<<blocks_for(batch), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      phi_c.data_ptr<double>(), order_c.data_ptr<int64_t>(), ref_c.data_ptr<double>(), prefix_c.data_ptr<double>(),
      count_c.data_ptr<int64_t>(), masses_c.data_ptr<double>(), layer_c.data_ptr<int64_t>(),
      z_c.data_ptr<int64_t>(), batch, L, M, seed, offset, outlet.data_ptr<int64_t>(), status.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {outlet, status};
}

at::Tensor philox4x32_cuda(const at::Tensor& counters, int64_t seed) {
  ecd2g::check_philox_args(counters);
  const c10::cuda::CUDAGuard guard(counters.device());
  const at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t n = c.size(0);
  if (n == 0) return out;
  philox_kernel<<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(c.data_ptr<int64_t>(), n, seed,
                                                                                  out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ecd2g_fast, CUDA, m) {
  m.impl("consume_outlets", &consume_outlets_cuda);
  m.impl("potential_move", &potential_move_cuda);
  m.impl("potential_move_sorted", &potential_move_sorted_cuda);
  m.impl("philox4x32", &philox4x32_cuda);
}
