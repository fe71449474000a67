"""The CNN trained for photos: training steps lower the contrastive loss, the tail checkpoint
round-trips into the encoder, ONNX Runtime runs the same network as torch, and the image
model setting selects it under its own model version."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from encoders.image import EfficientNetLite0Encoder
from encoders.photo_cnn import (
    CnnTail,
    PhotoCnnEncoder,
    front_activations,
    load_tail_checkpoint,
)
from encoders.training.photo_cnn import (
    VIEW_KINDS,
    PhotoCnnSettings,
    photo_cnn_loss,
    save_tail,
    train_tail,
)


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    encoder = EfficientNetLite0Encoder(device="cpu")
    encoder.load()
    assert encoder._model is not None
    return encoder._model.eval()


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.new("RGB", (240 + 20 * i, 200), "white")
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = (int(v) for v in rng.integers(0, 160, 2))
            draw.ellipse((x, y, x + 70, y + 50), fill=tuple(int(c) for c in
                                                             rng.integers(0, 255, 3)))
        out.append(img)
    return out


def _perturbed_tail(network: torch.nn.Module, split: int = 14, scale: float = 0.05) -> CnnTail:
    """A tail that differs from the pretrained one (what a training run gives)."""
    tail = CnnTail(network, split)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tail.parameters():
            if p.dim() > 1:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return tail


@pytest.fixture(scope="module")
def tail_file(network: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo-cnn") / "tail.pt"
    save_tail(_perturbed_tail(network), path, {"command": "test"})
    return path


def test_training_steps_lower_the_loss(network: torch.nn.Module) -> None:
    """Real activations before the last block (what the training cache holds): anchors are
    drawings, views blurred and brightened copies, negatives noise. A few epochs on the tail
    must lower the InfoNCE loss measured the same way before and after."""
    from PIL import ImageEnhance, ImageFilter

    from encoders.preprocess import image_tensor

    split, n = 15, 8
    drawings = _images(n)
    photos = [ImageEnhance.Brightness(im.filter(ImageFilter.GaussianBlur(2))).enhance(1.3)
              for im in drawings]
    rng = np.random.default_rng(1)
    noise = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
             for _ in range(n)]
    with torch.no_grad():
        anchors, views, negatives = (front_activations(network, split, image_tensor(x, 224))
                                     for x in (drawings, photos, noise))
    acts = torch.stack([anchors, *([views] * len(VIEW_KINDS)), negatives, negatives],
                       dim=1).half()
    tail = CnnTail(network, split)
    which = torch.zeros(n, dtype=torch.long)

    def loss() -> float:
        with torch.no_grad():
            return float(photo_cnn_loss(tail.eval(), acts, which, 0.05,
                                        torch.Generator().manual_seed(0)))

    before = loss()
    history, losses = train_tail(tail, acts, PhotoCnnSettings(epochs=10, batch_size=n,
                                                              lr=1e-3, split=split),
                                 progress=False)
    assert len(losses) == 10 and history["kept_epoch"] == 10
    assert loss() < 0.8 * before


def test_checkpoint_round_trip(network: torch.nn.Module, tail_file: Path) -> None:
    ckpt = load_tail_checkpoint(tail_file)
    assert ckpt["split"] == 14 and ckpt["provenance"] == {"command": "test"}
    assert all(k.startswith(("_blocks.14.", "_blocks.15.", "_conv_head.", "_bn1."))
               for k in ckpt["tail"])
    assert all(v.dtype == torch.float16 for v in ckpt["tail"].values() if v.is_floating_point())

    images = _images()
    tuned = PhotoCnnEncoder(device="cpu", checkpoint=tail_file)
    tuned.load()
    got = tuned.encode(images)
    # The same tail applied by hand to the pretrained front gives the encoder's vectors.
    tail = _perturbed_tail(network).eval()
    with torch.no_grad():
        expected = tail(front_activations(network, 14, tuned.preprocess(images))).numpy()
    assert np.allclose(got, expected, atol=2e-3)  # fp16 storage of the tail
    pretrained = EfficientNetLite0Encoder(device="cpu")
    pretrained.load()
    assert float((got * pretrained.encode(images)).sum(axis=1).min()) < 0.9999
    assert tuned.version_tag.startswith("effl0p-") and tuned.version_tag[7:] == \
        ckpt["version"][:8]


def test_checkpoint_with_foreign_tensors_is_refused(tail_file: Path, tmp_path: Path) -> None:
    ckpt = torch.load(tail_file, weights_only=True)
    ckpt["tail"]["_blocks.3._depthwise_conv.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="outside the tail"):
        load_tail_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="prodsearch train --task photo-cnn"):
        PhotoCnnEncoder(device="cpu", checkpoint=tmp_path / "missing.pt")


@pytest.fixture()
def onnx_cache(tmp_path: Path) -> Iterator[None]:
    old = os.environ.get("PRODSEARCH_ONNX_CACHE")
    os.environ["PRODSEARCH_ONNX_CACHE"] = str(tmp_path / "onnx")
    yield
    if old is None:
        os.environ.pop("PRODSEARCH_ONNX_CACHE", None)
    else:
        os.environ["PRODSEARCH_ONNX_CACHE"] = old


def test_onnx_runs_the_same_network(tail_file: Path, onnx_cache: None) -> None:
    pytest.importorskip("onnxruntime")
    from encoders.optimized import OnnxEfficientNetLite0Encoder
    from encoders.photo_cnn import OnnxPhotoCnnEncoder

    images = _images()
    torch_enc = PhotoCnnEncoder(device="cpu", checkpoint=tail_file)
    onnx_enc = OnnxPhotoCnnEncoder(checkpoint=tail_file, threads=1)
    torch_enc.load()
    onnx_enc.load()
    a, b = torch_enc.encode(images), onnx_enc.encode(images)
    assert float((a * b).sum(axis=1).min()) >= 0.999
    # Exported per tail: the pretrained graph in the same cache is another file.
    pretrained = OnnxEfficientNetLite0Encoder(threads=1)
    pretrained.load()
    assert pretrained.onnx_path != onnx_enc.onnx_path
    assert float((pretrained.encode(images) * b).sum(axis=1).min()) < 0.9999


def test_image_model_setting_selects_it(tail_file: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    import encoders.photo_cnn
    from backend.config import EncoderSettings
    from encoders.model import ProductEncoder

    monkeypatch.setattr(encoders.photo_cnn, "PHOTO_CNN_CHECKPOINT", tail_file)
    assert EncoderSettings(image_model="efficientnet_lite0_photo").image_model == \
        "efficientnet_lite0_photo"
    tuned = ProductEncoder(image_model="efficientnet_lite0_photo", device="cpu",
                           runtime="torch")
    plain = ProductEncoder(image_model="efficientnet_lite0", device="cpu", runtime="torch")
    assert isinstance(tuned.image, PhotoCnnEncoder)
    assert tuned.image.checkpoint_path == tail_file
    # Other vectors, other model version: reindex re-encodes the catalog.
    assert tuned.model_version != plain.model_version
    assert tuned.model_version.startswith("effl0p-")
    assert plain.model_version.startswith("effl0+")


def test_render_example_is_seeded_and_negatives_avoid_the_item() -> None:
    from encoders.evaluation.datasets import DatasetMissing, openclipart_items
    from encoders.training.photo_cnn import render_example

    try:
        item = openclipart_items()[0]
        from encoders.training.photo_cnn import clutter_icon_paths

        clutter_icon_paths()
    except (DatasetMissing, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    anchor, views, negatives = render_example(str(item.path), "test:1")
    again = render_example(str(item.path), "test:1")
    assert len(views) == len(VIEW_KINDS) and len(negatives) == 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(views, again[1], strict=True))
    other = render_example(str(item.path), "test:2")
    assert not np.array_equal(np.asarray(views[0]), np.asarray(other[1][0]))
    assert anchor.mode == "RGB" and all(n.width == n.height for n in negatives)


def test_shipped_checkpoint_has_its_provenance() -> None:
    from encoders.photo_cnn import PHOTO_CNN_CHECKPOINT

    ckpt = load_tail_checkpoint(PHOTO_CNN_CHECKPOINT)
    prov = ckpt["provenance"]
    assert prov["command"].startswith("prodsearch train --task photo-cnn")
    assert "train split" in prov["data"] and prov["train_items"] > 0 and prov["steps"] > 0
    assert prov["history"]["epochs"], "validation figures per epoch"
    assert PHOTO_CNN_CHECKPOINT.stat().st_size < 8_000_000  # the tail only


def test_photo_search_scores_with_the_scorer_fitted_on_its_cnn(tmp_path: Path) -> None:
    """The scorer weighs a dense cosine: each CNN's cosines need the scorer fitted on them."""
    from backend.app import make_photo_index
    from backend.config import EncoderSettings, Settings
    from encoders.local_features import PhotoScorer, scorer_file

    weights = {}
    for model in ("efficientnet_lite0", "efficientnet_lite0_photo"):
        settings = Settings(data_dir=tmp_path, encoder=EncoderSettings(image_model=model))
        index = make_photo_index(settings)
        assert index is not None
        assert np.array_equal(index.scorer.weights, PhotoScorer.load(scorer_file(model)).weights)
        weights[model] = index.scorer.weights
    assert not np.array_equal(weights["efficientnet_lite0"], weights["efficientnet_lite0_photo"])
    with pytest.raises(ValueError, match="no photo scorer"):
        scorer_file("resnet")
