//! How the binaries' allocator (mimalloc) gets its memory: without
//! transparent huge pages.
//!
//! mimalloc asks Linux for transparent huge pages on its arenas
//! (`madvise(MADV_HUGEPAGE)`), and returns memory it no longer uses to
//! the system after a short delay. The next allocation there touches a
//! fresh 2 MiB page, which the kernel zeroes whole before the touch goes
//! on: a search that grew a buffer into such memory stopped for tens of
//! milliseconds, and so did `auditctl bench-search` taking in an answer.
//! Those were most of the search mix's outliers (issue 17; the profile
//! and the runs are in docs/benchmarks-history.md, "2026-12-05 (4)").

/// The environment variable of mimalloc's own switch: set, it decides.
pub const ALLOW_THP: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for every mapping of this process
/// (`PR_SET_THP_DISABLE`, which the kernel checks at each fault, so it
/// holds for what is already mapped), unless `MIMALLOC_ALLOW_THP` is set:
/// `0` has mimalloc do the same itself, `1` keeps them. Call it first
/// thing in `main`. A kernel without the flag gets a warning on stderr
/// and the daemon runs as before.
pub fn keep_huge_pages_off() {
    if std::env::var_os(ALLOW_THP).is_some() {
        return;
    }
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        let error = std::io::Error::last_os_error();
        eprintln!("transparent huge pages stay on ({error}): searches may stall on fresh pages");
    }
}

/// Whether process `pid` may get transparent huge pages, as its
/// `/proc/<pid>/status` says (`THP_enabled:`, Linux 6.x); `None` where it
/// does not say.
pub fn huge_pages_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_for_the_process_after_the_call() {
        if std::env::var_os(ALLOW_THP).is_some() {
            return; // the environment decides, by design
        }
        keep_huge_pages_off();
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1, "PR_GET_THP_DISABLE after the call");
        assert_ne!(huge_pages_enabled(std::process::id()), Some(true));
    }
}
