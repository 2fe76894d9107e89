//! Independent pieces of work spread over the CPU threads, each worker in its own rayon pool.
//!
//! drmguard's networks are small: one search or one training keeps two threads of the flex
//! backend partly idle, so two at once on one thread each finish sooner than one after the other
//! on two threads each (docs/perf.md). Results come back in the items' order whatever the
//! finishing order, so what a run computes does not depend on how many threads it had.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// `work(i)` for every `i` in `0..count`, on `workers` threads at once (at most `count`), each
/// with its own rayon pool and its share of the current pool's threads; with one worker, in
/// order on the calling thread. No item starts after one has failed; the error returned is the
/// first in the items' order.
pub fn map_in_pools<T: Send>(count: usize, workers: usize, work: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let workers = workers.min(count).max(1);
    if workers == 1 {
        return (0..count).map(work).collect();
    }
    let threads = (rayon::current_num_threads() / workers).max(1);
    let pools = (0..workers)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(threads).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Threads(e.to_string()))?;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<T>>>> = (0..count).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for pool in &pools {
            let (next, failed, slots, work) = (&next, &failed, &slots, &work);
            scope.spawn(move || {
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        break;
                    }
                    let outcome = pool.install(|| work(i));
                    if outcome.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    *slots[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(outcome);
                }
            });
        }
    });
    // Items never started after a failure are simply absent; the first error in order wins.
    slots.into_iter().filter_map(|slot| slot.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner())).collect()
}

/// Workers for `count` independent items here: one per item where the current rayon pool has
/// two threads or more, even with more items than threads, since a worker left alone with the
/// last item leaves the other threads idle (three searches on two cores: 180 s one after the
/// other on two threads, 180 s on two workers, 139 s on three); one, in order, in a one-thread
/// pool (one of the benchmark's jobs, whose neighbours use the other threads).
pub fn workers_for(count: usize) -> usize {
    if rayon::current_num_threads() >= 2 { count.max(1) } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_on_any_number_of_workers() {
        for workers in [1, 2, 3, 8] {
            let out = map_in_pools(5, workers, |i| Ok(i * i)).unwrap();
            assert_eq!(out, vec![0, 1, 4, 9, 16], "{workers} workers");
        }
        assert!(map_in_pools(0, 2, |i| Ok(i)).unwrap().is_empty());
    }

    #[test]
    fn the_first_error_in_order_is_returned() {
        for workers in [1, 2] {
            let err = map_in_pools(6, workers, |i| if i >= 2 { Err(Error::Numerical(format!("item {i}"))) } else { Ok(i) }).unwrap_err();
            assert_eq!(err.to_string(), Error::Numerical("item 2".into()).to_string(), "{workers} workers");
        }
    }

    #[test]
    fn each_worker_gets_its_share_of_the_threads() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let seen = pool.install(|| map_in_pools(2, 2, |_| Ok(rayon::current_num_threads())).unwrap());
        assert_eq!(seen, vec![2, 2]);
        assert_eq!(pool.install(|| workers_for(3)), 3);
        let pair = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        assert_eq!(pair.install(|| (workers_for(3), map_in_pools(3, 3, |_| Ok(rayon::current_num_threads())).unwrap())), (3, vec![1, 1, 1]));
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(single.install(|| workers_for(3)), 1);
    }
}
