//! Shared helpers for integration tests and benches: a tiny deterministic
//! PRNG, the synthetic ADC series, and NAB data loading.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// xorshift64* — deterministic, dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn gauss(&mut self) -> f64 {
        let (a, b) = (self.unit(), self.unit());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

/// Volts per LSB of a 16-bit ADC with a 10 V range.
pub const ADC_LSB: f64 = 10.0 / 65536.0;

/// `n` points of a 1 kHz 16-bit ADC: a slowly varying signal (60 s sine plus
/// drift) plus Gaussian noise of 2 LSB, quantized to ADC codes and scaled to
/// volts.
pub fn adc_series(n: usize, seed: u64) -> (Vec<i64>, Vec<f64>) {
    let mut r = Rng(seed | 1);
    let t0 = 1_700_000_000_000_000_000i64;
    let ts = (0..n as i64).map(|i| t0 + i * 1_000_000).collect();
    let vals = (0..n)
        .map(|i| {
            let t = i as f64 / 1000.0;
            let s = 5.0 + 2.0 * (t * std::f64::consts::TAU / 60.0).sin() + 0.3 * (t / 3600.0);
            ((s / ADC_LSB) + 2.0 * r.gauss())
                .round()
                .clamp(0.0, 65535.0)
                * ADC_LSB
        })
        .collect();
    (ts, vals)
}

pub fn nab_dir() -> Option<PathBuf> {
    // The project's convention: ../shared/data/nab relative to the project root.
    let candidates = [
        std::env::var("AETHER_NAB_DIR").ok().map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/nab")),
        // Where this workplace keeps the shared data, for clones made elsewhere.
        Some(PathBuf::from("/work/shared/data/nab")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC) to ns since the epoch.
pub fn parse_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let mut ns = 0i64;
    if !frac.is_empty() {
        let digits = &frac[..frac.len().min(9)];
        ns = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    Some(secs * 1_000_000_000 + ns)
}

/// Loads a NAB csv (`timestamp,value` with header), stably sorted by time as
/// the storage layer does before aggregating or encoding (some NAB files,
/// e.g. machine_temperature_system_failure.csv, contain an out-of-order run).
pub fn load_nab_csv(path: &Path) -> (Vec<i64>, Vec<f64>) {
    let (ts, vals) = load_nab_csv_unsorted(path);
    let mut idx: Vec<usize> = (0..ts.len()).collect();
    idx.sort_by_key(|&i| ts[i]);
    (
        idx.iter().map(|&i| ts[i]).collect(),
        idx.iter().map(|&i| vals[i]).collect(),
    )
}

/// Loads a NAB csv in file order.
pub fn load_nab_csv_unsorted(path: &Path) -> (Vec<i64>, Vec<f64>) {
    let text = std::fs::read_to_string(path).expect("read csv");
    let mut ts = Vec::new();
    let mut vals = Vec::new();
    for line in text.lines().skip(1) {
        let Some((a, b)) = line.split_once(',') else {
            continue;
        };
        ts.push(parse_ts(a).expect("timestamp"));
        vals.push(b.trim().parse::<f64>().expect("value"));
    }
    (ts, vals)
}

/// Labeled anomaly windows (inclusive ns bounds) for `key` in NAB's
/// combined_windows.json, extracted without a JSON dependency: the value of
/// `key` is a list of `["start", "end"]` string pairs.
pub fn nab_windows(json: &str, key: &str) -> Option<Vec<(i64, i64)>> {
    let at = json.find(&format!("\"{key}\""))?;
    let rest = &json[at + key.len() + 2..];
    let open = rest.find('[')?;
    // Find the matching close bracket of the outer list.
    let mut depth = 0;
    let mut end = None;
    for (i, c) in rest[open..].char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let body = &rest[open + 1..end?];
    let strings: Vec<&str> = body.split('"').skip(1).step_by(2).collect();
    let mut out = Vec::new();
    for pair in strings.chunks(2) {
        if let [a, b] = pair {
            out.push((parse_ts(a)?, parse_ts(b)?));
        }
    }
    Some(out)
}

pub fn nab_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read nab dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    v.sort();
    v
}
