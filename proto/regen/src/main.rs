//! `cargo run --manifest-path proto/regen/Cargo.toml [-- --check]`
//!
//! Compiles proto/containerd_images.proto and proto/containerd_events.proto with
//! protox and writes their prost messages and tonic clients to
//! src/source/containerd_api.rs and containerd_events_api.rs, formatted by rustfmt. With
//! `--check` it writes nothing and fails when the committed file differs from what it
//! would write.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proto-regen: {e}");
            ExitCode::from(2)
        }
    }
}

/// Each proto file, the package it declares (the name of the file prost writes), and
/// the file of src/ it becomes.
const PROTOS: [(&str, &str, &str); 2] = [
    (
        "containerd_images.proto",
        "containerd.services.images.v1",
        "src/source/containerd_api.rs",
    ),
    (
        "containerd_events.proto",
        "containerd.services.events.v1",
        "src/source/containerd_events_api.rs",
    ),
];

fn run() -> Result<ExitCode, String> {
    let check = std::env::args().skip(1).any(|a| a == "--check");
    let mut code = ExitCode::SUCCESS;
    for (proto, package, target) in PROTOS {
        if !one(proto, package, target, check)? {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

/// Generates one proto's Rust; with `check`, false when the committed file differs.
fn one(proto: &str, package: &str, target: &str, check: bool) -> Result<bool, String> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = top.join("proto");
    let target = top.join(target);

    let fds = protox::compile([proto], [&proto_dir])
        .map_err(|e| format!("compiling {}: {e}", proto_dir.display()))?;
    let out = std::env::temp_dir().join(format!(
        "imagefs-proto-regen-{}-{package}",
        std::process::id()
    ));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds(fds)
        .map_err(|e| format!("generating: {e}"))?;
    let generated = out.join(format!("{package}.rs"));
    let body =
        std::fs::read_to_string(&generated).map_err(|e| format!("{}: {e}", generated.display()))?;
    let staged = out.join("generated.rs");
    let header = format!(
        "// Generated from proto/{proto} by proto/regen; do not edit.\n// Regenerate: cargo run --manifest-path proto/regen/Cargo.toml\n"
    );
    std::fs::write(&staged, format!("{header}{body}"))
        .map_err(|e| format!("{}: {e}", staged.display()))?;
    let status = Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(&staged)
        .status()
        .map_err(|e| format!("rustfmt: {e}"))?;
    if !status.success() {
        return Err(format!("rustfmt failed on {}", staged.display()));
    }
    let text = std::fs::read_to_string(&staged).map_err(|e| format!("{}: {e}", staged.display()))?;
    let _ = std::fs::remove_dir_all(&out);

    if check {
        let committed = std::fs::read_to_string(&target).unwrap_or_default();
        if committed != text {
            eprintln!(
                "proto-regen: {} is not what proto/{proto} generates; run: cargo run --manifest-path proto/regen/Cargo.toml",
                display(&target)
            );
            return Ok(false);
        }
        println!("proto-regen: {} is current", display(&target));
        return Ok(true);
    }
    std::fs::write(&target, text).map_err(|e| format!("{}: {e}", target.display()))?;
    println!("proto-regen: wrote {}", display(&target));
    Ok(true)
}

fn display(p: &Path) -> String {
    p.canonicalize().unwrap_or_else(|_| PathBuf::from(p)).display().to_string()
}
