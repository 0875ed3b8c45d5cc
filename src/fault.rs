//! Fault injection for tests: points in the commit, publish and read paths where an
//! environment variable makes braid abort (`BRAID_CRASH_AT`), stall (`BRAID_STALL_AT`)
//! or fail with an I/O error (`BRAID_FAIL_AT`), to hit exact windows of the delivery
//! protocol from outside the process (docs/semantics.md, "Test hook").
//!
//! Invariant: unset, each point costs one relaxed atomic load (the plan is parsed once).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Places in the commit path where a test can make the process die (`BRAID_CRASH_AT`),
/// wait (`BRAID_STALL_AT`) or fail (`BRAID_FAIL_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A checkpoint is assembled; its RocksDB batch is not written yet.
    Commit,
    /// One output partition's batch is appended, others of the same commit may not be.
    Publish,
    /// Everything is appended and synced; nothing is acknowledged yet.
    Ack,
    /// A source partition is read (`BRAID_FAIL_AT` only).
    Read,
}

impl CrashPoint {
    fn name(self) -> &'static str {
        match self {
            CrashPoint::Commit => "commit",
            CrashPoint::Publish => "publish",
            CrashPoint::Ack => "ack",
            CrashPoint::Read => "read",
        }
    }
}

/// A test hook: with `BRAID_CRASH_AT=<point>:<n>` (point `commit`, `publish` or `ack`)
/// the process aborts — no destructor, no flush, as under `kill -9` — the n-th time it
/// reaches that point. Unset, this is one relaxed atomic load.
pub fn crash_point(point: CrashPoint) {
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var("BRAID_CRASH_AT").ok()?;
        let (name, n) = text.split_once(':')?;
        Some((name.to_owned(), n.parse().ok()?))
    });
    if let Some((name, n)) = plan
        && name == point.name()
        && SEEN.fetch_add(1, Ordering::Relaxed) + 1 == *n
    {
        eprintln!("braid: BRAID_CRASH_AT={name}:{n} reached; aborting");
        std::process::abort();
    }
}

/// A test hook: with `BRAID_STALL_AT=<point>:<n>:<ms>` the thread waits `ms`
/// milliseconds the n-th time it reaches that point (to show `/readyz` turning unready
/// while checkpoints stall). Unset, this is one relaxed atomic load.
pub fn stall_point(point: CrashPoint) {
    static PLAN: OnceLock<Option<(String, u64, u64)>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var("BRAID_STALL_AT").ok()?;
        let mut parts = text.splitn(3, ':');
        let name = parts.next()?.to_owned();
        Some((
            name,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        ))
    });
    if let Some((name, n, ms)) = plan
        && name == point.name()
        && SEEN.fetch_add(1, Ordering::Relaxed) + 1 == *n
    {
        tracing::warn!(point = %name, n, ms, "BRAID_STALL_AT reached: stalling");
        std::thread::sleep(std::time::Duration::from_millis(*ms));
        tracing::warn!(point = %name, n, "BRAID_STALL_AT: going on");
    }
}

/// A test hook: with `BRAID_FAIL_AT=<point>:<n>` the n-th checkpoint write (`commit`),
/// output append (`publish`) or source read (`read`) fails with an injected I/O error,
/// and so does every later one,
/// as on a disk that stays full; `<point>:<n>:<k>` fails k times from the n-th on, and
/// `<point>:<n>:<ms>ms` fails everything for `ms` milliseconds from the n-th on
/// (a transient fault, which the job must retry through). A write fails with "no space
/// left on device", a read with "input/output error". Unset, this is one relaxed atomic
/// load.
pub fn fail_point(point: CrashPoint) -> Result<(), std::io::Error> {
    static PLAN: OnceLock<Option<FailPlan>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    static FIRST_FAILURE: OnceLock<std::time::Instant> = OnceLock::new();
    let Some(plan) = PLAN.get_or_init(|| FailPlan::parse(&std::env::var("BRAID_FAIL_AT").ok()?))
    else {
        return Ok(());
    };
    if plan.point != point.name() {
        return Ok(());
    }
    let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
    let fails = seen >= plan.from
        && match plan.lasting {
            Lasting::Forever => true,
            Lasting::Times(k) => seen - plan.from < k,
            Lasting::Millis(ms) => {
                FIRST_FAILURE.get_or_init(std::time::Instant::now).elapsed()
                    < std::time::Duration::from_millis(ms)
            }
        };
    if !fails {
        return Ok(());
    }
    let (kind, what) = match point {
        CrashPoint::Read => (std::io::ErrorKind::Other, "Input/output error"),
        _ => (std::io::ErrorKind::StorageFull, "No space left on device"),
    };
    Err(std::io::Error::new(
        kind,
        format!("{what} (injected by BRAID_FAIL_AT={})", plan.text),
    ))
}

/// A parsed `BRAID_FAIL_AT`.
#[derive(Debug, PartialEq, Eq)]
struct FailPlan {
    text: String,
    point: String,
    from: u64,
    lasting: Lasting,
}

#[derive(Debug, PartialEq, Eq)]
enum Lasting {
    Forever,
    Times(u64),
    Millis(u64),
}

impl FailPlan {
    fn parse(text: &str) -> Option<FailPlan> {
        let mut parts = text.splitn(3, ':');
        let point = parts.next()?.to_owned();
        let from = parts.next()?.parse().ok().filter(|n| *n > 0)?;
        let lasting = match parts.next() {
            None => Lasting::Forever,
            Some(ms) if ms.ends_with("ms") => {
                Lasting::Millis(ms.trim_end_matches("ms").parse().ok()?)
            }
            Some(k) => Lasting::Times(k.parse().ok()?),
        };
        Some(FailPlan {
            text: text.to_owned(),
            point,
            from,
            lasting,
        })
    }
}
