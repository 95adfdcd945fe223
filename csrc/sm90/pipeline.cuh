// Synchronization, wgmma issue and fragment-layout helpers of the sm90 kernels.
//
// Vocabulary:
//   full / empty barrier   an mbarrier per shared-memory buffer. The producer arms `full` with the
//                          byte count of its TMA copies (transaction count); consumers wait on it.
//                          Each consumer warp arrives on `empty` once it no longer reads the buffer;
//                          the producer waits on it before overwriting.
//   phase                  mbarriers complete phases 0, 1, 2, ...; waiting with parity p returns
//                          once the phase of that parity is complete, so a ring of kStages buffers
//                          flips the parity it waits for each time it wraps around.
//   acc fragment           a thread's part of a wgmma accumulator, layout ((2, 2, V), M, N): per
//                          n8 column block V, 2 adjacent columns x rows {r, r + 8}; the 4 lanes of
//                          a quad share a row, as with mma.sync.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

namespace jax_flash::sm90 {

using Barrier = cutlass::arch::ClusterBarrier;               // cluster of one CTA: CTA scope
using TxBarrier = cutlass::arch::ClusterTransactionBarrier;  // + TMA transaction bytes

// Position in a ring of kStages buffers and the parity of the current pass over it.
template <int kStages>
struct PipeState {
  int index = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void advance() {
    if (++index == kStages) {
      index = 0;
      phase ^= 1u;
    }
  }
};

// Consumer warps: wait until buffer `st` is full; release it (one arrival per warp).
template <int kStages>
__device__ __forceinline__ void wait_full(uint64_t* full, const PipeState<kStages>& st) {
  Barrier::wait(&full[st.index], st.phase);
}
template <int kStages>
__device__ __forceinline__ void release(uint64_t* empty, PipeState<kStages>& st) {
  if (threadIdx.x % 32 == 0) Barrier::arrive(&empty[st.index]);
  st.advance();
}

// The dynamic tile order (scheduler.cuh; fwd_kernel.cuh kDynamic): the producer warp announces
// each tile it takes, and the sentinel >= num_tiles that ends the CTA, in a ring of kSlots
// shared-memory slots; every consumer warp reads each one. full: the producer's one arrival;
// empty: one per consumer warp (kConsumerWarps, the count `empty` was initialized with). The
// slot is written before, and read after, the mbarrier arrive (release) / wait (acquire) that
// orders it.
// Storage: the kernel's SharedStorage (tile_slot, tile_full, tile_empty of kSlots each).
// One counter (tiles announced or taken so far) gives the slot and the phase: the producer
// runs on 24 registers, where a second one spilled.
template <int kSlots, class Storage>
struct TileFeed {
  static_assert((kSlots & (kSlots - 1)) == 0, "a power of two: slot and phase by shifts");
  Storage& st;
  int count = 0;

  // Producer warp (every lane; lane 0 writes): announce the linear tile index `linear`.
  __device__ __forceinline__ void publish(int linear) {
    const int i = count % kSlots;
    Barrier::wait(&st.tile_empty[i], ((count / kSlots) & 1) ^ 1);
    if (threadIdx.x % 32 == 0) {
      *reinterpret_cast<volatile int*>(&st.tile_slot[i]) = linear;
      Barrier::arrive(&st.tile_full[i]);
    }
    ++count;
  }
  // Consumer warps (every lane): the next announced tile index. Lane 0 reads the slot and
  // releases it, so the read and the release are one thread's, in program order (with every
  // lane reading, compute-sanitizer racecheck reported the producer's next write to the slot
  // as a WAR hazard).
  __device__ __forceinline__ int take() {
    const int i = count % kSlots;
    Barrier::wait(&st.tile_full[i], (count / kSlots) & 1);
    int linear = 0;
    if (threadIdx.x % 32 == 0) {
      linear = *reinterpret_cast<volatile int*>(&st.tile_slot[i]);
      Barrier::arrive(&st.tile_empty[i]);
    }
    ++count;
    return __shfl_sync(0xffffffffu, linear, 0);
  }
};

// Turn-taking of the consumer warpgroups around their wgmma issues, in round-robin order
// 0, 1, ..., kWarpGroups - 1, 0, ...: one named barrier of 256 threads per warpgroup, ids
// kFirstId + wg. A warpgroup waits for its turn on its own barrier (128 threads) and passes the
// turn by arriving on the next one's (the other 128). Warpgroup 0 gives itself the first turn.
// A barrier never holds two pending arrivals: warpgroup wg can pass to wg + 1 again only after
// its own next turn, which needs every other warpgroup, wg + 1 included, to have taken a turn.
// With three, each warpgroup's softmax runs while the other two issue (a fixed order rather
// than "whoever is ready" keeps the issue slots fair and deterministic).
// Every warpgroup must take the same number of turns (they walk the same key blocks of the
// same tiles); the very last pass is left pending at exit, which the hardware allows.
template <bool kEnabled, int kWarpGroups, uint32_t kFirstId>
struct PingPong {
  static_assert(!kEnabled || kWarpGroups >= 2, "turn-taking needs two warpgroups or more");
  int wg;  // consumer warpgroup, 0 .. kWarpGroups - 1

  __device__ __forceinline__ void start() const {
    if constexpr (kEnabled) {
      if (wg == 0) cutlass::arch::NamedBarrier::arrive(256, kFirstId);
    }
  }
  __device__ __forceinline__ void wait_turn() const {
    if constexpr (kEnabled) cutlass::arch::NamedBarrier::sync(256, kFirstId + wg);
  }
  __device__ __forceinline__ void pass_turn() const {
    if constexpr (kEnabled) {
      // (Two warpgroups: written as 1 - wg, the code the shipped kernels always had.)
      const int next = kWarpGroups == 2 ? 1 - wg : (wg + 1 == kWarpGroups ? 0 : wg + 1);
      cutlass::arch::NamedBarrier::arrive(256, kFirstId + next);
    }
  }
};

// Issue acc (+)= A @ B as one committed wgmma group; returns without waiting. kZeroInit
// overwrites acc (first k-slice with scale-out 0). A may be register fragments (P) or smem
// descriptors; B is always descriptors.
template <bool kZeroInit, class TiledMma, class A, class B, class Acc>
__device__ __forceinline__ void wgmma_issue(TiledMma& mma, A& a, B const& b, Acc& acc) {
  using namespace cute;
  constexpr bool kRegA = !is_base_of<GMMA::DescriptorIterator, typename TiledMma::FrgTypeA>::value;
  if constexpr (kRegA) warpgroup_fence_operand(a);
  warpgroup_fence_operand(acc);
  warpgroup_arrive();
  mma.accumulate_ = kZeroInit ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    gemm(mma, a(_, _, k), b(_, _, k), acc);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(acc);
  if constexpr (kRegA) warpgroup_fence_operand(a);
}

// Wait until at most kPending wgmma groups of this warpgroup are in flight, then pin the
// registers of the fragments the finished groups wrote (or read) so no access moves above.
template <int kPending, class... Frags>
__device__ __forceinline__ void wgmma_wait(Frags&... frags) {
  cute::warpgroup_wait<kPending>();
  (cute::warpgroup_fence_operand(frags), ...);
}

// Row/col view of an acc fragment layout: ((2, 2, V), M, N) -> ((2, M), (2, V, N)).
template <class Layout>
__host__ __device__ constexpr auto acc_rowcol_layout(Layout acc) {
  using namespace cute;
  static_assert(decltype(rank<0>(acc))::value == 3, "expected a wgmma acc fragment");
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
}

template <class Tensor>
__device__ __forceinline__ auto acc_rowcol(Tensor&& t) {
  return cute::make_tensor(t.data(), acc_rowcol_layout(t.layout()));
}

// An acc fragment of P (64 x N per warpgroup) read as the register A operand of P @ V: a
// k16 slice of A holds, per thread, exactly the C values of two adjacent n8 column blocks.
// ((2, 2, V), M, N) -> ((2, 2, 2), M, (V / 2, N)).
template <class Layout>
__host__ __device__ constexpr auto acc_as_a_operand_layout(Layout acc) {
  using namespace cute;
  auto v = logical_divide(get<0>(acc), Shape<Underscore, Underscore, _2>{});  // (2, 2, (2, V/2))
  return make_layout(make_layout(get<0>(v), get<1>(v), get<2, 0>(v)), get<1>(acc),
                     make_layout(get<2, 1>(v), get<2>(acc)));
}

}  // namespace jax_flash::sm90
