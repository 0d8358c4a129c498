//! What a load cost the machine: the CPU time every process spent while it ran (Linux
//! `/proc/stat`) and this client's own (`getrusage`), between two samples.
//!
//! `bench` reports it beside the rate so that a rate can be read as a cost: on a machine
//! that the servers and this client share, "N core-µs per request" is what one request took
//! of all of it, and "busy" says whether the load kept the cores busy at all — a system that
//! leaves them idle is bound by the latency of its own path (what waits on what), not by
//! its CPU, and no saving in CPU alone raises its rate.

use std::time::{Duration, Instant};

use serde_json::json;

use super::output::outln;

/// Ticks the machine's CPUs spent in each state since boot: the aggregate `cpu` line of
/// `/proc/stat`, and how many CPUs it sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    pub cpus: usize,
}

impl MachineTicks {
    /// Parses `/proc/stat`: the `cpu` line (the first eight fields; a kernel that prints
    /// fewer gives `None`) and the count of `cpuN` lines.
    pub fn parse(proc_stat: &str) -> Option<MachineTicks> {
        let mut ticks = None;
        let mut cpus = 0;
        for line in proc_stat.lines() {
            let mut fields = line.split_ascii_whitespace();
            match fields.next() {
                Some("cpu") => {
                    let v: Vec<u64> = fields
                        .take(8)
                        .map(|f| f.parse().ok())
                        .collect::<Option<_>>()?;
                    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
                        return None;
                    };
                    ticks = Some(MachineTicks {
                        user,
                        nice,
                        system,
                        idle,
                        iowait,
                        irq,
                        softirq,
                        steal,
                        cpus: 0,
                    });
                }
                Some(name) if name.starts_with("cpu") && name[3..].parse::<u32>().is_ok() => {
                    cpus += 1;
                }
                _ => {}
            }
        }
        let mut t = ticks?;
        t.cpus = cpus;
        (cpus > 0).then_some(t)
    }

    fn read() -> Option<MachineTicks> {
        MachineTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }
}

/// One reading: the machine's ticks (where `/proc/stat` exists), this process's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    machine: Option<MachineTicks>,
    client: Duration,
    at: Instant,
}

impl CpuSample {
    pub fn now() -> CpuSample {
        CpuSample {
            machine: MachineTicks::read(),
            client: own_cpu_time(),
            at: Instant::now(),
        }
    }
}

/// The CPU time (user and system) this process has used.
fn own_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return Duration::ZERO;
        }
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The machine's CPU use between two samples, as shares of all its CPUs' time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineUse {
    pub cpus: usize,
    /// Running this guest's work: user, nice, system, irq, softirq (0..=1) — not idle, not
    /// waiting on I/O, not stolen by the hypervisor (on a VM with steal, busy stays below
    /// 1 however loaded).
    pub busy: f64,
    pub user: f64,
    pub system: f64,
    /// Hard and soft interrupts (the network stack's receive path runs there).
    pub irq: f64,
    pub iowait: f64,
    /// Taken by the hypervisor for other guests.
    pub steal: f64,
}

impl MachineUse {
    /// `None` when no time passed (or the total went back). A single counter that went
    /// back counts as 0: the kernel lets the aggregate iowait decrease.
    pub fn between(a: &MachineTicks, b: &MachineTicks) -> Option<MachineUse> {
        let total = b.total().checked_sub(a.total()).filter(|t| *t > 0)? as f64;
        let d = |x: u64, y: u64| y.saturating_sub(x) as f64;
        let user = d(a.user, b.user) + d(a.nice, b.nice);
        let system = d(a.system, b.system);
        let irq = d(a.irq, b.irq) + d(a.softirq, b.softirq);
        Some(MachineUse {
            cpus: b.cpus,
            busy: ((user + system + irq) / total).min(1.0),
            user: user / total,
            system: system / total,
            irq: irq / total,
            iowait: d(a.iowait, b.iowait) / total,
            steal: d(a.steal, b.steal) / total,
        })
    }

    /// Core-seconds the machine was busy in `wall` seconds.
    pub fn busy_core_secs(&self, wall_secs: f64) -> f64 {
        self.busy * self.cpus as f64 * wall_secs
    }
}

/// What a load used: the machine's CPU (all processes) and this client's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    pub wall_secs: f64,
    pub machine: Option<MachineUse>,
    pub client_secs: f64,
}

impl CpuUse {
    pub fn between(a: &CpuSample, b: &CpuSample) -> CpuUse {
        CpuUse {
            wall_secs: b.at.saturating_duration_since(a.at).as_secs_f64(),
            machine: match (&a.machine, &b.machine) {
                (Some(x), Some(y)) => MachineUse::between(x, y),
                _ => None,
            },
            client_secs: b.client.saturating_sub(a.client).as_secs_f64(),
        }
    }

    /// Core-µs of the whole machine per request, and of this client per request.
    pub fn per_request_us(&self, requests: u64) -> (Option<f64>, Option<f64>) {
        if requests == 0 {
            return (None, None);
        }
        let n = requests as f64;
        (
            self.machine
                .map(|m| m.busy_core_secs(self.wall_secs) * 1e6 / n),
            Some(self.client_secs * 1e6 / n),
        )
    }

    /// The JSON report's `cpu` (`machine` null where `/proc/stat` is missing).
    pub fn json(&self, requests: u64) -> serde_json::Value {
        let (machine_us, client_us) = self.per_request_us(requests);
        json!({
            "wall_secs": self.wall_secs,
            "machine": self.machine.map(|m| json!({
                "cpus": m.cpus,
                "busy": m.busy,
                "user": m.user,
                "system": m.system,
                "irq": m.irq,
                "iowait": m.iowait,
                "steal": m.steal,
                "core_us_per_request": machine_us,
            })),
            "client_cores": self.client_secs / self.wall_secs.max(f64::MIN_POSITIVE),
            "client_core_us_per_request": client_us,
        })
    }

    /// The text report's line.
    pub fn print(&self, requests: u64) {
        let (machine_us, client_us) = self.per_request_us(requests);
        let pct = |x: f64| x * 100.0;
        let client = format!(
            "this client {:.2} cores{}",
            self.client_secs / self.wall_secs.max(f64::MIN_POSITIVE),
            client_us
                .map(|us| format!(" = {us:.0} core-µs per request"))
                .unwrap_or_default()
        );
        let per_request = machine_us
            .map(|us| format!("{us:.0}"))
            .unwrap_or_else(|| "n/a".into());
        match self.machine {
            Some(m) => outln!(
                "  cpu: machine {:.0}% busy of {} cpus (user {:.0}%, system {:.0}%, irq {:.0}%, iowait {:.0}%, steal {:.0}%) = {per_request} core-µs per request; {client}",
                pct(m.busy),
                m.cpus,
                pct(m.user),
                pct(m.system),
                pct(m.irq),
                pct(m.iowait),
                pct(m.steal)
            ),
            None => outln!("  cpu: machine not measured (no /proc/stat); {client}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 10 3 7 2 0 0\n\
                        cpu0 50 2 25 400 5 1 4 1 0 0\n\
                        cpu1 50 3 25 400 5 2 3 1 0 0\n\
                        intr 12345 0 0\n\
                        ctxt 999\n\
                        cpufreq nonsense\n";

    #[test]
    fn parses_the_aggregate_line_and_counts_the_cpus() {
        let t = MachineTicks::parse(STAT).unwrap();
        assert_eq!(
            t,
            MachineTicks {
                user: 100,
                nice: 5,
                system: 50,
                idle: 800,
                iowait: 10,
                irq: 3,
                softirq: 7,
                steal: 2,
                cpus: 2,
            }
        );
        assert_eq!(t.total(), 977);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(MachineTicks::parse(""), None);
        assert_eq!(
            MachineTicks::parse("cpu 1 2 3\ncpu0 1 2 3\n"),
            None,
            "too few fields"
        );
        assert_eq!(MachineTicks::parse("cpu 1 2 3 x 5 6 7 8\ncpu0 1\n"), None);
        assert_eq!(
            MachineTicks::parse("cpu 1 2 3 4 5 6 7 8\n"),
            None,
            "no cpuN line"
        );
    }

    #[test]
    fn shares_are_of_the_ticks_that_passed() {
        let a = MachineTicks::parse(STAT).unwrap();
        // 200 ticks pass: 90 user (80 + 10 nice), 30 system, 20 irq (5 + 15 soft),
        // 50 idle, 6 iowait, 4 steal.
        let b = MachineTicks {
            user: a.user + 80,
            nice: a.nice + 10,
            system: a.system + 30,
            idle: a.idle + 50,
            iowait: a.iowait + 6,
            irq: a.irq + 5,
            softirq: a.softirq + 15,
            steal: a.steal + 4,
            cpus: 2,
        };
        let m = MachineUse::between(&a, &b).unwrap();
        assert_eq!(m.cpus, 2);
        assert!((m.busy - 140.0 / 200.0).abs() < 1e-12, "{m:?}");
        assert!((m.user - 0.45).abs() < 1e-12 && (m.system - 0.15).abs() < 1e-12);
        assert!((m.irq - 0.10).abs() < 1e-12, "{m:?}");
        assert!((m.iowait - 0.03).abs() < 1e-12 && (m.steal - 0.02).abs() < 1e-12);
        // 70% of 2 cpus for 10 s.
        assert!((m.busy_core_secs(10.0) - 14.0).abs() < 1e-9);
        assert_eq!(MachineUse::between(&a, &a), None, "no time passed");
        assert_eq!(MachineUse::between(&b, &a), None, "the total went back");
        // The aggregate iowait may decrease (proc(5)): that counter counts 0, the rest stays.
        let dipped = MachineTicks {
            iowait: a.iowait - 5,
            idle: b.idle + 11,
            ..b
        };
        let m = MachineUse::between(&a, &dipped).unwrap();
        assert_eq!(m.iowait, 0.0, "{m:?}");
        assert!((m.busy - 140.0 / 200.0).abs() < 1e-12, "{m:?}");
    }

    #[test]
    fn per_request_cost_divides_the_busy_core_time() {
        let machine = MachineUse {
            cpus: 2,
            busy: 0.75,
            user: 0.5,
            system: 0.2,
            irq: 0.05,
            iowait: 0.0,
            steal: 0.0,
        };
        let used = CpuUse {
            wall_secs: 10.0,
            machine: Some(machine),
            client_secs: 3.0,
        };
        // 15 busy core-seconds over 100,000 requests: 150 µs each; the client 30 µs.
        let (m, c) = used.per_request_us(100_000);
        assert!((m.unwrap() - 150.0).abs() < 1e-9 && (c.unwrap() - 30.0).abs() < 1e-9);
        assert_eq!(used.per_request_us(0), (None, None));
        let j = used.json(100_000);
        assert_eq!(j["machine"]["cpus"], 2);
        assert!(
            (j["client_cores"].as_f64().unwrap() - 0.3).abs() < 1e-12,
            "{j}"
        );
        let j = CpuUse {
            machine: None,
            ..used
        }
        .json(1);
        assert!(j["machine"].is_null(), "{j}");
    }

    #[test]
    fn a_sample_pair_measures_this_process() {
        let a = CpuSample::now();
        // Spend some CPU, so that the process's own time must move.
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = CpuUse::between(&a, &CpuSample::now());
        assert!(used.wall_secs >= 0.05, "{used:?}");
        assert!(used.client_secs > 0.0, "{used:?}");
        if cfg!(target_os = "linux") {
            let m = used.machine.expect("/proc/stat on Linux");
            assert!(m.cpus >= 1 && (0.0..=1.0).contains(&m.busy), "{m:?}");
        }
    }
}
