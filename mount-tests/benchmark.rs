//! The benchmark must keep working: run on tiny inputs, nothing asserted about time.

use crate::common::*;

/// Runs a benchmark script of mount-tests/bench/ on its tiny inputs, in a work
/// directory of its own; what it printed.
fn tiny(script: &str) -> String {
    fixtures();
    let work = tempfile::tempdir().unwrap();
    ok(&format!(
        "python3 {SCRIPTS}/bench/{script} --tiny --bin '{BIN}' '{}'",
        work.path().display()
    ))
}

#[test]
fn benchmark_runs_on_tiny_inputs() {
    let f = fixtures();
    let work = tempfile::tempdir().unwrap();
    let walk = Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/header_walk");
    assert!(walk.is_file(), "cargo test builds the examples: {walk:?}");
    let server = walk.with_file_name("tree_server");
    assert!(
        server.is_file(),
        "cargo test builds the examples: {server:?}"
    );
    let out = ok(&format!(
        "python3 {SCRIPTS}/bench/bench.py --tiny --runs 1 --bin '{BIN}' --walk '{}' \
         --server '{}' --cs-template '{}' '{}'",
        walk.display(),
        server.display(),
        f.path("cs"),
        work.path().display()
    ));
    for title in [
        "(a) docker-archive",
        "(b) the same, gzip",
        "(c) docker-archive",
        "(d) OCI layout",
        "(e) containers-storage",
    ] {
        assert!(out.contains(title), "no table for {title}:\n{out}");
    }
    assert!(!out.contains("FAILED"), "{out}");
    // (a) and (c) show the floor: the same commands on a tmpfs copy, no mount
    let floors = out
        .lines()
        .filter(|l| l.contains("on a tmpfs copy of the tree"))
        .filter(|l| {
            l.split('|')
                .nth(3)
                .is_some_and(|w| w.trim().parse::<f64>().is_ok())
        })
        .count();
    assert_eq!(floors, 2, "{out}");
    // (a), (c) and the trees of (c), (d), (e) are served by the minimal FUSE server too
    let served = out
        .lines()
        .filter(|l| l.contains("minimal in-memory FUSE server"))
        .filter(|l| {
            l.split('|')
                .nth(3)
                .is_some_and(|w| w.trim().parse::<f64>().is_ok_and(|t| t > 0.0))
        })
        .count();
    assert_eq!(served, 5, "{out}");
    assert_eq!(
        out.matches("imagefs ÷ the minimal FUSE server, warm:")
            .count(),
        5,
        "{out}"
    );
    // every imagefs row of the tool tables has a warm time, every fixed cost a figure
    let (tools, fixed): (Vec<&str>, Vec<&str>) = out
        .lines()
        .filter(|l| l.starts_with("| imagefs"))
        .partition(|l| l.split('|').count() > 4);
    assert!(tools.len() >= 7 && fixed.len() >= 2, "{out}");
    for r in tools {
        let warm = r.split('|').nth(3).unwrap_or_default().trim();
        assert!(warm.parse::<f64>().is_ok_and(|t| t > 0.0), "{r}");
    }
    for r in fixed {
        let ms = r.split('|').nth(2).unwrap_or_default().trim();
        assert!(ms.parse::<f64>().is_ok_and(|t| t > 0.0), "{r}");
    }
    assert!(work.path().join("results.md").is_file());
}

/// The registry benchmark on a tiny registry: its tables are printed, and its request
/// counts (which do not depend on time) are what issue 16 asks for.
#[test]
fn registry_benchmark_runs_on_tiny_inputs() {
    let out = tiny("registry-bench.py");
    assert!(
        out.contains("| imagefs: mount, ls -l, find, read every config, umount; cold |"),
        "{out}"
    );
    assert!(out.contains("targets (issue 16):"), "{out}");
    // warm: the tags lists and one HEAD per tag, nothing fetched
    assert!(
        out.contains(
            "warm requests: tags lists 2, HEADs 12 (tags: 12), manifest GETs 0, config GETs 0"
        ),
        "{out}"
    );
    // cold: one manifest per tag and one config per image, as the minimal client
    assert!(
        out.contains("cold {'catalog': 1, 'tags list': 2, 'manifest GET': 12, 'manifest HEAD': 0, 'blob GET': 4"),
        "{out}"
    );
}

/// The busy-node benchmark (mount-tests/bench/containerd-busy.py) on a tiny
/// namespace, to keep it working: its table, and the difference it measures (no
/// rescan for unrelated commits while events are followed; one per commit or so with
/// the txid as the token).
#[test]
fn containerd_busy_benchmark_runs_on_tiny_inputs() {
    let out = tiny("containerd-busy.py");
    let row = |tool: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(&format!("| 20 | {tool} |")))
            .unwrap_or_else(|| panic!("no {tool} row: {out}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let events = row("imagefs");
    let txid = row("imagefs, txid");
    // columns: "", names, tool, commits, CPU, rescans, shows
    assert_eq!(events[5], "0", "{out}");
    let polled: usize = txid[5].parse().unwrap();
    assert!(polled >= 3, "{out}");
    assert!(out.contains("targets (issue 17, part 1):"), "{out}");
}

/// The many-sources benchmark (mount-tests/bench/many-sources.py) on five sources, to
/// keep it working: every source watched by inotify, none polled, and its table.
#[test]
fn many_sources_benchmark_runs_on_tiny_inputs() {
    let out = tiny("many-sources.py");
    assert!(out.contains("inotify: watched=5 polled=0"), "{out}");
    assert!(
        out.contains("| idle CPU over 3 s (share of one core) |"),
        "{out}"
    );
    assert!(out.contains("targets (issue 17, part 5):"), "{out}");
}

/// The scale benchmark (mount-tests/bench/scale.py) on stores of 30 and 300 images,
/// to keep it working: its rows, the same tree from both mounts, the user's tool.
#[test]
fn scale_benchmark_runs_on_tiny_inputs() {
    let out = tiny("scale.py");
    // two stores at two sizes, each mounted first and from its kept catalog
    assert_eq!(out.matches(" | first | ").count(), 4, "{out}");
    assert_eq!(out.matches(" | kept  | ").count(), 4, "{out}");
    // the tiny store's 300 images, nine in ten named 3 times, shown by both mounts
    assert_eq!(out.matches("|     309 |     810 |").count(), 2, "{out}");
    assert!(out.contains("cs 300: first 35, kept 35"), "{out}");
    assert!(out.contains("ls -l bench: 810 entries"), "{out}");
    assert!(out.contains(": podman images"), "{out}");
    assert!(out.contains("targets (issue 17, part 3):"), "{out}");
}

/// The write benchmark (mount-tests/bench/write-scale.py) on stores of 10 and 200
/// images, to keep it working: its tables, every mem write applied in place, and
/// its targets.
#[test]
fn write_scale_benchmark_runs_on_tiny_inputs() {
    let out = tiny("write-scale.py");
    assert!(out.contains("| ln / podman tag |"), "{out}");
    assert!(out.contains("of 8 writes applied in place"), "{out}");
    assert_eq!(out.matches("|   8/8   |").count(), 2, "{out}");
    assert!(out.contains("targets (issue 17, part 2):"), "{out}");
}
