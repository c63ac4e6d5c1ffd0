"""Reference data the demo data set is built from: regions (from GB/T 2260, as in
``shared/data/regions.csv``), transit policies, metro networks with their fare rules, bus and
ferry operators, and the application catalogue.

Everything here is data. Station kilometre positions are approximate but of the right shape
(the bands are those Beijing, Shanghai, Guangzhou and the other cities publish).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

from onecard.protocols.enums import FUNCTION, RULE_KIND

GROUPS = ("", "YRD", "JJJ", "GBA")          # index 0: no region group
JOINT_CATALOGUE_GROUPS = ("YRD", "JJJ")     # groups that publish a joint catalogue


@dataclass(frozen=True)
class RegionRow:
    code: int
    name_zh: str
    name_en: str
    province: int            # 2-digit province code
    group: str


def regions() -> list[RegionRow]:
    with resources.files("onecard.switch").joinpath("regions.csv").open(encoding="utf-8") as f:
        return [RegionRow(int(r["code"]), r["name_zh"], r["name_en"], int(r["province"]),
                          r["group"]) for r in csv.DictReader(f)]


# Transit concessions by region: (age from which the elderly concession applies, percent of
# the fare the elderly pay, percent disabled holders pay). 0 age = no elderly concession.
POLICIES: dict[int, tuple[int, int, int]] = {
    110000: (65, 0, 0), 120000: (65, 0, 0), 130100: (70, 0, 0), 130600: (70, 0, 0),
    133100: (65, 0, 0), 310000: (70, 0, 0), 310118: (70, 0, 0), 320100: (70, 0, 0),
    320500: (70, 0, 0), 320509: (70, 0, 0), 330100: (70, 0, 0), 330421: (70, 0, 0),
    340100: (70, 0, 0), 340200: (65, 50, 0), 440100: (65, 0, 0), 440300: (65, 0, 0),
    440400: (65, 0, 0), 440700: (60, 50, 0), 810000: (0, 100, 100), 820000: (0, 100, 100),
}

# Transfer discount by region: (minutes after a ride ends, fen off the next ride).
TRANSFERS: dict[int, tuple[int, int]] = {
    310000: (120, 100), 310118: (120, 100), 440100: (90, 50), 440300: (90, 40),
    330100: (90, 100), 320100: (90, 50),
}

# Basic medical insurance by insuring province: (deductible, pool ratio %, annual cap) in fen.
MEDICAL: dict[int, tuple[int, int, int]] = {
    11: (180_000, 85, 50_000_000), 12: (160_000, 80, 45_000_000),
    13: (120_000, 75, 30_000_000), 31: (150_000, 85, 60_000_000),
    32: (120_000, 80, 40_000_000), 33: (120_000, 80, 40_000_000),
    34: (100_000, 75, 30_000_000), 44: (120_000, 80, 45_000_000),
}

@dataclass(frozen=True)
class FareRule:
    """Distance bands: ``base_fen`` up to ``base_km``; then for each tier up to ``upto_km``
    one ``step_fen`` more per started ``step_km``."""

    base_km: float
    base_fen: int
    tiers: tuple[tuple[float, float, int], ...]     # (upto_km, step_km, step_fen)

    def fare_fen(self, km: float) -> int:
        fare = self.base_fen
        if km <= self.base_km:
            return fare
        lower = self.base_km
        for upto, step, step_fen in self.tiers:
            span = min(km, upto) - lower
            if span <= 0:
                break
            fare += -(-round(span * 1000) // round(step * 1000)) * step_fen   # started steps
            lower = upto
        return fare


INF = 1e9
BEIJING = FareRule(6, 300, ((12, 6, 100), (22, 10, 100), (32, 10, 100), (INF, 20, 100)))
SHANGHAI = FareRule(6, 300, ((INF, 10, 100),))
GUANGZHOU = FareRule(4, 200, ((12, 4, 100), (24, 6, 100), (INF, 8, 100)))
HANGZHOU = FareRule(4, 200, ((8, 4, 100), (14, 6, 100), (21, 7, 100), (INF, 9, 100)))
NANJING = FareRule(10, 200, ((16, 6, 100), (22, 6, 100), (INF, 8, 100)))
TIANJIN = FareRule(5, 200, ((10, 5, 100), (16, 6, 100), (23, 7, 100), (INF, 9, 100)))
TWO_YUAN = FareRule(6, 200, ((16, 5, 100), (30, 7, 100), (INF, 9, 100)))


@dataclass(frozen=True)
class Metro:
    code: str
    name: str
    region: int
    rule: FareRule
    lines: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]


def _line(spec: str) -> tuple[tuple[str, float], ...]:
    out = []
    for item in spec.split(","):
        name, km = item.strip().rsplit(" ", 1)
        out.append((name, float(km)))
    return tuple(out)


METROS: tuple[Metro, ...] = (
    Metro("SHMETRO", "上海地铁", 310000, SHANGHAI, (
        ("1号线", _line("莘庄 0, 外环路 1.5, 莲花路 2.9, 锦江乐园 4.2, 上海南站 5.9, 漕宝路 7.4, "
                        "上海体育馆 8.9, 徐家汇 10.0, 衡山路 11.2, 常熟路 12.1, 陕西南路 13.2, "
                        "黄陂南路 14.5, 人民广场 15.3, 新闸路 16.0, 汉中路 16.8, 上海火车站 17.9")),
        ("2号线", _line("虹桥火车站 0, 虹桥2号航站楼 1.4, 淞虹路 7.0, 北新泾 8.5, 威宁路 9.9, "
                        "娄山关路 11.3, 中山公园 12.7, 江苏路 14.1, 静安寺 15.4, 南京西路 16.6, "
                        "人民广场 17.8, 南京东路 18.8, 陆家嘴 20.4, 东昌路 21.8, 世纪大道 23.2, "
                        "龙阳路 27.5")),
        ("17号线", _line("虹桥火车站 0, 诸光路 2.8, 蟠龙路 5.0, 徐盈路 7.2, 徐泾北城 9.3, "
                         "嘉松中路 11.6, 赵巷 13.4, 汇金路 15.7, 青浦新城 17.3, 漕盈路 19.4, "
                         "淀山湖大道 21.8, 朱家角 26.0, 东方绿舟 35.3")),
    )),
    Metro("BJSUBWAY", "北京地铁", 110000, BEIJING, (
        ("1号线", _line("苹果园 0, 古城 2.6, 八角游乐园 4.5, 八宝山 6.4, 玉泉路 8.3, 五棵松 9.5, "
                        "万寿路 10.8, 公主坟 12.1, 军事博物馆 13.2, 木樨地 14.6, 南礼士路 16.0, "
                        "复兴门 16.4, 西单 18.0, 天安门西 19.2, 天安门东 20.0, 王府井 20.8, "
                        "东单 21.6, 建国门 23.4, 永安里 24.6, 国贸 25.4, 大望路 27.0, 四惠 28.7")),
        ("2号线", _line("西直门 0, 车公庄 1.9, 阜成门 2.8, 复兴门 4.6, 长椿街 5.6, 宣武门 6.4, "
                        "和平门 7.3, 前门 8.5, 崇文门 10.1, 北京站 10.9, 建国门 11.8, 朝阳门 13.3, "
                        "东四十条 14.7, 东直门 15.6, 雍和宫 17.8, 安定门 18.6, 鼓楼大街 19.4, "
                        "积水潭 21.2")),
    )),
    Metro("GZMETRO", "广州地铁", 440100, GUANGZHOU, (
        ("1号线", _line("西塱 0, 坑口 1.6, 花地湾 2.6, 芳村 3.9, 黄沙 5.6, 长寿路 6.5, "
                        "陈家祠 7.6, 西门口 8.7, 公园前 9.7, 农讲所 10.8, 烈士陵园 11.6, "
                        "东山口 12.6, 杨箕 14.3, 体育西路 15.3, 体育中心 16.1, 广州东站 18.5")),
        ("3号线", _line("天河客运站 0, 五山 1.9, 华师 3.0, 岗顶 4.1, 石牌桥 5.1, 体育西路 6.0, "
                        "珠江新城 7.0, 广州塔 8.6, 客村 10.1, 大塘 11.6, 沥滘 13.3, 厦滘 14.3, "
                        "大石 16.1, 汉溪长隆 19.3, 市桥 22.4, 番禺广场 25.8")),
    )),
    Metro("TJMETRO", "天津地铁", 120000, TIANJIN, (
        ("1号线", _line("刘园 0, 西横堤 1.1, 果酒厂 2.2, 本溪路 3.2, 勤俭道 4.3, 洪湖里 5.3, "
                        "西站 6.5, 西北角 7.6, 西南角 8.7, 二纬路 9.6, 海光寺 10.4, 鞍山道 11.2, "
                        "营口道 12.1, 小白楼 13.0, 下瓦房 14.3")),
    )),
    Metro("SJZMETRO", "石家庄地铁", 130100, TWO_YUAN, (
        ("1号线", _line("西王 0, 时光街 1.2, 长城桥 2.3, 和平医院 3.5, 烈士陵园 4.6, 新百广场 5.6, "
                        "解放广场 6.9, 平安大街 7.8, 北国商城 8.8, 博物院 9.8, 体育场 11.0, "
                        "北宋 12.5, 谈固 13.6")),
    )),
    Metro("NJMETRO", "南京地铁", 320100, NANJING, (
        ("1号线", _line("迈皋桥 0, 红山动物园 1.4, 南京站 3.2, 新模范马路 4.6, 玄武门 5.8, "
                        "鼓楼 6.8, 珠江路 7.9, 新街口 8.9, 张府园 9.8, 三山街 10.8, 中华门 12.1, "
                        "安德门 13.7")),
    )),
    Metro("SZMETRO", "苏州轨道交通", 320500, TWO_YUAN, (
        ("1号线", _line("木渎 0, 金枫路 1.9, 汾湖路 3.1, 玉山公园 4.4, 苏州乐园 5.8, 塔园路 7.4, "
                        "滨河路 8.6, 西环路 10.2, 桐泾北路 11.4, 广济南路 12.7, 养育巷 13.8, "
                        "乐桥 14.7, 临顿路 15.7, 相门 16.9, 东环路 18.0")),
    )),
    Metro("HZMETRO", "杭州地铁", 330100, HANGZHOU, (
        ("1号线", _line("湘湖 0, 滨康路 2.1, 西兴 3.9, 滨和路 5.1, 江陵路 6.5, 近江 8.2, "
                        "婺江路 9.4, 城站 10.6, 定安路 11.8, 龙翔桥 12.8, 凤起路 13.6, "
                        "武林广场 14.5, 西湖文化广场 15.5, 打铁关 16.7")),
    )),
    Metro("HFMETRO", "合肥轨道交通", 340100, TWO_YUAN, (
        ("1号线", _line("合肥火车站 0, 明光路 1.4, 大东门 2.6, 包公园 3.7, 合工大南区 4.9, "
                        "朱岗 6.0, 秋浦河路 7.3, 葛大店 8.4, 望湖城 9.7, 合肥南站 11.5")),
    )),
    Metro("SZMTR", "深圳地铁", 440300, GUANGZHOU, (
        ("1号线", _line("罗湖 0, 国贸 1.1, 老街 2.0, 大剧院 3.1, 科学馆 3.9, 华强路 4.8, 岗厦 5.9, "
                        "会展中心 6.8, 购物公园 7.7, 香蜜湖 8.9, 车公庙 9.9, 竹子林 11.1, "
                        "侨城东 12.4, 华侨城 13.2, 世界之窗 14.1")),
    )),
)

# Flat-fare operators: (code, name, kind, region, fare_fen). Every mainland region has buses.
BUS_FARE_FEN = {110000: 100}                 # Beijing's card fare; others 2 yuan
FERRIES = (("SHFERRY", "上海轮渡", 310000, 200), ("GZFERRY", "广州水上巴士", 440100, 200))


@dataclass(frozen=True)
class CatalogueEntry:
    code: str
    name_zh: str
    name_en: str
    domain: str
    functions: int           # card functions needed (core.state.Function bits)
    scope: str               # comma list: province, group, cross_border, all, prov:NN
    daily_limit_fen: int = 0  # per card per day, 0 = none


# Card functions an application needs (a mask), from their table.
FN_NONE = 0
FN_FINANCIAL, FN_TRANSPORT, FN_MEDICAL = (FUNCTION.value_of[n]
                                          for n in ("financial", "transport", "medical"))

DOMAINS = ("social insurance", "human resources", "medical", "transit", "culture and tourism",
           "sports", "finance", "government services", "elderly care")

CATALOGUE = (
    CatalogueEntry("FIN-PAY", "金融支付", "Payment at merchants", "finance", FN_FINANCIAL,
                   "province,group,cross_border"),
    CatalogueEntry("MED-PHARMACY", "药店购药", "Medicine at pharmacies", "medical",
                   FN_FINANCIAL, "province,group"),
    CatalogueEntry("ELD-CANTEEN", "长者食堂助餐", "Elderly canteen meals", "elderly care",
                   FN_FINANCIAL, "province", 10_000),
    CatalogueEntry("TRN-METRO", "地铁乘车", "Metro rides", "transit", FN_TRANSPORT,
                   "province,group"),
    CatalogueEntry("TRN-BUS", "公交乘车", "Bus rides", "transit", FN_TRANSPORT, "province,group"),
    CatalogueEntry("TRN-FERRY", "轮渡乘船", "Ferry rides", "transit", FN_TRANSPORT,
                   "province,group"),
    CatalogueEntry("ID-VERIFY", "身份凭证", "Identity at service counters",
                   "government services", FN_NONE, "province,group"),
    CatalogueEntry("ID-LODGING", "旅馆住宿登记", "Hotel registration", "government services",
                   FN_NONE, "all"),
    CatalogueEntry("MED-SETTLE", "就医结算", "Medical settlement (remote with a filing)",
                   "medical", FN_MEDICAL, "all"),
    CatalogueEntry("CUL-MUSEUM", "博物馆入馆", "Museum entry", "culture and tourism", FN_NONE,
                   "province,group"),
    CatalogueEntry("CUL-LIBRARY", "图书馆借阅", "Library borrowing", "culture and tourism",
                   FN_NONE, "province,group"),
    CatalogueEntry("TOUR-SCENIC", "景区入园", "Scenic spot entry", "culture and tourism",
                   FN_FINANCIAL, "province,group"),
    CatalogueEntry("SPORT-VENUE", "体育场馆", "Sports venue entry", "sports", FN_FINANCIAL,
                   "province,group"),
    # Published, offered at counters and online rather than at onecard's terminals:
    CatalogueEntry("SI-PENSION", "养老金领取", "Pension receipt", "social insurance",
                   FN_FINANCIAL, "province"),
    CatalogueEntry("HR-SUBSIDY", "人社补贴发放", "Human resources subsidies", "human resources",
                   FN_FINANCIAL, "province"),
    # Appended: an application's index is its identity in the terminals table and journal.
    CatalogueEntry("TRN-TOPUP", "自助圈存充值", "Top-up at kiosks", "transit", FN_TRANSPORT,
                   "province,group"),
)

# Price policies: (name, base price fen, rules). A rule is (kind, param, pct paid, hour from,
# hour to, weekday mask); kinds from protocols/enums.py RULE_KIND, whose param is an age, a
# region group (1 YRD, 2 JJJ, 3 GBA) or a province index.
RULE_ALL, RULE_AGE_GE, RULE_DISABLED, RULE_GROUP_RESIDENT = (
    RULE_KIND.value_of[n] for n in ("all", "age_ge", "disabled", "group_resident"))
ALL_DAYS = 0x7F
WEEKDAYS = 0x1F
POLICIES_PRICE = (
    ("none", 0, ()),
    ("canteen tiers A", 0, ((RULE_AGE_GE, 60, 90, 0, 24, ALL_DAYS),
                            (RULE_AGE_GE, 70, 80, 0, 24, ALL_DAYS),
                            (RULE_AGE_GE, 80, 70, 0, 24, ALL_DAYS),
                            (RULE_AGE_GE, 90, 50, 0, 24, ALL_DAYS))),
    ("canteen tiers B", 0, ((RULE_AGE_GE, 65, 85, 0, 24, ALL_DAYS),
                            (RULE_AGE_GE, 80, 60, 0, 24, ALL_DAYS))),
    ("museum (free)", 0, ()),
    ("library (free)", 0, ()),
    ("scenic spot", 6_000, ((RULE_AGE_GE, 65, 0, 0, 24, ALL_DAYS),
                           (RULE_DISABLED, 0, 0, 0, 24, ALL_DAYS),
                           (RULE_AGE_GE, 60, 50, 0, 24, ALL_DAYS),
                           (RULE_GROUP_RESIDENT, 1, 50, 9, 12, ALL_DAYS),
                           (RULE_GROUP_RESIDENT, 2, 50, 9, 12, ALL_DAYS))),
    ("sports venue", 3_000, ((RULE_AGE_GE, 60, 50, 0, 24, ALL_DAYS),
                            (RULE_DISABLED, 0, 0, 0, 24, ALL_DAYS),
                            (RULE_ALL, 0, 70, 6, 9, WEEKDAYS))),
)

PROGRAMMES = (
    ("PENSION", "养老金", "Basic pension"),
    ("UNEMPLOYMENT", "失业保险金", "Unemployment benefit"),
    ("HR-SUBSIDY", "人社补贴", "Human resources subsidy"),
    ("CIVIL-RELIEF", "民政救助金", "Civil-affairs relief"),
    ("AGRI-SUBSIDY", "惠农补贴", "Agricultural subsidy"),
    ("LONGEVITY", "高龄津贴", "Elderly longevity allowance"),
)

# Cross-border arrangements: (card province, terminal province) for financial use.
CROSS_BORDER = ((44, 81), (44, 82))

SURNAMES = ("王 李 张 刘 陈 杨 黄 赵 吴 周 徐 孙 马 朱 胡 郭 何 高 林 罗 郑 梁 谢 "
            "宋 唐 许 韩 冯 邓 曹 彭 曾 肖 田 董 袁 潘 于 蒋 蔡 余 杜 叶 程 苏 魏 "
            "吕 丁 任 沈 姚 卢 姜 崔 钟 谭 陆 汪 范 金 石 廖 贾 夏 韦 付 方 白 邹 "
            "孟 熊 秦 邱 江 尹 薛 闫 段 雷 侯 龙 史 陶 黎 贺 顾 毛 郝 龚 邵 万 钱 "
            "严 覃 武 戴 莫 孔 欧阳 司马 诸葛").split()
GIVEN = ("伟 芳 娜 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀 霞 平 刚 桂 英 华 "
         "玉 萍 红 建 文 辉 力 兰 斌 宇 浩 凯 鹏 晨 欣 怡 子 涵 梓 轩 雨 婷 博 "
         "思 佳 一 诺 嘉 俊 宏 海 燕 晓 云 立 志 国 春 梅 林 峰 波 鑫 颖 琳").split()
