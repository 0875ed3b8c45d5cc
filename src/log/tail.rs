//! Waking readers when a partition grows, without polling.
//!
//! A [`TailWatcher`] asks the OS (inotify on Linux) to report changes to a partition
//! directory; any write or new segment, by this process or another, sets a flag and wakes the
//! waiters. The flag makes the wake-up sticky: an append that lands between a reader's "caught
//! up" and its wait is not missed.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::LogError;

struct Shared {
    changed: Mutex<bool>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Shared {
    fn signal(&self) {
        *self.changed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
        self.notify.notify_one();
    }
}

/// Reports appends to one or more partition directories.
pub struct TailWatcher {
    shared: Arc<Shared>,
    watcher: notify::RecommendedWatcher,
}

impl TailWatcher {
    pub fn new() -> Result<Self, LogError> {
        let shared = Arc::new(Shared {
            changed: Mutex::new(false),
            cond: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        });
        let cb = Arc::clone(&shared);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // A watcher error (e.g. queue overflow) may hide an append: waking is always safe.
            if res.is_err() || res.is_ok_and(|e| !e.kind.is_access()) {
                cb.signal();
            }
        })
        .map_err(|e| LogError::Watch {
            path: Default::default(),
            message: e.to_string(),
        })?;
        Ok(TailWatcher { shared, watcher })
    }

    /// Starts watching a partition directory.
    pub fn watch(&mut self, dir: &Path) -> Result<(), LogError> {
        self.watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| LogError::Watch {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// Blocks until something changed since the last wait, or `timeout` passed. Returns whether
    /// a change was seen.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let guard = self
            .shared
            .changed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .shared
            .cond
            .wait_timeout_while(guard, timeout, |changed| !*changed)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, false)
    }

    /// Waits until something changed since the last wait.
    pub async fn changed(&self) {
        self.shared.notify.notified().await;
        *self
            .shared
            .changed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = false;
    }
}
