//! The `braid` binary: parses the command line and hands over to [`braid::cli`].

fn main() -> std::process::ExitCode {
    braid::cli::main()
}
