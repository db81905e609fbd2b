//! Per-thread stripes: which of a fixed set of stripes the calling thread writes, so that what every check updates (counters, a histogram, a cache's hot layer) is split over cores instead of shared by them; owns no data of its own.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many stripes a striped structure has: a power of two. Threads take stripes in turn, so up
/// to this many threads each write a stripe of their own, and more share them evenly.
pub const STRIPES: usize = 16;

/// A value alone on its cache lines: 128 bytes, since adjacent-line prefetchers fetch 64-byte
/// lines in pairs. Stripes written by different cores then never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The stripe the next thread to ask is given.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, given on its first call to [`current`].
    static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The calling thread's stripe, in `0..STRIPES`: given once per thread, round-robin.
pub fn current() -> usize {
    STRIPE.with(|stripe| {
        stripe.get().unwrap_or_else(|| {
            let given = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(Some(given));
            given
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_stripe_and_threads_take_stripes_in_turn() {
        let mine = current();
        assert_eq!(current(), mine, "a thread's stripe never changes");
        let others: Vec<usize> =
            (0..STRIPES).map(|_| std::thread::spawn(current).join().unwrap_or(usize::MAX)).collect();
        assert!(others.iter().all(|&stripe| stripe < STRIPES), "{others:?}");
        let mut distinct = others.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // Tests of this binary on other threads may take turns in between, but never so many
        // that STRIPES threads in a row land on fewer than half the stripes.
        assert!(distinct.len() >= STRIPES / 2, "threads started one after another share stripes: {others:?}");
    }

    #[test]
    fn a_padded_value_has_its_own_cache_lines() {
        assert_eq!(std::mem::align_of::<CachePadded<u64>>(), 128);
        assert_eq!(std::mem::size_of::<[CachePadded<u64>; 2]>(), 256);
    }
}
