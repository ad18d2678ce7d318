"""Sharded loaders: training shards are a seeded per-epoch permutation; evaluation shards cover every sample
exactly once across ranks."""
from lang3d.data.sampling import sharded_loader


class FakeTrainer:
    def __init__(self, world_size, global_rank):
        self.world_size, self.global_rank = world_size, global_rank


def indices(loader, epoch=0):
    loader.sampler.set_epoch(epoch)
    return [i for batch in loader for i in batch.tolist()]


def test_training_order_depends_only_on_seed_and_epoch():
    data = list(range(10))
    a = sharded_loader(data, None, 3, True, 7, 0, None)
    b = sharded_loader(data, None, 3, True, 7, 0, None)
    assert indices(a, 2) == indices(b, 2)
    assert sorted(indices(a, 2)) == data
    assert indices(a, 2) != indices(a, 3)


def test_evaluation_shards_partition_the_samples_in_dataset_order():
    """Rows gathered in rank order (EmbeddingBank, torchmetrics' list states) come in the dataset's order, as in
    one process: a ranking that breaks exact ties by gallery position scores the same under DDP."""
    data = list(range(7))
    shards = [indices(sharded_loader(data, FakeTrainer(3, r), 2, False, 0, 0, None)) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]   # consecutive blocks, the longer first: rank order = dataset order
    train = [indices(sharded_loader(data, FakeTrainer(3, r), 2, True, 0, 0, None)) for r in range(3)]
    assert len(sum(train, [])) == 9 and set(sum(train, [])) == set(data)  # training pads to equal shards


def test_an_evaluation_set_smaller_than_the_ranks_gives_the_empty_ranks_one_empty_batch():
    def collate(samples):
        return {"n": len(samples), "items": list(samples)}

    for size, world in ((1, 2), (2, 3), (0, 2), (5, 2)):
        data = list(range(size))
        loaders = [sharded_loader(data, FakeTrainer(world, r), 2, False, 0, 0, collate) for r in range(world)]
        batches = [list(loader) for loader in loaders]
        assert [i for b in batches for batch in b for i in batch["items"]] == data   # each once, in order
        for rank, (loader, got) in enumerate(zip(loaders, batches)):
            shard = [i for batch in got for i in batch["items"]]
            assert len(loader) == len(got) == max(1, -(-len(shard) // 2))   # Lightning counts what is served
            assert bool(shard) == (rank < size)
            if not shard:
                assert got == [{"n": 0, "items": []}], (size, world, rank)


def test_seed_from_names_is_the_crc32_of_the_joined_names():
    import zlib

    from lang3d.data.sampling import seed_from_names

    assert seed_from_names(["a", "bc"]) == zlib.crc32(b"a|bc")
    assert seed_from_names(["a", "bc"]) != seed_from_names(["bc", "a"])
    assert 0 <= seed_from_names(["scene0000_00/0"]) < 2**32


# ---------------------------------------------------------------- resuming through the loader's state_dict
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, get_worker_info  # noqa: E402

from lang3d.data.sampling import EpochSeededDataset  # noqa: E402


class IndexEpochWorkerSeed(EpochSeededDataset):
    """Sample i = (i, the epoch the dataset holds when serving it, the serving worker's seed or -1)."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        worker = get_worker_info()
        return index, int(self._epoch), -1 if worker is None else worker.seed


def collate(samples):
    return [tuple(s) for s in samples]


def lightning_pass(loader, epoch):
    """How Lightning starts a pass: ``iter(loader)`` first, then ``set_epoch``, then the batches."""
    iterator = iter(loader)
    loader.sampler.set_epoch(epoch)
    return iterator


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_loader_restored_from_its_state_dict_continues_with_the_same_batches(num_workers):
    def make():
        return sharded_loader(IndexEpochWorkerSeed(), None, 3, True, 5, num_workers, collate)

    reference = make()
    epoch1 = list(lightning_pass(reference, 1))
    assert [s[1] for b in epoch1 for s in b] == [1] * 10  # the dataset served epoch 1 in the worker too
    interrupted = make()
    iterator = lightning_pass(interrupted, 1)
    head = [next(iterator), next(iterator)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches_done": 2}
    assert head == epoch1[:2]
    resumed = make()
    resumed.load_state_dict(state)
    assert list(lightning_pass(resumed, 1)) == epoch1[2:]  # mid-epoch: the rest of epoch 1, as served before
    assert resumed.state_dict() == {"epoch": 1, "batches_done": 4}
    assert list(lightning_pass(resumed, 2)) == list(lightning_pass(make(), 2))  # later epochs in full


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_state_saved_on_an_epochs_last_batch_resumes_with_the_next_epoch_in_full(num_workers):
    def make():
        return sharded_loader(IndexEpochWorkerSeed(), None, 3, True, 5, num_workers, collate)

    finished = make()
    list(lightning_pass(finished, 0))
    resumed = make()
    resumed.load_state_dict(finished.state_dict())
    assert list(lightning_pass(resumed, 1)) == list(lightning_pass(make(), 1))


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_pass_draws_from_the_global_generator_as_a_stock_loader_and_seeds_workers_per_epoch(shuffle):
    stock = DataLoader(IndexEpochWorkerSeed(), batch_size=4, num_workers=1, collate_fn=collate)
    loader = sharded_loader(IndexEpochWorkerSeed(), None, 4, shuffle, 5, 1, collate)
    torch.manual_seed(1)
    list(stock)
    after_stock_pass = torch.get_rng_state()
    torch.manual_seed(1)
    seeds = [{s[2] for b in lightning_pass(loader, 0) for s in b}]
    assert torch.equal(torch.get_rng_state(), after_stock_pass)  # the global stream is the stock loader's
    seeds += [{s[2] for b in lightning_pass(loader, e) for s in b} for e in (0, 1)]
    assert seeds[0] == seeds[1] and seeds[0] != seeds[2]  # worker seeds follow (seed, epoch), not the global state


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_pass_resuming_an_epoch_mid_way_draws_nothing_from_the_global_generator(num_workers):
    loader = sharded_loader(IndexEpochWorkerSeed(), None, 3, True, 5, num_workers, collate)
    loader.load_state_dict({"epoch": 1, "batches_done": 2})
    state = torch.get_rng_state()
    list(lightning_pass(loader, 1))
    assert torch.equal(torch.get_rng_state(), state)  # its draw came before the checkpoint the state is from
