"""`tunelab train` as a command: the run trained in this process, or its processes launched
(torchrun's launcher, on this machine or as one node of several), the run folder printed once."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError


def train_command(recipe: Path, overrides: list[str], given: dict, nproc: int, nnodes: int,
                  node_rank: int, master: str | None, max_restarts: int, console) -> int:  # fmt: skip
    """The command's exit code; `given`: its overwrite, resume and data_changed flags."""
    from tunelab.ranks import is_main
    from tunelab.training.run_opening import DATA_CHANGED
    from tunelab.training.runner import train

    if given["data_changed"] and not given["resume"]:
        raise TunelabError("--data-changed goes with --resume; a new run reads its data as it is.")
    if nproc > 1 or nnodes > 1:
        from tunelab.training.distributed import Nodes, launch

        flags = [f"--{name.replace('_', '-')}" for name, on in given.items() if on]
        nodes = Nodes(nnodes, node_rank, master)
        return launch(nproc, [str(recipe), *overrides, *flags], nodes, max_restarts)
    resume = DATA_CHANGED if given["data_changed"] else given["resume"]
    result = train(recipe, overrides, overwrite=given["overwrite"], resume=resume, console=console)
    if is_main():  # launched as several processes, the run is told once
        print(result.run_dir)
    return 0
