"""The "cuda" implementation: XLA FFI custom calls into the compiled kernels.

Loads the optional extension `jax_flash._jax_flash_ext` (absent in a source checkout or a
build without nvcc: then `kernels_available()` says so and nothing here is called),
registers its handlers as the CUDA custom-call targets "jax_flash_fwd" / "jax_flash_bwd",
and wraps them with `jax.ffi.ffi_call`. Shapes (see csrc/params.h):
q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv], out [B,T,N,Hv], lse [B,N,T] float32.

The extras (bias, mask, lengths, segment ids) follow q, k, v as further operands in a fixed
order, named by the "extras" bit set (csrc/ffi/handlers.cc ExtraBit); segment ids travel with
their per-chunk summaries, which the kernels use to skip tiles that cannot match: computed on
the device by the custom call "jax_flash_segment_ranges" (csrc/common/segment_ranges.cu), of
which segment_ranges below is the jax.numpy specification.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np

from ._config import UNBOUNDED, AttnConfig, Extras
from ._xla import softmax_delta

try:
  from . import _jax_flash_ext as _ext
  _EXT_ERROR = None
except ImportError as e:  # not built, or built without a CUDA compiler
  _ext = None
  _EXT_ERROR = str(e)

logger = logging.getLogger("jax_flash")

_MIN_CC = (8, 0)  # the portable sm80 kernels run from Ampere on
_DTYPES = {np.dtype(jnp.float16): "float16", np.dtype(jnp.bfloat16): "bfloat16"}

_lock = threading.Lock()
_registered = False
_device_reasons: dict = {}  # device -> reason or None, read once per device
_logged = False
_force_arch = 0


def _build_reason() -> str | None:
  """Why this installation has no kernels at all, or None."""
  if _ext is None:
    return "extension not built"
  if not _ext.built_archs():
    missing = _ext.missing_sources()
    return ("extension built without kernels"
            + (f" ({missing} missing at build time)" if missing else ""))
  return None


def _device_reason(device) -> str | None:
  if device.platform != "gpu":
    return f"no CUDA device (device is {device.platform})"
  cc = getattr(device, "compute_capability", None)
  try:
    major, minor = (int(x) for x in str(cc).split("."))
  except ValueError:
    return f"not an NVIDIA GPU (compute capability {cc!r})"
  if (major, minor) < _MIN_CC:
    return f"compute capability {major}.{minor} < {_MIN_CC[0]}.{_MIN_CC[1]}"
  return None


def kernels_available(device=None) -> str | None:
  """None if the CUDA kernels can run on `device` (default: JAX's first device), else why not.

  Read once per device. When the device is a GPU and the kernels cannot run, the reason is
  logged once per process on the "jax_flash" logger.
  """
  global _logged
  if device is None:
    try:
      device = jax.devices()[0]
    except RuntimeError as e:
      return f"no JAX device ({e})"
  with _lock:
    if device not in _device_reasons:
      _device_reasons[device] = _device_reason(device) or _build_reason()
    reason = _device_reasons[device]
    if reason is not None and device.platform == "gpu" and not _logged:
      _logged = True
      logger.info("jax_flash: CUDA kernels unavailable on %s: %s", device, reason)
  return reason


def _max_head_dim() -> int:
  return max(_ext.built_head_dims()) if _ext is not None and _ext.built_head_dims() else 256


def unsupported_reason(q, k, v, extras: Extras, cfg: AttnConfig) -> str | None:
  """None if the kernels implement this call, else a short reason (for routing/errors).

  q, k, v are 4-D arrays or ShapeDtypeStructs: [B,T,N,H], [B,S,K,H], [B,S,K,Hv].
  Every extra and softcap is in the kernels; only dtypes, head dims and sizes limit them.
  """
  del cfg, extras  # every extra runs in the kernels, at any size (64-bit offsets)
  dtypes = {np.dtype(x.dtype) for x in (q, k, v)}
  if len(dtypes) > 1:
    return f"mixed dtypes q {q.dtype}, k {k.dtype}, v {v.dtype}"
  dtype = np.dtype(q.dtype)
  if dtype not in _DTYPES:
    return f"dtype {dtype} (the kernels take float16 and bfloat16)"
  if _ext is not None and _DTYPES[dtype] not in _ext.built_dtypes():
    return f"{dtype} kernels not built (JAX_FLASH_DTYPES)"
  if any(d == 0 for x in (q, k, v) for d in x.shape):
    return f"empty input (q {q.shape}, k {k.shape}, v {v.shape})"
  h, hv = q.shape[-1], v.shape[-1]
  if hv != h:
    return f"value head dim Hv={hv} != H={h}"
  if h % 8:
    return f"head dim {h} is not a multiple of 8"
  if h > _max_head_dim():
    return f"head dim {h} > {_max_head_dim()} (the largest built)"
  return None


@contextlib.contextmanager
def force_arch(arch: int):
  """Test-only: run the kernel family `arch` (80 or 90; 0 = automatic) in calls traced
  inside the block. jit caches traced calls, so use a fresh function inside the block."""
  global _force_arch
  if arch not in (0, 80, 90):
    raise ValueError(f"force_arch must be 0, 80 or 90, got {arch!r}")
  previous, _force_arch = _force_arch, arch
  try:
    yield
  finally:
    _force_arch = previous


def _register():
  global _registered
  with _lock:
    if _registered:
      return
    if _ext is None:
      raise RuntimeError(f"jax_flash CUDA extension not built ({_EXT_ERROR})")
    for name, capsule in _ext.registrations().items():
      jax.ffi.register_ffi_target(name, capsule, platform="CUDA", api_version=1)
    _registered = True


# The "extras" bits of csrc/ffi/handlers.cc (ExtraBit), in operand order.
_BIAS, _MASK, _Q_SEQLEN, _KV_SEQLEN, _SEGMENTS = 1, 2, 4, 8, 16
SEGMENT_CHUNK = 16  # csrc/params.h kSegmentChunk


def segment_ranges(ids, other_ids):
  """Per-chunk summaries of one side's segment ids against the other side's (the
  specification of the kernel behind device_segment_ranges, and its CPU reference).

  ids [B, L], other_ids [B, L2] int32 -> [B, ceil(L / 16), 4] int32: for each 16-chunk c of
  `ids`, (min id, max id, lo, hi), where [lo, hi) are the chunks of `other_ids` that can hold
  an id in [min id, max id]; every other chunk of `other_ids` holds none (csrc/params.h).
  Exact for sorted ids (packed documents); a superset for any ids, through monotone envelopes
  of the other side: chunks before lo hold only ids < min id (running max from the left),
  chunks from hi on only ids > max id (running min from the right).
  """
  def chunk_min_max(x):
    pad = -x.shape[1] % SEGMENT_CHUNK
    chunks = jnp.pad(x, ((0, 0), (0, pad)), mode="edge").reshape(x.shape[0], -1, SEGMENT_CHUNK)
    return chunks.min(-1), chunks.max(-1)

  lo_id, hi_id = chunk_min_max(ids)
  other_min, other_max = chunk_min_max(other_ids)
  max_before = jax.lax.cummax(other_max, axis=1)  # nondecreasing along the chunks
  min_after = jax.lax.cummin(other_min, axis=1, reverse=True)  # nondecreasing too
  # method="sort": one sort kernel. The default binary search is an XLA while loop, which on
  # a GPU synchronizes with the host every iteration: the whole pre-pass took 0.512 ms per
  # call at 16k tokens that way, 0.083 ms sorted (H200).
  def find(side):
    return jax.vmap(lambda env, v: jnp.searchsorted(env, v, side=side, method="sort"))
  lo = find("left")(max_before, lo_id)
  hi = find("right")(min_after, hi_id)
  return jnp.stack([lo_id, hi_id, lo.astype(jnp.int32), hi.astype(jnp.int32)], axis=-1)


def device_segment_ranges(q_ids, kv_ids):
  """(segment_ranges(q_ids, kv_ids), segment_ranges(kv_ids, q_ids)) in one small kernel
  (csrc/common/segment_ranges.cu: 5-6x faster than segment_ranges itself on a GPU)."""
  _register()
  def out(ids):
    return jax.ShapeDtypeStruct((*ids.shape[:-1], -(-ids.shape[-1] // SEGMENT_CHUNK), 4),
                                jnp.int32)
  call = jax.ffi.ffi_call("jax_flash_segment_ranges", (out(q_ids), out(kv_ids)),
                          vmap_method="broadcast_all")
  return call(q_ids, kv_ids)


def _extra_operands(extras: Extras) -> tuple[list, int]:
  """The extras as FFI operands (handlers.cc order) and their bit set."""
  operands, bits = [], 0
  if extras.bias is not None:
    operands.append(extras.bias.astype(jnp.float32))
    bits |= _BIAS
  if extras.mask is not None:
    operands.append(extras.mask.astype(jnp.bool_))
    bits |= _MASK
  for length, bit in ((extras.q_seqlen, _Q_SEQLEN), (extras.kv_seqlen, _KV_SEQLEN)):
    if length is not None:
      operands.append(length.astype(jnp.int32))
      bits |= bit
  if extras.q_segment_ids is not None:
    q_ids = extras.q_segment_ids.astype(jnp.int32)
    kv_ids = extras.kv_segment_ids.astype(jnp.int32)
    operands += [q_ids, kv_ids, *device_segment_ranges(q_ids, kv_ids)]
    bits |= _SEGMENTS
  return operands, bits


def _attrs(cfg: AttnConfig, bits: int) -> dict:
  def side(w):
    return -1 if w == UNBOUNDED else w
  return dict(scale=np.float32(cfg.scale), window_left=np.int32(side(cfg.window_left)),
              window_right=np.int32(side(cfg.window_right)),
              softcap=np.float32(cfg.softcap or 0.0), extras=np.int32(bits),
              force_arch=np.int32(_force_arch))


def fwd(q, k, v, extras: Extras, cfg: AttnConfig):
  """(out [B,T,N,Hv] in q.dtype, lse [B,N,T] float32)."""
  _register()
  b, t, n, _ = q.shape
  operands, bits = _extra_operands(extras)
  out_types = (jax.ShapeDtypeStruct((b, t, n, v.shape[-1]), q.dtype),
               jax.ShapeDtypeStruct((b, n, t), jnp.float32))
  call = jax.ffi.ffi_call("jax_flash_fwd", out_types, vmap_method="broadcast_all")
  return call(q, k, v, *operands, **_attrs(cfg, bits))


def bwd(q, k, v, extras: Extras, out, lse, dout, dlse, cfg: AttnConfig):
  """(dq, dk, dv, dbias) from the forward's (out, lse) and the cotangents (dout, dlse).

  dlse is the float32 cotangent of lse [B,N,T] or None; dbias (bias's shape and dtype) is
  None without a bias.
  """
  _register()
  delta = softmax_delta(out, dout, dlse)
  operands, bits = _extra_operands(extras)
  out_types = [jax.ShapeDtypeStruct(q.shape, jnp.float32),
               jax.ShapeDtypeStruct(k.shape, k.dtype),
               jax.ShapeDtypeStruct(v.shape, v.dtype)]
  if extras.bias is not None:
    out_types.append(jax.ShapeDtypeStruct(extras.bias.shape, jnp.float32))
  call = jax.ffi.ffi_call("jax_flash_bwd", tuple(out_types), vmap_method="broadcast_all")
  dq_accum, dk, dv, *dbias = call(q, k, v, dout.astype(q.dtype), lse, delta, *operands,
                                  **_attrs(cfg, bits))
  dbias = dbias[0].astype(extras.bias.dtype) if dbias else None
  return dq_accum.astype(q.dtype), dk, dv, dbias
