//! glibc's allocator, bounded for long-running services.
//!
//! glibc gives each thread that meets contention an arena of its own, up to eight per core,
//! and an arena keeps what was freed in it for reuse. A service's threads (tokio workers,
//! librdkafka's, sqlx-sqlite's) each come to hold their own high-water mark of freed memory,
//! so fewer arenas lower the peak at the same throughput. Trimming returns the free pages of
//! every arena to the kernel every second, rather than whenever the top of one heap happens
//! to be free: a batch of thousands of events frees megabytes at once, and trimming often
//! lowers the mean for a cost far below a batch's. Measurements: benches/REPORT.md.

use std::time::Duration;

/// How many arenas a service's allocations share, unless `MALLOC_ARENA_MAX` says otherwise.
const ARENAS: i32 = 2;

/// How often free memory is handed back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Caps glibc's arenas. Call it first thing in `main`, before any thread starts: threads
/// pick their arena on their first allocation.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called before the
    // service starts any thread of its own, and M_ARENA_MAX only bounds arenas made later.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns free memory to the kernel every second, for as long as the task runs.
pub async fn trim_forever() {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        trim();
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes glibc's arena locks itself; it frees nothing in use.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
