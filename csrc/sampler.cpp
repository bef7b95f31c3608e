// Schemas of the ecd2g_fast sampler ops; the CPU and CUDA kernels register their
// implementations in csrc/cpu/sampler_cpu.cpp and csrc/cuda/sampler_cuda.cu, and the dispatcher
// routes by device. Python wrappers, fake (meta) implementations and documentation:
// ecd2g_fast/_extension.py and ecd2g_fast/sampling/cpp.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(ecd2g_fast, m) {
  // One chunk of one move's streaming outlet draw for a generic field. weights (N, C) float32 or
  // float64 currents (negated when `negate`) offered as outlets outlet_offset + j to the walkers
  // rows (N,) int64 of the move's batch; total (B,) float64, choice (B,) int64 and status (B,)
  // int32 are the running reservoir state, returned updated (inputs are not modified). Random
  // stream: Philox4x32-10 keyed by `seed`, counter (rows[i], offset).
  m.def(
      "consume_outlets(Tensor weights, Tensor rows, Tensor total, Tensor choice, Tensor status, "
      "int outlet_offset, bool negate, int seed, int offset) -> (Tensor, Tensor, Tensor)");
  // One move of B walkers of a potential field, currents computed on the fly from the potential
  // table phi (L+1, M) float64 and the sink table sink (M,) float64 (Ohm's law with conductances
  // G, G + e). layer, z (B,) int64. Returns the outlet codes (B,) int64 and status (B,) int32.
  m.def(
      "potential_move(Tensor phi, Tensor sink, Tensor layer, Tensor z, float G, float e, "
      "bool bidirectional, int seed, int offset) -> (Tensor, Tensor)");
  // One move of B walkers of a potential field in O(log M) each, from the per-vertex tables of
  // ecd2g_fast.sampling.potential.PotentialTables: phi (L+1, M), order (L+1, M) int64, reference
  // (L+1,), prefix (L+1, M+1), count (L+1, M, 2) int64, masses (L+1, M, 5), float64 unless noted.
  // Returns the outlet codes (B,) int64 and status (B,) int32.
  m.def(
      "potential_move_sorted(Tensor phi, Tensor order, Tensor reference, Tensor prefix, Tensor count, "
      "Tensor masses, Tensor layer, Tensor z, int seed, int offset) -> (Tensor, Tensor)");
  // One move of B walkers of a potential field on a Hamming circuit (K = num_categories, D = dim,
  // M = K**D): the out-currents over the 1 + D (K-1) local edges of each walker, by Ohm's law with
  // conductances g (stay edge) and G (lateral edges), from phi (L+1, M) float64 and sink (M,)
  // float64. layer, z (B,) int64. Returns the slot outlet codes (B,) int64 and status (B,) int32.
  m.def(
      "hamming_move(Tensor phi, Tensor sink, Tensor layer, Tensor z, int num_categories, int dim, float g, "
      "float G, bool bidirectional, int seed, int offset) -> (Tensor, Tensor)");
  // The raw generator, for known-answer tests: counters (N, 4) int64 holding uint32 words,
  // key = seed; returns (N, 4) int64 holding the uint32 outputs.
  m.def("philox4x32(Tensor counters, int seed) -> Tensor");
}

// Makes ecd2g_fast._C importable as a Python module (importing it runs the registrations above);
// the ops are reached through torch.ops.ecd2g_fast. Plain CPython, no pybind11: nothing else is
// exported, and the file compiles in a fraction of the time of <torch/extension.h>.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "ecd2g_fast sampler ops (torch.ops.ecd2g_fast)", -1, nullptr, nullptr, nullptr,
      nullptr, nullptr};
  return PyModule_Create(&module_def);
}
