//! The build script must not make keel permanently stale: Cargo reruns a build script (and so
//! recompiles the crate) on every build when a path it watches does not exist.

use std::path::Path;

#[test]
fn every_path_the_build_script_watches_exists() {
    let out_dir = Path::new(env!("OUT_DIR"));
    let output = std::fs::read_to_string(out_dir.parent().unwrap().join("output")).expect("the build script's output");
    let watched: Vec<&str> = output.lines().filter_map(|l| l.strip_prefix("cargo:rerun-if-changed=")).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for p in &watched {
        assert!(
            root.join(p).exists(),
            "the build script watches {p}, which does not exist: every build would recompile keel"
        );
    }
    assert!(watched.contains(&"build.rs"), "{output}");
    assert!(output.contains("cargo:rustc-env=KEEL_GIT_REV="), "{output}");
}
