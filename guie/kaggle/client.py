"""The one door to Kaggle: the real `kaggle` client, built lazily, with guie's endpoint, timeouts,
retries and error messages.

The client as shipped has traps (see docs): `import kaggle` authenticates (maybe over the
network) and prints help; plain calls have no timeout; create calls retry for minutes; verbose
mode prints the Authorization header. So guie builds the client itself, gives every request a
timeout, retries only what is safe to retry, and turns failures into messages that say what to
do and never contain the key.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from guie.errors import GuieError
from guie.kaggle.credentials import TOKEN_URL, Credentials, load_credentials
from guie.kaggle.settings import rules_url
from guie.params.kaggle import KaggleParams

if TYPE_CHECKING:
    from kagglesdk.kaggle_client import KaggleClient as SdkClient

ENDPOINT_ENV = "GUIE_KAGGLE_ENDPOINT"
USER_AGENT = "guie (kaggle-api)"
MAX_BACKOFF_S = 60.0
T = TypeVar("T")


def endpoint_override() -> str | None:
    """The API base URL from GUIE_KAGGLE_ENDPOINT (e.g. http://127.0.0.1:8123, no /v1), if set."""
    value = os.environ.get(ENDPOINT_ENV, "").strip()
    if not value:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.rstrip("/") not in ("",):
        raise GuieError(f"{ENDPOINT_ENV}={value!r}: expected an API base URL such as http://127.0.0.1:8123 (no /v1)")
    return value.rstrip("/")


@contextmanager
def _inert_kaggle_import() -> Iterator[None]:
    """`import kaggle` authenticates at import time: against a throwaway HOME, with no token and
    no verbose mode, it does nothing (no network, no help text, no files in the user's home)."""
    names = ("HOME", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN", "VERBOSE", "VERBOSE_OUTPUT")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="guie-kaggle-import-") as scratch:
        os.environ["HOME"] = os.environ["KAGGLE_CONFIG_DIR"] = scratch
        for name in names[2:]:
            os.environ.pop(name, None)
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@functools.cache
def _api_class() -> type:
    with _inert_kaggle_import():
        from kaggle.api.kaggle_api_extended import KaggleApi

    class GuieKaggleApi(KaggleApi):
        """KaggleApi whose every client comes from guie (endpoint, credentials, timeout)."""

        def __init__(self, build: Callable[[], Any], username: str) -> None:
            self._build = build
            self.config_values = {"username": username}

        def build_kaggle_client(self) -> Any:
            return self._build()

    return GuieKaggleApi


def _timeout_adapter(timeout: float) -> Any:
    from requests.adapters import HTTPAdapter

    class TimeoutAdapter(HTTPAdapter):
        """Gives every request a timeout unless the caller set one; never retries (guie does)."""

        def send(self, request, timeout=None, **kwargs):  # type: ignore[override]
            return super().send(request, timeout=self._guie_timeout if timeout is None else timeout, **kwargs)

    adapter = TimeoutAdapter(max_retries=0)
    adapter._guie_timeout = timeout
    return adapter


def _tries(n: int) -> str:
    return f"{n} try" if n == 1 else f"{n} tries"


def http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(err: BaseException) -> float | None:
    response = getattr(err, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class KaggleClient:
    """Credentials + endpoint + policy; `call` runs one client call under that policy."""

    def __init__(
        self,
        params: KaggleParams,
        credentials: Credentials | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.params = params
        self._credentials = credentials
        self._sleep = sleep
        self._api: Any = None
        self.endpoint = endpoint_override()

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            self._credentials = load_credentials(self.params.username)
        return self._credentials

    def redact(self, text: str) -> str:
        for secret in self.credentials.secrets if self._credentials else ():
            text = text.replace(secret, "***")
        return text

    def sdk(self) -> SdkClient:
        """A kagglesdk client for one call (use as a context manager, like the kaggle CLI does)."""
        from kagglesdk.kaggle_client import KaggleClient as SdkClient
        from kagglesdk.kaggle_env import KaggleEnv

        creds = self.credentials
        client = SdkClient(
            env=KaggleEnv.PROD if self.endpoint else None,
            verbose=False,  # verbose prints the Authorization header
            username=creds.username if creds.key else None,
            password=creds.key or None,
            api_token=creds.token or None,
            user_agent=USER_AGENT,
        )
        http = client.http_client()
        # kagglesdk has no endpoint or timeout setting: set the endpoint on this client only and
        # mount an adapter that gives each request (redirects included) guie's timeout.
        if not all(hasattr(http, name) for name in ("_endpoint", "_init_session", "_session")):
            raise GuieError("this kagglesdk version is not one guie knows how to configure; install kaggle==2.2.4")
        if self.endpoint:
            http._endpoint = self.endpoint
        http._init_session()
        adapter = _timeout_adapter(self.params.request_timeout_s)
        http._session.mount("http://", adapter)
        http._session.mount("https://", adapter)
        return client

    @property
    def api(self) -> Any:
        """The kaggle CLI's KaggleApi, whose methods use `sdk()` clients."""
        if self._api is None:
            self._api = _api_class()(self.sdk, self.credentials.username)
        return self._api

    def rpc(self, what: str, method: Callable[[SdkClient], T], **kwargs) -> T | None:
        """`call` of one kagglesdk method on a fresh SDK client, e.g.
        `client.rpc("look up dataset x", lambda kaggle: kaggle.datasets.dataset_api_client.get_dataset(request))`."""

        def run() -> T:
            with self.sdk() as kaggle:
                return method(kaggle)

        return self.call(what, run, **kwargs)

    def call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        idempotent: bool = True,
        allow: tuple[int, ...] = (),
        competition: str | None = None,
    ) -> T | None:
        """Run `fn`, retrying 429, 5xx and network failures with back-off; statuses in `allow`
        return None; anything else becomes a GuieError. A call that timed out after sending is
        retried only when `idempotent` (a create might have gone through)."""
        import requests
        from urllib3 import exceptions as urllib3_exceptions

        delay = self.params.retry_backoff_s
        attempts = self.params.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except requests.HTTPError as err:
                status = http_status(err)
                if status in allow:
                    return None
                retryable = status == 429 or (status is not None and status >= 500)
                if not retryable or attempt == attempts:
                    raise GuieError(self._http_message(what, err, status, attempt, competition)) from None
                wait = _retry_after(err) if status == 429 else None
            except (requests.ConnectTimeout, requests.ReadTimeout, urllib3_exceptions.ReadTimeoutError) as err:
                sent = not isinstance(err, requests.ConnectTimeout)
                if (sent and not idempotent) or attempt == attempts:
                    raise GuieError(self._timeout_message(what, attempt, sent and not idempotent)) from None
                wait = None
            except (
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                urllib3_exceptions.ProtocolError,
            ) as err:
                if attempt == attempts:
                    where = self.endpoint or "api.kaggle.com"
                    raise GuieError(
                        self.redact(
                            f"{what}: could not reach Kaggle at {where} after {_tries(attempt)} "
                            f"({type(err).__name__}); "
                            f"check your network{' or ' + ENDPOINT_ENV if self.endpoint else ''} and re-run"
                        )
                    ) from None
                wait = None
            except ValueError as err:  # the client's own checks of names and metadata
                raise GuieError(self.redact(f"{what}: {err}")) from None
            self._sleep(min(MAX_BACKOFF_S, delay if wait is None else wait))
            delay *= 2
        raise AssertionError("unreachable")

    def _http_message(
        self, what: str, err: BaseException, status: int | None, attempts: int, competition: str | None
    ) -> str:
        detail = str(err).strip()[:300]
        if status == 401:
            msg = (
                f"{what}: Kaggle rejected the credentials from {self.credentials.source} (HTTP 401); "
                f"check the username and key, or create a new token at {TOKEN_URL}"
            )
        elif status == 403 and competition:
            msg = (
                f"{what}: Kaggle refused (HTTP 403: {detail}); accept the competition rules at "
                f"{rules_url(competition)} with the account {self.credentials.username!r}, then re-run"
            )
        elif status == 403:
            msg = f"{what}: permission denied for {self.credentials.username!r} (HTTP 403: {detail})"
        elif status == 404:
            msg = f"{what}: not found (HTTP 404: {detail})"
        elif status == 429:
            msg = f"{what}: Kaggle is rate-limiting (HTTP 429) after {_tries(attempts)}; wait a few minutes and re-run"
        elif status is not None and status >= 500:
            msg = (
                f"{what}: Kaggle server error (HTTP {status}) after {_tries(attempts)} ({detail}); "
                "re-run later, finished steps are kept"
            )
        else:
            msg = f"{what}: Kaggle refused the request (HTTP {status}: {detail})"
        return self.redact(msg)

    def _timeout_message(self, what: str, attempts: int, maybe_done: bool) -> str:
        timeout = self.params.request_timeout_s
        msg = f"{what}: no answer within {timeout:g} s (kaggle.request_timeout_s) after {_tries(attempts)}"
        if maybe_done:
            msg += "; it may have gone through on Kaggle's side, so check there (or `guie status`) before re-running"
        return msg
