//! The `braid` binary: parses the command line and hands over to [`braid::cli`].

fn main() -> std::process::ExitCode {
    tune_allocators();
    braid::cli::main()
}

// The source thread allocates every event and the shard threads free them; glibc malloc
// serialises such cross-thread frees on its arena locks, mimalloc frees them without
// locking (measured: about a quarter less CPU for a whole run).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets how the process's memory is kept and reused (docs/semantics.md, "What peak memory
/// holds", has the paired measurements behind each setting).
/// - No transparent huge pages (mimalloc asks for them on its arenas): the first touch of
///   a huge page zeroes and maps all 2 MiB of it, however little is used, which cost
///   peak RSS and kernel time for no measurable gain.
/// - mimalloc (Rust's allocations) keeps its default, returning freed pages after 1 s
///   unused: without huge pages, keeping them longer saved no time.
/// - glibc (RocksDB's C++ allocations): a checkpoint's write batch is tens of MB, beyond
///   the largest size glibc would otherwise serve from its heap rather than a fresh
///   mapping; serving it from the heap, and not trimming the heap, reuses its pages
///   instead of having the kernel zero new ones.
fn tune_allocators() {
    // SAFETY: these calls only set allocator and memory options, before any other thread
    // exists; mallopt and prctl reject values they do not support (their result is then
    // irrelevant: the options only save time and memory).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
