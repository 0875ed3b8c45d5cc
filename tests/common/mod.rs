//! Shared harness of the integration tests: temporary log directories, the real `braid`
//! binary, and bounded waits.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use braid::log::Log;

/// A fresh embedded log in a temporary directory, removed on drop.
pub struct TempLog {
    pub dir: tempfile::TempDir,
    pub log: Log,
}

impl TempLog {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Log::open(dir.path().join("log")).expect("open log");
        TempLog { dir, log }
    }

    pub fn path(&self) -> PathBuf {
        self.log.root().to_path_buf()
    }

    /// A `braid` command pointed at this log.
    pub fn braid(&self) -> Command {
        let mut cmd = braid();
        cmd.arg("--log").arg(self.log.root());
        cmd
    }
}

/// The `braid` binary built for this test run.
pub fn braid() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_braid"));
    cmd.env_remove("BRAID_LOG_DIR").env("BRAID_LOG", "warn");
    cmd
}

/// Runs a command with `stdin` as its input and returns its output.
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn braid");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait for braid")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "braid failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Every file under `dir`, for assertions about what exists on disk.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A spawned `braid` process, killed and reaped when dropped, so that a failing test
/// leaves no process behind.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child's pipe yields, without their line ends, through a channel fed by a
/// thread: a test waits for the next with `recv_timeout`, so a silent process cannot hang
/// it. The channel closes when the pipe does.
pub fn lines_of(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end even with no one listening: a full pipe would stall the child.
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Runs a command to completion, but for at most `limit`: beyond it the process is killed
/// and the test fails, so a hung `braid` cannot hang the suite.
pub fn output_within(mut cmd: Command, limit: std::time::Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn braid");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for braid"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// Every record of every partition of `topic`, partition by partition in offset order;
/// empty when the topic does not exist.
pub fn read_topic(log: &Log, topic: &str) -> Vec<(u32, braid::log::Record)> {
    let Ok(meta) = log.topic(topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in 0..meta.partitions {
        let mut reader = log.reader(topic, p, 0).expect("open reader");
        loop {
            let batch = reader.read_batch(4096).expect("read partition");
            if batch.is_empty() {
                break;
            }
            out.extend(batch.into_iter().map(|r| (p, r)));
        }
    }
    out
}

/// A digest of every file under `dir` (path → length and hash of the contents): two
/// equal snapshots mean nothing under `dir` was created, removed or changed.
pub fn snapshot_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u64, u64)> {
    use std::hash::{DefaultHasher, Hasher};
    files_under(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read file");
            // DefaultHasher::new() has fixed keys: digests compare within one test run.
            let mut h = DefaultHasher::new();
            h.write(&bytes);
            let digest = (bytes.len() as u64, h.finish());
            (path, digest)
        })
        .collect()
}

/// The newest segment file of a partition (`<base:020>.log`, the only one ever appended
/// to): where a crash tears the tail. `None` before the partition's first write.
pub fn newest_segment(log: &Log, topic: &str, partition: u32) -> Option<PathBuf> {
    std::fs::read_dir(log.partition_dir(topic, partition))
        .expect("read partition dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
}

/// Waits until `child` exits (returns its status) or `condition` holds (returns `None`,
/// the child still running), re-checking whenever `watcher` reports a change and at least
/// every 20 ms (a child's exit wakes no watcher). Beyond `limit` the child is killed and
/// the test fails, so a hung `braid` cannot hang the suite.
pub fn await_exit_or(
    child: &mut std::process::Child,
    watcher: &braid::log::TailWatcher,
    limit: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if condition() {
            return None;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("neither the condition nor the child's exit within {limit:?}");
        }
        watcher.wait_timeout(std::time::Duration::from_millis(20));
    }
}
