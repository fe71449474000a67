"""A bilingual (English / Chinese) lexicon of product, category and shopping words, so that a
query's lexical half matches a catalog written in the other language.

Each line of `_TABLE` is one concept: its English names, then after ';' its Chinese names.
A query naming a concept in either language also asks for every other name of it: "连衣裙"
adds "dress", "dress" adds the terms of "连衣裙", "insect" adds "bug". A Chinese query on an
English catalog so matches the products the English query matches, and the other way round;
nothing about the products changes (no reindex).

The vocabulary is general e-commerce (apparel, home, electronics, food, toys, tools...) plus
the words of the demo catalog's category tree (openclipart's folders: "animals/birds",
"signs_and_symbols", "transportation"...). Colours, materials and sizes are not here: they
are the attribute concepts of `lexical.py`, which already match in both languages.

Chinese has no spaces, so a query's Chinese text is segmented by forward maximum matching
against the Chinese names (the longest name at each position wins: "鼠标" is a mouse for a
computer, not "鼠" the animal); English names match as whole words or phrases, plural folded.
"""

from __future__ import annotations

from functools import lru_cache

from backend.domain.attribute_names import attribute_names
from backend.domain.text_terms import HAN_RUN, name_terms, normalise, terms

# English names ; Chinese names. The first name of each side is the usual one.
_TABLE = """
dress, gown ; 连衣裙, 裙子, 长裙
skirt ; 半身裙, 短裙
shirt, blouse ; 衬衫, 衬衣
t-shirt, tee, tshirt ; 恤, 短袖
sweater, jumper, pullover ; 毛衣, 针织衫
hoodie, sweatshirt ; 卫衣
jacket ; 夹克, 外套
coat, overcoat ; 大衣
trousers, pants ; 裤子, 长裤
jeans ; 牛仔裤
shorts ; 短裤
pantyhose, tights, stocking ; 连裤袜, 丝袜, 裤袜
sock ; 袜子
underwear ; 内衣
pajamas ; 睡衣
swimsuit ; 泳衣
uniform ; 制服
clothing, clothes, apparel, garment ; 服装, 衣服, 服饰
shoe, footwear ; 鞋, 鞋子
sneaker, trainer ; 运动鞋, 球鞋
boot ; 靴子, 靴
sandal, slipper ; 凉鞋, 拖鞋
hat, cap ; 帽子, 帽
scarf ; 围巾
glove ; 手套
belt ; 腰带, 皮带
tie, necktie ; 领带
bag, handbag ; 包, 包包, 手提包
backpack, rucksack ; 背包, 双肩包
wallet, purse ; 钱包
suitcase, luggage ; 行李箱
watch, wristwatch ; 手表
jewelry, jewellery ; 珠宝, 首饰
ring ; 戒指
necklace ; 项链
earring ; 耳环
bracelet ; 手镯, 手链
spectacles, eyeglasses ; 眼镜
sunglasses ; 太阳镜, 墨镜
umbrella ; 雨伞, 伞
phone, telephone, mobile, smartphone ; 电话, 手机
computer, pc ; 电脑, 计算机
laptop, notebook computer ; 笔记本电脑
tablet ; 平板电脑, 平板
keyboard ; 键盘
computer mouse ; 鼠标
monitor, screen, display ; 显示器, 屏幕
printer ; 打印机
hardware ; 硬件
software, application, app ; 软件, 应用, 应用程序
icon ; 图标
folder, directory ; 文件夹, 目录
file ; 文件
network, internet ; 网络, 互联网
connector, plug, cable ; 连接器, 插头, 数据线, 电缆
battery ; 电池
charger ; 充电器
light bulb, bulb, lamp ; 灯泡, 灯, 台灯
camera ; 相机, 照相机, 摄像头
headphone, earphone, headset ; 耳机
speaker, loudspeaker ; 音箱, 扬声器
television, tv ; 电视, 电视机
radio ; 收音机
electronics, electronic ; 电子产品, 电子, 数码
device, gadget ; 设备, 装置
cd player, cd ; 光盘, 光碟
game, video game ; 游戏
button ; 按钮, 纽扣
led ; 指示灯
furniture ; 家具
chair, seat ; 椅子
table ; 桌子, 餐桌
desk ; 书桌, 办公桌
sofa, couch ; 沙发
bed ; 床
shelf, bookcase ; 架子, 书架
cabinet, wardrobe ; 柜子, 衣柜
pillow, cushion ; 枕头, 靠垫
blanket, quilt ; 毯子, 被子
towel ; 毛巾
curtain ; 窗帘
carpet, rug ; 地毯
mirror ; 镜子
clock ; 时钟, 钟, 挂钟
vase ; 花瓶
candle ; 蜡烛
decoration, ornament ; 装饰, 装饰品, 摆件
cup, mug ; 杯子, 杯, 马克杯
glass cup, tumbler ; 玻璃杯
bottle ; 瓶子, 瓶
plate, dish ; 盘子
bowl ; 碗
knife ; 刀, 刀具
fork ; 叉子
spoon ; 勺子
chopsticks ; 筷子
pan, pot, wok ; 锅, 平底锅
kettle, teapot ; 水壶, 茶壶
container, box, jar, basket ; 容器, 盒子, 罐子, 篮子, 箱子
gift ; 礼物, 礼品
gift card, gift certificate, voucher ; 礼品卡, 礼券
card ; 卡, 卡片
playing card, poker ; 扑克, 扑克牌, 纸牌
book ; 书, 书籍, 图书
notebook, notepad ; 笔记本, 本子
pen ; 笔, 钢笔, 圆珠笔
pencil ; 铅笔
paper ; 纸张
scissors ; 剪刀
office, office supplies, stationery ; 办公, 办公用品, 文具
education, school ; 教育, 学校
science ; 科学
astronomy, space ; 天文, 太空
planet ; 行星
medicine, medical, drug ; 药品, 药, 医药
diagram, chart ; 图表
flowchart ; 流程图
tool ; 工具
hammer ; 锤子
screwdriver ; 螺丝刀
wrench, spanner ; 扳手
saw ; 锯子, 锯
drill ; 电钻, 钻头
weapon, gun, sword ; 武器, 枪, 剑
toy ; 玩具
robot ; 机器人
doll ; 娃娃, 玩偶
teddy bear ; 泰迪熊
ball ; 球
jigsaw, puzzle ; 拼图
chess ; 国际象棋, 象棋
dice ; 骰子
kite ; 风筝
balloon ; 气球
sport, sports ; 运动, 体育
football, soccer ; 足球
basketball ; 篮球
tennis ; 网球
bicycle, bike ; 自行车, 单车
car, automobile ; 汽车, 轿车, 小汽车
truck, lorry ; 卡车, 货车
bus ; 公共汽车, 公交车, 巴士
train ; 火车, 列车
airplane, plane, aircraft ; 飞机
helicopter ; 直升机
motorcycle, motorbike ; 摩托车
boat, ship, boating, yacht ; 船, 小船, 轮船, 游艇
vehicle ; 车辆, 车
transportation, transport ; 交通, 交通工具, 运输
road sign, roadsign, traffic sign ; 路标, 交通标志
map ; 地图
map symbol ; 地图符号
flag, banner ; 旗帜, 旗, 国旗
sign, signboard ; 标志, 标识, 标牌
symbol ; 符号
logo, emblem ; 标志, 徽标, 商标
hazard, danger, warning ; 危险, 警告
disability, accessibility, wheelchair ; 残疾, 无障碍, 轮椅
award, medal, trophy ; 奖章, 奖杯, 奖牌
money, coin, cash, currency ; 钱, 硬币, 现金, 货币
arrow ; 箭头
shape ; 形状, 图形
circle ; 圆, 圆形
square ; 正方形, 方形
triangle ; 三角形
star ; 星星, 星, 星形
heart ; 心, 爱心, 心形
callout, speech bubble ; 对话框, 气泡
pattern ; 图案, 花纹
gradient ; 渐变
border, frame ; 边框, 相框, 框
art, painting, picture ; 艺术, 画, 图画, 绘画
music, musical ; 音乐
guitar ; 吉他
piano ; 钢琴
drum ; 鼓
party ; 派对, 聚会
holiday, festival ; 节日, 假日
christmas, xmas ; 圣诞, 圣诞节
christmas tree ; 圣诞树
easter ; 复活节
valentine ; 情人节
thanksgiving ; 感恩节
halloween ; 万圣节
birthday ; 生日
religion, religious ; 宗教
church ; 教堂
christianity ; 基督教
pirate ; 海盗
navy ; 海军
people, person, human ; 人物, 人, 人们
man, men ; 男人, 男士, 男
woman, women, lady ; 女人, 女士, 女
child, kid, children ; 儿童, 孩子, 小孩
baby ; 婴儿, 宝宝
stick figure, stickman ; 火柴人
smiley, emoticon, emoji ; 笑脸, 表情
face ; 脸, 面孔
body part, body ; 身体, 身体部位
hand ; 手
eye ; 眼睛
building ; 建筑, 建筑物, 大楼
house, home ; 房子, 房屋, 住宅, 家
castle ; 城堡
tower ; 塔
bridge ; 桥
geography, world ; 地理, 世界
globe, earth ; 地球, 地球仪
country, nation ; 国家
europe ; 欧洲
asia ; 亚洲
africa ; 非洲
america ; 美洲
north america ; 北美
south america ; 南美
united states, usa ; 美国
canada ; 加拿大
oceania ; 大洋洲
australia ; 澳大利亚, 澳洲
new zealand ; 新西兰
china ; 中国
japan ; 日本
france ; 法国
germany ; 德国
italy ; 意大利
spain ; 西班牙
united kingdom, britain, uk ; 英国
belgium ; 比利时
denmark ; 丹麦
finland ; 芬兰
norway ; 挪威
weather ; 天气
sun ; 太阳
moon ; 月亮
cloud ; 云, 云朵
rain ; 雨
snow, snowflake ; 雪, 雪花
food ; 食物, 食品, 美食
fruit ; 水果
apple ; 苹果
banana ; 香蕉
orange fruit ; 橙子, 橘子
grape ; 葡萄
strawberry ; 草莓
lemon ; 柠檬
watermelon ; 西瓜
cherry ; 樱桃
pear ; 梨
peach ; 桃子, 桃
pineapple ; 菠萝
vegetable ; 蔬菜
tomato ; 番茄, 西红柿
potato ; 土豆, 马铃薯
carrot ; 胡萝卜
bread, carb ; 面包
cake ; 蛋糕
cookie, biscuit ; 饼干
dessert ; 甜点, 甜品
candy ; 糖果
chocolate ; 巧克力
ice cream ; 冰淇淋, 雪糕
pizza ; 披萨, 比萨
burger, hamburger ; 汉堡, 汉堡包
meat ; 肉, 肉类
egg ; 鸡蛋, 蛋
cheese ; 奶酪
dairy, milk ; 乳制品, 牛奶, 奶
beverage, drink ; 饮料, 饮品
coffee ; 咖啡
tea ; 茶
juice ; 果汁
water ; 水
perfume ; 香水
snack ; 零食, 点心
peanut, nut ; 花生, 坚果
alcohol, alcoholic ; 酒, 酒类, 酒精
wine ; 葡萄酒, 红酒
beer ; 啤酒
animal, pet ; 动物, 宠物
mammal ; 哺乳动物
bird ; 鸟, 鸟类, 小鸟
bug, insect ; 昆虫, 虫子, 虫
butterfly ; 蝴蝶
bee ; 蜜蜂
spider ; 蜘蛛
fish ; 鱼, 鱼类
shark ; 鲨鱼
whale ; 鲸, 鲸鱼
dolphin ; 海豚
amphibian, frog ; 两栖动物, 青蛙
reptile, snake, lizard ; 爬行动物, 蛇, 蜥蜴
turtle, tortoise ; 乌龟, 海龟
dinosaur ; 恐龙
dragon ; 龙
fantasy, mythical ; 奇幻, 神话
cat, housecat, kitten ; 猫, 小猫, 猫咪
big cat, tiger, lion, leopard ; 大型猫科动物, 猫科动物, 老虎, 狮子, 豹
dog, puppy ; 狗, 小狗
horse, pony ; 马, 小马
bear ; 熊
panda ; 熊猫
penguin ; 企鹅
owl ; 猫头鹰
eagle ; 鹰
hummingbird, hummer ; 蜂鸟
duck ; 鸭子, 鸭
chicken, hen ; 鸡, 母鸡
cow, cattle ; 牛, 奶牛
pig ; 猪
sheep, lamb ; 羊, 绵羊
rabbit, bunny ; 兔子, 兔
mouse animal, rat ; 老鼠
monkey ; 猴子
snail ; 蜗牛
elephant ; 大象
plant ; 植物
tree ; 树, 树木
evergreen, pine ; 常青树, 松树
flower ; 花, 花朵, 鲜花
rose ; 玫瑰
leaf ; 叶子, 树叶
recreation, entertainment, leisure ; 娱乐, 休闲
action ; 动作, 操作
miscellaneous, misc, miscellany, unsorted ; 杂项, 其他
"""


def _parse() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    concepts = []
    for line in _TABLE.strip().splitlines():
        en, zh = line.split(";")
        concepts.append((tuple(normalise(w).strip() for w in en.split(",")),
                         tuple(normalise(w).strip() for w in zh.split(","))))
    return concepts


CONCEPTS = _parse()


def _en_key(name: str) -> tuple[str, ...]:
    """An English name as the sequence of its lexical terms (plural folded)."""
    return tuple(terms(name))


@lru_cache(maxsize=1)
def _indexes() -> tuple[dict[str, set[int]], dict[tuple[str, ...], set[int]], int, int]:
    """Chinese name -> concepts, English term sequence -> concepts, the longest of each."""
    zh: dict[str, set[int]] = {}
    en: dict[tuple[str, ...], set[int]] = {}
    for n, (en_names, zh_names) in enumerate(CONCEPTS):
        for name in zh_names:
            zh.setdefault(name, set()).add(n)
        for name in en_names:
            key = _en_key(name)
            if key:
                en.setdefault(key, set()).add(n)
    # Attribute words ("红色", "金色") take part in segmentation, naming no concept here, so
    # that their characters are not read as other words ("金" of "金色" is not money).
    for surface in (normalise(name) for _, _, name in attribute_names()):
        if HAN_RUN.fullmatch(surface):
            zh.setdefault(surface, set())
    return zh, en, max(map(len, zh)), max(map(len, en))


def segment_han(run: str) -> list[str]:
    """Forward maximum matching of a run of Han characters against the lexicon's Chinese
    names; characters no name covers are left out."""
    zh, _, longest, _ = _indexes()
    out: list[str] = []
    i = 0
    while i < len(run):
        for size in range(min(longest, len(run) - i), 0, -1):
            if run[i:i + size] in zh:
                out.append(run[i:i + size])
                i += size
                break
        else:
            i += 1
    return out


def english_name(zh_word: str) -> str | None:
    """The usual English name of a Chinese lexicon word (its first concept's first name)."""
    zh, _, _, _ = _indexes()
    found = sorted(zh.get(zh_word, ()))
    return CONCEPTS[found[0]][0][0] if found else None


def concepts_named(text: str) -> list[int]:
    """Lexicon concepts a query names, in either language, in order of appearance."""
    zh, en, _, longest_en = _indexes()
    text = normalise(text)
    found: list[int] = []
    for match in HAN_RUN.finditer(text):
        for word in segment_han(match.group()):
            found += sorted(zh[word])
    words = [t for t in terms(text) if t.isascii()]
    i = 0
    while i < len(words):
        for size in range(min(longest_en, len(words) - i), 0, -1):
            key = tuple(words[i:i + size])
            if key in en:
                found += sorted(en[key])
                i += size
                break
        else:
            i += 1
    return list(dict.fromkeys(found))


def translated_terms(text: str) -> list[str]:
    """The lexical terms of every name, in both languages, of every concept the text names:
    English names as their words, Chinese names as their character pairs (a one-character
    name as itself): product text indexes both, and the pairs say the word without the
    single characters that many other words share."""
    out: list[str] = []
    for n in concepts_named(text):
        en_names, zh_names = CONCEPTS[n]
        for name in (*en_names, *zh_names):
            out += name_terms(name)
    return list(dict.fromkeys(out))
