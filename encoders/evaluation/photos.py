"""The photo renderer lives in `encoders.photo_conditions` (serving code uses it for match
calibration and the reindex recall check); evaluation modules keep importing it from here."""

from encoders.photo_conditions import (
    EASY,
    LISTING_HARD,
    PRODUCT_HARD,
    SHELF,
    SHELF_HARD,
    Box,
    PhotoStyle,
    Scene,
    photo_jpeg,
    render_photo,
    render_scene,
    render_shelf,
)

__all__ = [
    "EASY", "LISTING_HARD", "PRODUCT_HARD", "SHELF", "SHELF_HARD", "Box", "PhotoStyle", "Scene",
    "photo_jpeg", "render_photo", "render_scene", "render_shelf",
]
