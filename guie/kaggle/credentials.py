"""Kaggle credentials, found the way the `kaggle` CLI finds them, but checked before anything is sent.

guie reads them itself (instead of letting `import kaggle` authenticate) so that a missing or
exposed key is one clear error, and so the key can be scrubbed from every message.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from guie.errors import GuieError

TOKEN_URL = "https://www.kaggle.com/settings/api"


@dataclass(frozen=True)
class Credentials:
    username: str
    key: str = field(default="", repr=False)  # legacy API key (KAGGLE_KEY / kaggle.json)
    token: str = field(default="", repr=False)  # API token (KAGGLE_API_TOKEN), sent as a Bearer token
    source: str = ""  # where they came from, for messages

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.key, self.token) if s)


def kaggle_json_candidates() -> list[Path]:
    """Where the `kaggle` client looks for kaggle.json, in its order."""
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    if config_dir:
        return [Path(config_dir) / "kaggle.json"]
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [home / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]


def _read_kaggle_json(path: Path) -> Credentials:
    mode = path.stat().st_mode
    if os.name != "nt" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise GuieError(
            f"{path}: your Kaggle API key is readable by other users (mode {stat.filemode(mode)}); "
            f"run `chmod 600 {path}` and try again"
        )
    try:
        data = json.loads(path.read_text())
        username, key = data["username"], data["key"]
    except (OSError, ValueError, KeyError, TypeError):
        raise GuieError(
            f'{path}: expected JSON {{"username": ..., "key": ...}}; download a fresh kaggle.json from {TOKEN_URL}'
        ) from None
    if not (isinstance(username, str) and isinstance(key, str) and username and key):
        raise GuieError(
            f"{path}: 'username' and 'key' must be non-empty strings; download a fresh kaggle.json from {TOKEN_URL}"
        )
    return Credentials(username=username, key=key, source=str(path))


def load_credentials(username_hint: str = "") -> Credentials:
    """KAGGLE_USERNAME + KAGGLE_KEY, else kaggle.json, else KAGGLE_API_TOKEN (with a username)."""
    env_user = os.environ.get("KAGGLE_USERNAME", "")
    env_key = os.environ.get("KAGGLE_KEY", "")
    if env_user and env_key:
        return Credentials(username=env_user, key=env_key, source="KAGGLE_USERNAME/KAGGLE_KEY")
    for path in kaggle_json_candidates():
        if path.is_file():
            return _read_kaggle_json(path)
    token = os.environ.get("KAGGLE_API_TOKEN", "")
    if token:
        username = env_user or username_hint
        if not username:
            raise GuieError(
                "KAGGLE_API_TOKEN is set but no username: set KAGGLE_USERNAME or kaggle.username in params.yaml"
            )
        return Credentials(username=username, token=token, source="KAGGLE_API_TOKEN")
    where = " or ".join(str(p) for p in kaggle_json_candidates())
    raise GuieError(
        "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
        f"(Create New Token at {TOKEN_URL}) as {where} with `chmod 600`"
    )
