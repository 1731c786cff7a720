//! Guard against a broker that skips offsets: Tansu only, off by default.
//!
//! The issue topic is neither compacted nor transactional, so on Apache Kafka
//! its offsets are contiguous and the guard has nothing to do; with
//! `worker.gap_patience_ms = 0` (the default) it accepts every message and
//! never seeks. Where a real topic has gaps (transaction markers, compaction,
//! records deleted below the log start) nothing is skipped either way: the
//! guard only ever delays a message, never drops it for good.
//!
//! Tansu 0.6's memory storage (`--broker tansu-memory`, which sets the patience)
//! breaks contiguity under concurrent produces:
//! it advances a partition's high watermark before it writes the batch, and a
//! fetch that lands in between lists only the batches already written, so it
//! returns a later batch and the consumer's position jumps over the one being
//! written. Those messages would never be read, and an `accepted` coupon would
//! have no row (docs/ARCHITECTURE.md, The local broker).
//!
//! So the worker checks every message against the offset it expects. A jump
//! drops the message and seeks the partition back to the expected offset; the
//! batch is there a moment later. A gap that stays for `patience` is real (a
//! compacted or transactional topic on some other deployment) and is
//! accepted, logged and counted. Redeliveries (an offset below the expected
//! one) pass: the database deduplicates them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// In order (or a redelivery): process it.
    Accept,
    /// It follows a gap: drop it; seek the partition back to `seek_to` if set
    /// (at most once per `retry`, so a full prefetch queue is not re-sought
    /// message by message).
    Drop { seek_to: Option<i64> },
    /// The gap from `expected` did not fill within the patience: accept it.
    GapAccepted { expected: i64 },
}

#[derive(Debug)]
struct Gap {
    since: Instant,
    last_seek: Instant,
}

/// The next expected offset per partition of the current assignment.
#[derive(Debug)]
pub struct GapGuard {
    next: HashMap<i32, i64>,
    gaps: HashMap<i32, Gap>,
    patience: Duration,
    retry: Duration,
}

impl GapGuard {
    pub fn new(patience: Duration) -> Self {
        Self {
            next: HashMap::new(),
            gaps: HashMap::new(),
            patience,
            retry: Duration::from_millis(5),
        }
    }

    /// Forgets every position: after a rebalance or a seek elsewhere, the
    /// first message of a partition sets its expectation again.
    pub fn reset(&mut self) {
        self.next.clear();
        self.gaps.clear();
    }

    /// Whether the guard checks anything (a patience of zero turns it off).
    pub fn enabled(&self) -> bool {
        !self.patience.is_zero()
    }

    pub fn observe(&mut self, partition: i32, offset: i64, now: Instant) -> Verdict {
        if !self.enabled() {
            return Verdict::Accept;
        }
        let expected = match self.next.get(&partition) {
            Some(&expected) if offset > expected => expected,
            Some(&expected) => {
                self.gaps.remove(&partition);
                self.next.insert(partition, expected.max(offset + 1));
                return Verdict::Accept;
            }
            None => {
                self.next.insert(partition, offset + 1);
                return Verdict::Accept;
            }
        };
        match self.gaps.get_mut(&partition) {
            None => {
                self.gaps.insert(
                    partition,
                    Gap {
                        since: now,
                        last_seek: now,
                    },
                );
                Verdict::Drop {
                    seek_to: Some(expected),
                }
            }
            Some(gap) if now.duration_since(gap.since) >= self.patience => {
                self.gaps.remove(&partition);
                self.next.insert(partition, offset + 1);
                Verdict::GapAccepted { expected }
            }
            Some(gap) if now.duration_since(gap.last_seek) >= self.retry => {
                gap.last_seek = now;
                Verdict::Drop {
                    seek_to: Some(expected),
                }
            }
            Some(_) => Verdict::Drop { seek_to: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> GapGuard {
        GapGuard::new(Duration::from_secs(1))
    }

    #[test]
    fn contiguous_offsets_and_redeliveries_pass() {
        let mut g = guard();
        let t = Instant::now();
        assert_eq!(g.observe(0, 10, t), Verdict::Accept);
        assert_eq!(g.observe(0, 11, t), Verdict::Accept);
        assert_eq!(g.observe(1, 500, t), Verdict::Accept);
        // A redelivery of an earlier offset is left to the database.
        assert_eq!(g.observe(0, 5, t), Verdict::Accept);
        assert_eq!(g.observe(0, 12, t), Verdict::Accept);
    }

    #[test]
    fn a_jump_is_dropped_and_re_read_from_the_expected_offset() {
        let mut g = guard();
        let t = Instant::now();
        g.observe(3, 100, t);
        assert_eq!(g.observe(3, 103, t), Verdict::Drop { seek_to: Some(101) });
        // The rest of the prefetched messages are dropped without a new seek...
        assert_eq!(g.observe(3, 104, t), Verdict::Drop { seek_to: None });
        // ...until the retry interval has passed.
        let later = t + Duration::from_millis(10);
        assert_eq!(
            g.observe(3, 104, later),
            Verdict::Drop { seek_to: Some(101) }
        );
        // The missing batch arrives: in order again.
        assert_eq!(g.observe(3, 101, later), Verdict::Accept);
        assert_eq!(g.observe(3, 102, later), Verdict::Accept);
        assert_eq!(g.observe(3, 103, later), Verdict::Accept);
    }

    #[test]
    fn a_gap_that_stays_is_accepted_after_the_patience() {
        let mut g = guard();
        let t = Instant::now();
        g.observe(0, 0, t);
        assert!(matches!(g.observe(0, 5, t), Verdict::Drop { .. }));
        assert_eq!(
            g.observe(0, 5, t + Duration::from_secs(2)),
            Verdict::GapAccepted { expected: 1 }
        );
        assert_eq!(g.observe(0, 6, t), Verdict::Accept);
    }

    #[test]
    fn a_zero_patience_turns_the_guard_off() {
        let mut g = GapGuard::new(Duration::ZERO);
        let t = Instant::now();
        assert!(!g.enabled());
        assert_eq!(g.observe(0, 0, t), Verdict::Accept);
        // A real gap (a transaction marker, compaction) passes at once.
        assert_eq!(g.observe(0, 7, t), Verdict::Accept);
        assert_eq!(g.observe(0, 8, t), Verdict::Accept);
    }

    #[test]
    fn reset_forgets_positions() {
        let mut g = guard();
        let t = Instant::now();
        g.observe(0, 0, t);
        g.reset();
        assert_eq!(g.observe(0, 50, t), Verdict::Accept);
    }
}
