"""The segment-id chunk summaries that the "cuda" path passes to its kernels (CPU only).

jax_flash._cuda.segment_ranges gives, per 16-chunk of one side, (min id, max id, lo, hi) with
[lo, hi) the other side's chunks that may hold a matching id. Checked against a brute-force
numpy scan of every pair of chunks.
"""

from __future__ import annotations

import numpy as np
import pytest

from jax_flash import _cuda

CHUNK = _cuda.SEGMENT_CHUNK


def chunks_of(ids):
  return [ids[c:c + CHUNK] for c in range(0, len(ids), CHUNK)]


def brute_force(ids, other):
  """Per chunk of ids: (min, max, chunks of `other` holding an id in [min, max])."""
  out = []
  for chunk in chunks_of(ids):
    lo_id, hi_id = chunk.min(), chunk.max()
    hits = [d for d, o in enumerate(chunks_of(other)) if ((o >= lo_id) & (o <= hi_id)).any()]
    out.append((lo_id, hi_id, hits))
  return out


def packed_documents(rng, length, num_docs):
  """Sorted ids: num_docs documents of random (odd) lengths filling `length` rows."""
  cuts = np.sort(rng.choice(np.arange(1, length), size=num_docs - 1, replace=False))
  return np.searchsorted(cuts, np.arange(length), side="right").astype(np.int32)


def check(q_ids, kv_ids, exact):
  for ids, other in ((q_ids, kv_ids), (kv_ids, q_ids)):
    got = np.asarray(_cuda.segment_ranges(ids, other))
    assert got.dtype == np.int32
    assert got.shape == (ids.shape[0], -(-ids.shape[1] // CHUNK), 4)
    for b in range(ids.shape[0]):
      for c, (lo_id, hi_id, hits) in enumerate(brute_force(ids[b], other[b])):
        mn, mx, lo, hi = got[b, c]
        assert (mn, mx) == (lo_id, hi_id), (b, c)
        assert all(lo <= d < hi for d in hits), (b, c, lo, hi, hits)
        if exact and hits:
          assert (lo, hi) == (hits[0], hits[-1] + 1), (b, c, lo, hi, hits)


@pytest.mark.parametrize("t,s", [(250, 250), (333, 77), (16, 161), (1, 40)])
def test_unsorted_ids_give_a_superset(t, s):
  rng = np.random.default_rng(t * 1000 + s)
  def unsorted(length):
    # Rising ids with local noise and a few far swaps: chunk spans differ, so the
    # envelopes matter (uniform random ids would make every range the whole side).
    ids = np.arange(length) // 23 + rng.integers(-2, 3, size=length)
    for _ in range(3):
      i, j = rng.integers(0, length, size=2)
      ids[i], ids[j] = ids[j], ids[i]
    return ids.astype(np.int32)

  q_ids = np.stack([unsorted(t), rng.integers(-3, 6, size=t, dtype=np.int32)])
  kv_ids = np.stack([unsorted(s), rng.integers(-3, 6, size=s, dtype=np.int32)])
  check(q_ids, kv_ids, exact=False)


def test_unsorted_ids_narrow_where_they_can():
  # Ids rising in two runs: the envelopes still cut the first run's chunks off the top ids.
  q_ids = np.concatenate([np.arange(100) // 20, np.arange(100) // 20 + 10])[None].astype(np.int32)
  got = np.asarray(_cuda.segment_ranges(q_ids, q_ids))
  mn, mx, lo, hi = got[0, -1]
  assert mn >= 10 and lo >= 100 // CHUNK, got[0, -1]


@pytest.mark.parametrize("t,s,docs", [(2047, 2047, 8), (999, 1301, 5), (100, 37, 3)])
def test_packed_documents_are_exact(t, s, docs):
  rng = np.random.default_rng(t + s + docs)
  q_ids = np.stack([packed_documents(rng, t, docs) for _ in range(2)])
  kv_ids = np.stack([packed_documents(rng, s, docs) for _ in range(2)])
  check(q_ids, kv_ids, exact=True)
  # One 2k document in a 16k row: its row chunks see exactly its own 128 key chunks.
  ids = (np.arange(16384) // 2048)[None].astype(np.int32)
  got = np.asarray(_cuda.segment_ranges(ids, ids))[0]
  doc = np.arange(got.shape[0]) // 128
  np.testing.assert_array_equal(got[:, 2], doc * 128)
  np.testing.assert_array_equal(got[:, 3], doc * 128 + 128)
