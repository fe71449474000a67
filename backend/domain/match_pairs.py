"""Labelled listings made from the catalog's own products, for match calibration:

- SAME: the item re-photographed and re-titled, same attributes;
- VARIANT: re-photographed under the same title with another size or material, or recoloured
  (hue-shifted photo and another colour);
- DIFFERENT: a photo of another item sold under THIS item's title and attributes (same
  title, other product), and a photo of the visually closest other item under its own title.

Every listing is made twice: under `easy` conditions (a product photo: the item fills the
frame on a plain surface) and `hard` ones (perspective, other things around it, occlusion,
coloured light, JPEG quality 30-60), as merchants' real photos are. Each listing leaves out
some attributes at random, as real listings do. The alternative sizes, materials and colours
are the catalog's own values."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from backend.domain.types import Product
from encoders.photo_conditions import EASY, LISTING_HARD, PhotoStyle, render_photo

SAME, VARIANT, DIFFERENT = range(3)
CONDITIONS: dict[str, PhotoStyle] = {"easy": EASY, "hard": LISTING_HARD}
_FILLER = ("new", "original", "genuine", "classic", "premium", "free shipping", "sale")


@dataclass
class ListingCase:
    photo: Image.Image
    title: str
    attributes: dict[str, str]
    target: int  # index of the catalog product it is compared with
    label: int
    condition: str


def catalog_values(products: list[Product]) -> dict[str, list[str]]:
    """The distinct sizes, materials and colours the catalog uses (sorted: reproducible)."""
    out: dict[str, set[str]] = {"size": set(), "material": set(), "colour": set()}
    for product in products:
        for name in out:
            value = str(getattr(product, name)).strip()
            if value:
                out[name].add(value)
    return {name: sorted(values) for name, values in out.items()}


def retitle(title: str, rng: random.Random) -> str:
    """Another title for the same product: reordered, a word dropped, sales filler added."""
    words = title.split()
    if len(words) > 2 and rng.random() < 0.5:
        words.pop(rng.randrange(len(words)))
    rng.shuffle(words)
    words.insert(rng.randrange(len(words) + 1), rng.choice(_FILLER))
    return " ".join(words).lower()


def hue_shift(image: Image.Image, degrees: int) -> Image.Image:
    rgba = image.convert("RGBA")
    h, s, v = rgba.convert("RGB").convert("HSV").split()
    h = h.point(lambda x: (x + degrees * 255 // 360) % 256)
    out = Image.merge("HSV", (h, s, v)).convert("RGB").convert("RGBA")
    out.putalpha(rgba.getchannel("A"))
    return out


def listing_attributes(product: Product) -> dict[str, str]:
    return {"size": product.size, "material": product.material, "colour": product.colour,
            "brand": product.brand}


def partial(attrs: dict[str, str], rng: random.Random, keep: str = "") -> dict[str, str]:
    """Listings often leave attributes out: drop each (but `keep`) with probability 1/2, so
    that the verdict cannot lean on attribute differences alone."""
    return {k: v if k == keep or rng.random() < 0.5 else "" for k, v in attrs.items()}


def build_cases(products: list[Product], images: list[Image.Image], nearest: list[int],
                values: dict[str, list[str]], rng: random.Random) -> list[ListingCase]:
    """Four listings per item and condition; `nearest[i]` is item i's closest look-alike."""
    cases: list[ListingCase] = []
    for condition, style in CONDITIONS.items():
        for i, product in enumerate(products):
            def photo(image: Image.Image, item: int = i, style: PhotoStyle = style
                      ) -> Image.Image:
                # Clutter, where the style has some, is other catalog items.
                others = [images[j] for j in rng.sample(range(len(images)), 4) if j != item]
                return render_photo(image, rng, style, others)[0]

            attrs = listing_attributes(product)
            cases.append(ListingCase(photo(images[i]), retitle(product.title, rng),
                                     partial(attrs, rng), i, SAME, condition))

            changed = dict(attrs)
            source = images[i]
            kinds = [k for k in ("size", "material", "colour")
                     if [v for v in values[k] if v.lower() != attrs[k].lower()]]
            kind = rng.choice(kinds) if kinds else ""
            if kind:
                changed[kind] = rng.choice(
                    [v for v in values[kind] if v.lower() != attrs[kind].lower()])
                if kind == "colour":
                    source = hue_shift(source, rng.choice((90, 150, 210)))
                cases.append(ListingCase(photo(source), product.title,
                                         partial(changed, rng, keep=kind), i, VARIANT,
                                         condition))

            # Another product under this one's title, with this one's attributes or none:
            # the photo is what tells them apart.
            other = rng.choice([j for j in range(len(products)) if j != i])
            cases.append(ListingCase(photo(images[other]), product.title, partial(attrs, rng),
                                     i, DIFFERENT, condition))
            close = nearest[i]
            cases.append(ListingCase(photo(images[close]), products[close].title,
                                     partial(listing_attributes(products[close]), rng), i,
                                     DIFFERENT, condition))
    return cases
