"""Owner-only reads and secret environment values, on a real local cluster.

User ann runs a job with a secret environment value; user bob may see in ``List`` that it
exists, but not its spec, and may not describe it or read its logs; the admin may. The rank
reports whether the secret reached it by comparing hashes, so its value is printed nowhere:
the test then looks for it in every API answer and in every log file of the platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hai.errors import ForbiddenError, SpecError
from hai.rpc import ApiClient
from hai.spec import spec_from_dict

SECRET = "hunter2-owner-reads-7f3a"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# The rank prints only whether its variable hashes to what the test expects.
CHECK = (
    "import hashlib, os, sys; "
    "v = os.environ.get('DB_PASSWORD', ''); "
    "print('secret ok' if hashlib.sha256(v.encode()).hexdigest() == sys.argv[1] "
    "else 'secret wrong')"
)


def _spec() -> dict:
    return {
        "name": "private",
        "entrypoint": sys.executable,
        "arguments": ["-c", CHECK, hashlib.sha256(SECRET.encode()).hexdigest()],
        "environment": {"VISIBLE": "plain"},
        "secret_environment": {"DB_PASSWORD": SECRET},
        "nodes": 1,
        "gpus_per_node": 1,
    }


def _files_holding(root: Path, text: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``text``."""
    return sorted(
        str(p) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()
    )


def _hai_as_nobody(address: str, token: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`hai ARGV` run by a second, unprivileged account (uid 65534) with ``token``."""
    env = {**os.environ, "HAI_SERVER": address, "HAI_TOKEN": token, "HAI_STATE_DIR": "/nonexistent"}
    return subprocess.run(
        [*NOBODY, sys.executable, "-m", "hai", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )


def test_a_name_in_both_environments_is_refused() -> None:
    with pytest.raises(SpecError, match="both set DB_PASSWORD"):
        spec_from_dict({**_spec(), "environment": {"DB_PASSWORD": "x"}})


def test_a_secret_value_is_masked_in_the_spec_shown() -> None:
    spec = spec_from_dict(_spec())
    assert spec.secret_environment == {"DB_PASSWORD": SECRET}  # what later runs launch with
    assert spec.redacted().secret_environment == {"DB_PASSWORD": "***"}
    assert SECRET not in repr(spec.redacted())


@pytest.mark.slow
def test_only_owner_and_admin_read_a_job_and_no_api_shows_a_secret(cluster) -> None:  # type: ignore[no-untyped-def]
    admin = cluster.client
    ann = ApiClient(admin.address, admin.call("AddUser", name="ann"))
    bob = ApiClient(admin.address, admin.call("AddUser", name="bob"))
    answers: list[object] = []
    try:
        submitted = ann.call("Submit", spec=_spec())
        answers.append(submitted)
        job_id = submitted["id"]
        finished = cluster.wait_for(
            f"job {job_id} to finish",
            lambda: (d := ann.call("Describe", job_id=job_id))["job"]["state"] == "succeeded" and d,
        )
        answers.append(finished)
        assert finished["job"]["spec"]["secret_environment"] == {"DB_PASSWORD": "***"}
        assert finished["job"]["spec"]["environment"] == {"VISIBLE": "plain"}

        log = ann.call("Logs", job_id=job_id)
        answers.append(log)
        assert log["text"] == "secret ok\n"  # the value reached the rank, unprinted

        for what, call in [
            ("spec, runs and events", lambda: bob.call("Describe", job_id=job_id)),
            ("logs", lambda: bob.call("Logs", job_id=job_id)),
        ]:
            with pytest.raises(ForbiddenError) as info:
                call()
            assert str(info.value) == (
                f"job {job_id} belongs to ann; only its owner or an admin may read its {what}"
            )

        seen = {j["id"]: j for j in bob.call("List", all=True)}
        answers.append(seen)
        assert seen[job_id]["user"] == "ann"
        assert seen[job_id]["state"] == "succeeded"
        assert seen[job_id]["nodes"] == 1
        assert seen[job_id]["spec"] is None  # no arguments, environment or command

        # The same through the CLI, run by another account: one line, a non-zero exit.
        refused = _hai_as_nobody(admin.address, bob.token, "logs", str(job_id))
        assert refused.returncode != 0
        assert refused.stderr.strip().splitlines() == [
            f"Error: job {job_id} belongs to ann; only its owner or an admin may read its logs"
        ]
        listed = _hai_as_nobody(admin.address, bob.token, "ls", "--json", "--all")
        assert listed.returncode == 0, listed.stderr
        answers.append(listed.stdout)
        assert "VISIBLE" not in listed.stdout and CHECK not in listed.stdout

        as_admin = admin.call("Describe", job_id=job_id)
        answers += [as_admin, admin.call("Logs", job_id=job_id), admin.call("List", all=True)]
        assert as_admin["job"]["spec"]["arguments"][0] == "-c"
        assert as_admin["job"]["spec"]["secret_environment"] == {"DB_PASSWORD": "***"}
        assert as_admin["events"], "the admin sees the job's events"
        answers.append(ann.call("List", all=True))
    finally:
        ann.close()
        bob.close()
    assert SECRET not in json.dumps(answers)
    assert _files_holding(cluster.state_dir / "logs", SECRET) == []
