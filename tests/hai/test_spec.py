from __future__ import annotations

from pathlib import Path

import pytest

from hai.errors import SpecError
from hai.spec import AUTO, load_spec, load_spec_file, parse_priority, spec_from_dict

GOOD = """
name: llama-pretrain
entrypoint: python train.py
arguments: [--lr, "3e-4"]
environment: {OMP_NUM_THREADS: 4}
nodes: 4
gpus_per_node: 8
priority: 40
group: a100
max_run_time: 3600
restart_policy: on_failure
suspend_grace_period: 30
"""


def test_full_spec_parses() -> None:
    spec = load_spec(GOOD)
    assert spec.name == "llama-pretrain"
    assert spec.arguments == ["--lr", "3e-4"]
    assert spec.environment == {"OMP_NUM_THREADS": "4"}
    assert (spec.nodes, spec.priority, spec.group) == (4, 40, "a100")
    assert spec.max_run_time == 3600.0
    assert spec.to_dict()["restart_policy"] == "on_failure"


def test_defaults() -> None:
    spec = spec_from_dict({"name": "a", "entrypoint": "true"})
    assert (spec.nodes, spec.gpus_per_node, spec.priority, spec.group) == (1, 8, AUTO, "default")
    assert spec.suspend_grace_period == 5.0


def test_every_bad_field_is_reported_once() -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict(
            {
                "name": "bad name!",
                "nodes": 0,
                "priority": 35,
                "restart_policy": "always",
                "suspend_grace_period": -1,
                "gpus": 8,
                "environment": {"1X": "y"},
            }
        )
    problems = info.value.problems
    fields = sorted(p.split(":")[0] for p in problems)
    assert fields == sorted(
        [
            "gpus",
            "entrypoint",
            "name",
            "nodes",
            "priority",
            "restart_policy",
            "suspend_grace_period",
            "environment",
        ]
    )
    assert any("got 35" in p for p in problems)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["[1, 2]", "name: [unclosed", "42"])
def test_non_mapping_or_broken_yaml(text: str) -> None:
    with pytest.raises(SpecError):
        load_spec(text)


@pytest.mark.parametrize(
    ("value", "level"), [("AUTO", AUTO), ("50", 50), (10, 10), ("ABOVE_NORMAL", 20), ("normal", 10)]
)
def test_priority_names(value: object, level: int) -> None:
    assert parse_priority(value) == level


def test_bool_is_not_a_count() -> None:
    with pytest.raises(SpecError, match="nodes"):
        spec_from_dict({"name": "a", "entrypoint": "x", "nodes": True})


def test_a_spec_files_problems_name_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: a\nentrypoint: python train.py\nnodes: 0\nmax_run_time: soon\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert info.value.problems == [
        f"{path}: nodes: input should be greater than or equal to 1, got 0",
        f"{path}: max_run_time: input should be a valid number, got 'soon'",
    ]


def test_arguments_and_environment_values_become_text_counts_do_not() -> None:
    spec = load_spec("name: a\nentrypoint: x\narguments: [--lr, 3]\nenvironment: {N: 4}\n")
    assert (spec.arguments, spec.environment) == (["--lr", "3"], {"N": "4"})
    with pytest.raises(SpecError, match=r"gpus_per_node: .*, got '8'"):
        spec_from_dict({"name": "a", "entrypoint": "x", "gpus_per_node": "8"})


@pytest.mark.parametrize(
    ("entrypoint", "problem"),
    [
        ('python -c "print(1)', "entrypoint: cannot be split like a shell command (no closing"),
        ("python x\\", "entrypoint: cannot be split like a shell command (no escaped"),
        ("''", "entrypoint: must be a non-empty command"),
    ],
)
def test_an_entrypoint_a_shell_cannot_split_is_refused_in_one_line(
    entrypoint: str, problem: str
) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "a", "entrypoint": entrypoint})
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(problem)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nodes", 10**30),
        ("gpus_per_node", 2**63),
        ("max_restarts", 10**19),
        ("max_run_time", float("inf")),
        ("suspend_grace_period", 1e300),
    ],
)
def test_huge_numbers_are_refused_naming_the_field(field: str, value: object) -> None:
    """The store's integers are 64-bit: a bound here keeps 10**30 from an internal error."""
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "a", "entrypoint": "x", field: value})
    [problem] = info.value.problems
    assert problem.startswith(f"{field}: input should be less than or equal to ")
    assert problem.endswith(f", got {value!r}")


def test_a_spec_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(b"name: a\nentrypoint: caf\xe9\n")
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    assert info.value.problems == [f"{path}: not UTF-8 text (byte 23); save the spec file as UTF-8"]


@pytest.mark.parametrize(
    "field",
    [
        {"entrypoint": "python\x00x"},
        {"arguments": ["--a", "b\x00"]},
        {"environment": {"A": "1\x00"}},
    ],
)
def test_a_nul_character_is_refused_at_submit_not_by_exec_on_the_node(field: dict) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_dict({"name": "a", "entrypoint": "x", **field})
    [problem] = info.value.problems
    assert problem.startswith(f"{next(iter(field))}: holds a NUL character")


def test_plain_commands_take_the_fast_split_and_it_agrees_with_shlex() -> None:
    """The fast path (str.split) may only take commands shlex splits the same way: every
    short string over the characters around its edges (quotes, backslash, the whitespace
    str.split knows and shlex does not, non-ASCII) either agrees or goes to shlex."""
    import itertools
    import shlex

    from hai.spec import _PLAIN_COMMAND

    alphabet = "a -'\"\\\t\n\x0b\x0c\x1c\x85\xa0é#!~"
    taken = 0
    for n in range(4):
        for chars in itertools.product(alphabet, repeat=n):
            text = "".join(chars)
            if _PLAIN_COMMAND.fullmatch(text):
                taken += 1
                assert text.split() == shlex.split(text), repr(text)
    assert taken > 100  # the fast path is really taken, not only refused
    assert not _PLAIN_COMMAND.fullmatch("python 'x y'")
