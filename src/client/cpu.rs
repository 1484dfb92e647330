//! CPU time from `/proc`, for the load generator and the raw-engine bench:
//! they report it beside their rates, so that `BENCHMARKS.md` can say
//! where each event's CPU goes.

/// CPU time (user + system, seconds) this process has used so far, or
/// `None` where `/proc` is not there (not Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    proc_stat_cpu_seconds("/proc/self/stat")
}

/// CPU time the calling thread has used so far; see `process_cpu_seconds`.
pub fn thread_cpu_seconds() -> Option<f64> {
    proc_stat_cpu_seconds("/proc/thread-self/stat")
}

/// `utime + stime` of a `/proc/.../stat` file. They are in clock ticks of
/// `USER_HZ`, which Linux fixes at 100 for user space on every common
/// architecture, so 10 ms resolution: plenty over a run of seconds.
fn proc_stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / 100.0)
}

/// The command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted from the last `)`: after it
/// come state (field 3) ... utime (14) and stime (15).
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15_even_with_odd_command_names() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 69 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(800));
        assert_eq!(parse_stat_cpu_ticks("4242 (cut"), None);
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
    }

    #[test]
    fn cpu_readings_rise_with_work_on_linux() {
        if cfg!(target_os = "linux") {
            // Spin until this thread's tick counter moves: a real reading
            // rises with work, and the process's covers the thread's.
            let before = thread_cpu_seconds().unwrap();
            let mut x = 0u64;
            while thread_cpu_seconds().unwrap() <= before {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
            let thread = thread_cpu_seconds().unwrap();
            assert!(process_cpu_seconds().unwrap() >= thread);
        }
    }
}
