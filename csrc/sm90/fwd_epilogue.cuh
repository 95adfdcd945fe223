// Epilogue of the sm90 forward kernel: the normalized O tile and the lse rows to global memory.
//
// Two ways for O (fwd_traits.h kStoreO):
//  * staged (hdim 64, 128): each consumer warpgroup writes its 64 rows into its own swizzled
//    staging tile in shared memory (stmatrix, conflict-free) and one thread issues a TMA store;
//    the store clips rows >= T and columns >= H, and runs while the warpgroup goes on.
//  * direct (hdim 256, where no staging tile fits): each thread stores its column pairs as
//    4-byte words (a quad covers 16 contiguous bytes of a row), predicated on row < T and
//    column < H.
// lse rows are stored directly in both cases.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/array.h>

#include "common/util.cuh"
#include "params.h"
#include "sm90/fwd_traits.h"
#include "sm90/pipeline.cuh"

namespace jax_flash::sm90 {

// lse of this thread's rows (natural log), written by the quad lane that holds column 0.
template <int kRows, class Coord>
__device__ __forceinline__ void store_lse(const FwdParams& p, Coord const& coord,
                                          const float (&lse)[kRows], int row0, int batch,
                                          int head) {
  using namespace cute;
  Tensor c_rc = acc_rowcol(coord);
  if (get<1>(c_rc(0, 0)) == 0) {
    float* lse_rows = p.lse + (int64_t(batch) * p.n + head) * p.t;
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int row = row0 + get<0>(c_rc(i, 0));
      if (row < p.t) lse_rows[row] = lse[i];
    }
  }
}

// The staged path (kStoreO): acc_o normalized, wg the consumer warpgroup (0 ..
// kConsumerWarpGroups - 1), wg_thread its thread index (0..127). Named barriers: one per
// warpgroup, Traits::kEpilogueBarrier + wg (clear of the ping-pong ids, fwd_traits.h).
// The tile's previous store must have read the staging tile before it is overwritten: its
// issuing thread waits, then the warpgroup meets on a named barrier.
// Before the CTA exits, the issuing thread waits for its last store (store_output_drain).
template <class Traits, class AccO>
__device__ __forceinline__ void store_output_staged(const KernelParams<Traits>& kp,
                                                    typename Traits::SharedStorage& st,
                                                    AccO const& acc_o, int wg, int wg_thread,
                                                    int m_block, int batch, int head) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  const FwdParams& p = kp.fwd;
  Tensor o16 = make_tensor<Element>(acc_o.layout());
  convert_fragment(acc_o, o16);
  Tensor sO = make_tensor(make_smem_ptr(st.o.data()), typename Traits::SmemLayoutO{})(_, _, wg);
  if (wg_thread == 0) tma_store_wait<0>();
  cutlass::arch::NamedBarrier::sync(128, Traits::kEpilogueBarrier + wg);
  auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{},
                               typename Traits::TiledMmaPVOne{});
  auto thr = r2s.get_thread_slice(wg_thread);
  Tensor src = thr.retile_S(o16);
  Tensor dst = thr.partition_D(sO);
  copy(r2s, src, dst);
  tma_store_fence();  // the generic-proxy writes above, before the async proxy reads them
  cutlass::arch::NamedBarrier::sync(128, Traits::kEpilogueBarrier + wg);
  if (wg_thread == 0) {
    Tensor mO = kp.tma_o.get_tma_tensor(make_shape(p.t, p.h, p.n, p.b));
    Tensor gO = local_tile(mO(_, _, head, batch), Shape<_64, Int<kHeadDim>>{},
                           make_coord(m_block * Traits::kConsumerWarpGroups + wg, 0));
    auto part = tma_partition(kp.tma_o, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sO),
                              group_modes<0, 2>(gO));
    copy(kp.tma_o, get<1>(part), get<0>(part));
    tma_store_arrive();
  }
}

// The staging tile must outlive the last store's read of it.
__device__ __forceinline__ void store_output_drain(int wg_thread) {
  if (wg_thread == 0) cute::tma_store_wait<0>();
}

// The direct path (O only): acc_o this thread's float O fragment (acc layout), already
// normalized; coord the PV TiledMma's partition of an identity tensor over (kBlockM, kHeadDim).
template <class Element, class AccO, class Coord>
__device__ __forceinline__ void store_output_direct(const FwdParams& p, AccO const& acc_o,
                                                    Coord const& coord, int row0, int batch,
                                                    int head) {
  using namespace cute;
  Tensor o16 = make_tensor<Element>(acc_o.layout());
  convert_fragment(acc_o, o16);
  Tensor o_rc = acc_rowcol(o16);
  Tensor c_rc = acc_rowcol(coord);
  constexpr int kRows = decltype(size<0>(o_rc))::value;

  Element* o_head = static_cast<Element*>(p.o) + batch * p.o_batch_stride + head * p.o_head_stride;
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) {
    const int row = row0 + get<0>(c_rc(i, 0));
    if (row < p.t) {
      Element* o_row = o_head + int64_t(row) * p.o_row_stride;
      CUTE_UNROLL
      for (int j = 0; j < size<1>(o_rc); j += 2) {  // (j, j + 1): adjacent columns
        const int col = get<1>(c_rc(i, j));
        if (col < p.h) {
          cutlass::Array<Element, 2> pair;
          pair[0] = o_rc(i, j);
          pair[1] = o_rc(i, j + 1);
          *reinterpret_cast<cutlass::Array<Element, 2>*>(o_row + col) = pair;
        }
      }
    }
  }
}

}  // namespace jax_flash::sm90
