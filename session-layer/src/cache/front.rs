//! A per-thread, direct-mapped front of a few slots that answers repeated tokens without
//! touching moka. A slot is trusted only while no removal has happened in its cache since it was
//! filled (the cache's removal generation) and while its entry is fresh.
//!
//! A token that hits its slot a second time gets a copy of its entry of this thread's own, so
//! that the reference count a hit takes is not one that other cores write too: with many
//! connections carrying one token, a shared count would bounce between cores on every request.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

use super::entry::SessionEntry;
use crate::token::TokenHash;

const SLOTS: usize = 8;

struct Slot {
    cache_id: u64,
    generation: u64,
    hash: TokenHash,
    /// A `SessionEntry<U>` of the cache `cache_id` (one thread serves caches of several user id
    /// types, and a thread-local cannot be generic).
    entry: Arc<dyn Any + Send + Sync>,
    /// Whether `entry` is this thread's own copy.
    private: bool,
}

thread_local! {
    static RECENT_ENTRIES: RefCell<[Option<Slot>; SLOTS]> =
        const { RefCell::new([const { None }; SLOTS]) };
}

fn slot_of(hash: &TokenHash) -> usize {
    usize::from(hash.as_bytes()[0]) % SLOTS
}

/// The entry this thread last saw for `hash` in cache `cache_id`, if nothing was removed from
/// that cache since (`generation`) and `fresh` accepts it.
pub(super) fn get<U: Clone + Send + Sync + 'static>(
    cache_id: u64,
    generation: u64,
    hash: &TokenHash,
    fresh: impl Fn(&SessionEntry<U>) -> bool,
) -> Option<Arc<SessionEntry<U>>> {
    RECENT_ENTRIES.with_borrow_mut(|slots| match &mut slots[slot_of(hash)] {
        Some(slot)
            if slot.cache_id == cache_id && slot.generation == generation && slot.hash == *hash =>
        {
            let entry = (*slot.entry).downcast_ref::<SessionEntry<U>>()?;
            if !fresh(entry) {
                return None;
            }
            if !slot.private {
                let own: Arc<SessionEntry<U>> = Arc::new(entry.clone());
                slot.entry = own;
                slot.private = true;
            }
            Arc::clone(&slot.entry).downcast::<SessionEntry<U>>().ok()
        }
        _ => None,
    })
}

/// Remembers `entry`, read from cache `cache_id` at removal generation `generation`.
pub(super) fn put<U: Send + Sync + 'static>(
    cache_id: u64,
    generation: u64,
    entry: &Arc<SessionEntry<U>>,
) {
    RECENT_ENTRIES.with_borrow_mut(|slots| {
        slots[slot_of(&entry.token_hash)] = Some(Slot {
            cache_id,
            generation,
            hash: entry.token_hash,
            entry: Arc::clone(entry) as Arc<dyn Any + Send + Sync>,
            private: false,
        });
    });
}
