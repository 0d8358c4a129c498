//! Largest-Triangle-Three-Buckets downsampling (Steinarsson, 2013): keeps
//! the first and last point and, per bucket, the point forming the largest
//! triangle with the previously kept point and the next bucket's average.
//! Visually faithful for line charts at a fixed point budget; unlike M4 it is
//! not pixel-exact but it returns exactly `threshold` points.

/// Indices of the kept points (ascending). Returns all indices when
/// `threshold >= len` or `threshold < 3`.
pub fn lttb(ts: &[i64], vals: &[f64], threshold: usize) -> Vec<usize> {
    let n = ts.len().min(vals.len());
    if threshold >= n || threshold < 3 {
        return (0..n).collect();
    }
    // Work in f64 relative to the first timestamp to keep ns precision.
    let t0 = ts[0];
    let x = |i: usize| (ts[i] - t0) as f64;
    let every = (n - 2) as f64 / (threshold - 2) as f64;
    let mut out = Vec::with_capacity(threshold);
    out.push(0);
    let mut a = 0usize;
    for b in 0..threshold - 2 {
        let start = (b as f64 * every) as usize + 1;
        let end = (((b + 1) as f64 * every) as usize + 1).min(n - 1);
        let next_end = (((b + 2) as f64 * every) as usize + 1).min(n);
        let (ax, ay) = (end..next_end).fold((0.0, 0.0), |(sx, sy), k| (sx + x(k), sy + vals[k]));
        let cnt = (next_end - end) as f64;
        let (avg_x, avg_y) = if cnt > 0.0 {
            (ax / cnt, ay / cnt)
        } else {
            (x(n - 1), vals[n - 1])
        };
        let (px, py) = (x(a), vals[a]);
        let mut best = start;
        let mut best_area = -1.0;
        for (k, &v) in vals.iter().enumerate().take(end.max(start + 1)).skip(start) {
            let area = ((px - avg_x) * (v - py) - (px - x(k)) * (avg_y - py)).abs();
            if area > best_area {
                best_area = area;
                best = k;
            }
        }
        out.push(best);
        a = best;
    }
    out.push(n - 1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_endpoints_and_spike() {
        let ts: Vec<i64> = (0..1000).collect();
        let mut vals = vec![0.0; 1000];
        vals[500] = 100.0;
        let idx = lttb(&ts, &vals, 20);
        assert_eq!(idx.len(), 20);
        assert_eq!(idx[0], 0);
        assert_eq!(idx[19], 999);
        assert!(idx.contains(&500));
        assert!(idx.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(lttb(&ts[..5], &vals[..5], 10), vec![0, 1, 2, 3, 4]);
    }
}
