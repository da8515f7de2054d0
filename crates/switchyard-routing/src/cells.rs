//! Lock-free cells behind [`LiveStats`](crate::LiveStats): an average and a
//! per-minute counter, each in one `AtomicU64` updated with compare-and-swap.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Length of a usage window: rpm and tpm are counted per minute.
const WINDOW_MS: u64 = 60_000;

/// Bit pattern of an average that has no sample yet (a NaN arithmetic never produces).
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// The average in `cell`, or `None` before its first sample.
pub(crate) fn read_ewma(cell: &AtomicU64) -> Option<f64> {
    match cell.load(Relaxed) {
        UNKNOWN => None,
        bits => Some(f64::from_bits(bits)),
    }
}

/// Folds `sample` into the average in `cell` with a compare-and-swap loop;
/// the first sample becomes the average.
pub(crate) fn update_ewma(cell: &AtomicU64, sample: f64, alpha: f64) {
    let mut current = cell.load(Relaxed);
    loop {
        let next = match current {
            UNKNOWN => sample,
            bits => {
                let old = f64::from_bits(bits);
                old + alpha * (sample - old)
            }
        };
        match cell.compare_exchange_weak(current, next.to_bits(), Relaxed, Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

pub(crate) fn minute_of(now_ms: u64) -> u64 {
    (now_ms / WINDOW_MS).min(u64::from(u32::MAX))
}

fn unpack(bits: u64) -> (u64, u64) {
    (bits >> 32, bits & u64::from(u32::MAX))
}

/// Counts in a window are read as zero once the window's minute has passed. A
/// reader whose clock is behind the window sees the newer window's count.
pub(crate) fn read_window(cell: &AtomicU64, now_ms: u64) -> u64 {
    let (minute, count) = unpack(cell.load(Relaxed));
    if minute >= minute_of(now_ms) { count } else { 0 }
}

/// Adds `delta` to the window in `cell`, starting a new window when the minute
/// has changed. The minute and the count share one atomic, so a rollover and
/// a concurrent add cannot lose each other. A writer whose clock is behind the
/// window adds to the newer window rather than losing its count.
pub(crate) fn add_to_window(cell: &AtomicU64, delta: i64, now_ms: u64) {
    let now_minute = minute_of(now_ms);
    let mut current = cell.load(Relaxed);
    loop {
        let (minute, count) = unpack(current);
        let (minute, base) = if minute >= now_minute {
            (minute, count)
        } else {
            (now_minute, 0)
        };
        let count = i64::try_from(base)
            .unwrap_or(i64::MAX)
            .saturating_add(delta)
            .clamp(0, i64::from(u32::MAX));
        let next = (minute << 32) | u64::try_from(count).unwrap_or(0);
        match cell.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}
