//! The queue file's storage backend: redb's own file backend, with one fault it can be told
//! to inject for tests of the failure paths (a full disk), at the layer where a real one
//! strikes, so redb's own error handling runs as it would.
//!
//! The fault is off unless [`super::QueueOptions::disk_full_while`] names a switch file (a
//! node takes it from `MYCO_FAULT_DISK_FULL=PATH`): while that file exists, every write to
//! the queue file fails with "no space left on device" (reads still work). A test creates
//! the file, watches the queue refuse and recover, and removes it.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// The environment variable that names the disk-full switch file.
pub const FAULT_DISK_FULL_ENV: &str = "MYCO_FAULT_DISK_FULL";

#[derive(Debug)]
pub(super) struct QueueBackend {
    file: FileBackend,
    /// While this file exists, writes fail as on a full disk.
    disk_full_while: Option<PathBuf>,
}

impl QueueBackend {
    pub(super) fn open(
        path: &Path,
        disk_full_while: Option<PathBuf>,
    ) -> Result<QueueBackend, redb::DatabaseError> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(QueueBackend {
            file: FileBackend::new(file)?,
            disk_full_while,
        })
    }

    fn check_space(&self) -> io::Result<()> {
        match &self.disk_full_while {
            Some(p) if p.exists() => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "no space left on device (injected: {FAULT_DISK_FULL_ENV} names {} and it exists)",
                    p.display()
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl StorageBackend for QueueBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if len > self.file.len()? {
            self.check_space()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check_space()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Open (or create) the queue file as redb's `Database::create` does, through
/// [`QueueBackend`].
pub(super) fn open_database(
    path: &Path,
    disk_full_while: Option<PathBuf>,
) -> Result<redb::Database, redb::DatabaseError> {
    let backend = QueueBackend::open(path, disk_full_while)?;
    redb::Builder::new().create_with_backend(backend)
}
