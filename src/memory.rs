//! Process-wide memory settings, applied by `readtrack serve` and by the benches (so they
//! measure what runs).

/// Turns transparent huge pages off for this process. mimalloc (the default allocator) backs
/// each thread's heap with 2 MiB huge pages when the kernel allows them, which nearly tripled the
/// RSS of a small store (100k messages: 62 MiB with them, 28 MiB without) and made nothing
/// measurably faster (docs/performance.md). Applies to existing mappings from their next fault.
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not turn transparent huge pages off"
            );
        }
    }
}
