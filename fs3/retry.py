"""The one retry policy of fs3 (and of hai, which imports it): exponential backoff with full
jitter, bounded by a time budget, built on tenacity.

Full jitter (each pause uniform between zero and the exponential bound) is what keeps
rivals apart: clients that failed together, on one dead chain member or one hot metadata
row, would otherwise retry together again, pause after pause.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """How long to pause before each retry: up to ``first_s`` before the first, the bound
    doubling per retry up to ``max_s``; each pause is drawn uniformly below its bound."""

    first_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(
                f"Backoff needs 0 < first_s <= max_s, got first_s={self.first_s!r}, "
                f"max_s={self.max_s!r}"
            )


def retry(
    attempt: Callable[[int], T],
    *,
    budget_s: float,
    backoff: Backoff,
    retryable: Callable[[BaseException], bool],
    give_up: Callable[[BaseException], BaseException] | None = None,
    before_pause: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Calls ``attempt(n)`` (``n`` counts tries from 1) until it returns, and returns that.

    An error for which ``retryable`` is false propagates at once. After a retryable one,
    ``before_pause(error)`` runs, then a pause drawn from ``backoff``, then the next try;
    no pause would end past ``budget_s`` seconds from the first try: there the retrying
    stops. ``sleep`` is how a pause is taken (tests pass one that records them).

    Raises:
        ``give_up(last error)``, chained to it, once the budget is spent; the last error
        itself when ``give_up`` is None.
        whatever ``attempt`` raises that is not retryable.
    """
    # The first try runs without tenacity: its bookkeeping costs about 11 us a call, a third
    # of a metadata transaction on SQLite, and the first try almost always succeeds. Tenacity
    # takes over after a retryable failure, replaying that failure as its own first try.
    started = time.monotonic()
    try:
        return attempt(1)
    except BaseException as err:
        if not retryable(err):
            raise
        first_failure = err

    def replayed(n: int) -> T:
        if n == 1:
            raise first_failure
        return attempt(n)

    retrying = tenacity.Retrying(
        sleep=sleep,
        wait=tenacity.wait_random_exponential(multiplier=backoff.first_s, max=backoff.max_s),
        stop=tenacity.stop_before_delay(budget_s - (time.monotonic() - started)),
        retry=tenacity.retry_if_exception(retryable),
        before_sleep=None if before_pause is None else _last_error_to(before_pause),
    )
    try:
        for try_ in retrying:
            with try_:
                return replayed(try_.retry_state.attempt_number)
    except tenacity.RetryError as spent:
        last = spent.last_attempt.exception()
        assert last is not None, "tenacity gives up only after a failed try"
        if give_up is None:
            raise last from None
        raise give_up(last) from last
    raise AssertionError("tenacity ends its tries by returning or raising")


def _last_error_to(
    hook: Callable[[BaseException], None],
) -> Callable[[tenacity.RetryCallState], None]:
    def call(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        assert error is not None, "tenacity pauses only after a failed try"
        hook(error)

    return call
