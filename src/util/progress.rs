//! Progress bars, drawn on a terminal only (indicatif hides them elsewhere) and hidden
//! altogether when the caller asks for no progress output.
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` training steps starting at `start`.
pub fn steps(show: bool, start: u64, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(start);
    bar
}

/// A bar over `total` samples with their rate, labelled `label`.
pub fn samples(show: bool, total: u64, label: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len} samples {per_sec} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_message(label.to_string());
    bar
}

/// A bar over a download of `total` bytes (unknown: a spinner), labelled `label`.
pub fn bytes(show: bool, total: Option<u64>, label: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}
