//! The `braid` command line (clap). The only module that uses `anyhow`: it turns the
//! library's typed errors into messages and exit codes (0 ok, 1 runtime error, 2 usage).

use std::process::ExitCode;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
