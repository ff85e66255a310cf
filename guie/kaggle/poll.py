"""Wait for something on Kaggle to finish: back-off between checks, a deadline, a rich spinner."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console

from guie.errors import GuieError


def poll_until(
    what: str,
    check: Callable[[], tuple[bool, str]],
    *,
    interval_s: float,
    max_interval_s: float,
    timeout_s: float,
    console: Console,
    on_timeout: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Call `check` (-> done, status text) until done; return the last status text.

    On timeout, raise a GuieError ending with `on_timeout` (what the user can do next)."""
    deadline = clock() + timeout_s
    wait = interval_s
    with console.status(f"{what}…") as spinner:
        while True:
            done, status = check()
            if done:
                return status
            spinner.update(f"{what}: {status}")
            remaining = deadline - clock()
            if remaining <= 0:
                raise GuieError(f"{what}: still {status} after {timeout_s:g} s; {on_timeout}")
            sleep(min(wait, remaining))
            wait = min(wait * 2, max_interval_s)
