"""DDP edge cases through the real CLI with 2 CPU processes (gloo), helpers from ``test_ddp_pipelines``:

a rank whose whole batch was skipped (corrupt clouds / frames) while the other rank trains must take part in every
collective of the step (synchronised BatchNorm, the Point-Bind gathers, DDP's gradient all-reduce) with a
zero-weight step, or the run hangs; a step where every rank's batch was skipped changes nothing on any rank
(Point-Bind, SEPE, Text4Point pre-training). A validation set smaller than the number of ranks leaves a rank the
empty batch of its empty shard, and uneven shards leave the ranks different numbers of samples; the metrics are still
those of one process (Point-Bind, SEPE, Text4Point pre-training; SEPE's test too).
Below them, with 2 gloo processes of torch.multiprocessing: the synchronised BatchNorm with a rank holding no
rows (an empty input, or a placeholder left out of the statistics) against torch's BatchNorm over the other rank's
rows, and ``EmbeddingBank`` with a rank holding nothing against the rows of one process. A hang fails through
``run_ddp``'s timeout or the process group's. The uneven-batch InfoNCE is tested in test_pointbind_losses.py.
"""

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import on_gloo_ranks
from test_ddp_pipelines import _cap3d, check_metrics, evaluate_alone, fit_ddp, reports, run_test_twice
from torch import nn
from torch.utils.data import DistributedSampler

from datamodules.cap3d import Cap3DDataModule
from datamodules.synthetic.cap3d import POINT_DIR, generate_cap3d
from datamodules.synthetic.modelnet40 import generate_modelnet40
from datamodules.synthetic.scannet import generate_scannet
from lang3d.metrics.retrieval import EmbeddingBank
from lang3d.training.sync_batchnorm import SyncBatchNorm, rows_left_out

pytestmark = pytest.mark.ddp


# ---------------------------------------------------------------- collectives with a rank without rows
def _rows(seed: int, n: int) -> torch.Tensor:
    return 2.0 + torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _batchnorm_rank(rank: int, case: str) -> dict:
    """Rank 0: 6 rows, loss Σ w·y. Rank 1: no rows ("empty" input [0, 3]) or 4 placeholder rows left out of the
    statistics with a zero-weight loss ("left_out"). Two training steps."""
    bn = SyncBatchNorm(3, momentum=0.3).double()
    steps = []
    for step in range(2):
        bn.zero_grad()
        if rank == 0:
            x = _rows(step, 6).requires_grad_()
            y = bn(x)
            (_rows(10 + step, 6) * y).sum().backward()
        elif case == "empty":
            x = _rows(step, 0).requires_grad_()
            y = bn(x)
            y.sum().backward()
        else:
            x = _rows(20 + step, 4).requires_grad_()
            with rows_left_out(bn):
                y = bn(x)
            (0.0 * y.sum()).backward()
        grads = {}
        for name, p in bn.named_parameters():   # what DDP leaves in .grad: the mean over ranks
            g = p.grad.clone()
            dist.all_reduce(g)
            grads[name] = g / 2
        steps.append({"out": y.detach(), "grad": x.grad, "params": grads, "mean": bn.running_mean.clone(),
                      "var": bn.running_var.clone()})
    return steps


def _bank_rank(rank: int, counts: tuple[int, int]) -> dict | None:
    """Rank r adds ``counts[r]`` rows (two batches where it can): embeddings [n, 4] float, labels [n] int64."""
    bank = EmbeddingBank(("point", "label"))
    start, n = sum(counts[:rank]), counts[rank]
    points, labels = _rows(99, sum(counts)).repeat(1, 2)[start:start + n], torch.arange(start, start + n)
    for part in (slice(0, n // 2), slice(n // 2, n)):
        if part.stop > part.start:
            bank.update(point=points[part], label=labels[part])
    return bank.compute()


BANK_COUNTS = [(3, 0), (0, 2), (3, 1), (0, 0)]


def _collectives(rank: int) -> dict:
    results = {case: _batchnorm_rank(rank, case) for case in ("empty", "left_out")}
    results["bank"] = [_bank_rank(rank, counts) for counts in BANK_COUNTS]
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return on_gloo_ranks(_collectives, tmp_path_factory.mktemp("collectives"))


@pytest.mark.parametrize("case", ["empty", "left_out"])
def test_batchnorm_with_a_rank_without_rows_is_batchnorm_over_the_others(two_ranks, case):
    """Rank 1 joins every all_reduce (forward and backward) without adding rows: rank 0's outputs, input
    gradients and running statistics are those of torch's BatchNorm over its rows alone, the DDP-averaged
    parameter gradients half of its (rank 1's loss adds nothing), and rank 1 ends with the same statistics."""
    ref = nn.BatchNorm1d(3, momentum=0.3).double()
    for step in range(2):
        ref.zero_grad()
        x = _rows(step, 6).requires_grad_()
        y = ref(x)
        (_rows(10 + step, 6) * y).sum().backward()
        got, other = two_ranks[0][case][step], two_ranks[1][case][step]
        torch.testing.assert_close(got["out"], y.detach())
        torch.testing.assert_close(got["grad"], x.grad)
        for name, p in ref.named_parameters():
            for r in (got, other):
                torch.testing.assert_close(r["params"][name], p.grad / 2)
        for r in (got, other):
            torch.testing.assert_close(r["mean"], ref.running_mean)
            torch.testing.assert_close(r["var"], ref.running_var)
    assert (two_ranks[1][case][1]["grad"] == 0).all()


@pytest.mark.parametrize("case", range(len(BANK_COUNTS)), ids=[f"{a}+{b}" for a, b in BANK_COUNTS])
def test_embedding_bank_with_a_rank_without_rows(two_ranks, case):
    """Both ranks get every row, in rank order, with the dtypes and shapes of the rows (also the rank that saw
    none); no row anywhere: None on both."""
    counts = BANK_COUNTS[case]
    got = [r["bank"][case] for r in two_ranks]
    if sum(counts) == 0:
        assert got == [None, None]
        return
    for data in got:
        torch.testing.assert_close(data["point"], _rows(99, sum(counts)).repeat(1, 2))
        assert data["label"].dtype == torch.int64 and data["label"].tolist() == list(range(sum(counts)))


def shards(num_samples: int, drop_last: bool, seed: int = 0) -> list[list[int]]:
    """The training samples of each of 2 ranks in step order, epoch 0 (what the datamodules' sharded training
    loaders draw: a DistributedSampler shuffled with the datamodule's seed)."""
    return [list(DistributedSampler(range(num_samples), num_replicas=2, rank=rank, shuffle=True, seed=seed,
                                    drop_last=drop_last)) for rank in range(2)]


def check_steps(run, steps: int, unchanged: tuple[int, ...]) -> None:
    """Both ranks ran ``steps`` training batches and after each held identical weights and buffers; after the
    batches ``unchanged`` (every rank's samples skipped) nothing changed, after every other one the weights did."""
    rank0, rank1 = reports(run, "fit")
    assert rank0["world_size"] == 2 and len(rank0["sha256"]) == steps
    assert rank0["sha256"] == rank1["sha256"], "the ranks' weights or buffers differ after a DDP training step"
    hashes = rank0["sha256"]
    for step in range(1, steps):
        assert (hashes[step] == hashes[step - 1]) == (step in unchanged), step


def check_finite(run) -> None:
    """No NaN or inf reached the saved weights (a zero-weight step multiplies by 0, which keeps NaN)."""
    state = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ---------------------------------------------------------------- Point-Bind
@pytest.fixture
def cap3d(tmp_path):
    """12 synthetic Cap3D objects and one ModelNet40 test shape per class (the validation set the config names)
    under ``<tmp>/objects``, the layout ``_cap3d`` expects."""
    root = tmp_path / "objects"
    generate_cap3d(root / "cap3d", num_objects=12, views=2, image_size=32, points=512)
    generate_modelnet40(root / "modelnet40", train_per_class=1, test_per_class=1, points=512, formats=("resampled",))
    return root


def pointbind_config(objects, *extra: str) -> list[str]:
    alignment, zeroshot = "--data.init_args.alignment.init_args", "--data.init_args.zeroshot.init_args"
    return ["-c", "configs/pointbind.yaml", "-c", "configs/pointbind_demo.yaml", *_cap3d(alignment[2:], objects),
            f"{alignment}.image_size", "[32, 32]", f"{zeroshot}.root", str(objects / "modelnet40"),
            f"{zeroshot}.num_workers", "0", f"{zeroshot}.num_points", "256", "--model.init_args.embedding_cache",
            "null", "--model.init_args.log_embeddings", "0", *extra]


def test_pointbind_rank_with_all_samples_skipped_takes_a_zero_step(cap3d, tmp_path):
    """6 training objects, batch size 1, 3 steps per rank. Step 0: rank 1's object is an empty cloud (rank 0
    trains alone); step 1: both ranks' objects are bad (no step anywhere); step 2: both train."""
    alignment = "--data.init_args.alignment.init_args"
    config = pointbind_config(cap3d, f"{alignment}.max_train_objects", "6")
    dm = Cap3DDataModule(str(cap3d / "cap3d"), split_fractions=(0.6, 0.4), max_train_objects=6, load_images=False)
    train = dm.splits()["train"]
    assert len(train) == 6
    order = shards(len(train), drop_last=True)
    for rank, step in ((1, 0), (0, 1), (1, 1)):
        torch.save(torch.zeros(6, 0), cap3d / "cap3d" / POINT_DIR / f"{train[order[rank][step]].uid}.pt")
    run = tmp_path / "run"
    fit_ddp(config, run, "--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0")
    check_steps(run, steps=3, unchanged=(1,))
    check_finite(run)


def test_pointbind_validation_set_smaller_than_the_ranks(cap3d, tmp_path):
    """One validation object for two ranks: rank 1's shard is empty, so it evaluates one empty batch and still joins
    the gathers at the end of the epoch (Lightning's unpadded sampler refused an empty shard, and a rank without
    batches skips the whole loop). Both ranks report the one object's scores, equal to one process's."""
    alignment = "--data.init_args.alignment.init_args"
    config = pointbind_config(cap3d, f"{alignment}.max_train_objects", "4", f"{alignment}.max_val_objects", "1",
                              "--data.init_args.zeroshot", "null")   # 2 steps, then validation at the epoch's end
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp, "--trainer.max_epochs", "1")
    evaluate_alone("validate", config, single, ddp / "ckpt" / "last.ckpt")
    metrics = check_metrics(ddp, single, "validate", "val")
    assert {"val/loss", "val_retrieval_pairs/3d_to_text/R@1"} <= metrics.keys()
    assert metrics["val_retrieval_pairs/3d_to_text/R@1"] == 1.0   # one item: its own caption is the only one


# ---------------------------------------------------------------- SEPE
def sepe_config(objects, *extra: str) -> list[str]:
    return ["-c", "configs/sepe.yaml", *_cap3d("data", objects), "--model.val_sample_steps", "2",
            "--model.val_num_samples", "1", *extra]


def test_sepe_rank_with_all_samples_skipped_takes_a_zero_step(cap3d, tmp_path):
    """6 training objects, batch size 1, 3 steps per rank. Step 0: rank 1's object is an empty cloud (rank 0
    trains alone; rank 1 adds zero gradients to DDP's all-reduce); step 1: both ranks' objects are bad (no step
    anywhere); step 2: both train."""
    dm = Cap3DDataModule(str(cap3d / "cap3d"), split_fractions=(0.6, 0.4), max_train_objects=6, load_images=False)
    train = dm.splits()["train"]
    assert len(train) == 6
    order = shards(len(train), drop_last=True)
    for rank, step in ((1, 0), (0, 1), (1, 1)):
        torch.save(torch.zeros(6, 0), cap3d / "cap3d" / POINT_DIR / f"{train[order[rank][step]].uid}.pt")
    run = tmp_path / "run"
    fit_ddp(sepe_config(cap3d, "--data.max_train_objects", "6"), run, "--trainer.max_steps", "-1",
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0")
    check_steps(run, steps=3, unchanged=(1,))
    check_finite(run)


@pytest.mark.parametrize("val_objects", [1, 3])
def test_sepe_validation_on_uneven_shards(val_objects, cap3d, tmp_path):
    """One validation object for two ranks: rank 1 evaluates the empty batch of its empty shard and adds weight 0 to
    every val/ loss, so both ranks reduce the same metrics, and those are the one object's. Three objects: shards of
    2 and 1, the means over the 3 objects (Lightning's own sync_dist mean halved the summed batch size 3 to an
    integer 1 on gloo). Both equal one process's metrics."""
    config = sepe_config(cap3d, "--data.max_train_objects", "4", "--data.max_val_objects", str(val_objects))
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp, "--trainer.max_epochs", "1")   # 2 steps, then validation at the epoch's end
    evaluate_alone("validate", config, single, ddp / "ckpt" / "last.ckpt")
    samples = ("val/sample_chamfer", "val/sample_emd")   # rank 0 draws and logs the validation samples
    metrics = check_metrics(ddp, single, "validate", "val/", rank_zero_only=samples)
    assert {"val/loss", "val/diffusion", "val/chamfer", *samples} <= metrics.keys()


def test_sepe_test_on_uneven_shards(cap3d, tmp_path):
    """``test`` of a checkpoint on 1 test object (shards of 1 and 0: rank 1 failed on its empty shard's batch with
    KeyError 'caption') and on 3 (shards of 2 and 1): both ranks hold the scores of one process testing the
    checkpoint. R-precision with 0 distractors on the one object: rank 1's empty embedding lists join the gather
    (torchmetrics alone sends them as 1-d float tensors); with 1 distractor it needs 2 objects and is reported on no
    rank. Only the conditioning CLIP's R-precision: the independent evaluation CLIP of the config is randomly
    initialised (no weights) when the test starts, from a random state that differs between the DDP processes and
    this one."""
    config = sepe_config(cap3d, "--data.split_fractions", "[0.5, 0.2, 0.3]", "--data.max_train_objects", "4",
                         "--model.sample_steps", "2", "--model.eval_clip_model", "null")
    ddp = tmp_path / "ddp"
    fit_ddp(config, ddp, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0")   # 2 steps
    for objects, distractors in ((1, 0), (1, 1), (3, 1)):
        # ``test --ckpt_path`` takes the model's arguments from the checkpoint, over the command line's
        checkpoint = torch.load(ddp / "ckpt" / "last.ckpt", weights_only=False)
        checkpoint["hyper_parameters"]["eval_num_distractors"] = distractors
        torch.save(checkpoint, ddp / "ckpt" / "last.ckpt")
        single = tmp_path / f"single{objects}-{distractors}"
        run_test_twice([*config, "--data.max_val_objects", str(objects)], ddp, single)
        metrics = check_metrics(ddp, single, "test", "test/")
        assert {"test/chamfer", "test/emd"} <= metrics.keys()
        assert ("test/clip_r_precision_cond_clip" in metrics) == (objects > distractors)


# ---------------------------------------------------------------- Text4Point pre-training
def test_text4point_rank_with_all_frames_skipped_takes_a_zero_step(tmp_path):
    """A training scan of 6 frames, batch size 1, 3 steps per rank. Step 0: rank 1's frame has a NaN pose (rank 0
    trains alone; rank 1 runs the SR-UNet, the Text Querying Module and the 2D decoder on a placeholder left out
    of the synchronised BatchNorm); step 1: both ranks' frames are bad (no update anywhere); step 2: both train."""
    root = tmp_path / "scannet"
    generate_scannet(root, num_scenes=2, frames_per_scene=6, color_size=(128, 96), depth_size=(40, 30), seed=0)
    order = shards(6, drop_last=False)
    for rank, step in ((1, 0), (0, 1), (1, 1)):
        (root / "scans" / "scene0000_00" / "pose" / f"{order[rank][step]}.txt").write_text("nan nan nan nan\n" * 4)
    run = tmp_path / "run"
    fit_ddp(pretraining_config(root), run, "--trainer.max_steps", "-1", "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "0")
    check_steps(run, steps=3, unchanged=(1,))
    check_finite(run)


@pytest.mark.parametrize("val_frames", [1, 3])
def test_text4point_validation_on_uneven_shards(val_frames, tmp_path):
    """Pre-training validated at batch size 1 on 1 frame (shards of 1 and 0: rank 1 evaluates its empty shard's
    batch, logs nothing, and still joins the reductions) and on 3 (shards of 2 and 1: Lightning's sync_dist mean
    truncated the summed batch size 3 / 2 to 1 on gloo, reporting 1.5 x the losses). Both ranks hold the per-frame
    means over all frames, equal to one process's."""
    root = tmp_path / "scannet"
    generate_scannet(root, num_scenes=2, frames_per_scene=4, color_size=(128, 96), depth_size=(40, 30), seed=0)
    config = pretraining_config(root, "--data.max_val_frames", str(val_frames))
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp, "--trainer.max_epochs", "1")   # 2 steps, then validation at the epoch's end
    evaluate_alone("validate", config, single, ddp / "ckpt" / "last.ckpt")
    metrics = check_metrics(ddp, single, "validate", "val/")
    assert {"val/loss", "val/loss_enc", "val/loss_dec", "val/loss_depth", "val/pairs"} <= metrics.keys()


def pretraining_config(root, *extra: str) -> list[str]:
    """Text4Point pre-training on the synthetic scans under ``root``, batch size 1, a tiny network."""
    return ["-c", "configs/text4point/pretrain_scannet.yaml", "-c", "configs/text4point/demo_synthetic.yaml",
            "--data.root", str(root), "--data.frame_skip", "1", "--data.image_size", "[96, 128]",
            "--data.voxel_size", "0.05", "--data.num_workers", "0", "--data.batch_size", "1",
            "--model.feature_dim", "16", "--model.decoder_width", "16", "--model.num_pairs", "128", *extra]
