"""genretr.evaluation.distributed: unpadded contiguous shards, and `sharded()` under a real gloo group."""
import pickle
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genretr.evaluation.distributed import shard_bounds, sharded

CASES = [7, 2, 1, 0, 10]  # query counts run under the 2-process group (incl. n < world and n == 0)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 8, 16])
def test_shard_bounds_partition_exactly(world):
    for n in list(range(0, 40)) + [97, 1000]:
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        covered = [i for s, e in bounds for i in range(s, e)]
        assert covered == list(range(n)), (n, world, bounds)  # contiguous, in rank order, once each
        sizes = [e - s for s, e in bounds]
        assert all(s >= 0 for s in sizes) and sum(sizes) == n  # no padding
        assert max(sizes) - min(sizes) <= 1
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        for (_, e), (s, _) in zip(bounds, bounds[1:]):
            assert e == s


def test_shard_bounds_small_n():
    assert [shard_bounds(2, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    assert [shard_bounds(0, r, 3) for r in range(3)] == [(0, 0)] * 3
    assert [shard_bounds(7, r, 2) for r in range(2)] == [(0, 4), (4, 7)]


def search(vecs):
    """A deterministic stand-in for constrained search: one ranking per query, qps = shard size."""
    return [[f"item{int(v)}", f"other{int(v) % 3}"] for v in vecs[:, 0]], float(len(vecs))


def queries(n):
    return torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0])


def test_without_a_process_group_it_is_the_plain_search():
    assert not dist.is_initialized()
    assert sharded(search, queries(7)) == search(queries(7))


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {n: sharded(search, queries(n)) for n in CASES}
        calls = []

        def counting(vecs):
            calls.append(len(vecs))
            return search(vecs)

        sharded(counting, queries(7))
        results["calls"] = calls
        with open(f"{out_dir}/rank{rank}.pkl", "wb") as f:
            pickle.dump(results, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_under_two_process_gloo_group_matches_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    port = _free_port()
    monkeypatch.setenv("MASTER_PORT", str(port))
    ctx = mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed workers did not finish within 60 s")
    res = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    for n in CASES:
        expected_rankings, _ = search(queries(n))
        for r in range(2):
            rankings, qps = res[r][n]
            assert rankings == expected_rankings, (n, r)  # every query once, in the original order
            assert qps == float(n)  # summed over ranks: each query counted exactly once
    # each rank searched only its own unpadded shard
    assert res[0]["calls"] == [4] and res[1]["calls"] == [3]
