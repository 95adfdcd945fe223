// Small device helpers for the mma.sync (sm80-style) attention kernels, built on CuTe.
//
// Fragment vocabulary used here and in the kernels:
//   acc fragment   a thread's part of an m16n8 mma accumulator tile set, layout
//                  ((2, 2), MMA_M, MMA_N): per atom 2 adjacent columns x rows {r, r + 8}.
//   row/col view   the same registers indexed as (rows, cols) = ((2, MMA_M), (2, MMA_N)), so a
//                  softmax can loop over a thread's rows; the 4 lanes of a quad share each row.
#pragma once

#include <cuda_runtime.h>

#include <cute/tensor.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

namespace jax_flash {

template <class T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// 2^x on the special-function unit. ex2(-inf) = +0, which the softmax relies on for masked scores.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// Combine a value across the 4 lanes of a quad: in an m16n8 accumulator those lanes hold one row.
template <class Op>
__device__ __forceinline__ float quad_allreduce(float x, Op op) {
  x = op(x, __shfl_xor_sync(0xffffffffu, x, 2));
  x = op(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return x;
}

// Row/col view of an acc fragment layout: ((2, 2), M, N) -> ((2, M), (2, N)).
// Within the C atom, mode (0, 0) steps a column and mode (0, 1) steps 8 rows.
template <class Layout>
__host__ __device__ constexpr auto rowcol_layout(Layout acc) {
  using namespace cute;
  static_assert(decltype(rank(acc))::value == 3, "expected an acc fragment (MMA, MMA_M, MMA_N)");
  auto l = logical_divide(acc, Shape<_2>{});  // split the atom's 4 values into (2, 2)
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

template <class Tensor>
__device__ __forceinline__ auto rowcol_view(Tensor&& t) {
  return cute::make_tensor(t.data(), rowcol_layout(t.layout()));
}

// Layout that reads an acc fragment of P (M x N) as the A operand of P @ V for m16n8k16:
// the A registers of one k16 slice are, in order, the C registers of two adjacent n8 tiles.
// ((2, 2), M, N) -> ((2, 2, 2), M, N / 2), the trick that keeps P in registers.
template <class Layout>
__host__ __device__ constexpr auto acc_as_operand_a_layout(Layout acc) {
  using namespace cute;
  static_assert(decltype(size<2>(acc))::value % 2 == 0, "P needs an even number of n8 tiles");
  auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // ((2,2), M, (2, N/2))
  return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

// Convert a float register fragment into a 16-bit one of the same layout, two values per
// instruction (cvt.rn.f16x2.f32 / cvt.rn.bf16x2.f32).
template <class Dst, class Src>
__device__ __forceinline__ void convert_fragment(Src const& src, Dst& dst) {
  using To = typename Dst::value_type;
  constexpr int kN = decltype(cute::size(src))::value;
  static_assert(decltype(cute::size(dst))::value == kN, "fragment sizes differ");
  cutlass::NumericArrayConverter<To, float, kN, cutlass::FloatRoundStyle::round_to_nearest> conv;
  *reinterpret_cast<cutlass::Array<To, kN>*>(dst.data()) =
      conv(*reinterpret_cast<cutlass::Array<float, kN> const*>(src.data()));
}

// Copy a gmem tile to smem with cp.async, 16 bytes per transfer. Transfers whose (row, col)
// is outside [0, max_row) x [0, max_col) write zeros instead, so padded rows and head-dim
// columns contribute nothing (and never NaN) to the products.
//   src, dst: (CPY, CPY_M, CPY_K) partitions of one TiledCopy over the gmem and smem tiles;
//   coord:    the same partition of an identity tensor (tile coordinates).
// The zero-fill atom takes its predicate through with(): no branch, one instruction each.
// kCheckRows = false skips the row test for tiles known to be full.
template <bool kCheckRows = true, class TiledCopy, class Src, class Dst, class Coord>
__device__ __forceinline__ void copy_tile_zfill(TiledCopy const& tiled_copy, Src const& src,
                                                Dst&& dst, Coord const& coord, int max_row,
                                                int max_col) {
  using namespace cute;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    const bool row_ok = !kCheckRows || get<0>(coord(0, m, 0)) < max_row;
    CUTE_UNROLL
    for (int k = 0; k < size<2>(src); ++k) {
      const bool ok = row_ok && get<1>(coord(0, 0, k)) < max_col;
      copy(tiled_copy.with(ok), src(_, m, k), dst(_, m, k));
    }
  }
}

// Store a register tile to gmem where (row, col) is inside [0, max_row) x [0, max_col).
template <class TiledCopy, class Src, class Dst, class Coord>
__device__ __forceinline__ void store_tile_predicated(TiledCopy const& tiled_copy, Src const& src,
                                                      Dst&& dst, Coord const& coord, int max_row,
                                                      int max_col) {
  using namespace cute;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coord(0, m, 0)) < max_row) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) {
        if (get<1>(coord(0, 0, k)) < max_col) {
          copy(tiled_copy, src(_, m, k), dst(_, m, k));
        }
      }
    }
  }
}

// Negate every 16-bit float of a thread's smem partition in place (flip the sign bits),
// 16 bytes at a time. The partition's first mode must be 8 contiguous elements.
template <class Tensor>
__device__ __forceinline__ void flip_sign_bits(Tensor&& t) {
  using namespace cute;
  static_assert(sizeof(typename std::decay_t<Tensor>::value_type) == 2, "16-bit elements only");
  CUTE_UNROLL
  for (int m = 0; m < size<1>(t); ++m) {
    CUTE_UNROLL
    for (int k = 0; k < size<2>(t); ++k) {
      uint4* v = reinterpret_cast<uint4*>(&t(0, m, k));
      uint4 x = *v;
      x.x ^= 0x80008000u;
      x.y ^= 0x80008000u;
      x.z ^= 0x80008000u;
      x.w ^= 0x80008000u;
      *v = x;
    }
  }
}

// acc += A @ B^T with both operands in shared memory. The register fragments of k-slice k + 1
// are loaded (ldmatrix) while the mma of slice k runs.
//   rA (MMA, MMA_M, MMA_K), rB (MMA, MMA_N, MMA_K): register fragments from the TiledMma;
//   sA, sB: the smem partitions of the copy atoms' thread slices; copy_a/copy_b: those slices.
template <class TiledMma, class Acc, class RA, class RB, class SA, class SB, class CopyA,
          class CopyB, class ThrCopyA, class ThrCopyB>
__device__ __forceinline__ void gemm_smem_smem(TiledMma const& mma, Acc& acc, RA& rA, RB& rB,
                                               SA const& sA, SB const& sB, CopyA const& copy_a,
                                               CopyB const& copy_b, ThrCopyA const& thr_copy_a,
                                               ThrCopyB const& thr_copy_b) {
  using namespace cute;
  auto rA_view = thr_copy_a.retile_D(rA);
  auto rB_view = thr_copy_b.retile_D(rB);
  copy(copy_a, sA(_, _, 0), rA_view(_, _, 0));
  copy(copy_b, sB(_, _, 0), rB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) {
      copy(copy_a, sA(_, _, k + 1), rA_view(_, _, k + 1));
      copy(copy_b, sB(_, _, k + 1), rB_view(_, _, k + 1));
    }
    gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

// acc += A @ B^T with A already in registers (e.g. P) and B in shared memory.
template <class TiledMma, class Acc, class RA, class RB, class SB, class CopyB, class ThrCopyB>
__device__ __forceinline__ void gemm_reg_smem(TiledMma const& mma, Acc& acc, RA const& rA, RB& rB,
                                              SB const& sB, CopyB const& copy_b,
                                              ThrCopyB const& thr_copy_b) {
  using namespace cute;
  auto rB_view = thr_copy_b.retile_D(rB);
  copy(copy_b, sB(_, _, 0), rB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) {
      copy(copy_b, sB(_, _, k + 1), rB_view(_, _, k + 1));
    }
    gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

}  // namespace jax_flash
