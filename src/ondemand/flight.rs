//! Single flight: concurrent requests for one thing share one computation of it.
//!
//! Twenty clients pulling an image that is not packed yet must not start twenty packs of a
//! 1 GiB file. The first request starts the work as a task of its own (a client that hangs
//! up does not cancel it); the others wait for the same outcome, a failure included.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

/// How a caller got its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// It started the work.
    Started,
    /// It waited for work another caller had started.
    Waited,
    /// A finished outcome was still good.
    Reused,
}

/// The latest attempt at one thing. `S` is what the outcome depends on (say, the stamps of
/// the input files): a caller with another `S` never gets an outcome made for this one.
pub struct Flight<S, T> {
    latest: Mutex<Option<Attempt<S, T>>>,
}

struct Attempt<S, T> {
    stamp: S,
    /// `None` while the work runs; then the outcome and when it came.
    outcome: watch::Receiver<Option<(T, Instant)>>,
}

impl<S, T> Default for Flight<S, T> {
    fn default() -> Self {
        Flight {
            latest: Mutex::new(None),
        }
    }
}

impl<S: PartialEq, T: Clone + Send + Sync + 'static> Flight<S, T> {
    /// The outcome for `stamp`. Waits for work in flight for the same stamp; takes a finished
    /// outcome for the same stamp if `reuse(outcome, finished_at)` allows; else starts `work`.
    /// `None` only if the work panicked.
    pub async fn get<W, F>(
        &self,
        stamp: S,
        reuse: impl Fn(&T, Instant) -> bool,
        work: W,
    ) -> Option<(T, Joined)>
    where
        W: FnOnce() -> F,
        F: Future<Output = T> + Send + 'static,
    {
        let (mut outcome, joined) = {
            let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
            let current = latest.as_ref().filter(|a| a.stamp == stamp).map(|a| {
                let running = a.outcome.has_changed().is_ok();
                (a.outcome.clone(), a.outcome.borrow().clone(), running)
            });
            match current {
                Some((rx, None, true)) => (rx, Joined::Waited),
                Some((_, Some((t, at)), _)) if reuse(&t, at) => return Some((t, Joined::Reused)),
                // Nothing for this stamp, a spent outcome, or work that died.
                _ => {
                    let (tx, rx) = watch::channel(None);
                    let fut = work();
                    tokio::spawn(async move {
                        let t = fut.await;
                        tx.send_replace(Some((t, Instant::now())));
                    });
                    *latest = Some(Attempt {
                        stamp,
                        outcome: rx.clone(),
                    });
                    (rx, Joined::Started)
                }
            }
        };
        let done = outcome.wait_for(Option::is_some).await.ok()?;
        done.as_ref().map(|(t, _)| (t.clone(), joined))
    }

    /// The latest finished outcome, whatever its stamp.
    pub fn latest(&self) -> Option<T> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let attempt = latest.as_ref()?;
        let outcome = attempt.outcome.borrow();
        outcome.as_ref().map(|(t, _)| t.clone())
    }

    /// Whether the latest attempt was for `stamp`, has finished, and `good` likes its outcome.
    pub fn done_for(&self, stamp: &S, good: impl Fn(&T) -> bool) -> bool {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .as_ref()
            .filter(|a| a.stamp == *stamp)
            .is_some_and(|a| a.outcome.borrow().as_ref().is_some_and(|(t, _)| good(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Work that counts its runs and finishes only when released.
    fn gated(
        runs: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
        out: Result<u32, String>,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<u32, String>> + Send>> {
        move || {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                out
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_run_and_its_failure() {
        let flight: Arc<Flight<u64, Result<u32, String>>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut callers = Vec::new();
        for _ in 0..20 {
            let (flight, work) = (
                flight.clone(),
                gated(
                    runs.clone(),
                    gate.clone(),
                    Err("no library libx.so.1".into()),
                ),
            );
            callers.push(tokio::spawn(async move {
                flight.get(7, |_, _| true, work).await
            }));
        }
        // Let the callers pile up behind the running work, then let it finish.
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        gate.notify_one();
        let (mut started, mut waited) = (0, 0);
        for c in callers {
            let (out, joined) = c.await.expect("join").expect("outcome");
            assert_eq!(out, Err("no library libx.so.1".to_owned()));
            started += usize::from(joined == Joined::Started);
            waited += usize::from(joined == Joined::Waited);
        }
        assert!(waited >= 1, "no caller waited for the work in flight");
        assert_eq!((runs.load(Ordering::SeqCst), started), (1, 1));
    }

    #[tokio::test]
    async fn a_new_stamp_or_a_spent_outcome_runs_again() {
        let flight: Flight<u64, u32> = Flight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = |v: u32| {
            let runs = runs.clone();
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                v
            }
        };
        assert_eq!(
            flight.get(1, |_, _| true, counted(10)).await,
            Some((10, Joined::Started))
        );
        assert_eq!(
            flight.get(1, |_, _| true, counted(11)).await,
            Some((10, Joined::Reused))
        );
        // Same stamp, but the caller no longer trusts the outcome.
        assert_eq!(
            flight.get(1, |_, _| false, counted(12)).await,
            Some((12, Joined::Started))
        );
        // Another stamp never sees the old outcome.
        assert_eq!(
            flight.get(2, |_, _| true, counted(20)).await,
            Some((20, Joined::Started))
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn work_that_panics_gives_none_and_is_retried() {
        let flight: Flight<u64, u32> = Flight::default();
        let got = flight
            .get(1, |_, _| true, || async { panic!("packer bug") })
            .await;
        assert_eq!(got, None);
        let got = flight.get(1, |_, _| true, || async { 5 }).await;
        assert_eq!(got, Some((5, Joined::Started)));
    }
}
