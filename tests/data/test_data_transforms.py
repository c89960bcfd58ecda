"""fit_square / unfit / box mapping: geometry, antialiasing and round trips."""
from __future__ import annotations

import numpy as np
import pytest

from engine.data.transforms import (
    Letterbox,
    box_from_square,
    box_to_square,
    fit_square,
    letterbox_for,
    to_uint8,
    unfit,
)


def _ramp(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (0.2 + 0.6 * (xx / max(w - 1, 1)) * (yy / max(h - 1, 1))).astype(np.float32)


def test_pad_mode_wide_image_is_centred_with_zero_bands():
    img = np.full((50, 100), 0.5, np.float32)
    sq, lb = fit_square(img, 64, "pad")
    assert sq.shape == (64, 64) and sq.dtype == np.uint8
    assert (lb.new_h, lb.new_w) == (32, 64) and (lb.top, lb.left) == (16, 0)
    assert (sq[:16] == 0).all() and (sq[48:] == 0).all()
    assert (sq[16:48] == 128).all()  # 0.5 * 255 rounds to 128


def test_pad_mode_tall_image_pads_left_and_right():
    sq, lb = fit_square(np.ones((120, 40), np.float32), 60, "pad")
    assert (lb.new_h, lb.new_w, lb.top, lb.left) == (60, 20, 0, 20)
    assert (sq[:, :20] == 0).all() and (sq[:, 40:] == 0).all() and (sq[:, 20:40] == 255).all()


def test_crop_mode_fills_the_square_and_keeps_the_centre():
    img = np.zeros((40, 120), np.float32)
    img[:, 40:80] = 1.0  # bright central third
    sq, lb = fit_square(img, 40, "crop")
    assert lb.left == -40 and lb.top == 0 and lb.new_w == 120
    assert (sq == 255).all()  # the crop kept exactly the central third


def test_downsampling_is_antialiased():
    # A one-pixel checkerboard must average to grey, not alias into stripes or moire.
    img = (np.indices((256, 256)).sum(0) % 2).astype(np.float32)
    sq, _ = fit_square(img, 64)
    assert abs(float(sq.mean()) - 127.5) < 1.0 and int(sq.max()) - int(sq.min()) <= 1


def test_upsampling_small_images_and_degenerate_shapes():
    sq, lb = fit_square(_ramp(10, 5), 32)
    assert sq.shape == (32, 32) and lb.new_h == 32 and lb.new_w == 16
    sq, lb = fit_square(np.ones((1, 500), np.float32), 32)  # very thin: at least one row survives
    assert lb.new_h == 1 and sq[lb.top].min() == 255


def test_fit_square_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        fit_square(np.zeros((10, 10, 3), np.float32), 32)
    with pytest.raises(ValueError, match="mode"):
        fit_square(np.zeros((10, 10), np.float32), 32, mode="stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float image"):
        fit_square(np.zeros((10, 10), np.uint8), 32)


def test_quantization_rounds_and_clips():
    assert to_uint8(np.array([-0.1, 0.0, 0.5, 1.0, 1.3], np.float32)).tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("shape", [(90, 60), (60, 90), (77, 77), (300, 410)])
def test_unfit_round_trips_a_smooth_image(mode, shape):
    img = _ramp(*shape)
    sq, lb = fit_square(img, 48, mode)
    back = unfit(sq.astype(np.float32) / 255.0, lb)
    assert back.shape == shape
    m = int(np.ceil(1.0 / lb.scale)) + 1  # one square pixel: where the border blends with padding
    if mode == "pad":
        inner = back[m:-m, m:-m] - img[m:-m, m:-m]
        assert np.abs(inner).max() < 0.03
    else:  # only the part of the image that survived the crop can come back
        y0 = int(np.ceil(max(0, -lb.top) / lb.scale_y)) + m
        x0 = int(np.ceil(max(0, -lb.left) / lb.scale_x)) + m
        inner = back[y0:shape[0] - y0, x0:shape[1] - x0] - img[y0:shape[0] - y0, x0:shape[1] - x0]
        assert np.abs(inner).max() < 0.03
        if lb.left < 0:
            assert (back[:, :max(1, x0 - 2 * m)] == 0).all()  # cut-away columns get the fill value


def test_unfit_places_a_blob_where_it_was():
    img = np.zeros((200, 100), np.float32)
    img[40:60, 70:90] = 1.0
    sq, lb = fit_square(img, 64)
    back = unfit(sq.astype(np.float32) / 255.0, lb)
    ys, xs = np.nonzero(back > 0.5)
    assert abs(ys.mean() - 49.5) < 1.5 and abs(xs.mean() - 79.5) < 1.5


def test_unfit_checks_the_map_shape():
    _, lb = fit_square(np.zeros((30, 30), np.float32), 16)
    with pytest.raises(ValueError, match="expected"):
        unfit(np.zeros((8, 8), np.float32), lb)


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_box_round_trip_and_pixel_alignment(mode):
    img = np.zeros((300, 200), np.float32)
    img[100:150, 40:100] = 1.0
    sq, lb = fit_square(img, 64, mode)
    X, Y, W, H = box_to_square((40, 100, 60, 50), lb)
    # The mapped box encloses the bright block in the square (to within a pixel of blur).
    ys, xs = np.nonzero(sq > 127)
    assert abs(xs.min() - X) <= 1 and abs(xs.max() + 1 - (X + W)) <= 1
    assert abs(ys.min() - Y) <= 1 and abs(ys.max() + 1 - (Y + H)) <= 1
    back = box_from_square((X, Y, W, H), lb)
    assert np.allclose(back, (40, 100, 60, 50), atol=1e-6)


def test_box_clipping():
    lb = letterbox_for(100, 400, 64, "crop")  # wide image: the sides are cut away
    X, Y, W, H = box_to_square((0, 10, 50, 20), lb, clip=True)
    assert X == 0.0 and W == 0.0  # entirely in the cut-away part
    lb = letterbox_for(100, 200, 64, "pad")
    x, y, w, h = box_from_square((0, 0, 64, 64), lb)  # whole square, including padding
    assert (x, y, w, h) == (0.0, 0.0, 200.0, 100.0)


def test_letterbox_serializes():
    lb = letterbox_for(123, 457, 96, "pad")
    assert Letterbox.from_dict(lb.to_dict()) == lb
    with pytest.raises(ValueError):
        letterbox_for(0, 10, 32)
