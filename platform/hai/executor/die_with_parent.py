"""Runs a command that the kernel kills when the process that started it dies.

Usage: python -S die_with_parent.py PARENT_PID COMMAND [ARG...]

The agent starts every rank through this script instead of arming the death signal in a
``preexec_fn``: a ``preexec_fn`` makes Python fork() instead of vfork(), and fork() runs
gRPC's fork handlers in the child, which can restart gRPC's poller there and abort the
child when its file descriptors are closed before exec (grpc/grpc#43055, seen here as
ranks dying with SIGABRT before they ran a line). Only the standard library is used, so
the script starts in milliseconds.
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main() -> None:
    parent, argv = int(sys.argv[1]), sys.argv[2:]
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(f"hai: the agent (pid {parent}) exited before {argv[0]!r} started")
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        sys.stderr.write(f"hai: cannot start {argv[0]!r}: {err}\n")
        sys.exit(127)


if __name__ == "__main__":
    main()
