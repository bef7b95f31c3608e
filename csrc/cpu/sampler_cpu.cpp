// CPU implementations of the sampler ops: at::parallel_for over walkers, each walker's draw from
// its own Philox stream, so results do not depend on the number of threads. The ops themselves
// are in csrc/sampler_ops.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../sampler_ops.h"

namespace {

// The execution policy of csrc/sampler_ops.h on the CPU.
struct CpuExec {
  struct Guard {
    explicit Guard(const at::Device&) {}
  };

  template <class Op>
  static void run(int64_t n, int64_t grain, const Op& op) {
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op(i);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(ecd2g_fast, CPU, m) { ecd2g::register_sampler_ops<CpuExec>(m); }
