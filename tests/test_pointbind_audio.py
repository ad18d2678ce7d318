"""Audio -> 3D retrieval and 3D + audio arithmetic on given files through the CLI (configs/pointbind_audio.yaml):
the ranking equals the joint-space computation, and the PLYs and TensorBoard pictures are written."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules.synthetic.esc50 import generate_esc50
from datamodules.synthetic.modelnet40 import generate_modelnet40
from lang3d.models.imagebind.audio import load_audio_clips
from lang3d.training.cli import build_cli
from pointbind.arithmetic import compose, nearest
from pointbind.arithmetic_data import ArithmeticInputError, ArithmeticQueriesDataModule, load_points, read_cloud

TOWERS = Path(__file__).parent / "data" / "imagebind_official" / "imagebind_tiny.pth"
SOUNDS = Path(__file__).parent / "data" / "imagebind_official"
TINY_BERT = {"num_groups": 8, "group_size": 8, "tokenizer_dim": 16, "tokenizer_hidden": [16, 16, 16], "width": 16,
             "depth": 1, "heads": 2, "pos_hidden": 8}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_queries")
    generate_esc50(root / "esc50", ["door_wood_knock"], clips_per_class=1, seconds=2.1, sample_rate=16000)
    generate_modelnet40(root / "mn40", classes=("door", "keyboard", "table"), train_per_class=0, test_per_class=1,
                        points=300, formats=("resampled",))
    shapes = sorted(str(p) for p in (root / "mn40").rglob("*.txt") if "_0001" in p.name)
    example = root / "example.pt"                                   # Point-Bind's examples: xyz [P,3]
    torch.save(torch.from_numpy(read_cloud(shapes[0])[0]), example)
    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        images.append(root / f"view{i}.png")
        Image.new("RGB", (40, 30), colour).save(images[-1])
    return {"knock": str(next((root / "esc50").rglob("*.wav"))), "car": str(SOUNDS / "car_audio_2.3s.wav"),
            "shapes": shapes, "example": str(example), "images": [str(p) for p in images]}


def test_audio_retrieval_and_arithmetic_through_the_cli(files, tmp_path):
    queries = [{"audio": files["car"]}, {"points": files["example"], "audio": files["knock"]}]
    gallery_points = [*files["shapes"], files["example"]]
    args = ["predict", "-c", "configs/pointbind.yaml", "-c", "configs/pointbind_imagebind.yaml",
            "-c", "configs/pointbind_audio.yaml",
            "--model.init_args.clip_model", "lang3d-tiny-imagebind", "--model.init_args.clip_pretrained", str(TOWERS),
            "--model.init_args.pretrained", "null", "--model.init_args.encoder_init", "null",
            "--model.init_args.encoder", "pointbert", "--model.init_args.encoder_options", json.dumps(TINY_BERT),
            "--model.init_args.embedding_cache", "null",
            "--data.queries", json.dumps(queries), "--data.gallery_points", json.dumps(gallery_points),
            "--data.gallery_images", json.dumps(files["images"]), "--data.num_points", "256", "--data.k", "4",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.callbacks.output", str(tmp_path / "ranking.json"),
            "--trainer.callbacks.ply_dir", str(tmp_path / "clouds")]
    cli = build_cli(args)
    results = json.loads((tmp_path / "ranking.json").read_text())
    module = cli.model.eval()
    assert module.text_encoder is None                               # modalities: image and audio
    with torch.no_grad():
        clouds = torch.from_numpy(np.stack([load_points(p, 256) for p in gallery_points]))
        gallery = torch.cat([module.embed_images(torch.from_numpy(np.stack([np.asarray(Image.open(p))
                                                                          for p in files["images"]]))),
                             module(clouds)])
        sound = module.embed_audio(load_audio_clips(files["car"])[None])
        knock = module.embed_audio(load_audio_clips(files["knock"])[None])
        point = module(torch.from_numpy(load_points(files["example"], 256))[None])
    items = files["images"] + gallery_points
    for result, query in zip(results, [sound, compose(point, knock)]):
        scores, index = nearest(query, gallery, k=4)
        assert [n["item"] for n in result["nearest"]] == [items[i] for i in index[0]]
        assert [n["score"] for n in result["nearest"]] == pytest.approx(scores[0].tolist(), abs=1e-5)
        assert [n["kind"] for n in result["nearest"]] == ["image" if i < 2 else "points" for i in index[0]]
    # PLYs: the arithmetic query's cloud and every retrieved cloud, with the file's points
    written = sorted(p.relative_to(tmp_path / "clouds").as_posix() for p in (tmp_path / "clouds").rglob("*.ply"))
    expected = [f"query_{i:03d}/rank{r}_{Path(n['item']).stem}.ply" for i, res in enumerate(results)
                for r, n in enumerate(res["nearest"], start=1) if n["kind"] == "points"] + ["query_001/query.ply"]
    assert written == sorted(expected)
    vertex = PlyData.read(str(tmp_path / "clouds" / "query_001" / "query.ply"))["vertex"]
    assert len(vertex) == 300 and np.all(vertex["red"] == 128)
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*"))))
    events.Reload()
    assert events.Tags()["images"] == ["predict/query_000", "predict/query_001"]
    picture = events.Images("predict/query_001")[0]
    assert picture.width > 5 * 160                                  # query cloud, sound, and 4 ranked items


def test_queries_and_clouds_are_checked(files, tmp_path):
    assert read_cloud(files["example"])[1] is None and read_cloud(files["example"])[0].shape == (300, 3)
    for query in ({"audio": files["car"], "text": "a car"}, {"sound": files["car"]}):
        with pytest.raises(ArithmeticInputError, match="or 'points' and one of the others"):
            ArithmeticQueriesDataModule([query], gallery_points=files["shapes"])
    with pytest.raises(ArithmeticInputError, match="gallery_points"):
        ArithmeticQueriesDataModule([{"audio": files["car"]}])
    (tmp_path / "broken.pt").write_bytes(b"not a tensor")
    with pytest.raises(ArithmeticInputError, match=r"broken\.pt: cannot be loaded as a point cloud"):
        read_cloud(tmp_path / "broken.pt")
