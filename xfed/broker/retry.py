"""One retry-with-deadline loop for the places that outlast a Redis outage on purpose.

redis-py's own `Retry` (set up in xfed.broker.connection) covers a single command; this helper is
for the callers that must keep trying an operation for a stated time and then fail naming it:
the first PING at start-up, sending a message, emitting an event.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def retry_until_deadline(attempt: Callable[[], T], *, seconds: float,
                         transient: tuple[type[BaseException], ...],
                         give_up: Callable[[BaseException], BaseException | None] = lambda exc: None,
                         first_delay: float = 0.05, max_delay: float = 1.0,
                         between: Callable[[], None] | None = None) -> T:
    """Call `attempt` until it returns; on a `transient` error sleep (doubling, capped) and try again.

    When the next sleep would end past `seconds`, the error `give_up(exc)` returns is raised (the
    transient error itself when it returns None). Any other exception propagates at once.
    `between` runs before each sleep (it may raise, e.g. to stop when a job is stopped).
    """
    deadline = time.monotonic() + seconds
    delay = first_delay
    while True:
        try:
            return attempt()
        except transient as exc:
            if time.monotonic() + delay > deadline:
                err = give_up(exc)
                if err is None:
                    raise
                raise err from None
        if between is not None:
            between()
        time.sleep(delay)
        delay = min(delay * 2, max_delay)
