//! The `weft` binary of the last release (the last CI-green main), for the
//! mixed-version tests (tests/mixed_versions.rs). Built once from `git
//! archive` of that commit into `<target>/old-release/<commit>/` and cached
//! there (the binary only): later runs (and CI runs that keep target/)
//! reuse it. The build
//! gets its own target directory (this build's `target/release/weft` must
//! not be replaced under the other tests), seeded with a copy of this
//! build's compiled dependencies so that only the weft crates compile (the
//! lock file is the same).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The last landed, CI-green main.
pub const LAST_RELEASE: &str = "12d8268";

/// This build's target directory (`CARGO_BIN_EXE_weft` is
/// `<target>/release/weft`).
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_weft"));
    bin.parent()
        .and_then(Path::parent)
        .expect("the weft binary under <target>/release")
        .to_path_buf()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a build step");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last release's `weft`, built now if it is not cached (the time it
/// took is printed).
pub fn last_release_weft() -> PathBuf {
    let base = target_dir().join("old-release").join(LAST_RELEASE);
    let bin = base.join("weft");
    if bin.exists() {
        eprintln!("weft {LAST_RELEASE}: cached at {}", bin.display());
        return bin;
    }
    let started = Instant::now();
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let present = Command::new("git")
        .args([
            "-C",
            repo,
            "cat-file",
            "-e",
            &format!("{LAST_RELEASE}^{{commit}}"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        present,
        "the last release {LAST_RELEASE} is not in this clone's history: fetch it (git fetch --unshallow)"
    );
    // `-m`: the files get the time of extraction, not the commit's, so
    // that cargo rebuilds the weft crates over the seeded ones of this build
    // (same names, same hashes) instead of taking them as fresh.
    run(Command::new("sh").arg("-c").arg(format!(
        "git -C '{repo}' archive --format=tar {LAST_RELEASE} | tar -x -m -C '{}'",
        src.display()
    )));
    // Seed the dependencies once (a copy: rustc must never write into
    // this build's files).
    let release = base.join("target").join("release");
    if !release.join(".fingerprint").exists() {
        std::fs::create_dir_all(&release).unwrap();
        let mine = target_dir().join("release");
        for dir in ["deps", "build", ".fingerprint"] {
            run(Command::new("cp")
                .arg("-a")
                .arg(mine.join(dir))
                .arg(release.join(dir)));
        }
    }
    run(Command::new("cargo")
        .args(["build", "--release", "--locked", "--bin", "weft"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target")));
    let tmp = base.join("weft.tmp");
    std::fs::copy(release.join("weft"), &tmp).unwrap();
    std::fs::rename(&tmp, &bin).unwrap();
    // Only the binary is kept: the copy of the dependencies is gigabytes.
    let _ = std::fs::remove_dir_all(base.join("target"));
    eprintln!(
        "weft {LAST_RELEASE}: built in {:?} into {}",
        started.elapsed(),
        bin.display()
    );
    bin
}
