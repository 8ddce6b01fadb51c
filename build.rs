//! Records the git commit wgslm is built from (`WGSLM_GIT_COMMIT`, "unknown" outside a git checkout),
//! for `wgslm bench suite` files, so results from different machines can be matched to the code.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WGSLM_GIT_COMMIT={commit}");
    // Rebuilt when HEAD moves: a checkout changes HEAD, a commit changes the branch it names.
    // (A path that does not exist, such as a packed ref, would rerun this script on every build.)
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in std::iter::once("HEAD".to_string()).chain(branch) {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
