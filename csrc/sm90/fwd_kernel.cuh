// Forward attention for Hopper (sm_90a): TMA loads into a multi-stage shared-memory pipeline,
// wgmma products with P from registers, warp specialization, persistent CTAs.
//
// Dimension legend (params.h letters): B batch, T queries, S keys, N query heads, K kv heads
// (G = N / K), H head dim (runtime, multiple of 8, <= kHeadDim). Tiles (fwd_traits.h): kBlockM
// query rows per tile, kBlockN keys per pipeline stage, kHeadDim the padded H.
//
// One CTA of 1 + kConsumerWarpGroups warpgroups per multiprocessor, looping over tiles
// (scheduler.cuh):
//   warpgroup 0   producer: drops to 24 registers; one thread issues every TMA load
//                 (fwd_mainloop.cuh load()) into the Q buffer and the K and V stage rings.
//   warpgroups 1..kConsumerWarpGroups  consumers (2; 3 in hdim 64's wide tiles, fwd_traits.h
//                 use_wide_tiles): raised to
//                 240 registers (160 with three); each owns 64 query rows of the tile:
//                 S = Q K^T and O += P V on wgmma, online softmax in registers
//                 (fwd_mainloop.cuh consume()), then O through a shared-memory staging tile
//                 and a TMA store (hdim 64, 128) or straight from registers (hdim 256), lse
//                 straight to global memory (fwd_epilogue.cuh).
// Extras (params.h ExtraParams: lengths, segment ids, bias, mask, softcap) run in the kExtras
// instantiation: key blocks from scheduler.cuh ExtraKeyBlocks (lengths shrink the range,
// segment ranges skip blocks), the element path of softmax.cuh extras_tile() on blocks that need
// it, and rows past q_seqlen zeroed in the epilogue. Calls without extras run kExtras = false,
// whose loop is what it was before extras existed.
//
// Evidence, reproducible without a GPU (from the repo root; CUTLASS = the nvidia-cutlass
// wheel's cutlass_library/source/include):
//   nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr \
//     -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -I csrc -I $CUTLASS \
//     -cubin -o /tmp/fwd.cubin tests/cuda/sm90_fwd_one.cu -DSM90_HDIM=128 -DSM90_BF16=1
//   -> ptxas: "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" (the 168
//      registers it reports are the entry cap of 384 threads; setmaxnreg then gives 24 / 240).
//   cuobjdump -sass /tmp/fwd.cubin | grep HGMMA      (pip install nvidia-cuda-cuobjdump)
//   -> in the kernel without extras, S = Q K^T as "HGMMA.64x128x16.F32.BF16 R88, R152,
//      gdesc[..], R88" (Q from registers, K from shared memory) and O += P V as
//      "HGMMA.64x128x16.F32.BF16 R24, R184, gdesc[..].tnspB, R24" (P from registers, V^T
//      transposed from shared memory); in the extras kernels S reads Q from shared memory too
//      ("HGMMA.64x128x16.F32.BF16 R24, gdesc[..], R24"); no LDL/STL in the kernel without extras.
// tests/cuda/sm90_notes.md has the numbers of every instantiation.
#pragma once

#include <cuda_runtime.h>

#include <cfloat>

#include <cute/tensor.hpp>
#include <cute/arch/cluster_sm90.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "params.h"
#include "sm90/fwd_epilogue.cuh"
#include "sm90/fwd_mainloop.cuh"
#include "sm90/fwd_traits.h"
#include "sm90/pipeline.cuh"
#include "sm90/scheduler.cuh"
#include "sm90/softmax.cuh"

namespace jax_flash::sm90 {

// kExtras: the call has lengths, segment ids, bias, mask or softcap (params.h ExtraParams);
// a separate instantiation, so calls without them run the code they ran before extras existed.
// kDynamic: tiles in the dynamic order (scheduler.cuh; fwd_launch.cuh tile_order()), its own
// instantiation of either: the tile feed's state made the static extras kernel spill
// more (bias 296 -> 234 TFLOP/s, softcap -6%, H200 driver).
template <class Traits, bool kExtras, bool kDynamic = false>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    fwd_kernel(const __grid_constant__ KernelParams<Traits> kp) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace cute;
  using Mainloop = FwdMainloop<Traits>;
  using Pipe = typename Mainloop::Pipe;

  extern __shared__ __align__(1024) char smem[];
  auto& st = *reinterpret_cast<typename Traits::SharedStorage*>(smem);
  const FwdParams& p = kp.fwd;
  const int warp_group = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);  // warp-uniform
  const TileScheduler sched{kp.num_m_blocks, p.n, kp.num_m_blocks * p.b * p.n, kp.section,
                             kp.snake};

  if (threadIdx.x == 0) {
    CUTE_UNROLL
    for (int i = 0; i < Traits::kQStages; ++i) {
      Barrier::init(&st.q_full[i], 1);
      Barrier::init(&st.q_empty[i], Traits::kConsumerWarps);
    }
    CUTE_UNROLL
    for (int i = 0; i < Traits::kStages; ++i) {
      Barrier::init(&st.k_full[i], 1);
      Barrier::init(&st.k_empty[i], Traits::kConsumerWarps);
      Barrier::init(&st.v_full[i], 1);
      Barrier::init(&st.v_empty[i], Traits::kConsumerWarps);
    }
    CUTE_UNROLL
    for (int i = 0; i < Traits::kTileSlots; ++i) {
      Barrier::init(&st.tile_full[i], 1);
      Barrier::init(&st.tile_empty[i], Traits::kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (warp_group == 0) {
    // ---- producer ----
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    // One thread issues every load. With extras or the dynamic order the whole first warp
    // walks the tiles (ExtraKeyBlocks::next() is warp-collective; the tile feed is the warp's)
    // and lane 0 issues.
    constexpr bool kWarp = kExtras || kDynamic;
    if (threadIdx.x / 32 == 0 && (kWarp || cute::elect_one_sync())) {
      const bool leader = !kWarp || threadIdx.x == 0;
      if (leader) {
        prefetch_tma_descriptor(kp.tma_q.get_tma_descriptor());
        prefetch_tma_descriptor(kp.tma_k.get_tma_descriptor());
        prefetch_tma_descriptor(kp.tma_vt.get_tma_descriptor());
      }
      Pipe k_write, v_write;
      int q_iter = 0;
      // One tile's loads (none when it has no key block).
      auto load_tile = [&](const Tile& tile) {
        auto blocks = Mainloop::template tile_blocks<kExtras>(p, tile);
        if (!blocks.empty()) {
          Mainloop::load(kp, st, tile, blocks, k_write, v_write, q_iter++, leader);
        }
      };
      if constexpr (kDynamic) {
        // This CTA's first tile is blockIdx.x, each later one the next value of the launch's
        // counter, announced to the consumers through the tile feed; the first index past the
        // tiles ends both sides. Lane 0 claims the next tile before issuing this one's loads,
        // so the atomic's round trip overlaps them.
        TileFeed<Traits::kTileSlots, typename Traits::SharedStorage> feed{st};
        for (int linear = blockIdx.x;;) {
          feed.publish(linear);
          if (linear >= sched.num_tiles) break;
          int next = 0;
          if (threadIdx.x == 0) next = int(gridDim.x) + atomicAdd(kp.fwd.tile_counter, 1);
          load_tile(sched.tile(linear));
          linear = __shfl_sync(0xffffffffu, next, 0);
        }
      } else {
        for (int round = 0, linear; (linear = sched.linear(round)) < sched.num_tiles; ++round) {
          load_tile(sched.tile(linear));
        }
      }
    }
  } else {
    // ---- consumers ----
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int wg = warp_group - 1, ctid = threadIdx.x - 128;
    if constexpr (kDynamic) {
      TileFeed<Traits::kTileSlots, typename Traits::SharedStorage> feed{st};
      Mainloop::template consume<kExtras>(kp, st, sched, wg, ctid, [&]() { return feed.take(); });
    } else {
      int round = 0;
      Mainloop::template consume<kExtras>(kp, st, sched, wg, ctid,
                                          [&]() { return sched.linear(round++); });
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // built without sm_90a (wgmma, setmaxnreg): fail loudly rather than return garbage
#endif
}

}  // namespace jax_flash::sm90
