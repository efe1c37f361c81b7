//! Each connection's share of the server's memory pool: a statement may hold at most half
//! of `memory_limit_mb`, so that one statement that cannot spill (a large hash join) fails
//! alone with `53200` instead of starving every other query.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// One connection's view of the shared pool, with its own cap.
#[derive(Debug)]
pub struct ConnectionShare {
    shared: Arc<dyn MemoryPool>,
    cap: usize,
    used: AtomicUsize,
}

impl ConnectionShare {
    /// A share of `shared` of at most half its limit; `None` when it has no limit.
    pub fn of(shared: &Arc<dyn MemoryPool>) -> Option<Self> {
        match shared.memory_limit() {
            MemoryLimit::Finite(limit) => Some(ConnectionShare {
                shared: Arc::clone(shared),
                cap: limit / 2,
                used: AtomicUsize::new(0),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for ConnectionShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connection share of at most {} bytes of {}",
            self.cap, self.shared
        )
    }
}

impl MemoryPool for ConnectionShare {
    fn name(&self) -> &str {
        "connection share"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.shared.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used + additional > self.cap {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "this statement needs more than its share of the server's memory: {} MB held, \
                 {} MB more asked for {}, at most {} MB (half of memory_limit_mb) per statement",
                used >> 20,
                additional.div_ceil(1 << 20),
                reservation.consumer().name(),
                self.cap >> 20
            )));
        }
        self.shared.try_grow(reservation, additional)?;
        self.used.fetch_add(additional, Ordering::Relaxed);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::FairSpillPool;

    #[test]
    fn one_connection_cannot_take_more_than_half_and_others_still_can_grow() {
        let shared: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(1000));
        let a = Arc::new(ConnectionShare::of(&shared).unwrap()) as Arc<dyn MemoryPool>;
        let b = Arc::new(ConnectionShare::of(&shared).unwrap()) as Arc<dyn MemoryPool>;
        let hog = MemoryConsumer::new("hog").register(&a);
        hog.try_grow(500).unwrap();
        let error = hog.try_grow(1).unwrap_err().to_string();
        assert!(error.contains("share"), "{error}");
        let other = MemoryConsumer::new("other").register(&b);
        other.try_grow(400).unwrap();
        drop(hog);
        assert_eq!(a.reserved(), 0);
        assert_eq!(shared.reserved(), 400);
    }
}
