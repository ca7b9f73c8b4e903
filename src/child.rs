//! The `keel train` and `keel eval` subprocesses of a grid (`keel sweep`, `keel stress`): started
//! from the very binary the grid runs, ended with it, and stopped with it: a signal to the grid
//! reaches every running child and starts no new one, and the grid waits for them (a run holds
//! its folder until it has checkpointed and exited).

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Set by a grid (`keel sweep`, `keel stress`) in the environment of the runs it starts, whose
/// signal handling differs (see `signals::install`).
pub const GRID_CHILD: &str = "KEEL_GRID_CHILD";

/// The PIDs of the children now running. A PID is listed only while its child is unreaped (it is
/// reaped and removed under this lock), so a stop never signals a process that reused the number.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Set by a stop: from then on no child starts.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn running() -> MutexGuard<'static, Vec<u32>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `cmd` to its end with no stdin, collecting what it writes to stdout and stderr where
/// those are piped (`Command::output` pipes both); `None`, with nothing started, once the grid is
/// stopping.
pub fn run(cmd: &mut Command) -> std::io::Result<Option<Output>> {
    cmd.stdin(Stdio::null());
    let mut child = {
        let mut running = running();
        if stopping() {
            return Ok(None);
        }
        let child = cmd.spawn()?;
        running.push(child.id());
        child
    };
    let id = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    std::thread::scope(|s| {
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            s.spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(stdout.map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = drain(stderr.map(|p| Box::new(p) as Box<dyn Read + Send>));
        // Polled rather than waited on, so that reaping and leaving RUNNING are one step.
        let status = loop {
            {
                let mut running = running();
                let status = child.try_wait().transpose();
                if status.is_some() {
                    running.retain(|&p| p != id);
                }
                if let Some(status) = status {
                    break status;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }?;
        let join = |h: std::thread::ScopedJoinHandle<Vec<u8>>| h.join().unwrap_or_default();
        Ok(Some(Output { status, stdout: join(stdout), stderr: join(stderr) }))
    })
}

/// Stops the grid: no further child starts, and each running one gets SIGTERM (`keel train`
/// finishes its step, writes a checkpoint and exits 130; a grid's run counts repeats as one stop).
/// Returns whether the grid was already stopping, and how many children are running.
pub fn stop_all() -> (bool, usize) {
    let running = running();
    let again = STOPPING.swap(true, Ordering::SeqCst);
    for &pid in running.iter() {
        terminate(pid);
    }
    (again, running.len())
}

#[cfg(target_os = "linux")]
fn terminate(pid: u32) {
    // SAFETY: kill has no memory effects; the PID is an unreaped child of this process.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[cfg(not(target_os = "linux"))]
fn terminate(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}

/// Whether a signal has stopped the grid.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// A command that runs this keel binary again, for a grid's children.
///
/// - The binary is the one this process started from, even after a rebuild replaced or deleted
///   its file: on Linux `/proc/self/exe`, which the kernel keeps pointing at the running image;
///   elsewhere `current_exe()`.
/// - On Linux the child gets SIGTERM when the thread that spawned it ends, so a killed sweep
///   (even `kill -9`) takes its runs with it (`PR_SET_PDEATHSIG`): `keel train` finishes its
///   step, checkpoints and exits 130, and a re-run resumes the directory with no orphan still
///   writing into it. The grid's worker threads wait on their children, so in normal operation
///   the thread outlives the child.
pub fn keel() -> std::io::Result<Command> {
    let mut cmd = this_binary()?;
    // Repeated stop signals (one per exiting thread of a killed grid) are one stop for the run.
    cmd.env(GRID_CHILD, "1");
    Ok(cmd)
}

fn this_binary() -> std::io::Result<Command> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let exe = std::path::Path::new("/proc/self/exe");
        let mut cmd = if exe.exists() { Command::new(exe) } else { Command::new(std::env::current_exe()?) };
        // `ps` shows the children under the name the grid was started with, not /proc/self/exe.
        cmd.arg0(std::env::args_os().next().unwrap_or_else(|| "keel".into()));
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe
        // system calls.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then no signal would come.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the keel that started this run has exited"));
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(Command::new(std::env::current_exe()?))
}
