//! Progress display for `duet bench`: an indicatif bar per row, a spinner
//! for long steps without a count; both hidden when stderr is no terminal.

use duet_bench::startup;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// An indicatif bar per row; hidden when stderr is not a terminal.
pub struct Bars {
    bar: Option<ProgressBar>,
    label: String,
}

impl Bars {
    /// No bar yet.
    pub fn new() -> Bars {
        Bars {
            bar: None,
            label: String::new(),
        }
    }
}

impl Bars {
    /// Removes a bar left unfinished (a row that failed or was interrupted).
    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl startup::Progress for Bars {
    fn tick(&mut self, label: &str, done: usize, total: usize) {
        if self.bar.is_none() || self.label != label {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix:>26} [{bar:30}] {pos}/{len} {elapsed}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            self.bar = Some(b);
            self.label = label.to_string();
        }
        let b = self.bar.as_ref().expect("set above");
        b.set_length(total as u64);
        b.set_position(done as u64);
        if done >= total {
            b.finish_and_clear();
            self.bar = None;
        }
    }
}

/// A spinner with a message, for long steps without a count (the testbed).
pub fn spinner(msg: String) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    s.set_message(msg);
    s.enable_steady_tick(Duration::from_millis(200));
    s
}
