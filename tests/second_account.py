"""Running a command as a second, unprivileged account (uid 65534, nobody) in tests."""

from __future__ import annotations

import json
import os

import click
from click.testing import CliRunner


def invoke_as_nobody(command: click.Command, args: list[str]) -> tuple[int, str, str]:
    """``command ARGS`` run by uid 65534 in a fork: exit code, stdout, stderr.

    Forked, not started anew: this machine's Python may lie where uid 65534 cannot read it,
    and what the command runs is loaded already. Needs root.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = CliRunner().invoke(command, args)
            os.write(write, json.dumps([result.exit_code, result.stdout, result.stderr]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    os.waitpid(pid, 0)
    assert said, f"the forked `{command.name} {' '.join(args)}` as uid 65534 said nothing"
    code, out, err = json.loads(said)
    return code, out, err
