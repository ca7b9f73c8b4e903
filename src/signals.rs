//! SIGINT / SIGTERM. `keel train`: during start-up (reading data, laying out the run directory, loading a
//! checkpoint) keel stops at once: nothing has been trained, and every file it writes is written
//! atomically. Once training runs, the first signal asks the run to stop after the current step
//! with a checkpoint; a second one exits at once. Either way the exit status is 130. A grid
//! (`keel sweep`, `keel stress`) passes a stop on to its runs and waits for them instead.
//!
//! The other commands (eval, data prepare, plot, export, sweep --collect) keep no partial result:
//! [`install_for`] makes the first signal run the command's own clean-up ([`on_stop`]), say what
//! is left and how to go on, and exit with 130.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static STOP: AtomicBool = AtomicBool::new(false);
static TRAINING: AtomicBool = AtomicBool::new(false);
/// The run directory once it is known, for the start-up message.
static RUN_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How to go on after a stop during start-up.
fn start_up_advice() -> String {
    let dir = RUN_DIR.lock().ok().and_then(|d| d.clone());
    match dir {
        Some(d) if d.join(crate::run_dir::CONFIG).exists() => {
            format!("continue with: keel train --resume {}", d.display())
        }
        _ => "nothing was written; run the same command again".to_string(),
    }
}

/// Installs the handler (once per process, as early as possible) and returns the flag the
/// training loop watches.
pub fn install() -> &'static AtomicBool {
    let grid_child = std::env::var_os(crate::child::GRID_CHILD).is_some();
    let _ = ctrlc::set_handler(move || {
        if !TRAINING.load(Ordering::SeqCst) {
            say(&format!(
                "\nsignal received during start-up, before the first step: stopping now\n  {}",
                start_up_advice()
            ));
            std::process::exit(crate::EXIT_INTERRUPTED);
        }
        if STOP.swap(true, Ordering::SeqCst) {
            // A grid's run gets SIGTERM each time a thread of its dying parent exits (Linux sends
            // the parent-death signal again as the run is handed to the next thread), and Ctrl-C
            // reaches it together with its grid: one stop, not a second request. It always
            // finishes its step and checkpoints (SIGKILL still ends it at once).
            if grid_child {
                return;
            }
            say("\nsecond signal: stopping now, without a checkpoint");
            std::process::exit(crate::EXIT_INTERRUPTED);
        }
        say("\nsignal received: finishing the current step and writing a checkpoint (send it again to stop at once)");
    });
    &STOP
}

/// Installs a grid's handler (`keel sweep`, `keel stress`), in place of [`install`]: a signal
/// starts no further run and asks each running one to checkpoint and stop (`child::stop_all`);
/// the grid waits for them, so that when it exits their folders are free to resume. Its runs stop
/// once, however many signals come.
pub fn install_grid() {
    let _ = ctrlc::set_handler(|| {
        let waiting = |n| format!("waiting for the {n} running run(s) to write a checkpoint and stop");
        say(&match crate::child::stop_all() {
            (false, 0) => "\nsignal received: starting no further run".to_string(),
            (false, n) => format!("\nsignal received: starting no further run; {}", waiting(n)),
            (true, n) => format!("\nstill {}", waiting(n)),
        });
    });
}

/// The run directory a start-up stop should point to.
pub fn set_run_dir(dir: &std::path::Path) {
    if let Ok(mut d) = RUN_DIR.lock() {
        *d = Some(dir.to_path_buf());
    }
}

/// Start-up is over: from now on a signal stops the run after a step, with a checkpoint.
pub fn training_started() {
    TRAINING.store(true, Ordering::SeqCst);
}

/// A line on stderr that never panics: the reader may be gone (a killed sweep held the pipe).
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

type CleanUp = Box<dyn Fn() -> String + Send>;
/// What a command other than `train` does when stopped: removes its partial output and says so.
static ON_STOP: Mutex<Option<CleanUp>> = Mutex::new(None);

/// For a command that keeps nothing of a partial result: the first SIGINT or SIGTERM runs the
/// clean-up registered with [`on_stop`] (else prints `note`), then exits with 130.
pub fn install_for(command: &'static str, note: &'static str) {
    let _ = ctrlc::set_handler(move || {
        let told = ON_STOP.lock().ok().and_then(|f| f.as_ref().map(|f| f())).unwrap_or_else(|| note.to_string());
        say(&format!("\nsignal received: keel {command} stopped before it finished\n  {told}"));
        std::process::exit(crate::EXIT_INTERRUPTED);
    });
}

/// Replaces what a stop does from now on: `clean_up` removes the partial output and returns the
/// line telling the user what is left and what to run.
pub fn on_stop(clean_up: impl Fn() -> String + Send + 'static) {
    if let Ok(mut f) = ON_STOP.lock() {
        *f = Some(Box::new(clean_up));
    }
}
