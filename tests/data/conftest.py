"""Fixtures for data tests: params whose sources are real folders built in tmp_path."""

from __future__ import annotations

import pytest
from support import tiny_params_dict


@pytest.fixture
def params_with():
    """params_with([source dicts], download={data.download overrides}, **manifest overrides) -> Params
    (the rest: the tiny default)."""
    from guie.params.load import parse_params

    def build(sources: list[dict], download: dict | None = None, **manifest):
        raw = tiny_params_dict()
        raw["data"]["sources"] = sources
        raw["data"]["manifest"].update(manifest)
        raw["data"].setdefault("download", {}).update(download or {})
        return parse_params(raw)

    return build
