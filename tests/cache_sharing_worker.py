"""One process of tests/test_feature_cache.py's one-copy-per-node test (run under RANK/WORLD_SIZE):
build a frozen-tower view cache with `build_view_cache`, read every feature, and report what this
process holds of the cache file's pages (its smaps entries for the file) and its anonymous memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from guie.feature_cache import CachedViews, FeaturePass, ViewCache, build_view_cache
from guie.runtime import Runtime

INPUT_DIM = 8


class Tower(nn.Module):
    """A frozen "tower" over tiny inputs: cheap to run, wide outputs (a big cache)."""

    def __init__(self, output_dim: int):
        super().__init__()
        self.output_dim = output_dim
        self.linear = nn.Linear(INPUT_DIM, output_dim)
        torch.nn.init.normal_(self.linear.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Views:
    """Item (index, seed) -> an input drawn from both: what a view is to the cache."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, int]:
        return item

    def collate(self, items: list) -> tuple[torch.Tensor]:
        index, seed = torch.tensor(items).T
        return (view_inputs(index, seed),)

    def inputs(self, batch, runtime: Runtime) -> torch.Tensor:
        return batch[0]


def view_inputs(index: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    return torch.stack([(index * (k + 1) + seed % (97 + k)).float() / 100 for k in range(INPUT_DIM)], dim=1)


def _kib_fields(lines: list[str], names: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(names, 0)
    for line in lines:
        key, _, rest = line.partition(":")
        if key in out:
            out[key] += int(rest.split()[0]) * 1024
    return out


def mapping_memory(path: Path, address: int) -> dict[str, int]:
    """Rss, Pss and private bytes of this process's mappings of `path` (from /proc/self/smaps), and
    whether `address` lies in one of them."""
    entries, current, inside = [], None, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            current = [] if len(head) >= 6 and head[5] == str(path) else None
            if current is not None:
                entries.append(current)
                start, end = (int(x, 16) for x in head[0].split("-"))
                inside = inside or start <= address < end
        elif current is not None:
            current.append(line)
    fields = _kib_fields([line for e in entries for line in e], ("Rss", "Pss", "Private_Clean", "Private_Dirty"))
    return fields | {"holds_features": inside}


def anonymous() -> int:
    return _kib_fields(Path("/proc/self/status").read_text().splitlines(), ("RssAnon",))["RssAnon"]


def main(folder: Path, n: int, views: int, dim: int) -> None:
    dist.init_process_group("gloo")
    runtime = Runtime(torch.device("cpu"), None, False, dist.get_rank(), dist.get_world_size())
    tower, dataset = Tower(dim), Views(n)
    before = anonymous()
    cache = ViewCache(path=folder / "features.pt", fingerprint="f" * 16, seed=3, views=views)
    features = build_view_cache(tower, dataset, runtime, FeaturePass(batch_size=512), cache)
    cached = CachedViews(features, [0] * n)
    total = 0.0
    for epoch in range(views):  # every page of every view read, through the dataset the loop reads
        cached.set_epoch(epoch)
        total += float(cached.view.sum(dtype=torch.float64))
    dist.barrier()  # every process has mapped and read the file: each one's proportional share is final
    mapping = mapping_memory(cache.path.resolve(), cached.features.data_ptr())
    report = {"mapping": mapping, "anon_growth": anonymous() - before, "sum": total}
    (folder / f"rank{runtime.rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *map(int, sys.argv[2:]))
