//! Gives memory that the process has freed back to the operating system. A folder's
//! first load and scan allocate and free millions of small blocks (records, scanned
//! paths); glibc keeps the freed pages mapped, so without this a node's resident size
//! stays at its start-up peak.

/// Returns free heap pages to the kernel (glibc `malloc_trim`); a no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
