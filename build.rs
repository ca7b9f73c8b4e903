// Records the git revision keel was built from, for the provenance in each run's config.toml.
//
// Cargo reruns a build script whenever a path it declares with rerun-if-changed does not exist,
// so only paths that exist are declared: the HEAD file, the file of the branch it points to and
// that file's folder, and packed-refs where there is one. Outside a git checkout the revision is "unknown" and
// only this script is watched.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The files whose change means a new revision: all of them exist.
fn watched_git_files() -> Vec<PathBuf> {
    let path = |p: &str| git(&["rev-parse", "--git-path", p]).map(PathBuf::from);
    let mut files = Vec::new();
    files.extend(path("HEAD"));
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(file) = path(&reference) {
            // Its folder too: a commit on a packed branch creates the ref's file there.
            files.extend(file.parent().map(PathBuf::from));
            files.push(file);
        }
    }
    files.extend(path("packed-refs"));
    files.retain(|f| f.exists());
    files
}

fn main() {
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KEEL_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=build.rs");
    for f in watched_git_files() {
        println!("cargo:rerun-if-changed={}", f.display());
    }
}
