"""The retry policy (fs3.retry): retries what is retryable with jittered, growing pauses,
stops within its budget with the caller's error, and lets permanent errors through."""

from __future__ import annotations

from typing import Any

import pytest

from fs3.errors import NotFound, Unavailable
from fs3.retry import Backoff, retry

FAST = Backoff(first_s=0.001, max_s=0.01)


def _retryable(err: BaseException) -> bool:
    return isinstance(err, Unavailable)


def test_retries_until_success_with_jittered_pauses(pauses: Any) -> None:
    tries: list[int] = []
    seen: list[BaseException] = []

    def attempt(n: int) -> str:
        tries.append(n)
        if n < 8:
            raise Unavailable(f"try {n}")
        return "done"

    result = retry(
        attempt,
        budget_s=30,
        backoff=FAST,
        retryable=_retryable,
        before_pause=seen.append,
        sleep=pauses,
    )
    assert result == "done" and tries == list(range(1, 9))
    assert [str(err) for err in seen] == [f"try {n}" for n in range(1, 8)]
    assert len(pauses.pauses) == 7
    assert len(set(pauses.pauses)) > 1  # jittered: not one fixed pause
    # Each pause lies under its doubling bound, capped at max_s.
    for n, pause in enumerate(pauses.pauses):
        assert 0 <= pause <= min(FAST.first_s * 2**n, FAST.max_s)


def _down(n: int) -> None:
    raise Unavailable(f"server down (try {n})")


def test_gives_up_after_its_budget_with_the_callers_error(pauses: Any) -> None:
    with pytest.raises(TimeoutError, match=r"gave up after 0.2s; last: server down") as caught:
        retry(
            _down,
            budget_s=0.2,
            backoff=FAST,
            retryable=_retryable,
            give_up=lambda err: TimeoutError(f"gave up after 0.2s; last: {err}"),
            sleep=pauses,
        )
    assert isinstance(caught.value.__cause__, Unavailable)
    assert len(pauses.pauses) > 2 and sum(pauses.pauses) <= 0.2


def test_without_give_up_the_last_error_is_raised(pauses: Any) -> None:
    with pytest.raises(Unavailable, match=r"server down \(try [0-9]+\)$") as caught:
        retry(_down, budget_s=0.05, backoff=FAST, retryable=_retryable, sleep=pauses)
    assert str(caught.value) == f"server down (try {len(pauses.pauses) + 1})"


def test_a_permanent_error_is_raised_at_once(pauses: Any) -> None:
    def attempt(n: int) -> None:
        raise NotFound("/no/such/file")

    with pytest.raises(NotFound):
        retry(attempt, budget_s=30, backoff=FAST, retryable=_retryable, sleep=pauses)
    assert pauses.pauses == []


@pytest.mark.parametrize(("first_s", "max_s"), [(0, 1), (-1, 1), (2, 1)])
def test_a_backoff_needs_a_positive_growing_range(first_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match=f"first_s={first_s!r}, max_s={max_s!r}"):
        Backoff(first_s=first_s, max_s=max_s)
