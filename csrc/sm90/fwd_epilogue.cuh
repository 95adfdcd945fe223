// Epilogue of the sm90 forward kernel: the normalized O tile and the lse rows to global memory.
//
// O goes straight from the accumulator registers: each thread stores its column pairs as
// 4-byte words (a quad covers 16 contiguous bytes of a row), predicated on row < T and
// column < H. No shared memory is involved, so the producer may already load the next tile's
// Q and K while this runs. (A TMA store through shared memory would write full 128-byte lines;
// left for the tuning pass.)
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>
#include <cutlass/array.h>

#include "common/util.cuh"
#include "params.h"
#include "sm90/pipeline.cuh"

namespace jax_flash::sm90 {

// acc_o: this thread's float O fragment (acc layout), already normalized;
// coord: the PV TiledMma's partition of an identity tensor over (kBlockM, kHeadDim);
// lse: this thread's rows, in the row order of the row/col view.
template <class Element, int kRows, class AccO, class Coord>
__device__ __forceinline__ void store_output(const FwdParams& p, AccO const& acc_o,
                                             Coord const& coord, const float (&lse)[kRows],
                                             int row0, int batch, int head) {
  using namespace cute;
  Tensor o16 = make_tensor<Element>(acc_o.layout());
  convert_fragment(acc_o, o16);
  Tensor o_rc = acc_rowcol(o16);
  Tensor c_rc = acc_rowcol(coord);
  static_assert(decltype(size<0>(o_rc))::value == kRows, "row count mismatch");

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
  if (get<1>(c_rc(0, 0)) == 0) {  // the quad lane holding column 0 writes its rows' lse
    float* lse_rows = p.lse + (int64_t(batch) * p.n + head) * p.t;
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int row = row0 + get<0>(c_rc(i, 0));
      if (row < p.t) lse_rows[row] = lse[i];
    }
  }
}

}  // namespace jax_flash::sm90
