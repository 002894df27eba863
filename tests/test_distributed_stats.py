"""Running statistics under torch.distributed: two gloo processes, each with its own batches, end
with the statistics of all the batches together."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amago_like.nets.tstep_encoders import RunningNorm
from amago_like.nets.values import PopArt


def _batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each rank's (x, mask) batches: different sizes and shifts per rank, one rank empty once."""
    g = torch.Generator().manual_seed(rank)
    out = []
    for step, n in enumerate((6, 0, 9) if rank == 0 else (3, 5, 2)):
        x = torch.randn(n + 2, 3, generator=g) * (1 + rank) + 4 * rank + step
        x[n:] = float("inf")  # padding
        out.append((x, torch.arange(n + 2) < n))
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        norm, popart = RunningNorm(3), PopArt(3)
        for x, mask in _batches(rank):
            norm.update(x, mask)
            popart.update(x, mask[:, None])
        torch.save({"norm": norm.state_dict(), "popart": popart.state_dict()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_share_running_norm_and_popart_statistics(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    for part in ("norm", "popart"):
        for name, value in r0[part].items():
            torch.testing.assert_close(value, r1[part][name], msg=f"{part}.{name} differs between ranks")

    # one process fed each step's batches of both ranks together reaches the same statistics
    norm, popart = RunningNorm(3), PopArt(3)
    for (x0, m0), (x1, m1) in zip(_batches(0), _batches(1)):
        x, m = torch.cat([x0, x1]), torch.cat([m0, m1])
        norm.update(x, m)
        popart.update(x, m[:, None])
    for name, value in norm.state_dict().items():
        torch.testing.assert_close(r0["norm"][name], value)
    for name, value in popart.state_dict().items():
        torch.testing.assert_close(r0["popart"][name], value)
    real = torch.cat([x[m] for rank in (0, 1) for x, m in _batches(rank)])
    assert r0["norm"]["count"].item() == len(real) == 25
    torch.testing.assert_close(r0["norm"]["mean"], real.mean(0))
    torch.testing.assert_close(r0["norm"]["var"], real.var(0, unbiased=False))
