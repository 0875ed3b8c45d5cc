//! The `braid` binary: parses the command line and hands over to [`braid::cli`].

fn main() -> std::process::ExitCode {
    braid::cli::main()
}

// The source thread allocates every event and the shard threads free them; glibc malloc
// serialises such cross-thread frees on its arena locks, mimalloc frees them without
// locking (measured: about a quarter less CPU for a whole run).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
