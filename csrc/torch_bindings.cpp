// The whole binding surface of distllm._C: schemas of the torch.ops.distllm_C ops and the
// (empty) Python module whose import registers them.
#include <Python.h>

#include "ops.h"

TORCH_LIBRARY(distllm_C, m) {
  m.def(
      "paged_decode_attention(Tensor! out, Tensor query, Tensor key_cache, Tensor value_cache, "
      "Tensor block_tables, Tensor context_lens, float scale, int num_splits) -> ()");
  m.impl("paged_decode_attention", torch::kCPU, &paged_decode_attention);

  m.def(
      "prefill_attention(Tensor! out, Tensor query, Tensor key, Tensor value, "
      "Tensor cu_seqlens_q, float scale, Tensor? key_cache, Tensor? value_cache, "
      "Tensor? block_tables, Tensor? num_cached_tokens, int q_tile) -> ()");
  m.impl("prefill_attention", torch::kCPU, &prefill_attention);

  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor! key_cache, Tensor! value_cache, "
      "Tensor slot_mapping) -> ()");
  m.impl("reshape_and_cache", torch::kCPU, &reshape_and_cache);

  m.def(
      "copy_blocks(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, Tensor block_mapping) "
      "-> ()");
  m.impl("copy_blocks", torch::kCPU, &copy_blocks);

  m.def("swap_blocks(Tensor src, Tensor! dst, Tensor block_mapping) -> ()");
  m.impl("swap_blocks", torch::kCPU, &swap_blocks);

  m.def("skinny_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.impl("skinny_linear", torch::kCPU, &skinny_linear);

  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("set_cpu_isa(str isa) -> ()", &set_cpu_isa);

#ifdef DISTLLM_WITH_CUDA
  m.impl("paged_decode_attention", torch::kCUDA, &paged_decode_attention_cuda);
  m.impl("prefill_attention", torch::kCUDA, &prefill_attention_cuda);
  m.impl("reshape_and_cache", torch::kCUDA, &reshape_and_cache_cuda);
  m.impl("copy_blocks", torch::kCUDA, &copy_blocks_cuda);
  m.impl("swap_blocks", torch::kCUDA, &swap_blocks_cuda);
  m.def(
      "migrate_blocks(Tensor[] src_caches, Tensor(a!)[] dst_caches, Tensor src_blocks, "
      "Tensor dst_blocks, int src_head_start, int dst_head_start, int num_heads) -> ()");
  m.impl("migrate_blocks", torch::kCUDA, &migrate_blocks_cuda);
#endif
}

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "distllm native ops", -1, nullptr};
  return PyModule_Create(&module);
}
