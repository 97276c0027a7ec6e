"""The shared PII detectors (tasks.pii) on the forms people type: full-width digits, separators inside
numbers, labels glued to numbers, URLs without a scheme -- generated with hypothesis, every type in every
form, in Chinese and English sentences with decoys beside it; plus the fixed cases of issue 16's table."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.pii import (
    ALL_TYPES,
    ScanConfig,
    desensitize_text,
    find_pii,
    fold,
    gate_patterns,
    id18_valid,
    luhn_valid,
    vin_valid,
)

PLACEHOLDER = ScanConfig(ALL_TYPES, tuple((t, "placeholder") for t in ALL_TYPES), "")
MASK = ScanConfig(ALL_TYPES, tuple((t, "mask") for t in ALL_TYPES), "")
HASH = ScanConfig(ALL_TYPES, tuple((t, "hash") for t in ALL_TYPES), "salt")
PROPERTY = settings(
    max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

# ------------------------------------------------------------------------------------------ values

digits = st.integers(0, 9).map(str)


def n_digits(n: int) -> st.SearchStrategy[str]:
    return st.lists(digits, min_size=n, max_size=n).map("".join)


def luhn_complete(payload: str) -> str:
    return next(payload + c for c in "0123456789" if luhn_valid(payload + c))


def id18_complete(body: str) -> str:
    return next(body + c for c in "0123456789X" if id18_valid(body + c))


AREAS = ["110105", "310104", "440305", "330106", "500103", "510107", "610113", "420111", "210102", "370202"]
dates8 = st.builds(
    lambda y, m, d: f"{y}{m:02d}{d:02d}", st.integers(1950, 2012), st.integers(1, 12), st.integers(1, 28)
)
id_cards = st.builds(lambda a, d, s: id18_complete(a + d + s), st.sampled_from(AREAS), dates8, n_digits(3))
bank_cards = st.builds(
    lambda p, rest, n: luhn_complete(p + rest[: n - len(p) - 1]),
    st.sampled_from(["622202", "621700", "436742", "524047", "955880", "356833"]),
    n_digits(16),
    st.sampled_from([16, 19]),
)
imeis = st.builds(
    lambda p, rest: luhn_complete(p + rest), st.sampled_from(["35", "86", "01", "99"]), n_digits(12)
)
mobiles = st.builds(
    lambda p, rest: p + rest, st.sampled_from(["138", "139", "186", "150", "177", "199"]), n_digits(8)
)
landlines = st.builds(
    lambda area, first, rest, n: (area, first + rest[: n - 1]),
    st.sampled_from(["010", "021", "020", "0571", "0755", "0311"]),
    st.sampled_from("2345678"),
    n_digits(7),
    st.sampled_from([7, 8]),
).filter(lambda t: len(t[0]) == 4 or len(t[1]) == 8)
passports = st.builds(lambda p, rest: p + rest, st.sampled_from(["E", "G", "EA", "SE"]), n_digits(8)).map(
    lambda s: s[:9]
)

# ------------------------------------------------------------------------------------------- forms

SEPARATORS = [" ", "\u00a0", "\u3000", "-", "\u2010", "\u2013", "\u2014", "\uff0d", ".", "\u00b7"]


def full_width(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def grouped(value: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for n in sizes:
        out.append(value[i : i + n])
        i += n
    if i < len(value):
        out.append(value[i:])
    return sep.join(p for p in out if p)


GROUPS = {
    "id_card": [[6, 8, 4], [6, 4, 4, 4], [3, 3, 4, 4, 4]],
    "bank_card": [[4, 4, 4, 4], [6, 13], [4, 4, 4, 4, 3]],
    "imei": [[2, 6, 6, 1], [6, 9], [3, 4, 4, 4]],
    "phone": [[3, 4, 4], [3, 8], [4, 4, 3]],
    "passport": [[5, 4], [3, 3, 3]],  # never between the letters and the digits
}
LABELS = {
    "id_card": ["ID", "身份证号", "证件号码"],
    "bank_card": ["卡号", "Card", "账号"],
    "imei": ["IMEI", "串号", "imei"],
    "phone": ["Tel", "电话", "手机", "Mobile"],
    "passport": ["护照号", "证件"],
}


@st.composite
def written(draw: st.DrawFn, kind: str) -> tuple[str, str, str]:
    """(how the value is written, the label glued before it or "", the PII type)."""
    value = draw(
        {
            "id_card": id_cards,
            "bank_card": bank_cards,
            "imei": imeis,
            "phone": mobiles,
            "passport": passports,
        }[kind]
    )
    form = draw(st.sampled_from(["plain", "full_width", "grouped", "grouped_full_width", "glued"]))
    if form in ("grouped", "grouped_full_width"):
        sep = draw(st.sampled_from(SEPARATORS))
        value = grouped(value, draw(st.sampled_from(GROUPS[kind])), sep)
    if form in ("full_width", "grouped_full_width") or (form == "glued" and draw(st.booleans())):
        value = full_width(value)
    label = draw(st.sampled_from(LABELS[kind])) if form == "glued" else ""
    return value, label, kind


@st.composite
def landline_written(draw: st.DrawFn) -> tuple[str, str, str]:
    area, local = draw(landlines)
    sep = draw(st.sampled_from(SEPARATORS))
    shape = draw(st.sampled_from(["dash", "brackets", "grouped", "compact", "country"]))
    if shape == "dash":
        value = f"{area}-{local}"
    elif shape == "brackets":
        value = f"({area}){local}"
    elif shape == "grouped":
        value = f"{area}{sep}{local[:-4]}{sep}{local[-4:]}"
    elif shape == "country":
        value = f"+86 {area[1:]} {local[:-4]} {local[-4:]}"
    else:
        value = area + local
    if draw(st.booleans()):
        value = full_width(value)
    label = draw(st.sampled_from(["", "座机", "Tel"]))
    return value, label, "phone"


@st.composite
def url_written(draw: st.DrawFn) -> tuple[str, str, str]:
    host = draw(st.sampled_from(["item.jd.com", "mp.weixin.qq.com", "www.example.org", "docs.python.org",
                                 "shop.example.cn", "a.b-c.com.cn", "zhidao.baidu.com"]))  # fmt: skip
    path = draw(
        st.from_regex(r"[a-z0-9]{1,8}(/[A-Za-z0-9_]{1,8}){0,2}(\.html)?(\?id=[0-9]{1,6})?", fullmatch=True)
    )
    value = f"{host}/{path}"
    if draw(st.booleans()) and host.startswith("www."):
        value = host
    if draw(st.integers(0, 4)) == 0:
        value = full_width(value).replace("／", "/")  # full-width letters and dots, ASCII slashes
    return value, "", "url"


# ------------------------------------------------------------------------------------------ decoys


def _bad_luhn(payload: str) -> str:
    good = luhn_complete(payload)[-1]
    return payload + next(c for c in "0123456789" if c != good)


decoys = st.one_of(
    # an ID card with a wrong check character (area 1xxxxx/2xxxxx: not a bank card prefix either)
    st.builds(
        lambda a, d, s: (
            lambda b: b + next(c for c in "0123456789X" if not id18_valid(b + c) and not luhn_valid(b + c))
        )(a + d + s),
        st.sampled_from(["110105", "210102", "230102"]),
        dates8,
        n_digits(3),
    ),
    st.builds(lambda rest: _bad_luhn("622202" + rest), n_digits(12)),  # a card failing Luhn
    # an IMEI failing Luhn (month 13 where a legacy ID has its yyMMdd)
    st.builds(lambda a, b: _bad_luhn("35" + a + "9913" + b), n_digits(4), n_digits(4)),
    st.builds(lambda rest: "12" + rest, n_digits(9)),  # 11 digits, not a mobile prefix
    st.builds(lambda rest: "0" + rest, n_digits(9)).map(lambda s: "00" + s[2:]),  # no area code 00
    st.builds(lambda a, b: f"ISBN 978-7-{a}-{b}-3", st.integers(100, 999), n_digits(5)),
    st.builds(
        lambda y, m, d: f"{y}-{m:02d}-{d:02d} 13:45:0{m % 10}",
        st.integers(2000, 2030),
        st.integers(1, 12),
        st.integers(1, 28),
    ),
    st.builds(
        lambda rest: "2023" + rest, n_digits(16)
    ),  # a 20-digit order number (a phone inside a longer run)
    st.builds(lambda rest: "SF2" + rest, n_digits(11)),  # a tracking number
    st.builds(lambda rest: "2" + rest, n_digits(9)),  # a 10-digit timestamp
    st.builds(lambda a, b: f"¥{a},{b}.00", st.integers(1, 99), st.integers(100, 999)),
    st.builds(lambda a, b: f"v{a}.{b}.3", st.integers(1, 9), st.integers(0, 30)),
)

ZH = ["请联系{v}，谢谢。", "客户留言：{v}（请回电）", "登记信息{v}已核对。", "备注：{v}"]
EN = ["Please contact {v} today.", "Customer note: {v}, call back.", "Record {v} was checked.", "Note - {v}"]
ZH_DECOY = ["订单编号{d}已发货。", "金额{d}已支付。", "下单时间{d}。", "参考编号{d}。"]
EN_DECOY = ["Order {d} has shipped.", "Reference {d} was logged.", "Paid {d} in total."]


@st.composite
def sentence(
    draw: st.DrawFn, value: st.SearchStrategy[tuple[str, str, str]]
) -> tuple[str, str, str, list[str]]:
    """(text, the PII as written, its type, decoys) with the PII in a zh or en sentence and decoys beside."""
    written_value, label, kind = draw(value)
    zh = draw(st.booleans())
    clause = draw(st.sampled_from(ZH if zh else EN)).format(v=label + written_value)
    ds = draw(st.lists(decoys, min_size=1, max_size=2))
    parts = [clause] + [draw(st.sampled_from(ZH_DECOY if zh else EN_DECOY)).format(d=d) for d in ds]
    order = draw(st.permutations(range(len(parts))))
    return ("" if zh else " ").join(parts[i] for i in order), written_value, kind, ds


ALL_FORMS = st.one_of(
    *[written(k) for k in ("id_card", "bank_card", "imei", "phone", "passport")],
    landline_written(),
    url_written(),
)


# ----------------------------------------------------------------------------------------- properties


@PROPERTY
@given(sentence(ALL_FORMS))
def test_every_form_is_found_and_exactly_its_characters_replaced(
    case: tuple[str, str, str, list[str]],
) -> None:
    text, value, kind, ds = case
    found = find_pii(text)
    assert [(f.pii, text[f.start : f.end]) for f in found] == [(kind, value)], text
    # placeholder: exactly the characters written are replaced, the label and the decoys stay
    assert desensitize_text(text, PLACEHOLDER, {}) == text.replace(value, f"[{kind.upper()}]")
    masked = desensitize_text(text, MASK, {})
    assert value not in masked and all(d in masked for d in ds)


@PROPERTY
@given(sentence(st.one_of(*[written(k) for k in ("id_card", "bank_card", "imei", "phone")])))
def test_masks_keep_the_width_and_separators_as_written(case: tuple[str, str, str, list[str]]) -> None:
    text, value, _, _ = case
    masked = desensitize_text(text, MASK, {})
    assert len(masked) == len(text)
    start = text.index(value)
    span = masked[start : start + len(value)]
    assert "*" in span
    for orig, out in zip(value, span, strict=True):
        assert out == orig or (out == "*" and orig.isalnum()), (value, span)
    assert masked[:start] + value + masked[start + len(value) :] == text


@PROPERTY
@given(st.lists(decoys, min_size=1, max_size=4), st.booleans(), st.booleans())
def test_decoys_are_left_alone(ds: list[str], zh: bool, wide: bool) -> None:
    parts = [
        (ZH_DECOY if zh else EN_DECOY)[i % 3].format(d=full_width(d) if wide else d) for i, d in enumerate(ds)
    ]
    text = ("" if zh else " ").join(parts)
    assert find_pii(text) == [], text


@PROPERTY
@given(sentence(ALL_FORMS))
def test_hash_reads_the_digits_alone(case: tuple[str, str, str, list[str]]) -> None:
    text, value, kind, _ = case
    if kind == "url":
        return
    plain = re.sub(r"[^0-9A-Za-z+]", "", fold(value))
    canonical_text = text.replace(value, plain)
    assert desensitize_text(text, HASH, {}) == desensitize_text(canonical_text, HASH, {}).replace(
        plain, value
    )


# ------------------------------------------------------------------------------------------ fixed cases

TABLE = [
    # issue 16's table: what leaked
    ("身份证３３０１０６１９８７０１０１００１４，请核对", "id_card", "３３０１０６１９８７０１０１００１４"),
    ("身份证号 500103 19581114 6384 已登记", "id_card", "500103 19581114 6384"),
    ("手机串号IMEI861583005872737保修", "imei", "861583005872737"),
    ("请拨打１８６５０８７７３６８联系", "phone", "１８６５０８７７３６８"),
    ("call 186.5087.7368 tonight", "phone", "186.5087.7368"),
    ("退款至６２２２０２１２３４５６７８９０１２８", "bank_card", "６２２２０２１２３４５６７８９０１２８"),
    ("商品见item.jd.com/abc123.html，请查收", "url", "item.jd.com/abc123.html"),
    ("原文 mp.weixin.qq.com/s/Xy_12ab 转发", "url", "mp.weixin.qq.com/s/Xy_12ab"),
    # labels glued to numbers, Latin and Chinese
    ("ID330106198701010014", "id_card", "330106198701010014"),
    ("Tel13812345678", "phone", "13812345678"),
    ("卡号6222021234567890128", "bank_card", "6222021234567890128"),
    # dashes and spaces of every kind
    ("电话 138－1234－5678", "phone", "138－1234－5678"),
    ("phone 138\u20131234\u20135678", "phone", "138\u20131234\u20135678"),
    ("手机 138\u30001234\u30005678", "phone", "138\u30001234\u30005678"),
    ("landline 010-6552 9988 (office)", "phone", "010-6552 9988"),
    ("座机（0571）8888-8888", "phone", "（0571）8888-8888"),
    ("www.baidu.com 首页", "url", "www.baidu.com"),
]


@pytest.mark.parametrize(("text", "kind", "value"), TABLE)
def test_fixed_cases(text: str, kind: str, value: str) -> None:
    assert [(f.pii, text[f.start : f.end]) for f in find_pii(text)] == [(kind, value)]


def test_full_width_stays_full_width() -> None:
    text = "身份证３３０１０６１９８７０１０１００１４，请核对"
    assert desensitize_text(text, MASK, {}) == "身份证３３０***********００１４，请核对"
    counts: dict[str, int] = {}
    desensitize_text(text, MASK, counts)  # type: ignore[arg-type]
    assert counts == {"id_card": 1}


def test_no_double_masking_of_an_email_domain() -> None:
    text = "mail zhang.san@mail.qq.com/ or see qq.com/help"
    found = [(f.pii, text[f.start : f.end]) for f in find_pii(text)]
    assert found == [("email", "zhang.san@mail.qq.com"), ("url", "qq.com/help")]


def test_names_that_are_not_urls() -> None:
    # no public suffix, or no path: left alone
    for text in ["see setup.cfg/x", "file main.py", "example.com is a name", "tasks/core.py/x", "v1.2/abc"]:
        assert find_pii(text, ("url",)) == [], text


def test_digit_runs_inside_longer_runs_and_grouped_neighbours() -> None:
    for text in [
        "订单2023113812345678901",  # a mobile inside a longer run
        "decoy 6222 0571 2345 6789 x",  # a Luhn-failing card holds a landline-shaped tail
        "138 1234 5678 9",  # a grouped number that goes on
        "IP 192.168.10.105 ok",  # an IP address, not a dotted mobile
    ]:
        assert [f.pii for f in find_pii(text) if f.pii != "ip"] == [], text


def test_checksums_decide_on_the_digits_alone() -> None:
    assert luhn_valid("6222021234567890128") and not luhn_valid("6222021234567890127")
    assert id18_valid("330106198701010014") and vin_valid("1M8GDM9AXKP042788")


def test_gate_patterns_see_full_width_and_separators() -> None:
    pats = [re.compile(p) for p in gate_patterns(("phone", "id_card", "bank_card", "email"))]
    for text in [
        "１８６５０８７７３６８",
        "186.5087.7368",
        "500103 19581114 6384",
        "６２２２０２１２３４５６７８９０１２８",
    ]:
        assert any(p.search(text) for p in pats), text
    assert not any(p.search("hello 2023, v1.2.3") for p in pats)
