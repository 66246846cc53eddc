//! What makes a benchmark figure trustworthy on a small shared machine: the 1-minute load
//! average before and after each run (a run that starts on a busy machine is marked NOT VALID,
//! since other work slows the servers unequally), and the CPU time the server and the load
//! generator spent on it, which the load disturbs far less than the rate does.

use std::time::{Duration, Instant};

/// The kernel's `USER_HZ`, the unit of `/proc/<pid>/stat` times: 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User plus system CPU seconds a process has used (all its threads).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) of proc(5), counted from the state (field 3).
    let ticks = |index: usize| fields.get(index - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND)
}

/// This process's CPU seconds and those of its children that it has waited for (an `oha` it
/// ran as the generator).
pub fn own_cpu_seconds_with_children() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14 to 17 of proc(5).
    let ticks = |index: usize| fields.get(index - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)? + ticks(16)? + ticks(17)?) as f64 / TICKS_PER_SECOND)
}

/// `cpu_seconds` of a process and its direct children (nginx's master and its workers).
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    let own = cpu_seconds(pid)?;
    let children: f64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent(child) == Some(pid))
        .filter_map(cpu_seconds)
        .sum();
    Some(own + children)
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// When a run may start: once the 1-minute load average is below `max_load`, waiting at most
/// `max_wait` (the previous run itself raises it).
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    pub max_load: f64,
    pub max_wait: Duration,
}

impl Quiet {
    /// `MIG_BENCH_MAX_LOAD` (default 0.5) and `MIG_BENCH_QUIET_WAIT_S` (default 150).
    pub fn from_env() -> Quiet {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        Quiet {
            max_load: var("MIG_BENCH_MAX_LOAD").unwrap_or(0.5),
            max_wait: Duration::from_secs_f64(var("MIG_BENCH_QUIET_WAIT_S").unwrap_or(150.0)),
        }
    }

    /// Waits for a quiet machine; returns the load average the run starts at.
    pub fn wait(&self) -> f64 {
        let deadline = Instant::now() + self.max_wait;
        loop {
            let load = load_average().unwrap_or(f64::INFINITY);
            if load < self.max_load || Instant::now() >= deadline {
                return load;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// The conditions one figure was taken under.
#[derive(Debug, Clone, Copy)]
pub struct Conditions {
    pub max_load: f64,
    pub load_before: f64,
    pub load_after: f64,
    pub seconds: f64,
    /// CPU seconds the load generator (this process, or a child it ran and waited for) used
    /// during the run.
    pub generator_cpu: f64,
    /// CPU seconds the server (and its children) used during the run.
    pub server_cpu: Option<f64>,
}

impl Conditions {
    /// Waits for a quiet machine, runs `run`, and records the conditions around it.
    pub fn measure<T>(quiet: &Quiet, server: Option<u32>, run: impl FnOnce() -> T) -> (T, Self) {
        let load_before = quiet.wait();
        let generator_before = own_cpu_seconds_with_children().unwrap_or(0.0);
        let server_before = server.and_then(tree_cpu_seconds);
        let started = Instant::now();
        let value = run();
        let seconds = started.elapsed().as_secs_f64();
        let server_cpu = server
            .and_then(tree_cpu_seconds)
            .zip(server_before)
            .map(|(after, before)| after - before);
        let conditions = Conditions {
            max_load: quiet.max_load,
            load_before,
            load_after: load_average().unwrap_or(f64::NAN),
            seconds,
            generator_cpu: own_cpu_seconds_with_children().unwrap_or(0.0) - generator_before,
            server_cpu,
        };
        (value, conditions)
    }

    /// Whether the run started on a quiet machine.
    pub fn valid(&self) -> bool {
        self.load_before < self.max_load
    }

    /// `NOT VALID …: ` in front of a figure taken on a busy machine, else nothing.
    pub fn verdict(&self) -> String {
        if self.valid() {
            String::new()
        } else {
            format!(
                "*** NOT VALID (load average {:.2} ≥ {:.2} at the start) *** ",
                self.load_before, self.max_load
            )
        }
    }

    /// The conditions after a figure, with the server's CPU per request when `requests` > 0.
    pub fn describe(&self, requests: u64) -> String {
        let server = match self.server_cpu {
            Some(cpu) if requests > 0 => format!(
                "server CPU {:.1} s = {:.0} µs/request, ",
                cpu,
                cpu * 1e6 / requests as f64
            ),
            Some(cpu) => format!("server CPU {cpu:.1} s, "),
            None => String::new(),
        };
        format!(
            "[{server}generator CPU {:.1} s = {:.0}% of a core, load {:.2} → {:.2}]",
            self.generator_cpu,
            100.0 * self.generator_cpu / self.seconds.max(f64::EPSILON),
            self.load_before,
            self.load_after
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_grows_with_work() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        // Spin until a tenth of a second of CPU shows (however busy the machine is).
        let started = Instant::now();
        let mut x = 0u64;
        while cpu_seconds(me).unwrap() - before < 0.1 && started.elapsed() < Duration::from_secs(30)
        {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let spent = cpu_seconds(me).unwrap() - before;
        assert!(spent >= 0.1, "{spent}");
        assert!(tree_cpu_seconds(me).unwrap() >= cpu_seconds(me).unwrap());
        assert!(own_cpu_seconds_with_children().unwrap() >= spent);
        assert!(load_average().is_some());
    }

    #[test]
    fn a_run_started_above_the_threshold_is_not_valid() {
        let quiet = Quiet {
            max_load: -1.0,
            max_wait: Duration::ZERO,
        };
        let ((), conditions) = Conditions::measure(&quiet, None, || ());
        assert!(!conditions.valid());
        assert!(conditions.verdict().contains("NOT VALID"));
        let quiet = Quiet {
            max_load: f64::INFINITY,
            max_wait: Duration::ZERO,
        };
        let ((), conditions) = Conditions::measure(&quiet, None, || ());
        assert!(conditions.valid() && conditions.verdict().is_empty());
    }
}
