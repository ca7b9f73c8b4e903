//! SIGINT / SIGTERM: the first asks the run to stop after the current step with a checkpoint; a
//! second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process) and returns the flag the training loop watches.
pub fn install() -> &'static AtomicBool {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond signal: stopping now, without a checkpoint");
            std::process::exit(crate::EXIT_INTERRUPTED);
        }
        eprintln!(
            "\nsignal received: finishing the current step and writing a checkpoint (send it again to stop at once)"
        );
    });
    &STOP
}
