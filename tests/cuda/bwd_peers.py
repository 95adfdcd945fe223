"""Backward TFLOP/s of PyTorch's FlashAttention-2 and cuDNN attention on this GPU.

Peers for tests/cuda/bwd_check.cu's timings, at the same shapes (16k tokens, hidden 2048,
bf16), run in their own process. Backward time = time(fwd + bwd) - time(fwd), median of 5
repeats of 10 calls, as in BENCHMARKS.md.
"""

import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, reps=5, calls=10):
  fn()
  fn()
  torch.cuda.synchronize()
  times = []
  for _ in range(reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
      fn()
    end.record()
    end.synchronize()
    times.append(start.elapsed_time(end) / calls)
  return sorted(times)[len(times) // 2]


def main():
  seqlens = [int(x) for x in sys.argv[1:]] or [2048, 4096, 16384]
  print("device:", torch.cuda.get_device_name())
  backends = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
  for hdim in (64, 128, 256):
    for causal in (False, True):
      for t in seqlens:
        b, n = 16384 // t, 2048 // hdim
        shape = (b, n, t, hdim)
        q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        for x in (q, k, v):
          x.requires_grad_(True)
        flops = 10.0 * b * n * t * t * hdim * (0.5 if causal else 1.0)
        row = []
        for name, backend in backends.items():
          try:
            with sdpa_kernel(backend):
              fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
              both = lambda: torch.autograd.grad(fwd(), (q, k, v), do)
              t_fwd = median_ms(fwd)
              t_bwd = median_ms(both) - t_fwd
            row.append(f"{name} {t_bwd:7.3f} ms {flops / (t_bwd * 1e-3) / 1e12:6.1f}")
          except RuntimeError as err:
            row.append(f"{name} n/a ({str(err)[:40]})")
        print(f"PEER hdim {hdim:3d} seqlen {t:5d} {'causal' if causal else 'noncausal':10s}", " | ".join(row))
        del q, k, v, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
  main()
