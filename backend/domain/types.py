"""Plain domain types shared by services, stores and transport. No I/O, no framework imports."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StockLevel:
    warehouse: str
    bin: str
    quantity: int
    reorder_point: int = 0

    @property
    def low(self) -> bool:
        return self.quantity <= self.reorder_point


@dataclass
class ImageRef:
    """A product image as stored: where to read it from, and its order within the product."""

    uri: str
    position: int


@dataclass
class ProductInput:
    """A product as written by a client or an ingest file (before the catalog assigns ids).

    `images` are file paths or file:// URIs; `image_bytes` carries uploaded images instead.
    """

    sku: str
    merchant: str
    title: str
    description: str = ""
    category: str = ""
    brand: str = ""
    size: str = ""
    material: str = ""
    colour: str = ""
    price: float = 0.0
    currency: str = "EUR"
    images: list[str] = field(default_factory=list)
    image_bytes: list[bytes] = field(default_factory=list)
    inventory: list[StockLevel] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    listed: bool = True


@dataclass
class Product:
    """A product as stored in the catalog."""

    product_id: str
    sku: str
    merchant: str
    title: str
    description: str
    category: str
    brand: str
    size: str
    material: str
    colour: str
    price: float
    currency: str
    images: list[ImageRef]
    inventory: list[StockLevel]
    attributes: dict[str, str]
    listed: bool
    catalog_version: int

    @property
    def in_stock(self) -> bool:
        return any(level.quantity > 0 for level in self.inventory)

    def text_for_encoding(self) -> str:
        """The text the text encoder sees for this product."""
        parts = [self.title, self.description, self.category.replace("/", " "), self.brand,
                 self.colour, self.material]
        return " . ".join(p for p in parts if p)


@dataclass
class PriceRange:
    min: float | None = None
    max: float | None = None


@dataclass
class Filters:
    category: str = ""
    sizes: list[str] = field(default_factory=list)
    materials: list[str] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    brands: list[str] = field(default_factory=list)
    merchants: list[str] = field(default_factory=list)
    price: PriceRange = field(default_factory=PriceRange)
    in_stock_only: bool = False
    # Product ids to leave out (e.g. the query product in "more like this").
    exclude_product_ids: list[str] = field(default_factory=list)
    # Only listed products, except those of these merchants (scoped API keys).
    listed_or_merchants: list[str] | None = None

    def keyword_values(self) -> dict[str, list[str]]:
        """Payload field -> accepted values, for the keyword fields that are set."""
        by_field = {
            "size": self.sizes,
            "material": self.materials,
            "colour": self.colours,
            "brand": self.brands,
            "merchant": self.merchants,
        }
        return {name: values for name, values in by_field.items() if values}


@dataclass
class SearchHit:
    product: Product
    score: float
    matched_image: int  # image position, -1 when only the text vector matched
    box: tuple[int, int, int, int] | None = None  # where a photo query found it (x0, y0, x1, y1)
    # The signals the score came from: a photo query's (inliers, fused_rank, ...), or with
    # explain a text query's (dense_text, lexical, exact, fused_rank).
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchResult:
    hits: list[SearchHit]
    next_page_token: str
    model_version: str
    catalog_version: int
    # Facet key -> [(value, count)], when asked for (category: one entry per path prefix,
    # i.e. every level; price: one per band, in band order).
    facets: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
