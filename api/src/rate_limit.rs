//! Per-user token buckets, checked before the gate so that a user hammering
//! the issue endpoint spends no stock. The buckets live in this process: with
//! N instances behind a balancer a user gets up to N times the rate.

use std::num::NonZeroU32;
use std::time::Duration;

use common::ids::UserId;
use common::settings::TokenBucket;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

#[derive(Debug)]
pub struct UserRateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<UserId>>,
}

impl UserRateLimiter {
    pub fn new(bucket: &TokenBucket) -> Self {
        let limiter = bucket.enabled.then(|| {
            let per_second = NonZeroU32::new(bucket.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(bucket.burst).unwrap_or(per_second);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Self { limiter }
    }

    pub fn enabled(&self) -> bool {
        self.limiter.is_some()
    }

    /// `Err(wait)` when the user must wait before the next request.
    pub fn check(&self, user: &UserId) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets users whose buckets are full again, so memory stays bounded
    /// by the users of the last few seconds. Called periodically.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn a_user_gets_the_burst_then_waits_and_others_are_unaffected() {
        let limiter = UserRateLimiter::new(&TokenBucket {
            enabled: true,
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(limiter.check(&user("a")).is_ok());
        }
        let wait = limiter.check(&user("a")).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check(&user("b")).is_ok());
    }

    #[test]
    fn a_disabled_limiter_lets_everything_through() {
        let limiter = UserRateLimiter::new(&TokenBucket {
            enabled: false,
            per_second: 1,
            burst: 1,
        });
        for _ in 0..100 {
            assert!(limiter.check(&user("a")).is_ok());
        }
    }
}
