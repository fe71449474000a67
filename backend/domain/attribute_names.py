"""The catalog's attribute vocabulary in English and Chinese (colour, material, size):
canonical value -> other names. Shared by the lexical vector (attribute concepts) and the
bilingual lexicon (segmentation of Chinese queries)."""

from __future__ import annotations

from collections.abc import Iterator

COLOURS: dict[str, tuple[str, ...]] = {
    "red": ("红色",), "orange": ("橙色",), "brown": ("棕色", "咖啡色"),
    "yellow": ("黄色",), "green": ("绿色",), "blue": ("蓝色",),
    "purple": ("紫色",), "pink": ("粉色", "粉红色"), "black": ("黑色",),
    "white": ("白色",), "grey": ("灰色", "gray"), "beige": ("米色",),
    "gold": ("金色",), "silver": ("银色",),
}
MATERIALS: dict[str, tuple[str, ...]] = {
    "cotton": ("棉", "棉质", "纯棉"), "wool": ("羊毛",), "leather": ("皮革", "真皮"),
    "plastic": ("塑料",), "metal": ("金属",), "wood": ("木头", "木质", "wooden"),
    "glass": ("玻璃",), "paper": ("纸",), "silk": ("丝绸", "真丝"), "linen": ("亚麻",),
    "polyester": ("涤纶", "聚酯"), "steel": ("钢", "不锈钢"), "ceramic": ("陶瓷",),
}
SIZES: dict[str, tuple[str, ...]] = {
    "xs": ("加小号",), "s": ("小号", "small"), "m": ("中号", "medium"),
    "l": ("大号", "large"), "xl": ("加大号", "x-large"), "xxl": ("加加大号", "2xl", "xx-large"),
}


TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": COLOURS, "material": MATERIALS, "size": SIZES}


def attribute_names() -> Iterator[tuple[str, str, str]]:
    """(kind, canonical value, name) for every name of every attribute value, the canonical
    value itself included."""
    for kind, table in TABLES.items():
        for value, names in table.items():
            for name in (value, *names):
                yield kind, value, name
