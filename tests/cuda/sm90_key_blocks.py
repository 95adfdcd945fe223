"""Host check of the sm90 forward's key-block arithmetic (csrc/sm90/scheduler.cuh key_blocks and
the consumer's masked / unmasked walk in fwd_mainloop.cuh) for any tile height, e.g. the 192-row
tiles of three consumer warpgroups: the formulas are written out again here from mask.h Window.

Checks, for random T, S and windows (unbounded, causal, bounded on either side):
  * every (row, key) pair that a valid row (< T) of the tile sees lies in a visited block;
  * a tile with no visible pair is empty;
  * every block walked without the element mask ([unmasked_lo, unmasked_hi]) is seen whole by
    every valid row of the tile and lies inside [0, S).
usage: python3 tests/cuda/sm90_key_blocks.py [block_m block_n ...]   (default 192 128 128 128)
"""
import random
import sys

UNBOUNDED = 1 << 30


def keys_of_row(i, s, left, right):
    return i - min(left, i), i + 1 + min(right, s - 1 - i)


def ceil_div(a, b):
    return -(-a // b)


def key_blocks(t, s, left, right, m_block, block_m, block_n):
    """(n_lo, n_hi, unmasked_lo, unmasked_hi) as scheduler.cuh key_blocks, None when empty."""
    row0 = m_block * block_m
    row_end = row0 + min(block_m, t - row0)
    lo = keys_of_row(row0, s, left, right)[0]
    hi = keys_of_row(row_end - 1, s, left, right)[1]
    if lo >= hi:
        return None
    all_lo = keys_of_row(row_end - 1, s, left, right)[0]
    all_hi = keys_of_row(row0, s, left, right)[1]
    return lo // block_n, ceil_div(hi, block_n) - 1, ceil_div(all_lo, block_n), all_hi // block_n - 1


def check(block_m, block_n, trials=500, seed=1):
    rng = random.Random(seed)
    tiles = 0
    for _ in range(trials):
        t, s = rng.randint(1, 900), rng.randint(1, 900)
        left = rng.choice([UNBOUNDED, 0, rng.randint(0, 300)])
        right = rng.choice([UNBOUNDED, 0, rng.randint(0, 300)])
        for m in range(ceil_div(t, block_m)):
            rows = range(m * block_m, min(t, (m + 1) * block_m))
            seen = {(i, j) for i in rows for j in range(*keys_of_row(i, s, left, right))}
            blocks = key_blocks(t, s, left, right, m, block_m, block_n)
            case = (t, s, left, right, m)
            if blocks is None:
                assert not seen, case
                continue
            n_lo, n_hi, u_lo, u_hi = blocks
            assert all(n_lo <= j // block_n <= n_hi for _, j in seen), case
            for n in range(max(n_lo, u_lo), min(n_hi, u_hi) + 1):
                for i in rows:
                    lo, hi = keys_of_row(i, s, left, right)
                    assert lo <= n * block_n and (n + 1) * block_n <= min(hi, s), case + (n, i)
            tiles += 1
    print(f"{block_m} x {block_n}: {tiles} tiles ok")


if __name__ == "__main__":
    sizes = [int(x) for x in sys.argv[1:]] or [192, 128, 128, 128]
    for k in range(0, len(sizes), 2):
        check(sizes[k], sizes[k + 1])
