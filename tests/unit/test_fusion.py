"""The fusion model and the LSTM text encoder: shapes, unit length, determinism, one space
for image-only / text-only / both, and ProductEncoder's use of a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.checkpoints import FusionCheckpoint, load_checkpoint, state_hash
from encoders.fusion import FusionConfig, FusionEncoder, FusionInput, FusionModel
from encoders.lstm import LSTMTextNet, tokenize
from encoders.text import LSTMTextEncoder

SMALL = FusionConfig(text_dim=16, d_model=32, heads=2, layers=1, ff_dim=64, dropout=0.0)
OUT = SMALL.out_dim


def _model(seed: int = 0, config: FusionConfig = SMALL) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(config).eval()


def test_fusion_shapes_and_unit_length_for_every_mode() -> None:
    model = _model()
    image = torch.randn(3, 49, 1280)
    text = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        outs = [model(image), model(None, text, mask), model(image, text, mask)]
    for out in outs:
        assert out.shape == (3, OUT)
        assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError):
        model()


def test_padding_does_not_change_the_vector() -> None:
    model = _model()
    image = torch.randn(1, 49, 1280)
    text = torch.randn(1, 3, 16)
    padded = torch.cat([text, torch.randn(1, 4, 16)], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        a = model(image, text)
        b = model(image, padded, mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_fusion_is_deterministic() -> None:
    image = torch.randn(2, 49, 1280)
    with torch.no_grad():
        a = _model(seed=3)(image)
        b = _model(seed=3)(image)
    assert torch.equal(a, b)
    assert state_hash(_model(seed=3).state_dict()) == state_hash(_model(seed=3).state_dict())
    assert state_hash(_model(seed=3).state_dict()) != state_hash(_model(seed=4).state_dict())


def test_fusion_encoder_mixed_batch_in_one_space(tmp_path: Path) -> None:
    """Image-only, text-only and both in one call: every row a unit vector of one size,
    each row equal to what the model gives for that element alone."""
    model = _model()
    path = tmp_path / "f.pt"
    torch.save({"format": 1, "config": SMALL.__dict__ | {"lstm": {}}, "model":
                model.state_dict(), "model_version": "fusion-test"}, path)
    enc = FusionEncoder(path, device="cpu")
    img = torch.randn(49, 1280)
    txt = torch.randn(4, 16)
    inputs = [FusionInput(img, txt), FusionInput(img), FusionInput(None, txt[:2]),
              FusionInput(None, txt)]
    out = enc.encode(inputs)
    assert out.shape == (4, OUT) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    alone = enc.encode([FusionInput(None, txt[:2])])
    assert np.allclose(out[2], alone[0], atol=1e-5)
    assert enc.version == "fusion-test" and enc.dim == OUT
    with pytest.raises(ValueError):
        enc.encode([FusionInput()])


def test_untrained_encoder_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = FusionEncoder.untrained(SMALL, seed=1, device="cpu")
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = FusionEncoder.untrained(SMALL, seed=1, device="cpu")
    x = [FusionInput(torch.ones(49, 1280))]
    assert np.array_equal(a.encode(x), b.encode(x))


def test_load_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError):
        load_checkpoint(path)


# -- LSTM text encoder -------------------------------------------------------------------


def test_lstm_net_shapes_mask_and_determinism() -> None:
    ids, mask = tokenize(["red cotton shirt", "a much longer blue leather travel bag"])
    assert ids.shape == mask.shape and ids.dtype == torch.long
    torch.manual_seed(0)
    net = LSTMTextNet(vocab_size=30522, embed_dim=8, hidden=6).eval()
    with torch.no_grad():
        states = net(ids, mask)
        vec = net.sentence(ids, mask)
    assert states.shape == (2, ids.shape[1], 12)
    assert torch.all(states[~mask] == 0)
    assert vec.shape == (2, 12)
    with torch.no_grad():
        again = net.sentence(ids, mask)
    assert torch.equal(vec, again)


def test_lstm_text_encoder_from_checkpoint(tmp_path: Path) -> None:
    config = FusionConfig(text_model="lstm", text_dim=12, d_model=32, heads=2, layers=1,
                          ff_dim=64,
                          lstm={"vocab_size": 30522, "embed_dim": 8, "hidden": 6})
    model = _model(config=config)
    path = tmp_path / "lstm.pt"
    torch.save({"format": 1, "config": config.__dict__, "model": model.state_dict()}, path)
    enc = LSTMTextEncoder(device="cpu", checkpoint=path)
    out = enc.encode(["red dress", "红色连衣裙", "blue jeans size 32"])
    assert out.shape == (3, 12)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(out, enc.encode(["red dress", "红色连衣裙", "blue jeans size 32"]))
    fusion = FusionEncoder(path, device="cpu")
    _vectors, ids = enc.encode_with_tokens(["red dress"])
    fused = fusion.encode([FusionInput(torch.zeros(49, 1280), ids[0])])
    assert fused.shape == (1, OUT)


def test_lstm_needs_a_checkpoint_trained_with_it(tmp_path: Path) -> None:
    path = tmp_path / "f.pt"
    torch.save({"format": 1, "config": SMALL.__dict__ | {"lstm": {}},
                "model": _model().state_dict()}, path)
    with pytest.raises(ValueError):
        LSTMTextEncoder(device="cpu", checkpoint=path)
    with pytest.raises(ValueError):
        LSTMTextEncoder(device="cpu", checkpoint=tmp_path / "missing.pt")


def test_product_encoder_gives_fused_for_every_element() -> None:
    from PIL import Image

    from encoders.model import ProductEncoder

    enc = ProductEncoder(text_model="minilm", device="cpu",
                         fusion_checkpoint=FusionCheckpoint.UNTRAINED)
    assert enc.dims["fused"] == enc.fusion.dim if enc.fusion else False
    assert enc.model_version.endswith("+fusion-untrained-s0")
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    out = enc.encode_batch([img, img, None, None], ["red shirt", None, "red shirt", None])
    assert set(out[0]) == {"image", "text", "fused"}
    assert set(out[1]) == {"image", "fused"}
    assert set(out[2]) == {"text", "fused"}
    assert out[3] == {}
    for row in out[:3]:
        assert row["fused"].shape == (enc.dims["fused"],)
        assert abs(float(np.linalg.norm(row["fused"])) - 1.0) < 1e-5
    # The pooled image vector is the plain encoder's.
    assert np.allclose(out[1]["image"], enc.encode_images([img])[0], atol=1e-5)
    assert enc.query_image_vectors(img).shape[1] == enc.dims["fused"]
    with_crops = enc.query_image_vectors(img, crops=True)
    assert with_crops.shape[0] > 1 and with_crops.shape[1] == enc.dims["fused"]
    plain = ProductEncoder(text_model="minilm", device="cpu",
                           fusion_checkpoint=FusionCheckpoint.NONE)
    assert "fused" not in plain.dims


def test_shipped_checkpoint_loads() -> None:
    from encoders.checkpoints import DEFAULT_CHECKPOINT

    assert DEFAULT_CHECKPOINT.exists(), "a fresh install must ship a trained fusion model"
    assert DEFAULT_CHECKPOINT.stat().st_size < 8 * 2**20
    enc = FusionEncoder(DEFAULT_CHECKPOINT, device="cpu")
    assert enc.config.text_model == "multilingual" and enc.dim == 1280
    assert enc.version.startswith("fusion-")
    out = enc.encode([FusionInput(torch.zeros(49, 1280) + 0.1), FusionInput(None,
                                                                         torch.ones(1, 512))])
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_shipped_lstm_checkpoint_serves_the_lstm_text_model() -> None:
    from encoders.checkpoints import SHIPPED_CHECKPOINTS
    from encoders.model import ProductEncoder

    path = SHIPPED_CHECKPOINTS["lstm"]
    assert path.exists() and path.stat().st_size < 8 * 2**20
    enc = ProductEncoder(text_model="lstm", device="cpu",
                         fusion_checkpoint=FusionCheckpoint.SHIPPED)
    assert enc.fusion is not None and enc.fusion.config.text_model == "lstm"
    assert "lstm" in enc.model_version and "fused" in enc.dims
    enc.load()
    texts = enc.encode_texts(["red bird", "blue car", "red bird"])
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert np.allclose(texts[0], texts[2]) and not np.allclose(texts[0], texts[1])
    # The stand-alone LSTM encoder reads the same shipped weights by default.
    alone = LSTMTextEncoder(device="cpu")
    alone.load()
    assert np.allclose(alone.encode(["red bird"])[0], texts[0], atol=1e-5)


@pytest.mark.parametrize(("spelling", "expected"), [
    ("none", FusionCheckpoint.NONE), (" None ", FusionCheckpoint.NONE),
    ("shipped", FusionCheckpoint.SHIPPED), ("", FusionCheckpoint.SHIPPED),
    ("SHIPPED", FusionCheckpoint.SHIPPED),
    ("/models/fusion.pt", FusionCheckpoint("path", Path("/models/fusion.pt"))),
    ("~/fusion.pt", FusionCheckpoint("path", Path.home() / "fusion.pt")),
])
def test_fusion_setting_spellings_parse_to_one_type(spelling: str,
                                                    expected: FusionCheckpoint) -> None:
    parsed = FusionCheckpoint.parse(spelling)
    assert parsed == expected
    assert FusionCheckpoint.parse(str(parsed)) == parsed  # the setting round-trips
    assert FusionCheckpoint.parse(parsed) is parsed


def test_fusion_checkpoint_has_a_path_exactly_for_a_file() -> None:
    with pytest.raises(ValueError):
        FusionCheckpoint("path")
    with pytest.raises(ValueError):
        FusionCheckpoint("shipped", Path("x.pt"))


def test_fusion_checkpoint_file_trained_for_another_text_model_is_refused() -> None:
    from encoders.checkpoints import SHIPPED_CHECKPOINTS
    from encoders.model import ProductEncoder

    lstm_file = FusionCheckpoint.file(SHIPPED_CHECKPOINTS["lstm"])
    with pytest.raises(ValueError, match="trained for text model 'lstm'"):
        ProductEncoder(text_model="minilm", device="cpu", fusion_checkpoint=lstm_file)
    # The shipped choice for a text model with no checkpoint of its own: no fused vector.
    shipped = ProductEncoder(text_model="minilm", device="cpu",
                             fusion_checkpoint=FusionCheckpoint.SHIPPED)
    assert shipped.fusion is None and "fused" not in shipped.dims
