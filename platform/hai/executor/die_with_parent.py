"""Runs a rank as the leader's child in a process group of its own, which dies whole.

Usage: python -S die_with_parent.py PARENT_PID CGROUP ACCOUNT COMMAND [ARG...]

This script is the rank's supervisor. It starts a new session (so the session and process
group ids are its pid, the pid the agent knows), forks, and the child execs COMMAND; every
process the rank forks stays in that group unless it leaves it on purpose. So:

- the agent stops a rank by signalling the group (``os.killpg``): SIGTERM reaches the rank
  and its children alike, and SIGKILL at the end of the grace period ends the supervisor
  too. The supervisor ignores SIGTERM: the rank decides how to take it;
- the supervisor exits as the rank did (its code, or the same signal), and the agent kills
  what is left of the group before it reaps the supervisor (whose pid, unreaped, cannot be
  reused as another group's id);
- if the agent dies, even by SIGKILL, the kernel sends the supervisor SIGHUP (its death
  signal, armed with ``prctl(PR_SET_PDEATHSIG)``) and the supervisor SIGKILLs the whole
  group, itself included. The rank also gets SIGKILL if the supervisor alone dies;
- CGROUP, unless it is ``-``, is a cgroup v2 folder (see ``cgroups.py``) the supervisor
  joins before it forks, which holds even processes that leave the group; the agent kills
  it with the group, and so does the supervisor when the agent dies. Where joining is
  refused, the rank runs with its process group only;
- ACCOUNT, unless it is ``-``, is ``UID:GID:GROUP,GROUP...``: the rank (not the
  supervisor) takes these credentials before it execs COMMAND. The supervisor keeps the
  agent's, so that it can join the cgroup, keep its death signal and end the group, and the
  rank cannot signal it. The kernel clears a death signal when credentials change, so the
  rank arms its own only after the switch, then checks that its supervisor still lives.

The agent starts every rank through this script instead of a ``preexec_fn``: a
``preexec_fn`` makes Python fork() instead of vfork(), and fork() runs gRPC's fork handlers
in the child, which can restart gRPC's poller there and abort the child when its file
descriptors are closed before exec (grpc/grpc#43055, seen here as ranks dying with SIGABRT
before they ran a line). This process has no gRPC, so its own fork() is safe. Only the
standard library is used, so the script starts in milliseconds.
"""

import ctypes
import os
import resource
import signal
import sys
import warnings  # noqa: F401  os.execvp imports it, after the switch: see _run_rank
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_AGENT_GONE = signal.SIGHUP
"""The supervisor's death signal: catchable (unlike SIGKILL), so that it can end the group."""


def _join(cgroup: str) -> str | None:
    if cgroup == "-":
        return None
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    except OSError:
        return None
    return cgroup


def _ender(cgroup: str | None) -> Callable[[int, object], None]:
    def end(signum: int, frame: object) -> None:
        if cgroup is not None:
            try:
                with open(os.path.join(cgroup, "cgroup.kill"), "w") as kill:
                    kill.write("1")
            except OSError:
                pass
        os.killpg(0, signal.SIGKILL)

    return end


def _switch(account: str) -> None:
    """Takes the rank's credentials: groups first, then group, then user (after setuid
    this process may no longer change the other two)."""
    uid, gid, groups = account.split(":")
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(int(gid))
    os.setuid(int(uid))


def _run_rank(libc: ctypes.CDLL, supervisor: int, account: str, argv: list[str]) -> None:
    # Python ignores SIGPIPE and SIGXFSZ at start, and ignored signals stay ignored
    # across exec; the rank gets the defaults, as subprocess's restore_signals gives.
    for sig in (signal.SIGTERM, _AGENT_GONE, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    # From here on the rank's account may not read this interpreter's standard library
    # (one in root's home): nothing may import after the switch, hence the imports above.
    if account != "-":
        try:
            _switch(account)
        except OSError as err:
            sys.stderr.write(f"hai: cannot run as account {account}: {err}\n")
            sys.stderr.flush()
            os._exit(127)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(128 + signal.SIGKILL)
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        sys.stderr.write(f"hai: cannot start {argv[0]!r}: {err}\n")
        sys.stderr.flush()
    os._exit(127)


def _exit_as(status: int) -> None:
    """Ends this process the way the rank ended (``status`` from waitpid)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the rank dumped core, if any
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # reached only if the signal does not end a process
    os._exit(os.waitstatus_to_exitcode(status))


def main() -> None:
    parent, cgroup, account, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
    os.setsid()
    joined = _join(cgroup)
    libc = ctypes.CDLL(None, use_errno=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(_AGENT_GONE, _ender(joined))
    libc.prctl(_PR_SET_PDEATHSIG, _AGENT_GONE)
    if os.getppid() != parent:
        sys.exit(f"hai: the agent (pid {parent}) exited before {argv[0]!r} started")
    supervisor = os.getpid()
    child = os.fork()
    if child == 0:
        _run_rank(libc, supervisor, account, argv)
    _, status = os.waitpid(child, 0)
    _exit_as(status)


if __name__ == "__main__":
    main()
