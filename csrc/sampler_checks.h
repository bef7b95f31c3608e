// Argument checks shared by the CPU and CUDA implementations of the sampler ops (each message
// names the argument).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>

#include <vector>

namespace ecd2g {

// `t` must be a 1-D tensor of dtype `dtype` (named `dtype_name` in the message).
inline void check_vector(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                         const char* dtype_name) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == dtype, op, ": ", name, " must be a 1-D ", dtype_name,
              " tensor, got ", t.scalar_type(), " ", t.sizes());
}

// `t` must have dtype `dtype` (named `dtype_name` in the message) and the shape of `like`.
inline void check_shaped_like(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype,
                              const char* dtype_name, const char* like_name, const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == like.sizes() && t.scalar_type() == dtype, op, ": ", name, " must be ", dtype_name,
              " with the shape of ", like_name, " ", like.sizes(), ", got ", t.scalar_type(), " ", t.sizes());
}

// The walkers of a move op: layer (B,) int64 and z (B,) int64.
inline void check_walkers(const char* op, const at::Tensor& layer, const at::Tensor& z) {
  check_vector(op, "layer", layer, at::kLong, "int64");
  check_shaped_like(op, "z", z, at::kLong, "int64", "layer", layer);
}

inline void check_consume_args(const at::Tensor& weights, const at::Tensor& rows, const at::Tensor& total,
                               const at::Tensor& choice, const at::Tensor& status) {
  TORCH_CHECK(weights.dim() == 2, "consume_outlets: weights must be 2-D (N, C), got ", weights.dim(), "-D");
  TORCH_CHECK(weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble,
              "consume_outlets: weights must be float32 or float64, got ", weights.scalar_type());
  TORCH_CHECK(rows.dim() == 1 && rows.size(0) == weights.size(0),
              "consume_outlets: rows must have shape (N,) = (", weights.size(0), ",), got ", rows.sizes());
  TORCH_CHECK(rows.scalar_type() == at::kLong, "consume_outlets: rows must be int64, got ", rows.scalar_type());
  check_vector("consume_outlets", "total", total, at::kDouble, "float64");
  check_shaped_like("consume_outlets", "choice", choice, at::kLong, "int64", "total", total);
  check_shaped_like("consume_outlets", "status", status, at::kInt, "int32", "total", total);
  for (const at::Tensor* t : {&rows, &total, &choice, &status}) {
    TORCH_CHECK(t->device() == weights.device(), "consume_outlets: weights, rows, total, choice and status must be "
                "on one device, got weights on ", weights.device(), " and another on ", t->device());
  }
}

// rows (N,) with N > 0 must index the batch of size `batch` (one device sync on CUDA).
inline void check_rows_range(const at::Tensor& rows, int64_t batch) {
  const auto [lo, hi] = at::aminmax(rows);
  const int64_t lo_v = lo.item<int64_t>(), hi_v = hi.item<int64_t>();
  TORCH_CHECK(lo_v >= 0 && hi_v < batch, "consume_outlets: rows must hold indices in [0, ", batch,
              ") (the size of total), got values in [", lo_v, ", ", hi_v, "]");
}

inline void check_potential_args(const at::Tensor& phi, const at::Tensor& sink, const at::Tensor& layer,
                                 const at::Tensor& z, const char* op = "potential_move") {
  TORCH_CHECK(phi.dim() == 2 && phi.size(0) >= 2, op, ": phi must have shape (L+1, M) with L >= 1, got ",
              phi.sizes());
  TORCH_CHECK(phi.scalar_type() == at::kDouble, op, ": phi must be float64, got ", phi.scalar_type());
  TORCH_CHECK(sink.dim() == 1 && sink.size(0) == phi.size(1), op, ": sink must have shape (M,) = (", phi.size(1),
              ",), got ", sink.sizes());
  TORCH_CHECK(sink.scalar_type() == at::kDouble, op, ": sink must be float64, got ", sink.scalar_type());
  check_walkers(op, layer, z);
  for (const at::Tensor* t : {&sink, &layer, &z}) {
    TORCH_CHECK(t->device() == phi.device(), op, ": phi, sink, layer and z must be on one device, got phi on ",
                phi.device(), " and another on ", t->device());
  }
}

// hamming_move: phi (L+1, M) must hold M = K**D states, K >= 2, D >= 1.
inline void check_hamming_args(const at::Tensor& phi, const at::Tensor& sink, const at::Tensor& layer,
                               const at::Tensor& z, int64_t num_categories, int64_t dim) {
  check_potential_args(phi, sink, layer, z, "hamming_move");
  TORCH_CHECK(num_categories >= 2 && dim >= 1, "hamming_move: num_categories must be >= 2 and dim >= 1, got ",
              num_categories, " and ", dim);
  int64_t states = 1;
  for (int64_t c = 0; c < dim && states <= phi.size(1); ++c) states *= num_categories;
  TORCH_CHECK(states == phi.size(1), "hamming_move: phi must have M = num_categories**dim columns, got ",
              phi.size(1), " for num_categories = ", num_categories, ", dim = ", dim);
}

inline void check_sorted_args(const at::Tensor& phi, const at::Tensor& order, const at::Tensor& reference,
                              const at::Tensor& prefix, const at::Tensor& count, const at::Tensor& masses,
                              const at::Tensor& layer, const at::Tensor& z) {
  TORCH_CHECK(phi.dim() == 2 && phi.size(0) >= 2 && phi.scalar_type() == at::kDouble,
              "potential_move_sorted: phi must be a float64 (L+1, M) tensor with L >= 1, got ", phi.scalar_type(),
              " ", phi.sizes());
  const int64_t L1 = phi.size(0), M = phi.size(1);
  struct Expect {
    const at::Tensor* t;
    const char* name;
    std::vector<int64_t> shape;
    at::ScalarType dtype;
  };
  const Expect expected[] = {{&order, "order", {L1, M}, at::kLong},
                             {&reference, "reference", {L1}, at::kDouble},
                             {&prefix, "prefix", {L1, M + 1}, at::kDouble},
                             {&count, "count", {L1, M, 2}, at::kLong},
                             {&masses, "masses", {L1, M, 5}, at::kDouble}};
  for (const Expect& x : expected) {
    TORCH_CHECK(x.t->sizes() == at::IntArrayRef(x.shape) && x.t->scalar_type() == x.dtype, "potential_move_sorted: ",
                x.name, " must be ", x.dtype, " of shape ", at::IntArrayRef(x.shape), ", got ", x.t->scalar_type(),
                " ", x.t->sizes());
    TORCH_CHECK(x.t->device() == phi.device(), "potential_move_sorted: ", x.name, " must be on phi's device ",
                phi.device(), ", got ", x.t->device());
  }
  check_walkers("potential_move_sorted", layer, z);
  TORCH_CHECK(layer.device() == phi.device() && z.device() == phi.device(),
              "potential_move_sorted: layer and z must be on phi's device ", phi.device());
}

inline void check_philox_args(const at::Tensor& counters) {
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4 && counters.scalar_type() == at::kLong,
              "philox4x32: counters must be an (N, 4) int64 tensor, got ", counters.scalar_type(), " ",
              counters.sizes());
}

}  // namespace ecd2g
