//! What a pull shows while it downloads: an indicatif bar per layer and
//! one for the whole image on a terminal, else one line per layer done.

use crate::blob::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The bars of one pull (none when not on a terminal, or quiet).
pub(crate) struct Bars {
    multi: Option<MultiProgress>,
    total: Option<ProgressBar>,
    /// Print a line per finished layer (no bars, not quiet).
    lines: bool,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
}

impl Bars {
    /// Bars for `total_bytes` of image `name` if `bars`; lines unless `quiet`.
    pub(crate) fn new(bars: bool, quiet: bool, total_bytes: u64, name: &str) -> Bars {
        let multi = (bars && !quiet).then(MultiProgress::new);
        let total = multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(total_bytes));
            b.set_style(style(
                "{prefix:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            ));
            b.set_prefix(name.to_string());
            b
        });
        Bars {
            multi,
            total,
            lines: !bars && !quiet,
        }
    }

    /// The bar of one layer of `size` bytes, labelled `label`.
    pub(crate) fn layer(&self, size: u64, label: &str) -> Bar {
        Bar {
            bar: self.multi.as_ref().map(|m| {
                let b = m.add(ProgressBar::new(size));
                b.set_style(style("{prefix:>14} [{bar:30}] {bytes}/{total_bytes}"));
                b.set_prefix(label.to_string());
                b
            }),
            total: self.total.clone(),
            lines: self.lines,
            label: label.to_string(),
            size,
        }
    }

    /// The whole image is there.
    pub(crate) fn finish(&self) {
        if let Some(t) = &self.total {
            t.finish();
        }
    }
}

/// Progress of one layer.
pub(crate) struct Bar {
    bar: Option<ProgressBar>,
    total: Option<ProgressBar>,
    lines: bool,
    label: String,
    size: u64,
}

impl Bar {
    /// The layer is stored.
    pub(crate) fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
        if self.lines {
            eprintln!(
                "sha256:{}: pulled ({:.1} MB)",
                self.label,
                self.size as f64 / 1e6
            );
        }
    }
}

impl Progress for Bar {
    fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(t) = &self.total {
            t.inc(n);
        }
    }
}
