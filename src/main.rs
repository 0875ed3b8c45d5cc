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

/// Sets how the process's memory is kept and reused.
/// - No transparent huge pages (mimalloc asks for them on its arenas): the first touch of
///   a huge page zeroes and maps all 2 MiB of it, however little is used. On the journey
///   benchmark, zeroing huge pages was 12% of the CPU samples, and 3 s into a run 372 of
///   the process's 456 MiB were huge pages. Without them, in 23 paired runs: peak RSS
///   median 518 MiB instead of 583 (−11%), wall time ratio median 1.03 (0.88–1.18); the
///   kernel's time went down (1.0–1.2 s instead of 1.8–2.0 in 4 of 5 pairs timed for it),
///   the user time up (7.6–8.6 s instead of 7.5–7.8: more TLB misses).
/// - mimalloc (Rust's allocations) keeps its default: freed pages go back to the kernel
///   after 1 s unused. Keeping them 10 s instead, measured with huge pages and together
///   with the glibc settings below, had saved 7–12% of the wall time; without huge pages
///   it saves nothing (16 paired runs: wall time ratio median 1.007, 0.90–1.12) and holds
///   20 MiB more at the peak (median 524 against 504 MiB).
/// - glibc (RocksDB's C++ allocations): a checkpoint's write batch is tens of MB, beyond
///   the largest size glibc would otherwise serve from its heap rather than a fresh
///   mapping; serving it from the heap, and not trimming the heap, reuses its pages
///   instead of having the kernel zero new ones.
///
/// The first two together, against huge pages and a 10 s purge delay (8 paired runs):
/// peak RSS median 509 MiB against 586, wall time ratio median 0.998.
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
