//! The memory budget for request bodies: every body nats-api holds is counted against
//! one global budget, reserved before the body is read, so that many honest clients at
//! once get `503` and `Retry-After` instead of growing the process until it is killed.

use std::sync::Arc;

use nomnom_runtime::defaults;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Permits are KiB: a semaphore counts in `u32`.
const UNIT: usize = 1024;

/// Bytes of request bodies that may be held at once.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes of the budget held for one request; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    bytes: usize,
    budget: BodyBudget,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // The permit goes back after this: count the budget without it.
        let in_use = self.budget.in_use_bytes().saturating_sub(self.bytes);
        metrics::gauge!("ingest_body_budget_in_use_bytes").set(in_use as f64);
    }
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let total_units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    pub fn total_bytes(&self) -> usize {
        self.total_units as usize * UNIT
    }

    /// Bytes reserved by requests now.
    pub fn in_use_bytes(&self) -> usize {
        (self.total_units as usize - self.permits.available_permits()) * UNIT
    }

    /// Reserves `bytes` now, or refuses: the request gets `503` and `Retry-After` before
    /// any of its body is read. A reservation larger than the whole budget is cut to it,
    /// so such a request runs when it is alone.
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation, ApiError> {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total_units);
        let permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(units)
            .map_err(|_| {
                metrics::counter!("ingest_body_budget_refusals_total").increment(1);
                ApiError::Busy(format!(
                    "nats-api holds as many request bodies as its memory budget allows ({}, NOMNOM_BODY_BUDGET_BYTES)",
                    readable(self.total_bytes())
                ))
            })?;
        let reservation = Reservation {
            permit,
            bytes: units as usize * UNIT,
            budget: self.clone(),
        };
        metrics::gauge!("ingest_body_budget_in_use_bytes").set(self.in_use_bytes() as f64);
        Ok(reservation)
    }

    /// Grows `reservation` to at least `bytes` (a body of unknown length, as it comes),
    /// or refuses as [`BodyBudget::try_reserve`] does.
    pub fn grow(&self, reservation: &mut Reservation, bytes: usize) -> Result<(), ApiError> {
        if bytes <= reservation.bytes {
            return Ok(());
        }
        let mut more = self.try_reserve(bytes - reservation.bytes)?;
        let units = more.permit.num_permits();
        reservation.bytes += more.bytes;
        reservation
            .permit
            .merge(more.permit.split(units).expect("its own permits"));
        more.bytes = 0;
        Ok(())
    }
}

/// `n` bytes in MiB, or KiB below one MiB.
fn readable(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{} MiB", n / (1024 * 1024))
    } else {
        format!("{} KiB", n / 1024)
    }
}

/// The default budget: half the container's memory limit (cgroup v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), or [`defaults::API_BODY_BUDGET_BYTES`] where none is set.
pub fn default_budget_bytes() -> usize {
    memory_limit_bytes()
        .map(|limit| (limit / 2).max(defaults::API_MIN_BODY_BUDGET_BYTES))
        .unwrap_or(defaults::API_BODY_BUDGET_BYTES)
}

fn memory_limit_bytes() -> Option<usize> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| parse_limit(&std::fs::read_to_string(path).ok()?))
}

/// A cgroup limit file's value; `max` (v2) and v1's huge "unlimited" are no limit.
fn parse_limit(text: &str) -> Option<usize> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 50).then_some(value as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_against_the_budget_and_come_back() {
        let budget = BodyBudget::new(10 * UNIT);
        let a = budget.try_reserve(6 * UNIT).unwrap();
        assert_eq!(budget.in_use_bytes(), 6 * UNIT);
        let refused = budget.try_reserve(5 * UNIT).unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.to_string().contains("memory budget"), "{refused}");
        let b = budget.try_reserve(4 * UNIT).unwrap();
        drop(a);
        drop(b);
        assert_eq!(budget.in_use_bytes(), 0);
        // Larger than the whole budget: admitted alone.
        let whole = budget.try_reserve(100 * UNIT).unwrap();
        assert_eq!(whole.bytes(), 10 * UNIT);
        assert!(budget.try_reserve(1).is_err());
        drop(whole);
        // A reservation grows as a body of unknown length comes, while the budget lasts.
        let mut growing = budget.try_reserve(UNIT).unwrap();
        budget.grow(&mut growing, 8 * UNIT).unwrap();
        assert_eq!(
            (growing.bytes(), budget.in_use_bytes()),
            (8 * UNIT, 8 * UNIT)
        );
        assert!(budget.grow(&mut growing, 11 * UNIT).is_err());
        assert_eq!(growing.bytes(), 8 * UNIT, "unchanged when refused");
        drop(growing);
        assert_eq!(budget.in_use_bytes(), 0);
    }

    #[test]
    fn cgroup_limits_are_read() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 * 1024 * 1024));
    }
}
