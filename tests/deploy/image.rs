//! The Dockerfile (hadolint, what it builds and ships) and the shipped
//! plugin binary (static, small, no loader).

use super::*;

fn dockerfile() -> String {
    fs::read_to_string(root().join("Dockerfile")).unwrap()
}

fn bin_name(manifest: &Path) -> String {
    let text = fs::read_to_string(manifest).unwrap();
    let bin = text.split("[[bin]]").nth(1).expect("a [[bin]] section");
    bin.lines()
        .find_map(|l| l.trim().strip_prefix("name = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[test]
fn the_dockerfile_passes_hadolint() {
    if !have("hadolint", "the_dockerfile_passes_hadolint") {
        return;
    }
    let out = run_timeout(
        Command::new("hadolint")
            .args(["--failure-threshold", "info"])
            .arg(root().join("Dockerfile")),
        60,
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // And hadolint does fail on a Dockerfile with the usual mistakes.
    let dir = TempDir::new("broken-dockerfile");
    let broken = dir.path.join("Dockerfile");
    fs::write(
        &broken,
        dockerfile().replacen("FROM debian:bookworm-slim", "FROM debian", 1)
            + "RUN cd /tmp && apt-get install curl\n",
    )
    .unwrap();
    let out = run_timeout(
        Command::new("hadolint")
            .args(["--failure-threshold", "warning"])
            .arg(&broken),
        60,
    )
    .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("DL3006"),
        "untagged image:\n{}",
        text(&out)
    );
}

#[test]
fn the_dockerfile_builds_both_binaries_and_ships_them_with_the_entrypoint() {
    let steps = instructions(&dockerfile());
    let froms: Vec<&String> = steps
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(froms.len(), 3, "build, symbols, runtime: {froms:?}");
    let (builder, stage) = froms[0].split_once(" AS ").expect("a named build stage");
    let version = builder
        .strip_prefix("rust:")
        .expect("the build stage is the official Rust image");
    // Edition 2024 and let-chains need Rust 1.88 or later.
    let minor: u32 = version
        .strip_prefix("1.")
        .and_then(|v| v.split(['.', '-']).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("pin the Rust image to a version, not {version:?}"));
    assert!(minor >= 88, "rust:{version} is too old for this workspace");
    // The runtime stage is the last (what `docker build` makes by default).
    assert!(
        froms[2].starts_with("debian:bookworm-slim") || froms[2].starts_with("gcr.io/distroless/"),
        "a small runtime image, not {}",
        froms[2]
    );
    assert_eq!(froms[1], "scratch AS symbols");

    let weft = bin_name(&root().join("Cargo.toml"));
    let cni = bin_name(&root().join("cni/Cargo.toml"));
    assert_eq!((weft.as_str(), cni.as_str()), ("weft", "weft-cni"));
    // The build step runs scripts/build-dist.sh into /out: both binaries in
    // release, the plugin's link static, both stripped.
    let build = steps
        .iter()
        .find(|(k, v)| k == "RUN" && v.contains("scripts/build-dist.sh"))
        .expect("a build step running scripts/build-dist.sh");
    assert!(
        build.1.ends_with("./scripts/build-dist.sh /out"),
        "{}",
        build.1
    );
    let script = fs::read_to_string(root().join("scripts/build-dist.sh")).unwrap();
    assert!(
        script.contains("cargo build --release --locked -p weft\n"),
        "{script}"
    );
    assert!(
        script.contains(
            "cargo rustc --release --locked -p weft-cni --bin weft-cni -- -C target-feature=+crt-static"
        ),
        "{script}"
    );
    for binary in [&weft, &cni] {
        assert!(
            script.contains("for bin in weft weft-cni;")
                && script.contains("\"target/release/$bin\" \"$out/$bin\""),
            "the build step does not collect {binary}: {script}"
        );
    }
    let symbols = steps
        .iter()
        .find(|(k, v)| k == "COPY" && v.starts_with(&format!("--from={stage} /out/{weft}.debug")))
        .expect("the symbols stage collects the debug info");
    assert!(
        symbols.1.contains(&format!("/out/{cni}.debug ")),
        "{}",
        symbols.1
    );
    let copy_from = steps
        .iter()
        .rfind(|(k, v)| k == "COPY" && v.starts_with(&format!("--from={stage} ")))
        .expect("COPY --from the build stage");
    for binary in [&weft, &cni] {
        assert!(
            copy_from.1.contains(&format!("/out/{binary} ")),
            "{binary} is not copied: {}",
            copy_from.1
        );
    }
    assert!(copy_from.1.ends_with(" /usr/local/bin/"));

    let copy_entry = steps
        .iter()
        .find(|(k, v)| k == "COPY" && v.contains("docker/entrypoint.sh"))
        .expect("the entrypoint is copied");
    assert!(root().join("docker/entrypoint.sh").exists());
    let destination = copy_entry.1.split_whitespace().last().unwrap();
    let (_, entrypoint) = steps
        .iter()
        .rfind(|(k, _)| k == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    assert_eq!(entrypoint, &format!("[\"{destination}\"]"));
    let mode = fs::metadata(root().join("docker/entrypoint.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert!(
        copy_entry.1.contains("--chmod=0755") || mode & 0o111 != 0,
        "the entrypoint is not executable in the image"
    );
}

#[test]
fn dockerignore_keeps_the_sources_the_build_needs() {
    let ignore = fs::read_to_string(root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(patterns.contains(&"target"));
    for needed in ["Cargo.toml", "Cargo.lock", "src", "cni", "docker", "*"] {
        assert!(
            !patterns.contains(&needed),
            ".dockerignore drops {needed}, which the build needs"
        );
    }
}

// ---- the entrypoint ----

#[test]
fn the_entrypoint_passes_shellcheck() {
    let out = Command::new("sh")
        .arg("-n")
        .arg(entrypoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    if !have("shellcheck", "the_entrypoint_passes_shellcheck") {
        return;
    }
    let out = run_timeout(
        Command::new("shellcheck")
            .args(["--shell=sh", "--severity=style"])
            .arg(entrypoint()),
        60,
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The ELF program header types of `elf` (64-bit little-endian only).
fn program_headers(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let at = phoff + i * size;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap())
        })
        .collect()
}

/// The ELF section names of `elf` (64-bit little-endian only).
fn section_names(elf: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let shoff = u64_at(0x28);
    let (size, count, names) = (u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strtab = u64_at(shoff + names * size + 0x18);
    (0..count)
        .map(|i| {
            let at = shoff + i * size;
            let name = u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
            let bytes = &elf[strtab + name..];
            let end = bytes.iter().position(|b| *b == 0).unwrap();
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        })
        .collect()
}

/// PT_INTERP: the binary names a dynamic loader.
const PT_INTERP: u32 = 3;

/// The plugin the kubelet runs on the host is static (no dynamic loader, so
/// no host glibc version to match), small once stripped, and answers a CNI
/// VERSION in a root with nothing but itself in it; its debug info is kept
/// beside it, linked by name.
#[test]
fn the_shipped_plugin_is_static_small_and_runs_with_no_loader() {
    let test = "the_shipped_plugin_is_static_small_and_runs_with_no_loader";
    let dist = Path::new(BIN).with_file_name("dist");
    let plugin = dist.join("weft-cni");
    if !plugin.exists() {
        if std::env::var("WEFT_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!(
                "{test}: {} is missing: run scripts/build-dist.sh",
                plugin.display()
            );
        }
        eprintln!("\n!!!!! SKIPPED {test}: run scripts/build-dist.sh first !!!!!\n");
        return;
    }
    let elf = fs::read(&plugin).unwrap();
    assert!(
        !program_headers(&elf).contains(&PT_INTERP),
        "{} asks for a dynamic loader",
        plugin.display()
    );
    let size = elf.len();
    assert!(size < 5 << 20, "the plugin is {size} bytes stripped");
    let sections = section_names(&elf);
    assert!(
        !sections
            .iter()
            .any(|s| [".debug_info", ".debug_line", ".symtab"].contains(&s.as_str())),
        "the plugin is not stripped: {sections:?}"
    );
    assert!(
        sections.iter().any(|s| s == ".gnu_debuglink"),
        "{sections:?}"
    );
    let debug = fs::read(dist.join("weft-cni.debug")).unwrap();
    assert!(
        section_names(&debug).iter().any(|s| s == ".debug_line"),
        "no debug info kept"
    );
    // The router is stripped too, its debug info kept.
    let router = fs::read(dist.join("weft")).unwrap();
    assert!(
        !section_names(&router)
            .iter()
            .any(|s| s == ".debug_info" || s == ".debug_line")
    );
    assert!(dist.join("weft.debug").exists());

    if !support::require_root(test) {
        return;
    }
    // A root holding only the plugin: no /lib, no loader, no libc.
    let dir = TempDir::new("static-plugin");
    fs::copy(&plugin, dir.path.join("weft-cni")).unwrap();
    let mut cmd = Command::new("chroot");
    cmd.arg(&dir.path)
        .arg("/weft-cni")
        .env_clear()
        // For finding chroot; the plugin needs nothing from it.
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(br#"{"cniVersion":"1.0.0"}"#);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let version: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        version["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&"1.0.0".into()),
        "{version}"
    );
}
