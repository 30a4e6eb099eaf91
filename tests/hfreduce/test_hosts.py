"""hfreduce across two test hosts (docs/hosts.md), two ranks each: the sums match gloo's,
and a host cut off in the middle of a call fails the other host's ranks cleanly.

Each rank runs ``tests.hfreduce.hosts_rank`` on its host from the repository root, with
the environment the platform would give it: MASTER_ADDR is host 1's bridge address and
the node id is the host's name, so the inter-node path crosses the hosts' bridge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from hfreduce.arena import SHM_PREFIX
from hfreduce.bench import host_rank_environment
from testhosts import Hosts
from tests.hfreduce.hosts_rank import FAILED, START_S

pytestmark = pytest.mark.hosts

REPO = Path(__file__).resolve().parents[2]
HOSTS, PER_HOST = 2, 2
TIMEOUT_S = 5  # HFREDUCE_TIMEOUT of the cut-off test
# After the cut: HFREDUCE_TIMEOUT, then the node's failure notice and the teardown.
AFTER_CUT_S = TIMEOUT_S + 25


@contextmanager
def _ranks(hosts: Hosts, mode: str, timeout_s: int) -> Iterator[list[subprocess.Popen]]:
    """Starts the job's ranks (host ``1 + rank // PER_HOST``); kills what is left at the end."""
    procs = []
    try:
        for rank in range(HOSTS * PER_HOST):
            host = hosts[1 + rank // PER_HOST]
            env = {
                **os.environ,
                **host_rank_environment(hosts, rank, PER_HOST),
                "HFREDUCE_TIMEOUT": str(timeout_s),
            }
            argv = [sys.executable, "-m", "tests.hfreduce.hosts_rank", mode, str(host.dir)]
            procs.append(
                hosts.popen(
                    host.index,
                    argv,
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _finish(proc: subprocess.Popen, rank: int, timeout_s: float) -> tuple[int, str]:
    """The rank's exit code and stderr; a rank still running after ``timeout_s`` fails."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # hosts_rank writes its stacks, then dies
        time.sleep(1)
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"rank {rank} still running after {timeout_s}s; its stacks:\n{err}")
    return proc.returncode, err


def _failure_line(err: str) -> str:
    """The rank's ``Type: message`` line: the last on stderr, after c10d's warnings."""
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def _host_processes(hosts: Hosts, index: int) -> str:
    out = subprocess.run(
        ["ip", "netns", "pids", hosts[index].name], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_sums_equal_gloo_across_hosts(make_hosts: Callable[[int], Hosts]) -> None:
    hosts = make_hosts(HOSTS)
    with _ranks(hosts, "compare", 60) as procs:
        for rank, proc in enumerate(procs):
            code, err = _finish(proc, rank, START_S)
            assert code == 0, f"rank {rank}: {err}"
    results = [
        torch.load(hosts[1 + rank // PER_HOST].dir / f"{rank}.pt")
        for rank in range(HOSTS * PER_HOST)
    ]
    for rank, result in enumerate(results):
        assert result["hfreduce"].keys() == result["gloo"].keys() != set()
        for key, got in result["hfreduce"].items():
            want = result["gloo"][key]
            if got.dtype.is_floating_point:
                # gloo sums ring-wise, hfreduce within each host then across: the same
                # four terms in another order differ in the last bits of float32.
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5, msg=f"{rank} {key}")
            else:
                assert torch.equal(got, want), f"rank {rank} {key}"
            assert torch.equal(got, results[0]["hfreduce"][key]), f"ranks 0, {rank} {key}"


def test_a_host_cut_off_mid_call_fails_the_other_hosts_ranks(
    make_hosts: Callable[[int], Hosts],
) -> None:
    hosts = make_hosts(HOSTS)
    with _ranks(hosts, "loop", TIMEOUT_S) as procs:
        ready = [hosts[1 + r // PER_HOST].dir / f"ready-{r}" for r in range(len(procs))]
        deadline = time.monotonic() + START_S
        while not all(path.exists() for path in ready):
            exited = [r for r, proc in enumerate(procs) if proc.poll() is not None]
            assert not exited, (
                f"ranks {exited} exited before the loop: {procs[exited[0]].stderr.read()}"
            )
            assert time.monotonic() < deadline, "ranks not in their all_reduce loop"
            time.sleep(0.1)
        hosts.cut(2)
        try:
            outcomes = [_finish(proc, rank, AFTER_CUT_S) for rank, proc in enumerate(procs)]
        finally:
            hosts.restore(2)
    lost = hosts[2].name
    for rank, (code, err) in enumerate(outcomes[:PER_HOST]):
        assert code == FAILED, f"rank {rank} exited {code}: {err}"
        line = _failure_line(err)
        assert line.startswith(("CollectiveTimeoutError", "PeerLostError")), err
        assert f"node {lost}" in line, f"rank {rank} does not name host 2: {err}"
    # Host 2's ranks lost host 1 the same way; they too end with hfreduce's error (which
    # rank they blame depends on whether a local rank's notice or their own timeout comes
    # first, and the cut host cannot reach the store to learn the job's first failure).
    for rank, (code, err) in enumerate(outcomes[PER_HOST:], PER_HOST):
        assert code == FAILED, f"rank {rank} exited {code}: {err}"
        line = _failure_line(err)
        assert line.startswith(("CollectiveTimeoutError", "PeerLostError")), err
    for host in hosts:
        assert list((host.dir / "shm").glob(f"{SHM_PREFIX}*")) == [], host.name
        assert _host_processes(hosts, host.index) == "", f"{host.name} still runs processes"
