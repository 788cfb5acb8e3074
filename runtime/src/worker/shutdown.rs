//! Shutdown as something every wait of the worker observes: waiting for NATS, JetStream,
//! the database or the migration lock, and backoff sleeps all end when SIGTERM (or
//! Ctrl-C) arrives, instead of only the fetch loop noticing it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// Requests shutdown; dropping it without [`Trigger::fire`] does not.
#[derive(Debug)]
pub(super) struct Trigger(watch::Sender<bool>);

impl Trigger {
    pub(super) fn fire(&self) {
        self.0.send_replace(true);
    }
}

/// Whether, and when, shutdown was requested. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub(super) fn new() -> (Trigger, Self) {
        let (sender, receiver) = watch::channel(false);
        (Trigger(sender), Self(receiver))
    }

    /// Whether shutdown was requested (for blocking code that polls).
    pub(super) fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is requested (never, if its trigger is gone unfired).
    pub(super) async fn wait(&self) {
        let mut receiver = self.0.clone();
        if receiver.wait_for(|requested| *requested).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `work` unless shutdown is requested first: `None` then, and `work` is
    /// dropped where it waits.
    pub(super) async fn unless_requested<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.wait() => None,
            value = work => Some(value),
        }
    }

    /// Sleeps for `delay`; false if shutdown was requested meanwhile.
    pub(super) async fn sleep(&self, delay: Duration) -> bool {
        self.unless_requested(tokio::time::sleep(delay))
            .await
            .is_some()
    }
}

/// The delays between attempts while waiting for a dependency: `first`, doubling up to
/// `max`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The delay before the next attempt.
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_wait_ends_when_shutdown_is_requested() {
        let (trigger, shutdown) = Shutdown::new();
        assert!(!shutdown.requested());
        let sleeping = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.sleep(Duration::from_secs(3600)).await }
        });
        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown
                    .unless_requested(std::future::pending::<()>())
                    .await
            }
        });
        trigger.fire();
        let within = Duration::from_secs(5);
        assert!(
            !tokio::time::timeout(within, sleeping)
                .await
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            tokio::time::timeout(within, waiting)
                .await
                .unwrap()
                .unwrap(),
            None
        );
        assert!(shutdown.requested());
        // Requested before the wait began: it does not wait at all.
        assert!(!shutdown.sleep(Duration::from_secs(3600)).await);
    }

    #[tokio::test]
    async fn work_that_finishes_first_is_returned() {
        let (_trigger, shutdown) = Shutdown::new();
        assert_eq!(shutdown.unless_requested(async { 7 }).await, Some(7));
        assert!(shutdown.sleep(Duration::from_millis(1)).await);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let delays: Vec<u64> = (0..4)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 1000]);
    }
}
