//! Fault injection for tests: places where a test can hold keel still, to signal or kill it
//! there. Nothing happens unless the environment asks for it.

/// When `KEEL_FAULT_PAUSE` names `point`, says so on stderr and sleeps for a minute there, so
/// that a test can signal a command that is otherwise over in milliseconds at a known place.
pub fn pause_point(point: &str) {
    if std::env::var("KEEL_FAULT_PAUSE").is_ok_and(|p| p == point) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "keel: paused at {point} (KEEL_FAULT_PAUSE)");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
