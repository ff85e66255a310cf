"""Wait for something on Kaggle to finish: back-off between checks, a deadline, a rich spinner."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console

from guie.errors import GuieError

if TYPE_CHECKING:
    from guie.params.kaggle import KaggleParams


def poll_until(
    what: str,
    check: Callable[[], tuple[bool, str]],
    *,
    params: KaggleParams,
    timeout_s: float,
    console: Console,
    on_timeout: str,
) -> str:
    """Call `check` (-> done, status text) until done, waiting kaggle.poll_interval_s between checks,
    doubling up to kaggle.poll_max_interval_s; return the last status text.

    On timeout, raise a GuieError ending with `on_timeout` (what the user can do next)."""
    deadline = time.monotonic() + timeout_s
    wait = params.poll_interval_s
    with console.status(f"{what}…") as spinner:
        while True:
            done, status = check()
            if done:
                return status
            spinner.update(f"{what}: {status}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuieError(f"{what}: still {status} after {timeout_s:g} s; {on_timeout}")
            time.sleep(min(wait, remaining))
            wait = min(wait * 2, params.poll_max_interval_s)
