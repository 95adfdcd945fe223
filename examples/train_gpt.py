"""Train a small GPT (decoder-only transformer) in Flax NNX with jax_flash attention.

  python examples/train_gpt.py                      # CPU-sized default, under a minute
  python examples/train_gpt.py --preset small --attention jax_flash   # one GPU
  python examples/train_gpt.py --preset small --attention cudnn       # same model, cuDNN
  python examples/train_gpt.py --preset small --mesh data=2,model=1,seq=1   # 2 GPUs

The data is synthetic and generated here (no downloads): the first half of every sequence
follows a fixed random Markov chain (each token has a few likely successors), the second
half repeats the first. A bigram model gets the first half down to the chain's entropy;
only attention (a copy/induction head) predicts the repeated half, so the loss keeps
falling once attention learns to look back.

--attention picks what runs inside the same model: jax_flash (its CUDA kernels on a GPU,
its blockwise pure-JAX path elsewhere), or jax.nn.dot_product_attention with
implementation "cudnn" or "xla". --mesh shards the step with jit over a Mesh: batch over
`data`, heads and MLP over `model` (Megatron style), sequence over `seq`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

import jax_flash
from jax_flash.flax import dot_product_attention
from jax_flash.flax import nnx as jf_nnx

# Flax 0.12 wants lists of submodules wrapped in nnx.List; older versions have no List.
_ModuleList = getattr(nnx, "List", list)


@dataclasses.dataclass
class Config:
  vocab: int = 64
  d_model: int = 64
  layers: int = 2
  heads: int = 4
  kv_heads: int = 4
  seq_len: int = 64
  batch: int = 16
  steps: int = 800
  lr: float = 5e-3
  dtype: str = "float32"
  remat: bool = False


# tiny: the CPU default (about a minute on 2 cores). small/medium: sized to keep one
# H100/H200 busy at 16k tokens per step, each run well under two minutes.
PRESETS = {
    "tiny": Config(),
    "small": Config(vocab=256, d_model=1024, layers=16, heads=8, kv_heads=8, seq_len=2048,
                    batch=8, steps=200, lr=1e-3, dtype="bfloat16"),
    "medium": Config(vocab=256, d_model=2048, layers=16, heads=16, kv_heads=4,
                     seq_len=4096, batch=4, steps=100, lr=5e-4, dtype="bfloat16",
                     remat=True),
}


# -- data ------------------------------------------------------------------------------


class CopyMarkovData:
  """Token sequences: a random walk on a fixed sparse Markov chain, then its repeat."""

  def __init__(self, vocab: int, branching: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.vocab = vocab
    self.successors = np.stack([rng.choice(vocab, branching, replace=False)
                                for _ in range(vocab)])                 # [V, branching]
    probs = rng.dirichlet(np.ones(branching), size=vocab)                # [V, branching]
    self.cdf = np.cumsum(probs, axis=-1)
    self.entropy = float(-(probs * np.log(probs)).sum(-1).mean())        # nats per token

  def batch(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """[batch, length + 1] int32: inputs are [:, :-1], next-token targets [:, 1:]."""
    half = (length + 2) // 2
    walk = np.empty((batch, half), np.int32)
    walk[:, 0] = rng.integers(self.vocab, size=batch)
    u = rng.random((batch, half))
    for t in range(1, half):
      prev = walk[:, t - 1]
      pick = np.minimum((u[:, t, None] > self.cdf[prev]).sum(-1), self.cdf.shape[1] - 1)
      walk[:, t] = self.successors[prev, pick]
    return np.concatenate([walk, walk], axis=1)[:, :length + 1]


# -- model -----------------------------------------------------------------------------


def jax_nn_attention(implementation: str):
  """An attention_fn running jax.nn.dot_product_attention, for the comparison runs."""

  def attention_fn(query, key, value, *, mask=None, is_causal=False, **unused_flax_kwargs):
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal,
                                        implementation=implementation)

  return attention_fn


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: Config, attention_fn, rngs: nnx.Rngs):
    dtype, d = jnp.dtype(cfg.dtype), cfg.d_model
    self.attn_norm = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.attn = jf_nnx.MultiHeadAttention(
        cfg.heads, d, num_kv_heads=cfg.kv_heads, is_causal=True, decode=False,
        use_bias=False, dtype=dtype, attention_fn=attention_fn, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(d, dtype=dtype, rngs=rngs)
    self.mlp_up = nnx.Linear(d, 4 * d, use_bias=False, dtype=dtype, rngs=rngs)
    self.mlp_down = nnx.Linear(4 * d, d, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.attn_norm(x))
    return x + self.mlp_down(jax.nn.gelu(self.mlp_up(self.mlp_norm(x))))


class GPT(nnx.Module):
  """Token + learned position embeddings, `layers` blocks, tied output head."""

  def __init__(self, cfg: Config, attention_fn, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.dtype)
    self.remat = cfg.remat
    self.embed = nnx.Embed(cfg.vocab, cfg.d_model, dtype=dtype, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.seq_len, cfg.d_model)))
    self.blocks = _ModuleList([Block(cfg, attention_fn, rngs) for _ in range(cfg.layers)])
    self.final_norm = nnx.LayerNorm(cfg.d_model, dtype=dtype, rngs=rngs)

  def __call__(self, tokens):                                  # [B, T] -> [B, T, vocab]
    x = self.embed(tokens) + self.pos[...][: tokens.shape[1]].astype(self.embed.dtype)
    for block in self.blocks:
      # remat: keep only block inputs for the backward pass (memory for long sequences).
      x = nnx.remat(Block.__call__)(block, x) if self.remat else block(x)
    return self.embed.attend(self.final_norm(x)).astype(jnp.float32)


# -- sharding --------------------------------------------------------------------------


def parse_mesh(spec: str) -> Mesh:
  sizes = {"data": 1, "model": 1, "seq": 1}
  for part in spec.split(","):
    name, _, size = part.partition("=")
    if name not in sizes or not size.isdigit() or int(size) < 1:
      raise SystemExit(f"--mesh: expected data=N,model=N,seq=N, got {spec!r}")
    sizes[name] = int(size)
  need, have = math.prod(sizes.values()), jax.device_count()
  if need > have:
    raise SystemExit(f"--mesh {spec} needs {need} devices, this host has {have}")
  devices = np.array(jax.devices()[:need]).reshape(tuple(sizes.values()))
  return Mesh(devices, tuple(sizes))


def param_spec(path, x, mesh: Mesh) -> P:
  """Megatron-style: attention heads and the MLP hidden dim split over `model`."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  model = mesh.shape["model"]
  if "attn" in names and "kernel" in names:
    heads_axis = 0 if "out" in names else 1        # out: [N, H, D]; q/k/v: [D, N, H]
    if x.shape[heads_axis] % model == 0:
      spec = [None] * x.ndim
      spec[heads_axis] = "model"
      return P(*spec)
  if "mlp_up" in names and "kernel" in names:
    return P(None, "model")
  if "mlp_down" in names and "kernel" in names:
    return P("model", None)
  return P()


def check_mesh(cfg: Config, mesh: Mesh, attention: str):
  data, model, seq = (mesh.shape[a] for a in ("data", "model", "seq"))
  if cfg.batch % data:
    raise SystemExit(f"--batch {cfg.batch} must be divisible by mesh data={data}")
  if cfg.seq_len % seq:
    raise SystemExit(f"--seq-len {cfg.seq_len} must be divisible by mesh seq={seq}")
  if cfg.heads % model or (4 * cfg.d_model) % model:
    raise SystemExit(f"heads ({cfg.heads}) and the MLP width must divide by model={model}")
  if seq > 1 and attention == "jax_flash" and importlib.util.find_spec("jax_flash.ring") is None:
    raise SystemExit("--mesh seq>1 needs jax_flash's ring attention (jax_flash.ring), "
                     "which this checkout does not have yet; use seq=1")


# -- training --------------------------------------------------------------------------


def attention_path(cfg: Config, attention: str) -> str:
  """Which code computes attention: for jax_flash, whether its CUDA kernels take it."""
  if attention != "jax_flash":
    return f"jax.nn.dot_product_attention({attention})"
  hd = cfg.d_model // cfg.heads
  q = jax.ShapeDtypeStruct((1, cfg.seq_len, cfg.heads, hd), jnp.dtype(cfg.dtype))
  kv = jax.ShapeDtypeStruct((1, cfg.seq_len, cfg.kv_heads, hd), jnp.dtype(cfg.dtype))
  try:
    jax.eval_shape(lambda q, k, v: jax_flash.attention(q, k, v, is_causal=True,
                                                       implementation="cuda"), q, kv, kv)
    return "jax_flash (CUDA kernels)"
  except Exception as e:  # only a label: training itself picks the path (implementation=None)
    if jax.default_backend() != "gpu":
      return "jax_flash (pure-JAX path: no GPU)"
    return f"jax_flash (pure-JAX path: {str(e).split(': ', 1)[-1]})"


def make_train_step(graphdef, tx, mesh, param_sharding, opt_sharding):
  def loss_fn(params, inputs, targets):
    logits = nnx.merge(graphdef, params)(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  def train_step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if mesh is None:
    return jax.jit(train_step, donate_argnums=(0, 1))
  tokens = NamedSharding(mesh, P("data", "seq"))
  return jax.jit(train_step, donate_argnums=(0, 1),
                 in_shardings=(param_sharding, opt_sharding, tokens, tokens),
                 out_shardings=(param_sharding, opt_sharding, NamedSharding(mesh, P())))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
  p.add_argument("--attention", choices=["jax_flash", "cudnn", "xla"], default="jax_flash")
  p.add_argument("--mesh", default=None, help="e.g. data=2,model=1,seq=1")
  for field in ("steps", "batch", "seq_len", "layers", "d_model", "heads", "kv_heads"):
    p.add_argument("--" + field.replace("_", "-"), type=int, default=None,
                   help="override the preset")
  p.add_argument("--lr", type=float, default=None, help="override the preset")
  p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=None,
                 help="recompute each block in the backward pass (override the preset)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="train_gpt_loss.png", help="loss-curve PNG")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  overrides = {k: v for k, v in vars(args).items()
               if k in Config.__dataclass_fields__ and v is not None}
  cfg = dataclasses.replace(PRESETS[args.preset], **overrides)
  if cfg.d_model % cfg.heads or cfg.heads % cfg.kv_heads:
    raise SystemExit(f"d_model ({cfg.d_model}) must divide by heads ({cfg.heads}) and heads "
                     f"by kv_heads ({cfg.kv_heads})")
  if args.attention == "cudnn" and jax.default_backend() != "gpu":
    raise SystemExit("--attention cudnn needs an NVIDIA GPU (jax.nn's cuDNN attention)")
  mesh = parse_mesh(args.mesh) if args.mesh else None
  if mesh is not None:
    check_mesh(cfg, mesh, args.attention)

  attention_fn = (dot_product_attention if args.attention == "jax_flash"
                  else jax_nn_attention(args.attention))
  model = GPT(cfg, attention_fn, nnx.Rngs(args.seed))
  graphdef, params = nnx.split(model)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, warmup_steps=max(1, cfg.steps // 10), decay_steps=cfg.steps,
      end_value=cfg.lr / 10)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      schedule, b2=0.95, weight_decay=0.1,
      mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))  # no decay on norms

  param_sharding = opt_sharding = None
  if mesh is not None:
    # Adam's moments mirror the parameter tree (same path names), so one rule shards
    # both; the step counter matches no rule and is replicated.
    shard = lambda tree: jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, param_spec(path, x, mesh)), tree)
    param_sharding = shard(params)
    opt_sharding = shard(jax.eval_shape(tx.init, params))
    params = jax.device_put(params, param_sharding)
  opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(params)
  train_step = make_train_step(graphdef, tx, mesh, param_sharding, opt_sharding)

  devices = jax.devices()[: mesh.size if mesh is not None else 1]
  device = f"{devices[0].device_kind} x{len(devices)}"
  path = attention_path(cfg, args.attention)
  print(f"GPT {n_params / 1e6:.1f}M params | {cfg} | {path} | {device}")
  data = CopyMarkovData(cfg.vocab, seed=args.seed)
  print(f"loss floor ~{data.entropy / 2:.2f} (Markov half {data.entropy:.2f} nats/token, "
        f"repeated half 0); initial ~ln(vocab) = {math.log(cfg.vocab):.2f}")

  losses, tokens_per_s = train(cfg, data, train_step, params, opt_state, args)
  plot_losses(losses, data, f"GPT {n_params / 1e6:.1f}M, {path}, {device}", args.out)
  tail = losses[-max(1, len(losses) // 10):].mean()
  print(f"tokens/s {tokens_per_s:,.0f} | loss {losses[0]:.3f} -> {tail:.3f} "
        f"(mean of last 10%) | attention {path} | device {device} | plot {args.out}")
  return losses


def train(cfg: Config, data, train_step, params, opt_state, args):
  """The training loop. Returns (per-step losses, tokens/s after the compiling step)."""
  rng = np.random.default_rng(args.seed + 1)
  tokens_per_step = cfg.batch * cfg.seq_len
  losses, log_every = [], max(1, min(10, cfg.steps // 20))
  timed_from, timed_steps = None, 0
  bar = tqdm(range(cfg.steps), desc=f"train ({args.attention})", unit="step")
  batch = data.batch(rng, cfg.batch, cfg.seq_len)
  for step in bar:
    params, opt_state, loss = train_step(params, opt_state, batch[:, :-1], batch[:, 1:])
    batch = data.batch(rng, cfg.batch, cfg.seq_len)  # on the host while the step runs
    losses.append(loss)
    if step == 0:  # the first step compiles: time the rest
      jax.block_until_ready(loss)
      timed_from = time.perf_counter()
      continue
    timed_steps += 1
    if step % log_every == 0 or step == cfg.steps - 1:
      loss_now = float(loss)  # waits for this step
      rate = timed_steps * tokens_per_step / (time.perf_counter() - timed_from)
      bar.set_postfix(loss=f"{loss_now:.3f}", tok_s=f"{rate:,.0f}")
  jax.block_until_ready(params)
  elapsed = time.perf_counter() - timed_from
  tokens_per_s = timed_steps * tokens_per_step / elapsed if timed_steps else float("nan")
  return np.asarray(jax.device_get(losses), np.float64), tokens_per_s


def plot_losses(losses, data: CopyMarkovData, title: str, out: str):
  import matplotlib
  matplotlib.use("Agg")  # no display needed
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(np.arange(1, len(losses) + 1), losses, label="training loss")
  ax.axhline(data.entropy, color="gray", ls=":", label="Markov entropy (no copying)")
  ax.axhline(data.entropy / 2, color="gray", ls="--", label="floor (copying learned)")
  ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out, dpi=120)


if __name__ == "__main__":
  main(sys.argv[1:])
