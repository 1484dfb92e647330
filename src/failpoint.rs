//! Fault injection for tests: named points on the disk paths (WAL write,
//! fsync, rotation; index commit) that a test can make fail, through the
//! `fail` crate. Compiled in only with the `failpoints` feature; without it
//! `io` is an empty inline function.
//!
//! Names: `wal::write`, `wal::fsync`, `wal::rotate`, `index::commit`, and
//! `index::segment_write` (Tantivy creating a segment file, through
//! [`FailingDirectory`]).
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

/// Ends the process at once, as a kill -9 would, when the named point is
/// armed (`erasure::partition_done=return`): for tests of what replay
/// does with work cut short.
#[inline(always)]
pub fn crash(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |_| {
        eprintln!("auditd: failpoint {name}: aborting");
        std::process::abort()
    });
    let _ = name;
}

/// Reads `FAILPOINTS` from the environment (the daemon calls this at
/// start-up). Does nothing without the `failpoints` feature.
pub fn setup_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// A Tantivy directory that fails `open_write` (every segment file Tantivy
/// creates while indexing, flushing or merging) when `index::segment_write`
/// is armed, and passes everything else through to the real directory.
/// Only the `failpoints` build wraps partitions in it.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone)]
pub struct FailingDirectory(pub tantivy::directory::MmapDirectory);

#[cfg(feature = "failpoints")]
mod failing_directory {
    use std::path::Path;
    use std::sync::Arc;

    use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
    use tantivy::directory::{
        Directory, DirectoryLock, FileHandle, Lock, WatchCallback, WatchHandle, WritePtr,
    };

    use super::FailingDirectory;

    impl Directory for FailingDirectory {
        fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
            self.0.get_file_handle(path)
        }
        fn delete(&self, path: &Path) -> Result<(), DeleteError> {
            self.0.delete(path)
        }
        fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
            self.0.exists(path)
        }
        fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
            super::io("index::segment_write")
                .map_err(|e| OpenWriteError::wrap_io_error(e, path.to_owned()))?;
            self.0.open_write(path)
        }
        fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
            self.0.atomic_read(path)
        }
        fn atomic_write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
            self.0.atomic_write(path, data)
        }
        fn sync_directory(&self) -> std::io::Result<()> {
            self.0.sync_directory()
        }
        fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
            self.0.acquire_lock(lock)
        }
        fn watch(&self, callback: WatchCallback) -> tantivy::Result<WatchHandle> {
            self.0.watch(callback)
        }
    }
}
