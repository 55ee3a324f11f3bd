//! How the process uses the heap. Busy transfers reuse freed message buffers instead
//! of mapping fresh zeroed pages for each; when a folder goes idle, freed memory goes
//! back to the operating system (a first load and scan allocate and free millions of
//! small blocks, and glibc would otherwise keep those pages at their start-up peak).

/// Allocations up to this size come from the heap, not a fresh mapping of their own.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of the heap kept for reuse while busy.
const TRIM_THRESHOLD: i32 = 128 << 20;

/// Makes glibc reuse freed megabyte-sized buffers (chunk messages, compressed bodies)
/// instead of unmapping them and faulting in zeroed pages for the next one, which cost
/// a fifth of a receiver's CPU in the bulk benchmark. Idle memory is still returned by
/// [`release_free_memory`]. A no-op elsewhere than glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocator parameters; called before any thread
    // starts, it has no preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Returns free heap pages to the kernel (glibc `malloc_trim`); a no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim and mallinfo2 only walk glibc's own arenas; they have no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let m = libc::mallinfo2();
            tracing::debug!(
                in_use = m.uordblks,
                free = m.fordblks,
                mapped = m.hblkhd,
                "heap after release"
            );
        }
    }
}
