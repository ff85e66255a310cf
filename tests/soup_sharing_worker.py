"""One process of tests/training/test_soup.py's shared-soup test (run under RANK/WORLD_SIZE): a
uniform soup, a greedy soup and WiSE-FT of the runs in a folder, each made on the main process
and shared through `StateShare`; this process writes what it got."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from guie.runtime import Runtime
from guie.training.soup import StateShare, greedy_soup, load_state, uniform_soup, wise_ft


def main(folder: Path) -> None:
    dist.init_process_group("gloo")
    runtime = Runtime(torch.device("cpu"), None, False, dist.get_rank(), dist.get_world_size())
    share = StateShare(runtime, folder)
    paths = sorted(folder.glob("run*.pt"))

    def score(state: dict) -> float:  # closeness to 2.5, as every process sees it
        return -abs(float(state["tower"]["w"][0, 0]) - 2.5)

    uniform, _ = uniform_soup(paths, share)
    greedy, chosen, _, _ = greedy_soup(paths, score, share)
    wise, alpha, _ = wise_ft(load_state(paths[0]), load_state(paths[2]), [0.0, 0.5, 1.0], score, share)
    got = {"uniform": uniform, "greedy": greedy, "chosen": chosen, "wise": wise, "alpha": alpha}
    torch.save(got, folder / f"got{runtime.rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
