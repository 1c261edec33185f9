"""What the benchmarks read of a running imagefs daemon (shared by containerd-busy.py
and many-sources.py)."""

import os

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """The process's CPU time so far, user and system (/proc/PID/stat, in ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK
