"""podman on a benchmark's own containers-storage store (vfs, no cgroups, no events),
its run state beside the store: what write-scale.py and scale.py run."""


def podman_cmd(store):
    return ["podman", "--root", store, "--runroot", f"{store}.run", "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
