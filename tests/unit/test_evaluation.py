"""The benchmarks: real data loaders, the train/eval split, the bilingual vocabulary, and
each task end to end on a small sample (JSON document with the expected keys + a PNG)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import random
from pathlib import Path

import numpy as np
import pytest

from encoders.evaluation import bilingual, datasets, runner

FMNIST = datasets.FMNIST_DIR / "train-images-idx3-ubyte.gz"
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="dataset-fashion-mnist missing")
needs_clipart = pytest.mark.skipif(not datasets.OPENCLIPART_DIR.is_dir(),
                                   reason="openclipart-png missing")


# -- data ------------------------------------------------------------------------------


@needs_fmnist
def test_fashion_mnist_loads_real_images() -> None:
    images, labels = datasets.load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert set(labels.tolist()) == set(range(10)) and len(datasets.FMNIST_CLASSES) == 10
    img = datasets.fmnist_image(images[0])
    assert img.mode == "RGB" and img.size == (28, 28)


def test_missing_data_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(datasets.DatasetMissing, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(datasets.DatasetMissing, match="openclipart-png"):
        datasets.openclipart_items(tmp_path)


def test_subsample_is_seeded_and_distinct() -> None:
    a = datasets.subsample(1000, 50, seed=3, salt="x")
    assert a.tolist() == datasets.subsample(1000, 50, seed=3, salt="x").tolist()
    assert len(set(a.tolist())) == 50
    assert a.tolist() != datasets.subsample(1000, 50, seed=4, salt="x").tolist()
    assert len(datasets.subsample(10, None, seed=0, salt="x")) == 10


@needs_clipart
def test_openclipart_split_is_disjoint_and_complete() -> None:
    items = datasets.openclipart_items()
    train, evaluation = datasets.openclipart_split()
    train_ids = {it.item_id for it in train}
    eval_ids = {it.item_id for it in evaluation}
    assert not train_ids & eval_ids
    assert train_ids | eval_ids == {it.item_id for it in items}
    assert 0.15 < len(eval_ids) / len(items) < 0.25
    # Posters over 4 megapixels are left out by their header size.
    assert len(items) < 8121
    assert all(it.title and it.category for it in items[:50])


def test_split_matches_the_training_code() -> None:
    training = pytest.importorskip("encoders.training.data")
    keys = [f"animals/birds/bird_{n}.png" for n in range(200)]
    assert [datasets.split_of(k) for k in keys] == [training.split_of(k) for k in keys]


def test_evaluation_photo_seeds_differ_from_training_seeds() -> None:
    # Training renders with random.Random(f"{seed}:{item}"); evaluation never does.
    eval_draws = [datasets.photo_rng("a/b.png", s).random() for s in range(5)]
    train_draws = [random.Random(f"{s}:a/b.png").random() for s in range(5)]
    assert not set(eval_draws) & set(train_draws)
    assert datasets.photo_rng("a/b.png", 0).random() == datasets.photo_rng("a/b.png", 0).random()


def test_title_from_path() -> None:
    assert datasets.title_from_path(Path("red_apple_nicu_01.png")) == "Red apple nicu"
    assert datasets.title_from_path(Path("08.png")) == "08"


# -- bilingual ---------------------------------------------------------------------------


@needs_clipart
def test_every_top_level_folder_has_a_translation() -> None:
    tops = {p.name for p in datasets.OPENCLIPART_DIR.iterdir() if p.is_dir()}
    assert len(tops) == 22
    assert tops <= set(bilingual.CATEGORIES)


def test_bilingual_twins() -> None:
    assert bilingual.category_key("animals/mammals/dogs") == "animals/mammals/dogs"
    assert bilingual.category_key("computer/icons/lemon-theme/apps") == "computer/icons"
    assert bilingual.category_key("nowhere/at_all") is None
    assert bilingual.item_query("animals/birds", "red") == ("red bird", "红色的鸟")
    assert bilingual.item_query("food/fruit", "green", "plastic") == (
        "green plastic fruit", "绿色的塑料水果")
    assert bilingual.category_query("plants/flowers") == ("flower", "花")
    assert bilingual.translate("blue") == "蓝色"
    for en, zh in bilingual.CATEGORIES.values():
        assert en.isascii() and any("\u4e00" <= ch <= "\u9fff" for ch in zh), (en, zh)


def test_every_measured_colour_has_a_translation() -> None:
    from PIL import Image

    for rgb in [(255, 0, 0), (0, 0, 255), (10, 10, 10), (128, 128, 128), (250, 200, 0)]:
        colour = datasets.dominant_colour(Image.new("RGB", (8, 8), rgb))
        assert colour in bilingual.COLOURS


# -- end to end --------------------------------------------------------------------------


def _check_doc(doc: dict, task: str, out: Path) -> None:
    assert doc["task"] == task
    for key in ("sizes", "seeds", "variants", "skipped", "curves", "seconds", "png"):
        assert key in doc, key
    png = Path(doc["png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / f"{task}.json").read_text(encoding="utf-8"))["task"] == task
    json.dumps(doc)  # JSON-ready throughout


@needs_fmnist
@pytest.mark.timeout(120)
def test_fmnist_task_end_to_end(tmp_path: Path) -> None:
    doc = runner.run("fmnist-category", out_dir=tmp_path, limit=5,
                     variants=["raw-pixels", "backbone"])
    _check_doc(doc, "fmnist-category", tmp_path)
    assert doc["sizes"] == {"queries": 5, "gallery": 50}
    for name in ("raw-pixels", "backbone"):
        res = doc["variants"][name]
        assert {"P@1", "P@10", "mAP@100", "by_class"} <= set(res)
        assert 0.0 <= res["P@10"] <= 1.0
    # The gallery features are cached: a second run reads them back.
    again = runner.run("fmnist-category", out_dir=tmp_path, limit=5, variants=["backbone"])
    assert again["variants"]["backbone"]["gallery_from_cache"] is True
    assert again["variants"]["backbone"]["P@1"] == doc["variants"]["backbone"]["P@1"]


@needs_clipart
@pytest.mark.timeout(120)
def test_shelf_task_end_to_end(tmp_path: Path) -> None:
    doc = runner.run("shelf", out_dir=tmp_path, limit=30, queries=4, crop_queries=1,
                     variants=["raw-pixels", "backbone"])
    _check_doc(doc, "shelf", tmp_path)
    assert doc["sizes"]["gallery"] == 30 and 1 <= doc["sizes"]["queries"] <= 4
    backbone = doc["variants"]["backbone"]
    for strategy in ("whole", "views", "true_box", "crops"):
        assert {"recall@1", "recall@5", "recall@10", "MRR", "in_photo@1"} <= set(
            backbone[strategy])
        # Finding the item itself is one way of finding an item that is in the photo.
        assert backbone[strategy]["in_photo@1"] >= backbone[strategy]["recall@1"]
    assert backbone["crops"]["queries"] == 1


@needs_clipart
def test_shelf_query_knows_what_is_in_the_photo() -> None:
    from encoders.evaluation import tasks

    gallery = tasks._openclipart_gallery(40, 0)
    index = tasks._eval_queries(gallery, 1, 0)[0]
    query = tasks.render_query(gallery, index, seed=0)
    again = tasks.render_query(gallery, index, seed=0)
    assert index in query.in_photo and query.in_photo == again.in_photo
    assert np.array_equal(np.asarray(query.photo), np.asarray(again.photo))
    left, top, right, bottom = query.box
    assert 0 <= left < right <= query.photo.width and 0 <= top < bottom <= query.photo.height
    # The distractors named are exactly the ones pasted: 2 to 5 for the shelf style.
    assert 3 <= len(query.in_photo) <= 6


@needs_clipart
@pytest.mark.timeout(120)
def test_text_task_end_to_end(tmp_path: Path) -> None:
    doc = runner.run("text", out_dir=tmp_path, limit=60, queries=10, variants=[])
    _check_doc(doc, "text", tmp_path)
    multi = doc["variants"]["multilingual"]
    assert {"en", "zh", "zh_en_overlap@10", "queries"} <= set(multi["category"])
    assert "recall@10" in multi["category"]["zh"]
    assert "zh" not in multi["title"]  # titles have no Chinese twin
    assert 0.0 <= multi["category"]["zh_en_overlap@10"] <= 1.0
    # Every registered text encoder has its rows, e5 among them.
    assert "recall@10" in doc["variants"]["e5"]["item"]["zh"]


@needs_clipart
@pytest.mark.timeout(180)
def test_text_task_vector_store_rows_on_another_encoder(tmp_path: Path) -> None:
    """`--text-encoder e5`: the lexical / dense / hybrid rows are measured on e5's vectors,
    and an exact SKU still comes first."""
    from backend.text_eval import hybrid_rows

    doc = runner.run("text", out_dir=tmp_path, limit=60, queries=10, variants=[],
                     text_retrieval=hybrid_rows, text_encoder="e5")
    assert doc["retrieval_encoder"] == "e5"
    for mode in ("lexical", "dense", "hybrid-rrf", "hybrid-dbsf"):
        assert f"{mode} [catalog]" in doc["variants"]
    assert doc["variants"]["hybrid-rrf [catalog]"]["sku"]["en"]["recall@1"] == 1.0


@needs_fmnist
@pytest.mark.timeout(120)
def test_cli_prints_one_json_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    from backend.cli import main

    code = main(["eval", "--task", "fmnist-category", "--limit", "3", "--variants",
                 "raw-pixels", "--out", str(tmp_path), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["variants"]["raw-pixels"]["P@1"] >= 0.0
    assert (tmp_path / "fmnist-category_recall.png").is_file()
