"""A small English <-> Chinese vocabulary for the text benchmark: the openclipart categories
(the 22 top-level folders and the common subfolders), colours and materials; and the
query texts built from it, each English query with its Chinese twin.

Folders that only name an icon theme, a country or a style ("lemon-theme", "white",
"europe"...) have no entry: a query names the deepest folder of an item's path that does.
"""

from __future__ import annotations

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "MATERIALS",
    "category_key",
    "category_query",
    "item_query",
    "translate",
]

# folder name -> (English, Chinese)
CATEGORIES: dict[str, tuple[str, str]] = {
    # top level
    "animals": ("animal", "动物"),
    "buildings": ("building", "建筑"),
    "buttons": ("button", "按钮"),
    "computer": ("computer", "电脑"),
    "containers": ("container", "容器"),
    "decorations": ("decoration", "装饰品"),
    "education": ("education", "教育"),
    "electronics": ("electronics", "电子产品"),
    "food": ("food", "食物"),
    "geography": ("geography", "地理"),
    "logos": ("logo", "标志"),
    "office": ("office supplies", "办公用品"),
    "people": ("people", "人物"),
    "plants": ("plant", "植物"),
    "recreation": ("recreation", "娱乐"),
    "science": ("science", "科学"),
    "shapes": ("shape", "形状"),
    "signs_and_symbols": ("sign and symbol", "标志和符号"),
    "special": ("special pattern", "特殊图案"),
    "tools": ("tool", "工具"),
    "transportation": ("transportation", "交通工具"),
    "unsorted": ("miscellaneous item", "杂项物品"),
    # animals
    "bugs": ("insect", "昆虫"),
    "amphibian": ("amphibian", "两栖动物"),
    "fantasy": ("fantasy creature", "奇幻生物"),
    "dinosaurs": ("dinosaur", "恐龙"),
    "mammals": ("mammal", "哺乳动物"),
    "birds": ("bird", "鸟"),
    "fish": ("fish", "鱼"),
    "bears": ("bear", "熊"),
    "horses": ("horse", "马"),
    "big_cats": ("big cat", "大型猫科动物"),
    "housecats": ("cat", "猫"),
    "dogs": ("dog", "狗"),
    "penguin": ("penguin", "企鹅"),
    # buildings
    "homes": ("house", "房屋"),
    "furniture": ("furniture", "家具"),
    # computer
    "folders": ("folder", "文件夹"),
    "network": ("network", "网络"),
    "icons": ("icon", "图标"),
    "connectors": ("connector", "连接器"),
    "hardware": ("computer hardware", "电脑硬件"),
    "games": ("game", "游戏"),
    "diagrams": ("diagram", "图表"),
    # education, electronics
    "books": ("book", "书"),
    "battery": ("battery", "电池"),
    "bulb": ("light bulb", "灯泡"),
    # food
    "fruit": ("fruit", "水果"),
    "dairy": ("dairy product", "乳制品"),
    "beverages": ("drink", "饮料"),
    "alcohol": ("alcoholic drink", "酒"),
    "vegetables": ("vegetable", "蔬菜"),
    "breads_and_carbs": ("bread", "面包"),
    "desserts": ("dessert", "甜点"),
    "meats_and_eggs": ("meat and eggs", "肉和蛋"),
    # geography, office, science
    "astronomy": ("astronomy", "天文"),
    "telephone": ("telephone", "电话"),
    "medicine": ("medicine", "药品"),
    # people
    "bodypart": ("body part", "身体部位"),
    "smilies": ("smiley face", "笑脸"),
    "stickmen": ("stick figure", "火柴人"),
    "clothing": ("clothing", "服装"),
    "jewelry": ("jewelry", "珠宝"),
    "hats": ("hat", "帽子"),
    "pantyhose": ("pantyhose", "连裤袜"),
    # plants
    "trees": ("tree", "树"),
    "evergreen": ("evergreen tree", "常青树"),
    "flowers": ("flower", "花"),
    # recreation
    "holiday": ("holiday", "节日"),
    "easter": ("easter", "复活节"),
    "christmas": ("christmas", "圣诞节"),
    "valentines": ("valentine", "情人节"),
    "thanksgiving": ("thanksgiving", "感恩节"),
    "music": ("music", "音乐"),
    "party": ("party", "派对"),
    "art": ("art", "艺术"),
    "sports": ("sport", "运动"),
    "religion": ("religion", "宗教"),
    "toys": ("toy", "玩具"),
    "cards": ("playing card", "扑克牌"),
    "chess": ("chess", "国际象棋"),
    "dice": ("dice", "骰子"),
    # shapes
    "jigsaw": ("jigsaw puzzle", "拼图"),
    "flowchart": ("flowchart", "流程图"),
    "arrows": ("arrow", "箭头"),
    "callouts": ("speech bubble", "对话框"),
    "stars": ("star", "星星"),
    # signs and symbols
    "money": ("money", "钱"),
    "hazard": ("hazard sign", "危险标志"),
    "clocks": ("clock", "时钟"),
    "disability": ("accessibility sign", "无障碍标志"),
    "weather": ("weather", "天气"),
    "flags": ("flag", "旗帜"),
    "map_symbols": ("map symbol", "地图符号"),
    "awards": ("award", "奖章"),
    # special
    "patterns": ("pattern", "图案"),
    "gradients": ("gradient", "渐变"),
    # tools, transportation
    "weapons": ("weapon", "武器"),
    "roadsigns": ("road sign", "路标"),
    "aiga-symbols": ("public information symbol", "公共标识"),
    "boating": ("boat", "船"),
    "vehicles": ("vehicle", "车辆"),
}

COLOURS: dict[str, str] = {
    "red": "红色", "orange": "橙色", "brown": "棕色", "yellow": "黄色", "green": "绿色",
    "blue": "蓝色", "purple": "紫色", "pink": "粉色", "black": "黑色", "white": "白色",
    "grey": "灰色",
}

MATERIALS: dict[str, str] = {
    "cotton": "棉", "wool": "羊毛", "leather": "皮革", "plastic": "塑料", "metal": "金属",
    "wood": "木头", "glass": "玻璃", "paper": "纸",
}


def category_key(category: str) -> str | None:
    """The category path prefix a query names: up to the deepest folder with a vocabulary
    entry ("animals/mammals/dogs" -> itself; "computer/icons/lemon-theme/apps" ->
    "computer/icons"); None when no folder has one."""
    parts = category.split("/")
    for depth in range(len(parts), 0, -1):
        if parts[depth - 1] in CATEGORIES:
            return "/".join(parts[:depth])
    return None


def category_query(key: str) -> tuple[str, str]:
    """(English, Chinese) query naming a category key from `category_key`."""
    return CATEGORIES[key.rsplit("/", 1)[-1]]


def item_query(category: str, colour: str | None = None, material: str | None = None
               ) -> tuple[str, str] | None:
    """(English, Chinese) twins describing an item: "red wood bird" / "红色的木头鸟".
    None when its category has no vocabulary entry."""
    key = category_key(category)
    if key is None:
        return None
    en_noun, zh_noun = category_query(key)
    en = [w for w in (colour, material, en_noun) if w]
    zh = ""
    if colour:
        zh += COLOURS[colour] + "的"
    if material:
        zh += MATERIALS[material]
    return " ".join(en), zh + zh_noun


def translate(word: str) -> str:
    """English word of the vocabulary (category noun, colour or material) -> Chinese."""
    for en, zh in CATEGORIES.values():
        if en == word:
            return zh
    if word in COLOURS:
        return COLOURS[word]
    if word in MATERIALS:
        return MATERIALS[word]
    raise KeyError(f"{word!r} is not in the vocabulary")
