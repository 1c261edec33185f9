//! `cargo run --manifest-path proto/regen/Cargo.toml [-- --check]`
//!
//! Compiles proto/containerd_images.proto with protox and writes the prost messages
//! and the tonic client to src/source/containerd_api.rs, formatted by rustfmt. With
//! `--check` it writes nothing and fails when the committed file differs from what it
//! would write.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const HEADER: &str = "\
// Generated from proto/containerd_images.proto by proto/regen; do not edit.
// Regenerate: cargo run --manifest-path proto/regen/Cargo.toml
";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proto-regen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let check = std::env::args().skip(1).any(|a| a == "--check");
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = top.join("proto");
    let target = top.join("src/source/containerd_api.rs");

    let fds = protox::compile(["containerd_images.proto"], [&proto_dir])
        .map_err(|e| format!("compiling {}: {e}", proto_dir.display()))?;
    let out = std::env::temp_dir().join(format!("imagefs-proto-regen-{}", std::process::id()));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds(fds)
        .map_err(|e| format!("generating: {e}"))?;
    let generated = out.join("containerd.services.images.v1.rs");
    let body =
        std::fs::read_to_string(&generated).map_err(|e| format!("{}: {e}", generated.display()))?;
    let staged = out.join("containerd_api.rs");
    std::fs::write(&staged, format!("{HEADER}{body}"))
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
                "proto-regen: {} is not what proto/containerd_images.proto generates; run: cargo run --manifest-path proto/regen/Cargo.toml",
                display(&target)
            );
            return Ok(ExitCode::FAILURE);
        }
        println!("proto-regen: {} is current", display(&target));
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::write(&target, text).map_err(|e| format!("{}: {e}", target.display()))?;
    println!("proto-regen: wrote {}", display(&target));
    Ok(ExitCode::SUCCESS)
}

fn display(p: &Path) -> String {
    p.canonicalize().unwrap_or_else(|_| PathBuf::from(p)).display().to_string()
}
