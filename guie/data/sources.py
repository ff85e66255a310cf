"""The `download` stage: materialise every configured data source under data/raw/<name>/.

Each source type has one function that fills a fresh directory; the directory is renamed into
place only when complete, so an interrupted download never leaves a half-filled source behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from guie.config import Params, SyntheticSource
from guie.errors import GuieError
from guie.progress import progress_bar


def _materialise_synthetic(source: SyntheticSource, out_dir: Path) -> int:
    from guie.data.synthetic import generate_synthetic

    total = len(source.domains) * source.instances_per_domain * source.views_per_instance
    with progress_bar(f"synthetic {source.name}", total) as advance:
        return generate_synthetic(source, out_dir, progress=advance)


_MATERIALISERS = {SyntheticSource: _materialise_synthetic}


def download_sources(params: Params, raw_root: Path) -> dict[str, int]:
    """Materialise all sources; returns images written per source."""
    raw_root.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for source in params.data.sources:
        target = raw_root / source.name
        staging = Path(tempfile.mkdtemp(prefix=f".{source.name}.", dir=raw_root))
        try:
            staging.rmdir()  # materialisers expect a path that does not exist yet
            count = _MATERIALISERS[type(source)](source, staging)
            if count == 0:
                raise GuieError(f"data.sources[{source.name}]: the source produced no files")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        counts[source.name] = count
    return counts
