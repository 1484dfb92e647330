//! Fault injection for tests: named points on the disk paths (WAL write,
//! fsync, rotation; index commit) that a test can make fail, through the
//! `fail` crate. Compiled in only with the `failpoints` feature; without it
//! `io` is an empty inline function.
//!
//! Names: `wal::write`, `wal::fsync`, `wal::rotate`, `index::commit`.
//! Arm one with `fail::cfg(name, "return")` (EIO) or `"return(enospc)"`
//! (a full disk), or, for a child-process daemon, the `FAILPOINTS`
//! environment variable (`wal::fsync=return`), read at start-up.

/// `Err` when the named point is armed, else `Ok(())`.
#[inline(always)]
pub fn io(name: &str) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |arg: Option<String>| {
        let errno = match arg.as_deref() {
            Some("enospc") => 28,
            _ => 5, // EIO
        };
        let error = std::io::Error::from_raw_os_error(errno);
        Err(std::io::Error::new(
            error.kind(),
            format!("{error} (injected at {name})"),
        ))
    });
    let _ = name;
    Ok(())
}

/// Reads `FAILPOINTS` from the environment (the daemon calls this at
/// start-up). Does nothing without the `failpoints` feature.
pub fn setup_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
