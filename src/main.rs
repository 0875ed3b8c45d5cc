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

unsafe extern "C" {
    /// mimalloc's option setter (the `mimalloc` crate links the library; its binding sits
    /// behind a feature this binary does not need otherwise).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps freed memory for reuse instead of handing it back to the kernel at once, for
/// both allocators in the process. Output flows through the threads of a job (a journey
/// is rendered on a shard, freed by the publisher), so freed memory is soon needed again:
/// returning it made the kernel zero the same amount again (journey benchmark, paired
/// runs: 7–12% less wall time with both settings, 5–13% more peak RSS).
/// - mimalloc (Rust's allocations): purge freed pages after 10 s unused, not 1 s.
/// - glibc (RocksDB's C++ allocations): a checkpoint's write batch is tens of MB, beyond
///   the largest size glibc would otherwise serve from its heap rather than a fresh
///   mapping; serving it from the heap, and not trimming the heap, reuses its pages.
///
/// And no transparent huge pages for this process (mimalloc asks for them on its arenas):
/// the first touch of a huge page zeroes and maps all 2 MiB of it, however little is used.
/// On the journey benchmark, zeroing huge pages was 12% of the CPU samples, and 3 s into
/// a run 372 of the process's 456 MiB were huge pages. Without them, in 23 paired runs:
/// peak RSS median 518 MiB instead of 583 (−11%), wall time ratio median 1.03 (0.88–1.18);
/// the kernel's time went down (1.0–1.2 s instead of 1.8–2.0 in 4 of 5 pairs timed for
/// it), the user time up (7.6–8.6 s instead of 7.5–7.8: more TLB misses). A few percent
/// of speed, within the machine's noise, for a ninth of the memory.
fn tune_allocators() {
    // SAFETY: these calls only set allocator and memory options, before any other thread
    // exists; mallopt and prctl reject values they do not support (their result is then
    // irrelevant: the options only save time and memory).
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, 10_000);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
