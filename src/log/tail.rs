//! Waking readers when a partition grows, without polling.
//!
//! A [`TailWatcher`] asks the OS (inotify on Linux) to report changes to a partition
//! directory; any write or new segment, by this process or another, sets a flag and wakes the
//! waiters. The flag makes the wake-up sticky: an append that lands between a reader's "caught
//! up" and its wait is not missed.
//!
//! Each watched directory also has a [`TailSignal`], a counter the watcher moves on every
//! change reported in that directory (and in every directory when the OS reports an error
//! or a lost event). A reader that found its partition's end can skip the file system until
//! the counter moves: a change made after the reader read the counter moves it again after
//! being made, so nothing written after a check is missed by the next one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::LogError;

struct Shared {
    changed: Mutex<bool>,
    cond: Condvar,
    notify: tokio::sync::Notify,
    /// Each watched directory's signal.
    dirs: Mutex<HashMap<PathBuf, TailSignal>>,
}

impl Shared {
    /// Moves the signals of the directories `event` names (all of them for an event that
    /// names none, or names one not watched, or an error), then wakes the waiters.
    fn changed(&self, event: Option<&notify::Event>) {
        {
            let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            let mut all = event.is_none_or(|e| e.need_rescan() || e.paths.is_empty());
            for path in event.iter().flat_map(|e| &e.paths) {
                // A file's change is reported under its path, the directory's own under its.
                let dir = dirs
                    .get(path.as_path())
                    .or_else(|| path.parent().and_then(|d| dirs.get(d)));
                match dir {
                    Some(signal) => signal.bump(),
                    None => all = true,
                }
            }
            if all {
                dirs.values().for_each(TailSignal::bump);
            }
        }
        self.signal();
    }

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
            dirs: Mutex::default(),
        });
        let cb = Arc::clone(&shared);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // A watcher error (e.g. queue overflow) may hide an append: waking is always safe.
            match res {
                Ok(e) if e.kind.is_access() => {}
                Ok(e) => cb.changed(Some(&e)),
                Err(_) => cb.changed(None),
            }
        })
        .map_err(|e| LogError::Watch {
            path: Default::default(),
            message: e.to_string(),
        })?;
        Ok(TailWatcher { shared, watcher })
    }

    /// Starts watching a partition directory; the signal moves on each change in it.
    pub fn watch(&mut self, dir: &Path) -> Result<TailSignal, LogError> {
        let signal = {
            let mut dirs = self.shared.dirs.lock().unwrap_or_else(|e| e.into_inner());
            dirs.entry(dir.to_path_buf()).or_default().clone()
        };
        self.watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| LogError::Watch {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(signal)
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

/// A counter of the changes reported in one watched directory ([`TailWatcher::watch`]).
#[derive(Debug, Clone, Default)]
pub struct TailSignal(Arc<AtomicU64>);

impl TailSignal {
    /// The count so far. Read before looking at the directory: a change the look missed
    /// moves the count past this value.
    pub fn generation(&self) -> u64 {
        // Acquire pairs with `bump`'s release: the watcher's reading of the OS event comes
        // after the write it reports, so a reader that sees the count move sees the write.
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_move_the_signal_of_their_directory_and_lost_events_move_all() {
        let temp = tempfile::tempdir().unwrap();
        let (a, b) = (temp.path().join("a"), temp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let mut watcher = TailWatcher::new().unwrap();
        let (sa, sb) = (watcher.watch(&a).unwrap(), watcher.watch(&b).unwrap());
        let shared = &watcher.shared;
        let event = |path: PathBuf| {
            notify::Event::new(notify::EventKind::Modify(notify::event::ModifyKind::Any))
                .add_path(path)
        };

        shared.changed(Some(&event(a.join("00000000000000000000.log"))));
        assert_eq!((sa.generation(), sb.generation()), (1, 0));
        // A change to the directory itself (its removal, its attributes).
        shared.changed(Some(&event(b.clone())));
        assert_eq!((sa.generation(), sb.generation()), (1, 1));
        // A path outside every watched directory, a lost event, an error: all move.
        shared.changed(Some(&event(temp.path().join("c/x.log"))));
        assert_eq!((sa.generation(), sb.generation()), (2, 2));
        let overflow =
            notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan);
        shared.changed(Some(&overflow));
        shared.changed(None);
        assert_eq!((sa.generation(), sb.generation()), (4, 4));
        // Watching a directory again shares its signal.
        assert_eq!(watcher.watch(&a).unwrap().generation(), 4);
        // Each change also wakes a waiter.
        assert!(watcher.wait_timeout(Duration::ZERO));
    }
}
