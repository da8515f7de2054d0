//! Money as integers: spend is counted in nano-dollars so that sums are exact
//! under any number of concurrent charges, in process and in Redis alike.

/// An amount of US dollars in units of 10⁻⁹ USD.
pub type Nanos = i64;

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// Dollars to nano-dollars, rounded to the nearest unit (saturating: an
/// infinite amount is the largest one, so that a reservation is never
/// smaller than what it bounds; NaN is zero).
pub fn from_usd(usd: f64) -> Nanos {
    if usd.is_nan() {
        return 0;
    }
    // `as` saturates at the bounds, infinities included.
    (usd * NANOS_PER_USD).round() as Nanos
}

/// Nano-dollars to dollars.
pub fn to_usd(nanos: Nanos) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// The exact decimal dollar value of `nanos`, e.g. `0.000012500`.
pub fn format_usd(nanos: Nanos) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_round_trip_exactly() {
        assert_eq!(from_usd(0.0000005), 500);
        assert_eq!(from_usd(1.5), 1_500_000_000);
        assert_eq!(format_usd(1_500_000_123), "1.500000123");
        assert_eq!(format_usd(-5), "-0.000000005");
        assert_eq!(format_usd(0), "0.000000000");
        assert!((to_usd(2_000_000_000) - 2.0).abs() < 1e-12);
        assert_eq!(from_usd(f64::NAN), 0);
        assert_eq!(from_usd(f64::INFINITY), Nanos::MAX);
        assert_eq!(from_usd(1e300), Nanos::MAX);
    }
}
