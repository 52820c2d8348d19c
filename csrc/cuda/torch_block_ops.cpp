// Torch-facing launchers of the CUDA block movers: copy_blocks, swap_blocks (GPU <-> pinned CPU
// on a dedicated stream) and migrate_blocks (batched gather/scatter of a head range of every
// layer's blocks; one kernel launch per call, for the CUDA IPC KV transport).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <array>
#include <mutex>
#include <optional>

#include "cuda/kernels.h"
#include "cuda/torch_utils.h"
#include "ops.h"

namespace {

namespace dc = distllm::cuda;
using dc::block_bytes;
using dc::check_cuda;

// Device array of the caches' base addresses (one small host-to-device copy).
torch::Tensor pointer_array(const std::vector<torch::Tensor>& caches, const torch::Device& dev) {
  auto host = torch::empty({static_cast<int64_t>(caches.size())},
                           torch::dtype(at::kLong).pinned_memory(true));
  auto* p = host.data_ptr<int64_t>();
  for (size_t i = 0; i < caches.size(); ++i) {
    p[i] = reinterpret_cast<int64_t>(caches[i].data_ptr());
    TORCH_CHECK(p[i] % 16 == 0, "cache base addresses must be 16-byte aligned");
  }
  return host.to(dev, /*non_blocking=*/true);
}

void check_same_caches(const std::vector<torch::Tensor>& caches, const char* name) {
  TORCH_CHECK(!caches.empty(), name, " is empty");
  for (const auto& c : caches) {
    TORCH_CHECK(c.is_cuda() && c.dim() == 4 && c.is_contiguous(), name,
                ": contiguous CUDA [num_blocks, num_kv_heads, block_size, head_dim] expected");
    TORCH_CHECK(c.sizes() == caches[0].sizes() && c.scalar_type() == caches[0].scalar_type() &&
                    c.device() == caches[0].device(),
                name, ": every cache needs one shape, dtype and device");
  }
}

void check_block_ids(const torch::Tensor& ids, int64_t num_blocks, const char* name) {
  if (!ids.is_cpu() || ids.numel() == 0) return;  // NOTE: device ids are not read back (no sync)
  TORCH_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < num_blocks, name,
              " holds a block id out of range");
}

void enable_peer_access(int peer) {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  if (device == peer) return;
  const cudaError_t err = cudaDeviceEnablePeerAccess(peer, 0);
  if (err == cudaErrorPeerAccessAlreadyEnabled) {
    cudaGetLastError();  // NOTE: resets the error this call left behind
    return;
  }
  check_cuda(err, "cudaDeviceEnablePeerAccess");
}

// The swap stream of each device, taken from torch's pool once.
c10::cuda::CUDAStream swap_stream(c10::DeviceIndex device) {
  static std::array<std::optional<c10::cuda::CUDAStream>, 64> streams;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  TORCH_CHECK(device >= 0 && device < static_cast<int>(streams.size()), "device index too large");
  if (!streams[device]) streams[device] = c10::cuda::getStreamFromPool(false, device);
  return *streams[device];
}

// `waiter` waits for the work enqueued so far on `signaller`.
void stream_wait(cudaStream_t waiter, cudaStream_t signaller) {
  cudaEvent_t event;
  check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaEventRecord(event, signaller), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(waiter, event, 0), "cudaStreamWaitEvent");
  check_cuda(cudaEventDestroy(event), "cudaEventDestroy");
}

// One cudaMemcpyAsync per run of consecutive (src, dst) block pairs.
void copy_runs(const torch::Tensor& src, torch::Tensor& dst, const torch::Tensor& mapping,
               cudaStream_t stream) {
  const int64_t bytes = block_bytes(src), n = mapping.size(0);
  const auto* m = mapping.data_ptr<int64_t>();
  const char* s = static_cast<const char*>(src.data_ptr());
  char* d = static_cast<char*>(dst.data_ptr());
  for (int64_t i = 0; i < n;) {
    int64_t run = 1;
    while (i + run < n && m[2 * (i + run)] == m[2 * i] + run &&
           m[2 * (i + run) + 1] == m[2 * i + 1] + run) {
      ++run;
    }
    check_cuda(cudaMemcpyAsync(d + m[2 * i + 1] * bytes, s + m[2 * i] * bytes, run * bytes,
                               cudaMemcpyDefault, stream),
               "cudaMemcpyAsync");
    i += run;
  }
}

}  // namespace

void copy_blocks_cuda(const std::vector<torch::Tensor>& key_caches,
                      const std::vector<torch::Tensor>& value_caches,
                      const torch::Tensor& block_mapping) {
  TORCH_CHECK(key_caches.size() == value_caches.size(), "need one value cache per key cache");
  TORCH_CHECK(block_mapping.dim() == 2 && block_mapping.size(1) == 2, "block_mapping: [n, 2]");
  std::vector<torch::Tensor> caches(key_caches);
  caches.insert(caches.end(), value_caches.begin(), value_caches.end());
  check_same_caches(caches, "caches");
  check_block_ids(block_mapping, caches[0].size(0), "block_mapping");
  const c10::cuda::CUDAGuard guard(caches[0].device());
  const torch::Tensor ptrs = pointer_array(caches, caches[0].device());
  const torch::Tensor mapping = dc::device_i64(block_mapping, caches[0].device());
  dc::BlockCopyParams p{};
  p.src_ptrs = p.dst_ptrs = ptrs.data_ptr<int64_t>();
  p.src_blocks = mapping.data_ptr<int64_t>();
  p.dst_blocks = p.src_blocks + 1;
  p.pair_stride = 2;
  p.src_block_bytes = p.dst_block_bytes = p.chunk_bytes = block_bytes(caches[0]);
  p.num_pairs = static_cast<int>(mapping.size(0));
  p.num_caches = static_cast<int>(caches.size());
  const auto stream = c10::cuda::getCurrentCUDAStream(caches[0].get_device()).stream();
  check_cuda(dc::launch_block_copy(p, stream), "copy_blocks");
}

void swap_blocks_cuda(const torch::Tensor& src, torch::Tensor& dst,
                      const torch::Tensor& block_mapping) {
  TORCH_CHECK(src.is_cuda() || dst.is_cuda(), "swap_blocks_cuda needs a CUDA side");
  TORCH_CHECK(src.scalar_type() == dst.scalar_type(), "src/dst dtypes differ");
  TORCH_CHECK(src.is_contiguous() && dst.is_contiguous(), "src/dst must be contiguous");
  TORCH_CHECK(block_bytes(src) == block_bytes(dst), "src/dst block shapes differ");
  TORCH_CHECK(block_mapping.dim() == 2 && block_mapping.size(1) == 2, "block_mapping: [n, 2]");
  const torch::Tensor mapping = block_mapping.to(torch::kCPU, at::kLong).contiguous();
  check_block_ids(mapping.select(1, 0), src.size(0), "block_mapping (src)");
  check_block_ids(mapping.select(1, 1), dst.size(0), "block_mapping (dst)");
  const torch::Device device = src.is_cuda() ? src.device() : dst.device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t compute = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const cudaStream_t swap = swap_stream(device.index()).stream();
  stream_wait(swap, compute);  // the blocks' producers run before the copy
  copy_runs(src, dst, mapping, swap);
  if (dst.is_cuda()) {
    stream_wait(compute, swap);  // later kernels see the swapped-in blocks
  } else {
    check_cuda(cudaStreamSynchronize(swap), "cudaStreamSynchronize");  // the host reads dst
  }
}

void migrate_blocks_cuda(const std::vector<torch::Tensor>& src_caches,
                         const std::vector<torch::Tensor>& dst_caches,
                         const torch::Tensor& src_blocks, const torch::Tensor& dst_blocks,
                         int64_t src_head_start, int64_t dst_head_start, int64_t num_heads) {
  check_same_caches(src_caches, "src_caches");
  check_same_caches(dst_caches, "dst_caches");
  const torch::Tensor &s0 = src_caches[0], &d0 = dst_caches[0];
  TORCH_CHECK(src_caches.size() == dst_caches.size(), "need one dst cache per src cache");
  TORCH_CHECK(s0.scalar_type() == d0.scalar_type(), "src/dst dtypes differ");
  TORCH_CHECK(s0.size(2) == d0.size(2) && s0.size(3) == d0.size(3), "block shapes differ");
  TORCH_CHECK(num_heads >= 0 && src_head_start >= 0 && dst_head_start >= 0 &&
                  src_head_start + num_heads <= s0.size(1) &&
                  dst_head_start + num_heads <= d0.size(1),
              "head range out of the caches' heads");
  TORCH_CHECK(src_blocks.numel() == dst_blocks.numel(), "src/dst block counts differ");
  check_block_ids(src_blocks, s0.size(0), "src_blocks");
  check_block_ids(dst_blocks, d0.size(0), "dst_blocks");
  const c10::cuda::CUDAGuard guard(d0.device());
  enable_peer_access(s0.get_device());
  const int64_t head_bytes = s0.size(2) * s0.size(3) * s0.element_size();
  const torch::Tensor src_ptrs = pointer_array(src_caches, d0.device());
  const torch::Tensor dst_ptrs = pointer_array(dst_caches, d0.device());
  const torch::Tensor sb = dc::device_i64(src_blocks.flatten(), d0.device());
  const torch::Tensor db = dc::device_i64(dst_blocks.flatten(), d0.device());
  dc::BlockCopyParams p{};
  p.src_ptrs = src_ptrs.data_ptr<int64_t>();
  p.dst_ptrs = dst_ptrs.data_ptr<int64_t>();
  p.src_blocks = sb.data_ptr<int64_t>();
  p.dst_blocks = db.data_ptr<int64_t>();
  p.pair_stride = 1;
  p.src_block_bytes = block_bytes(s0);
  p.dst_block_bytes = block_bytes(d0);
  p.src_offset = src_head_start * head_bytes;
  p.dst_offset = dst_head_start * head_bytes;
  p.chunk_bytes = num_heads * head_bytes;
  p.num_pairs = static_cast<int>(sb.numel());
  p.num_caches = static_cast<int>(src_caches.size());
  const auto stream = c10::cuda::getCurrentCUDAStream(d0.get_device()).stream();
  check_cuda(dc::launch_block_copy(p, stream), "migrate_blocks");
}
