//! Memory per cached session: a counting allocator around the system one, switched on only by
//! the `memory` subcommand (a child process), so the servers pay one untaken branch per call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use session_layer::{MemoryStore, NewSession, SessionConfig, SessionManager};
use uuid::Uuid;

pub struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

fn count(delta: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
    }
}

fn size(layout: Layout) -> i64 {
    i64::try_from(layout.size()).unwrap_or(i64::MAX)
}

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(size(layout));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-size(layout));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(size(layout));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(i64::try_from(new_size).unwrap_or(i64::MAX) - size(layout));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Fills the cache with `sessions` sessions and prints `key=value` lines for the parent.
pub fn run(sessions: u64) {
    COUNTING.store(true, Ordering::Relaxed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let config = SessionConfig::builder()
            .cache_capacity(sessions)
            .cache_ttl(Duration::from_secs(3600))
            .max_sessions_per_user(None)
            .build()
            .expect("config");
        let manager = SessionManager::new(MemoryStore::new(), config).expect("manager");
        let mut tokens = Vec::with_capacity(usize::try_from(sessions).expect("count"));
        for _ in 0..sessions {
            // A realistic row: a browser user agent (device parsed) and an address.
            let new = NewSession::new(Uuid::now_v7())
                .user_agent(Some(
                    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
                ))
                .ip_address(Some("203.0.113.7".parse().expect("ip")));
            let (token, _) = manager.create(new).await.expect("create").into_parts();
            tokens.push(token.expose());
        }
        manager.sync_cache().await;
        let (bytes_before, rss_before) = (LIVE_BYTES.load(Ordering::Relaxed), rss_kib());
        for token in &tokens {
            assert!(manager.validate(token).await.expect("validate").is_some());
        }
        manager.sync_cache().await;
        let (bytes_after, rss_after) = (LIVE_BYTES.load(Ordering::Relaxed), rss_kib());
        let cached = manager.cached_sessions();
        println!("cached={cached}");
        println!("heap_bytes={}", bytes_after - bytes_before);
        println!("rss_before_kib={rss_before}");
        println!("rss_after_kib={rss_after}");
    });
}
