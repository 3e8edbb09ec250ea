//! Progress of a pack: an indicatif bar (bytes, rate, ETA) when stderr is a terminal, else a
//! log line every few seconds. Packing a large executable takes a while, and whoever waits
//! (the operator, or a client whose pull is blocked on it) should see that it moves.
//!
//! Log lines and bars share stderr: [`LogWriter`] hides the bars while a line is written,
//! so the two never tear each other.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Packs smaller than this get no bar: it would only flicker.
const BAR_MIN_BYTES: u64 = 8 << 20;
/// Time between two log lines of one pack (and before the first).
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Told how far a pack has got.
pub trait Progress: Send + Sync {
    /// Packing starts: `total` bytes of file content will be read.
    fn begin(&self, total: u64);
    /// `n` more bytes were read.
    fn advance(&self, n: u64);
    /// The pack is over, whether it succeeded or not.
    fn end(&self);
}

/// Every bar on stderr, so that concurrent packs (a server packing two images) each get a
/// line and log output can be printed above them.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// The reporter for one pack, named `label` in its output: a bar if stderr is a terminal,
/// else log lines.
pub fn reporter(label: &str) -> Arc<dyn Progress> {
    if io::stderr().is_terminal() {
        Arc::new(Bar {
            label: label.to_owned(),
            bar: OnceLock::new(),
        })
    } else {
        Arc::new(LogLines {
            label: label.to_owned(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            started: OnceLock::new(),
            next_ms: AtomicU64::new(LOG_EVERY.as_millis() as u64),
        })
    }
}

struct Bar {
    label: String,
    /// Made at `begin`, when the total is known (and only for packs worth a bar).
    bar: OnceLock<ProgressBar>,
}

impl Progress for Bar {
    fn begin(&self, total: u64) {
        if total < BAR_MIN_BYTES {
            return;
        }
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = bars().add(ProgressBar::new(total).with_style(style));
        bar.set_prefix(format!("packing {}", self.label));
        let _ = self.bar.set(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.bar.get() {
            bar.inc(n);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
            bars().remove(bar);
        }
    }
}

struct LogLines {
    label: String,
    total: AtomicU64,
    done: AtomicU64,
    started: OnceLock<Instant>,
    /// Milliseconds after `started` at which the next line is due.
    next_ms: AtomicU64,
}

impl Progress for LogLines {
    fn begin(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        let _ = self.started.set(Instant::now());
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let Some(started) = self.started.get() else {
            return;
        };
        let elapsed = started.elapsed();
        let due = self.next_ms.load(Ordering::Relaxed);
        let now_ms = elapsed.as_millis() as u64;
        // One reader wins the line when it is due; the others see the moved deadline.
        if now_ms < due
            || self
                .next_ms
                .compare_exchange(
                    due,
                    now_ms + LOG_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let total = self.total.load(Ordering::Relaxed);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        let left = total.saturating_sub(done) as f64 / rate.max(1.0);
        tracing::info!(
            image = %self.label,
            "packing: {:.0} of {:.0} MiB ({:.1} MiB/s, about {left:.0} s left)",
            mib(done),
            mib(total),
            mib(rate as u64),
        );
    }

    fn end(&self) {}
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A `tracing` writer for stderr that hides the progress bars while it writes a line.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        bars().suspend(|| io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Collects what the log writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_come_when_due_and_say_how_far() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let lines = LogLines {
                label: "tool:latest".to_owned(),
                total: AtomicU64::new(0),
                done: AtomicU64::new(0),
                started: OnceLock::new(),
                // The first line is due at once; the next one LOG_EVERY later.
                next_ms: AtomicU64::new(0),
            };
            lines.begin(300 << 20);
            lines.advance(100 << 20);
            lines.advance(100 << 20);
            lines.end();
        });
        let text = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 1, "{text}");
        assert!(logged[0].contains("packing: 100 of 300 MiB ("), "{text}");
        assert!(logged[0].contains("image=tool:latest"), "{text}");
    }
}
