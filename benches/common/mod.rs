//! What the benches read about a process from /proc (Linux), and the load they drive.

// Each bench uses only part of what is here.
#![allow(dead_code)]

pub mod load;

use std::time::Duration;

/// A process's CPU time (user + system) and the bytes it caused to be written to storage, from
/// /proc/PROC (Linux).
pub fn process_usage(proc: &str) -> (Duration, u64) {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{proc}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) start after ')'.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64((user + system) / ticks_per_second))
        })
        .unwrap_or_default();
    let written = std::fs::read_to_string(format!("/proc/{proc}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_default();
    (cpu, written)
}

/// A process's resident memory in KiB, from /proc/PROC/status (Linux).
pub fn resident_kib(proc: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{proc}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_default()
}
