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


def test_evaluation_shards_partition_the_samples():
    data = list(range(7))
    shards = [indices(sharded_loader(data, FakeTrainer(3, r), 2, False, 0, 0, None)) for r in range(3)]
    assert sorted(sum(shards, [])) == data  # no sample twice, none missing
    train = [indices(sharded_loader(data, FakeTrainer(3, r), 2, True, 0, 0, None)) for r in range(3)]
    assert len(sum(train, [])) == 9 and set(sum(train, [])) == set(data)  # training pads to equal shards


def test_seed_from_names_is_the_crc32_of_the_joined_names():
    import zlib

    from lang3d.data.sampling import seed_from_names

    assert seed_from_names(["a", "bc"]) == zlib.crc32(b"a|bc")
    assert seed_from_names(["a", "bc"]) != seed_from_names(["bc", "a"])
    assert 0 <= seed_from_names(["scene0000_00/0"]) < 2**32
