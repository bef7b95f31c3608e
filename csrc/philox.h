// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator of the sampler ops. Header-only and free of torch, so that the same
// code runs in the C++ CPU ops, in the CUDA kernels and in an nvcc-only compile check.
//
// Streams: the key is a 64-bit seed drawn from the caller's torch.Generator once per op call;
// the 128-bit counter is (row, offset) with row the walker's row in the call and offset a second
// 64-bit value drawn with the seed. A walker's uniforms therefore depend on (seed, offset, row)
// only, never on the thread that computes them or on the number of threads.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ECD2G_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ECD2G_HOST_DEVICE inline
#endif

namespace ecd2g {

struct Philox4x32Out {
  uint32_t v[4];
};

ECD2G_HOST_DEVICE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Ten rounds with the published multipliers and Weyl key increments.
ECD2G_HOST_DEVICE Philox4x32Out philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                              uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDACC__) || defined(__HIPCC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kMul0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kMul1, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4x32Out{{c0, c1, c2, c3}};
}

// A uniform double in [0, 1) from 53 of the 64 bits (hi, lo); 1.0 is never returned.
ECD2G_HOST_DEVICE double uniform53(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (static_cast<uint64_t>(hi) << 32) | static_cast<uint64_t>(lo);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// The two uniforms of one (seed, offset, row) triple: one Philox block, two doubles.
struct Uniform2 {
  double u0, u1;
};

ECD2G_HOST_DEVICE Uniform2 uniform2(int64_t seed, int64_t offset, int64_t row) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  const uint64_t r = static_cast<uint64_t>(row);
  const Philox4x32Out x =
      philox4x32_10(static_cast<uint32_t>(r), static_cast<uint32_t>(r >> 32), static_cast<uint32_t>(o),
                    static_cast<uint32_t>(o >> 32), static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
  return Uniform2{uniform53(x.v[0], x.v[1]), uniform53(x.v[2], x.v[3])};
}

}  // namespace ecd2g
