"""What the demo tests share: finding processes a demo left behind."""

from __future__ import annotations

from pathlib import Path

import psutil


def processes_under(root: Path) -> list[str]:
    """Command lines of live processes started for the demo in ``root`` (services name
    their folders on the command line; ranks carry a control folder below it)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            control = (proc.info["environ"] or {}).get("HAI_CONTROL_DIR", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(root) in cmdline or control.startswith(str(root)):
            found.append(cmdline)
    return found
