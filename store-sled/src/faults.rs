//! Injected failures, for tests of what a client does when its disk fails (feature
//! `fault-injection`, enabled only by tests). Faults are set per store directory (the path the
//! store was opened with), so tests running in parallel do not disturb each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hush_core::store::kv::StoreError;

#[derive(Default)]
struct Plan {
    writes: u64,
    flushes: u64,
    hits: u64,
}

static PLANS: Mutex<Option<HashMap<PathBuf, Plan>>> = Mutex::new(None);

fn with<T>(path: &Path, f: impl FnOnce(&mut Plan) -> T) -> T {
    let mut g = PLANS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(g.get_or_insert_with(HashMap::new)
        .entry(path.to_path_buf())
        .or_default())
}

/// The next `n` commits of the store at `path` fail before anything is written
/// ([`StoreError::Io`]; the handle stays usable).
pub fn fail_writes(path: &Path, n: u64) {
    with(path, |p| p.writes = n);
}

/// The next `n` commits of the store at `path` apply their batch but fail to flush, which
/// poisons the handle.
pub fn fail_flushes(path: &Path, n: u64) {
    with(path, |p| p.flushes = n);
}

/// Removes the faults still planned for the store at `path`.
pub fn clear(path: &Path) {
    with(path, |p| {
        p.writes = 0;
        p.flushes = 0;
    });
}

/// How many injected faults the store at `path` has hit so far.
pub fn hits(path: &Path) -> u64 {
    with(path, |p| p.hits)
}

pub(crate) fn before_write(path: &Path) -> Result<(), StoreError> {
    with(path, |p| {
        if p.writes > 0 {
            p.writes -= 1;
            p.hits += 1;
            Err(StoreError::Io("injected write fault".to_owned()))
        } else {
            Ok(())
        }
    })
}

pub(crate) fn before_flush(path: &Path) -> Result<(), StoreError> {
    with(path, |p| {
        if p.flushes > 0 {
            p.flushes -= 1;
            p.hits += 1;
            Err(StoreError::Io("injected flush fault".to_owned()))
        } else {
            Ok(())
        }
    })
}
