//! The `keel train` and `keel eval` subprocesses of a grid (`keel sweep`, `keel stress`): started
//! from the very binary the grid runs, and ended with it.

use std::process::Command;

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
    cmd.env(crate::signals::GRID_CHILD, "1");
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
