//! Time, injected. Domain code asks a [`Clock`] for "now" and never calls `SystemTime::now()`
//! itself, so tests can move time without sleeping (ARCHITECTURE.md, invariant 6). Also owns the one
//! formatter from unix milliseconds to RFC 3339 text used in API responses.
//!
//! Must not: read configuration or know about HTTP. The test control endpoint lives in `api`
//! and only exists with the `test-clock` feature, which release builds refuse.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(all(feature = "test-clock", not(debug_assertions)))]
compile_error!("the `test-clock` feature lets anyone with an API key move time; it is refused in release builds");

/// A source of wall-clock time in unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;

    /// Unix seconds, fractional part dropped.
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// Shared handle; cheap to clone.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

/// The operating system's time in unix ms (for what must not follow the test clock).
pub fn system_now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        // A clock past the year 292 million would overflow; saturate rather than wrap.
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The system clock plus an adjustable offset: time keeps flowing, and tests can jump it.
/// Used by the server when built with `test-clock`, and by unit tests.
#[derive(Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    pub fn advance_ms(&self, delta: i64) {
        self.offset_ms.fetch_add(delta, Ordering::SeqCst);
    }

    pub fn set_ms(&self, target: i64) {
        self.offset_ms.store(target.saturating_sub(system_now_ms()), Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        system_now_ms().saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// A clock that only moves when told to. For unit tests.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// `2026-11-29T00:00:00.000Z` from unix milliseconds (proleptic Gregorian, UTC).
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, min, sec) = (sod / 3600, (sod % 3600) / 60, sod % 60);
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{sec:02}.{ms:03}Z");
    }
    // Digits into a fixed buffer: every token and listing formats one, and `format!` cost ~1 µs.
    let mut b = *b"0000-00-00T00:00:00.000Z";
    for (at, width, mut n) in [(0, 4, y), (5, 2, m), (8, 2, d), (11, 2, h), (14, 2, min), (17, 2, sec), (20, 3, ms)] {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    b.iter().map(|&c| char::from(c)).collect()
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_596_819_600_000), "2020-08-07T17:00:00.000Z");
        assert_eq!(rfc3339_ms(1_893_456_000_123), "2030-01-01T00:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn offset_clock_moves() {
        let c = OffsetClock::default();
        let before = c.now_ms();
        c.advance_ms(3_600_000);
        assert!(c.now_ms() >= before + 3_600_000);
        c.set_ms(1_000);
        assert!((c.now_ms() - 1_000).abs() < 1_000);
    }
}
