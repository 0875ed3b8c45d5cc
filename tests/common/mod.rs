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
