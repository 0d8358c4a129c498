//! Change-point (drift) detection for queries over a series.
//!
//! Two classic sequential tests, both O(1) memory and O(1) work per point:
//!
//! * [`Cusum`]: two-sided tabular CUSUM on values standardized against a
//!   baseline learned from the first `warmup` points after each (re)start.
//!   Parameters are in baseline standard deviations, so one configuration
//!   works across series of different scales. After an alarm the detector
//!   re-learns the baseline, so successive level shifts are each reported.
//! * [`PageHinkley`]: the Page-Hinkley test on raw values against the running
//!   mean since the last reset; `delta` (tolerated drift) and `lambda` (alarm
//!   threshold) are in the series' own units.
//!
//! Both report a [`ChangePoint`] with the alarm index and the estimated start
//! of the change (the last index at which the cumulative statistic was at its
//! extremum, i.e. where the excursion that triggered the alarm began).
//!
//! Queries reach [`Cusum`] through [`drift_over_windows`]: the means of consecutive time
//! windows (from whichever tier serves them, so drift is found where raw points expired).

use super::moments::Moments;

/// Direction of a detected shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    /// The name on the wire: `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// A detected change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChangePoint {
    /// Index at which the test crossed its threshold.
    pub alarm_index: usize,
    /// Estimated first index of the changed regime.
    pub start_index: usize,
    pub direction: Direction,
}

/// CUSUM parameters (in baseline standard deviations).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CusumConfig {
    /// Points used to learn the baseline mean/stddev after each (re)start.
    pub warmup: usize,
    /// Slack `k`: shifts smaller than about `2k` sigmas are ignored.
    pub k: f64,
    /// Decision threshold `h`.
    pub h: f64,
}

impl Default for CusumConfig {
    /// `k = 1, h = 10` after a 100-point baseline: tuned for queries over
    /// long series, where false alarms cost more than a few points of
    /// detection delay. (The textbook `k = 0.5, h = 5` has an in-control
    /// average run length of only a few hundred points once the baseline is
    /// estimated from data, i.e. several false alarms per thousand points.)
    /// Detects shifts of >= 2 sigma within ~10 points.
    fn default() -> Self {
        Self {
            warmup: 100,
            k: 1.0,
            h: 10.0,
        }
    }
}

/// Streaming two-sided CUSUM. See the module documentation.
#[derive(Clone, Debug)]
pub struct Cusum {
    cfg: CusumConfig,
    index: usize,
    // Baseline learning (Welford, shifted by the first warm-up value).
    n: usize,
    shift: f64,
    mean_dev: f64,
    m2: f64,
    mean: f64,
    inv_sd: f64,
    hi: f64,
    lo: f64,
    hi_start: usize,
    lo_start: usize,
}

impl Cusum {
    pub fn new(cfg: CusumConfig) -> Self {
        Self {
            cfg,
            index: 0,
            n: 0,
            shift: 0.0,
            mean_dev: 0.0,
            m2: 0.0,
            mean: 0.0,
            inv_sd: 0.0,
            hi: 0.0,
            lo: 0.0,
            hi_start: 0,
            lo_start: 0,
        }
    }

    fn restart(&mut self) {
        self.n = 0;
        self.mean_dev = 0.0;
        self.m2 = 0.0;
        self.hi = 0.0;
        self.lo = 0.0;
    }

    /// Feeds the next value; returns a change point when an alarm fires.
    /// Non-finite values are skipped (they still advance the index).
    pub fn update(&mut self, x: f64) -> Option<ChangePoint> {
        let i = self.index;
        self.index += 1;
        if !x.is_finite() {
            return None;
        }
        if self.n < self.cfg.warmup.max(2) {
            if self.n == 0 {
                self.shift = x;
            }
            self.n += 1;
            let y = x - self.shift;
            let d = y - self.mean_dev;
            self.mean_dev += d / self.n as f64;
            self.m2 += d * (y - self.mean_dev);
            if self.n == self.cfg.warmup.max(2) {
                self.mean = self.shift + self.mean_dev;
                let sd = (self.m2 / self.n as f64).sqrt();
                // A flat baseline would make every change infinitely
                // significant; floor sigma at a relative 1e-9 of the level.
                let floor = (self.mean.abs() * 1e-9).max(f64::MIN_POSITIVE);
                self.inv_sd = 1.0 / sd.max(floor);
                self.hi_start = i + 1;
                self.lo_start = i + 1;
            }
            return None;
        }
        let z = (x - self.mean) * self.inv_sd;
        if self.hi == 0.0 {
            self.hi_start = i;
        }
        if self.lo == 0.0 {
            self.lo_start = i;
        }
        self.hi = (self.hi + z - self.cfg.k).max(0.0);
        self.lo = (self.lo - z - self.cfg.k).max(0.0);
        let cp = if self.hi > self.cfg.h {
            Some((Direction::Up, self.hi_start))
        } else if self.lo > self.cfg.h {
            Some((Direction::Down, self.lo_start))
        } else {
            None
        };
        cp.map(|(direction, start_index)| {
            self.restart();
            ChangePoint {
                alarm_index: i,
                start_index,
                direction,
            }
        })
    }
}

/// Runs [`Cusum`] over a whole series.
pub fn detect_cusum(vals: &[f64], cfg: CusumConfig) -> Vec<ChangePoint> {
    let mut c = Cusum::new(cfg);
    vals.iter().filter_map(|&x| c.update(x)).collect()
}

/// Fewest windows a query's drift baseline is learned from.
pub const MIN_WINDOW_WARMUP: usize = 8;

/// Windows the CUSUM learns its baseline from, for a query over `windows` windows: a
/// quarter of them, at least [`MIN_WINDOW_WARMUP`] (a standard deviation from fewer is off
/// by a third or more, and CUSUM's scale with it) and at most [`CusumConfig`]'s default
/// (enough for a baseline; more would only delay detection). Three quarters of the windows
/// are left to find changes in, and a change's new level is learned again after each alarm.
pub fn window_warmup(windows: usize) -> usize {
    (windows / 4).clamp(MIN_WINDOW_WARMUP, CusumConfig::default().warmup)
}

/// A change found in a series' window means.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowDrift {
    /// Start of the first window of the changed regime (the detector's estimate).
    pub start_ns: i64,
    /// Start of the window whose mean raised the alarm.
    pub alarm_ns: i64,
    pub direction: Direction,
    /// Mean of the points from the previous change (or the first window) up to `start_ns`.
    pub mean_before: f64,
    /// Mean of the points from `start_ns` up to the next change (or the last window).
    pub mean_after: f64,
}

/// Two-sided CUSUM over the means of consecutive windows (`(start, statistics)`, in time
/// order, empty windows left out), with threshold `h` (in baseline standard deviations of
/// the window means), slack and warm-up as [`window_warmup`] says. Means before and after
/// each change weigh every point alike (the windows' statistics merged).
pub fn drift_over_windows(windows: &[(i64, Moments)], h: f64) -> Vec<WindowDrift> {
    assert!(h.is_finite() && h > 0.0, "validated by the caller");
    assert!(
        windows.windows(2).all(|w| w[0].0 < w[1].0),
        "windows in time order"
    );
    let cfg = CusumConfig {
        warmup: window_warmup(windows.len()),
        h,
        ..CusumConfig::default()
    };
    let mut cusum = Cusum::new(cfg);
    let changes: Vec<ChangePoint> = windows
        .iter()
        .filter_map(|(_, m)| cusum.update(m.mean().unwrap_or(f64::NAN)))
        .collect();
    // Regimes: [0, first change), [first change, second change), ..., [last change, n).
    let mut bounds = Vec::with_capacity(changes.len() + 2);
    bounds.push(0);
    bounds.extend(changes.iter().map(|c| c.start_index));
    bounds.push(windows.len());
    assert!(
        bounds.windows(2).all(|b| b[0] <= b[1]),
        "a restarted CUSUM estimates each change after the previous alarm"
    );
    let mean_of = |lo: usize, hi: usize| {
        let mut m = Moments::new();
        for (_, w) in &windows[lo..hi] {
            m.merge(w);
        }
        m.mean().unwrap_or(f64::NAN)
    };
    changes
        .iter()
        .enumerate()
        .map(|(j, c)| WindowDrift {
            start_ns: windows[c.start_index].0,
            alarm_ns: windows[c.alarm_index].0,
            direction: c.direction,
            mean_before: mean_of(bounds[j], bounds[j + 1]),
            mean_after: mean_of(bounds[j + 1], bounds[j + 2]),
        })
        .collect()
}

/// Page-Hinkley parameters (in the series' units).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PageHinkleyConfig {
    /// Magnitude of change tolerated without accumulating evidence.
    pub delta: f64,
    /// Alarm threshold on the accumulated deviation.
    pub lambda: f64,
    /// Points after a reset before an alarm may fire.
    pub min_samples: usize,
}

/// Streaming two-sided Page-Hinkley test.
#[derive(Clone, Debug)]
pub struct PageHinkley {
    cfg: PageHinkleyConfig,
    index: usize,
    n: usize,
    shift: f64,
    mean_dev: f64,
    /// Cumulative `x - mean - delta` (up) and `x - mean + delta` (down).
    up: f64,
    up_min: f64,
    up_start: usize,
    down: f64,
    down_max: f64,
    down_start: usize,
}

impl PageHinkley {
    pub fn new(cfg: PageHinkleyConfig) -> Self {
        Self {
            cfg,
            index: 0,
            n: 0,
            shift: 0.0,
            mean_dev: 0.0,
            up: 0.0,
            up_min: 0.0,
            up_start: 0,
            down: 0.0,
            down_max: 0.0,
            down_start: 0,
        }
    }

    /// Feeds the next value; returns a change point when an alarm fires
    /// (and resets). Non-finite values are skipped.
    pub fn update(&mut self, x: f64) -> Option<ChangePoint> {
        let i = self.index;
        self.index += 1;
        if !x.is_finite() {
            return None;
        }
        if self.n == 0 {
            self.shift = x;
            self.up_start = i;
            self.down_start = i;
        }
        self.n += 1;
        let y = x - self.shift;
        self.mean_dev += (y - self.mean_dev) / self.n as f64;
        let dev = y - self.mean_dev;
        self.up += dev - self.cfg.delta;
        self.down += dev + self.cfg.delta;
        if self.up < self.up_min {
            self.up_min = self.up;
            self.up_start = i + 1;
        }
        if self.down > self.down_max {
            self.down_max = self.down;
            self.down_start = i + 1;
        }
        if self.n < self.cfg.min_samples {
            return None;
        }
        let cp = if self.up - self.up_min > self.cfg.lambda {
            Some((Direction::Up, self.up_start))
        } else if self.down_max - self.down > self.cfg.lambda {
            Some((Direction::Down, self.down_start))
        } else {
            None
        };
        cp.map(|(direction, start_index)| {
            *self = Self::new(self.cfg);
            self.index = i + 1;
            ChangePoint {
                alarm_index: i,
                start_index: start_index.min(i),
                direction,
            }
        })
    }
}

/// Runs [`PageHinkley`] over a whole series.
pub fn detect_page_hinkley(vals: &[f64], cfg: PageHinkleyConfig) -> Vec<ChangePoint> {
    let mut p = PageHinkley::new(cfg);
    vals.iter().filter_map(|&x| p.update(x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-noise in [-0.5, 0.5).
    fn noise(i: usize) -> f64 {
        let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    fn shifted_series() -> Vec<f64> {
        // Level 10 -> 14 at 500 -> 9 at 1000, noise sd ~0.29.
        (0..1500)
            .map(|i| {
                let level = if i < 500 {
                    10.0
                } else if i < 1000 {
                    14.0
                } else {
                    9.0
                };
                level + noise(i)
            })
            .collect()
    }

    #[test]
    fn cusum_finds_level_shifts() {
        let cps = detect_cusum(&shifted_series(), CusumConfig::default());
        assert_eq!(cps.len(), 2, "{cps:?}");
        assert_eq!(cps[0].direction, Direction::Up);
        assert!((500..510).contains(&cps[0].alarm_index), "{cps:?}");
        assert!((495..=505).contains(&cps[0].start_index), "{cps:?}");
        assert_eq!(cps[1].direction, Direction::Down);
        assert!((1000..1010).contains(&cps[1].alarm_index), "{cps:?}");
    }

    #[test]
    fn cusum_quiet_on_stationary_noise() {
        let v: Vec<f64> = (0..5000).map(|i| 3.0 + noise(i)).collect();
        assert!(detect_cusum(&v, CusumConfig::default()).is_empty());
    }

    /// Windows of 100 points each over [`shifted_series`]: shifts at windows 25 and 50.
    fn windows_of(vals: &[f64], per_window: usize) -> Vec<(i64, Moments)> {
        vals.chunks(per_window)
            .enumerate()
            .map(|(i, c)| {
                let ts: Vec<i64> = (0..c.len() as i64).map(|k| i as i64 * 1000 + k).collect();
                (i as i64 * 1000, Moments::from_sorted(&ts, c))
            })
            .collect()
    }

    #[test]
    fn window_drift_finds_the_shifts_and_the_levels_around_them() {
        // 75 windows of 20 points: shifts at windows 25 (10 -> 14) and 50 (14 -> 9).
        let w = windows_of(&shifted_series(), 20);
        assert_eq!(window_warmup(w.len()), 18);
        let d = drift_over_windows(&w, CusumConfig::default().h);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].direction, Direction::Up);
        assert!((24_000..=26_000).contains(&d[0].start_ns), "{d:?}");
        assert!((25_000..=27_000).contains(&d[0].alarm_ns), "{d:?}");
        assert!((d[0].mean_before - 10.0).abs() < 0.2, "{d:?}");
        assert!((d[0].mean_after - 14.0).abs() < 0.2, "{d:?}");
        assert_eq!(d[1].direction, Direction::Down);
        assert!((49_000..=51_000).contains(&d[1].start_ns), "{d:?}");
        assert!((d[1].mean_before - 14.0).abs() < 0.2, "{d:?}");
        assert!((d[1].mean_after - 9.0).abs() < 0.2, "{d:?}");
    }

    #[test]
    fn window_drift_quiet_on_flat_noise_and_on_too_few_windows() {
        let flat: Vec<f64> = (0..20_000).map(|i| 3.0 + noise(i)).collect();
        for per in [10, 50, 200, 1000] {
            let d = drift_over_windows(&windows_of(&flat, per), CusumConfig::default().h);
            assert!(d.is_empty(), "{per} points a window: {d:?}");
        }
        // Fewer windows than the warm-up: nothing to compare against.
        let short = windows_of(&shifted_series()[..160], 20);
        assert!(drift_over_windows(&short, 1.0).is_empty());
        assert_eq!(window_warmup(3), MIN_WINDOW_WARMUP);
        assert_eq!(window_warmup(1_000_000), 100);
    }

    #[test]
    fn page_hinkley_finds_level_shifts() {
        let cfg = PageHinkleyConfig {
            delta: 0.5,
            lambda: 20.0,
            min_samples: 30,
        };
        let cps = detect_page_hinkley(&shifted_series(), cfg);
        assert_eq!(cps.len(), 2, "{cps:?}");
        assert_eq!(cps[0].direction, Direction::Up);
        assert!((500..520).contains(&cps[0].alarm_index), "{cps:?}");
        assert!((495..=505).contains(&cps[0].start_index), "{cps:?}");
        assert_eq!(cps[1].direction, Direction::Down);
        assert!((1000..1020).contains(&cps[1].alarm_index), "{cps:?}");
        let flat: Vec<f64> = (0..5000).map(|i| 3.0 + noise(i)).collect();
        assert!(detect_page_hinkley(&flat, cfg).is_empty());
    }
}
