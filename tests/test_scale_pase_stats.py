"""PASE running target statistics under torch.distributed: all ranks share them (2 gloo processes)."""

from __future__ import annotations

import numpy as np
import torch
import torch.multiprocessing as mp

from fairseq_ext.modules.pase_workers.base import RegressorConfig, RegressorWorker

D, BATCHES = 3, 3


def _batches(rank: int):
    """Per batch: targets (2, N, D) with a per-rank offset, and a (2, N) mask of valid frames."""
    rng = np.random.default_rng(rank)
    out = []
    for b in range(BATCHES):
        n = 5 + 3 * b + rank
        x = torch.from_numpy(rng.normal(3.0 * rank - 1.0, 1.0 + rank, size=(2, n, D)).astype(np.float32))
        mask = torch.ones(2, n, dtype=torch.bool)
        mask[1, n - 2 - rank:] = False  # padded frames are left out
        out.append((x, mask))
    return out


def _worker() -> RegressorWorker:
    return RegressorWorker("t", RegressorConfig(), emb_dim=4, sample_rate=16000, hop=160, target_dim=D)


def _run(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    w = _worker()
    for x, mask in _batches(rank):
        w._update_running_stats(x, mask)
    torch.save({k: v.clone() for k, v in w.state_dict().items() if k.startswith(("target_", "stats_"))},
               f"{out_file}.{rank}")
    torch.distributed.destroy_process_group()


def test_running_stats_are_all_reduced_across_ranks(tmp_path):
    mp.spawn(_run, args=(2, str(tmp_path / "init"), str(tmp_path / "stats")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"stats.{r}") for r in range(2)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # identical on both ranks
    frames = np.concatenate([x[m].numpy() for r in range(2) for x, m in _batches(r)]).astype(np.float64)
    assert int(ranks[0]["stats_frames"]) == len(frames) and int(ranks[0]["stats_batches"]) == BATCHES
    np.testing.assert_allclose(ranks[0]["target_mean"].numpy(), frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ranks[0]["target_std"].numpy(), frames.std(0), rtol=1e-5)
    # without torch.distributed: this process' frames only, the same formula
    alone = _worker()
    for x, mask in _batches(0):
        alone._update_running_stats(x, mask)
    mine = np.concatenate([x[m].numpy() for x, m in _batches(0)]).astype(np.float64)
    np.testing.assert_allclose(alone.target_mean.numpy(), mine.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.target_std.numpy(), mine.std(0), rtol=1e-5)
    empty = _worker()
    empty._update_running_stats(torch.zeros(1, 4, D), torch.zeros(1, 4, dtype=torch.bool))
    assert int(empty.stats_frames) == 0 and int(empty.stats_batches) == 0
