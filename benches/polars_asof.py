"""The correlation bench's data and join in polars, for `scripts/bench-correlate`.

Two series of 1M points (100 Hz, and ~77 Hz with jitter), exactly as `correlate_series` in
benches/telemetry.rs makes them; `join_asof` nearest within 10 ms (the first series drives
the rows, as in `telemetry::correlate`), then Pearson's r over the matched rows. Prints rows/s
as the median of the rounds, the matched count and r, to compare with the Rust figures.
"""

import statistics
import sys
import time

import numpy as np
import polars as pl

MS = 1_000_000
N = 1_000_000
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15

i = np.arange(N, dtype=np.int64)
a = pl.DataFrame({"t": i * 10 * MS, "a": np.sin(i * 1e-3)}).set_sorted("t")
b = pl.DataFrame(
    {"t": i * 13 * MS + (i * 7919) % 3 * MS, "b": np.sin(i * 1.3e-3) + 0.1}
).set_sorted("t")


def join_and_pearson():
    rows = a.join_asof(b, on="t", strategy="nearest", tolerance=10 * MS)
    matched = rows.drop_nulls("b")
    r = matched.select(pl.corr("a", "b")).item()
    return rows.height, matched.height, r


join_and_pearson()  # warm-up
times = []
for _ in range(ROUNDS):
    start = time.perf_counter()
    rows, matched, r = join_and_pearson()
    times.append(time.perf_counter() - start)
med = statistics.median(times)
print(
    f"polars {pl.__version__} join_asof nearest 10 ms + pearson: {rows} rows, "
    f"{matched} matched, r {r!r}; median {med * 1e3:.2f} ms over {ROUNDS} rounds "
    f"= {rows / med / 1e6:.1f} M rows/s (threads: {pl.thread_pool_size()})"
)
