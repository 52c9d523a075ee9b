//! What to do after a failed attempt: Daily's two retry types.
//! `circuit-breaker`: the head event is tried at once, then after 1 s and 5 s; the third
//! consecutive failure marks the webhook `FAILED`. `exponential`: 5 s, 5 min, 30 min, 2 h, 5 h,
//! 10 h, then every 10 h (±10% jitter), until the failure window (5 days) runs out.
//! A receiver's `Retry-After` (seconds) lengthens a wait, up to [`RETRY_AFTER_CAP`]; it never
//! shortens one.

use std::time::Duration;

/// Consecutive failures before a circuit-breaker webhook is `FAILED`.
pub const BREAKER_FAILURES: u32 = 3;
/// How long an exponential webhook keeps trying.
pub const FAILURE_WINDOW_MS: i64 = 5 * 24 * 3600 * 1000;
/// The longest wait a receiver's `Retry-After` can ask for: a receiver cannot park its
/// webhook for days (an update through the API resumes it at once anyway).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    RetryAfter(Duration),
    GiveUp,
}

/// `failures`: consecutive failures including this one; `failing_for_ms`: since the first.
pub fn after_failure(retry_type: &str, failures: u32, failing_for_ms: i64, retry_after: Option<Duration>) -> Decision {
    let base = if retry_type == "exponential" {
        if failing_for_ms >= FAILURE_WINDOW_MS {
            return Decision::GiveUp;
        }
        const STEPS: [u64; 6] = [5, 300, 1800, 7200, 18_000, 36_000];
        let secs = STEPS[usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX).min(STEPS.len() - 1)];
        let jitter = rand::random_range(0.9..1.1);
        Duration::from_secs_f64(secs as f64 * jitter)
    } else {
        match failures {
            0 | 1 => Duration::from_secs(1),
            n if n < BREAKER_FAILURES => Duration::from_secs(5),
            _ => return Decision::GiveUp,
        }
    };
    Decision::RetryAfter(retry_after.map_or(base, |r| r.min(RETRY_AFTER_CAP).max(base)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_breaker() {
        assert_eq!(after_failure("circuit-breaker", 1, 0, None), Decision::RetryAfter(Duration::from_secs(1)));
        assert_eq!(after_failure("circuit-breaker", 2, 0, None), Decision::RetryAfter(Duration::from_secs(5)));
        assert_eq!(after_failure("circuit-breaker", 3, 0, None), Decision::GiveUp);
    }

    #[test]
    fn exponential_backs_off_until_the_window_ends() {
        let Decision::RetryAfter(d) = after_failure("exponential", 2, 0, None) else { panic!() };
        assert!((270..=330).contains(&d.as_secs()), "{d:?}");
        let Decision::RetryAfter(d) = after_failure("exponential", 40, 0, None) else { panic!() };
        assert!(d.as_secs() >= 32_000);
        assert_eq!(after_failure("exponential", 2, FAILURE_WINDOW_MS, None), Decision::GiveUp);
        let Decision::RetryAfter(d) = after_failure("exponential", 1, 0, Some(Duration::from_secs(60))) else {
            panic!()
        };
        assert_eq!(d, Duration::from_secs(60), "Retry-After is honoured when longer");
        let asked = Some(Duration::from_secs(999_999_999));
        assert_eq!(
            after_failure("circuit-breaker", 1, 0, asked),
            Decision::RetryAfter(RETRY_AFTER_CAP),
            "up to the cap"
        );
    }
}
