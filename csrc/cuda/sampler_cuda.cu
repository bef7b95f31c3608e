// CUDA implementations of the sampler ops: one thread per walker running the same per-walker
// bodies as the CPU ops (csrc/sampler_kernels.h, wrapped by csrc/sampler_ops.h), with the same
// Philox streams, so a seed gives the same draws on CPU and GPU up to floating-point summation
// order.
//
// One thread per walker keeps the kernels identical to the CPU code. In consume_outlets a
// thread reads its own row of the (N, C) chunk, so loads are not coalesced across a warp; the
// generic-field path is bound by the field's own evaluation of the chunk, which dominates.
// potential_move reads the two neighbour rows of the (L+1, M) table, shared by all walkers on the
// same layer and served from L1/L2.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../sampler_ops.h"

namespace {

constexpr int kThreads = 256;

// op(i) on thread i of the launch; threads past n do nothing.
template <class Op>
__global__ void for_each_walker_kernel(const Op op, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) op(i);
}

// The execution policy of csrc/sampler_ops.h on CUDA: one thread per walker on the current stream.
struct CudaExec {
  using Guard = c10::cuda::CUDAGuard;

  template <class Op>
  static void run(int64_t n, int64_t /*grain*/, const Op& op) {
    if (n == 0) return;  // a launch needs at least one block
    const int64_t blocks = (n + kThreads - 1) / kThreads;
    for_each_walker_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(op, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(ecd2g_fast, CUDA, m) { ecd2g::register_sampler_ops<CudaExec>(m); }
