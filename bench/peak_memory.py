"""Resident memory of this process on Linux, for the benches that measure peaks (one bench per fresh process)."""

from __future__ import annotations


def proc_status() -> dict[str, int]:
    """The memory lines of /proc/self/status, in bytes: VmRSS, VmHWM (the peak), RssAnon, RssFile."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> bool:
    """Set VmHWM back to the current RSS (Linux 4.0+); False where the file cannot be written."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True
