"""The one exception type the CLI turns into a clean, actionable message instead of a traceback."""


class GuieError(Exception):
    """A user-facing error: the message names the file or field and says what to do."""


def require_inputs(stage: str, *pairs: tuple[object, str]) -> None:
    """Fail fast when a stage's inputs are missing, naming the stage that produces each one.

    `pairs` are (path, producing stage) tuples.
    """
    from pathlib import Path

    for path, producer in pairs:
        if not Path(path).exists():
            raise GuieError(
                f"{stage}: input {path} not found; "
                f"run `dvc repro {producer}` (or `guie {producer.replace('_', ' ').replace('@', ' ')}`) first"
            )
