"""The character n-gram model (spark_ops/lm.py) against a plain-Python statement of interpolated Kneser-Ney,
its normalisation, lookup table and file format; the separation it gives on the shared data (held-out
fluent text vs the same text with its characters shuffled); and perplexity_filter in Spark."""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from spark_ops import lm
from spark_ops.canonical import schema
from spark_ops.operators import OPERATORS, OperatorContext
from spark_ops.operators.base import OperatorError
from spark_ops.operators.perplexity import PerplexityFilter, limits_for
from spark_ops.pipeline import run_operators
from tasks.specs import OperatorStep

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
PRETRAIN = OperatorContext(usage="pretrain")


# ---------------------------------------------------------------- a plain statement of the model


def py_normalise(text: str) -> str:
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch.isspace() or cat in ("Zs", "Zl", "Zp", "Cc"):
            out.append(" ")
        elif cat == "Nd":
            out.append("0")
        else:
            out.append(ch)
    return re.sub(" +", " ", "".join(out)).strip(" ")


class ReferenceKN:
    """Interpolated Kneser-Ney over characters, with strings and dictionaries, as lm's docstring states it."""

    def __init__(self, texts: list[str], order: int) -> None:
        self.n = order
        bos = chr(lm.BOS)
        docs = [bos * (order - 1) + py_normalise(t) for t in texts]
        real = [(d, i) for d in docs for i in range(order - 1, len(d))]
        self.a: list[Counter] = []
        for k in range(1, order + 1):
            if k == order:
                self.a.append(Counter(d[i - k + 1 : i + 1] for d, i in real))
            else:
                distinct = {d[i - k : i + 1] for d, i in real}
                self.a.append(Counter(g[1:] for g in distinct))
        self.s: list[dict] = []
        self.t: list[dict] = []
        for k in range(1, order + 1):
            s: dict[str, float] = defaultdict(float)
            t: dict[str, int] = defaultdict(int)
            for g, c in self.a[k - 1].items():
                s[g[:-1]] += c
                t[g[:-1]] += 1
            self.s.append(s)
            self.t.append(t)
        self.vocab = len(self.a[0]) + 1
        self.d = []
        for k in range(order):
            vals = list(self.a[k].values())
            n1, n2 = vals.count(1), vals.count(2)
            self.d.append(0.5 if not n1 or not n2 else min(max(n1 / (n1 + 2 * n2), 0.05), 0.95))

    def prob(self, w: str, h: str) -> float:
        p = 1 / self.vocab
        for k in range(1, self.n + 1):
            ctx = h[len(h) - (k - 1) :] if k > 1 else ""
            s = self.s[k - 1].get(ctx, 0)
            if s > 0:
                a = self.a[k - 1].get(ctx + w, 0)
                d = self.d[k - 1]
                p = (max(a - d, 0) + d * self.t[k - 1][ctx] * p) / s
        return p

    def log_probs(self, text: str) -> list[float]:
        d = chr(lm.BOS) * (self.n - 1) + py_normalise(text)
        return [math.log(self.prob(d[i], d[i - self.n + 1 : i])) for i in range(self.n - 1, len(d))]


CORPUS = [
    "The cat sat on the mat. The cat ate 12 fish on 3 May.",
    "the dog sat on the log\tand the cat sat too",
    "  Cats and dogs; dogs and cats.  ",
    "我们今天去公园散步，公园里有很多花。",
    "今天天气很好，我们去公园。",
    "Mixed 文本 with 中文 and English 2024年",
]


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_log_probs_match_the_plain_statement(order: int) -> None:
    model = lm.train(CORPUS, order=order, holdout_every=0)
    ref = ReferenceKN(CORPUS, order)
    assert model.vocab == ref.vocab
    assert model.discounts == pytest.approx(ref.d)
    probes = [*CORPUS, "the cat sat on the log", "公园里很好", "zzz qqq", "完全没见过的字符串：龘靐齉"]
    for text in probes:
        batch = lm.normalise([text])
        got = model.log_probs(lm.Layout.of(batch, order))
        assert got == pytest.approx(ref.log_probs(text), rel=1e-5, abs=1e-6), text


@pytest.mark.parametrize("context", ["the cat s", "公园", "", "q", "zz"])
def test_probabilities_over_the_vocabulary_sum_to_one(context: str) -> None:
    model = lm.train(CORPUS, order=4, holdout_every=0)
    vocab = np.unique(lm.normalise(CORPUS).cp)
    candidates = [*vocab.tolist(), 0x10FFFF]  # every seen character and one unseen
    h = np.array([ord(c) for c in context], dtype=np.uint64)
    cp = np.concatenate([np.concatenate([h, np.array([c], dtype=np.uint64)]) for c in candidates])
    lengths = np.full(len(candidates), len(context) + 1, dtype=np.int64)
    lp = model.log_probs(lm.Layout.of(lm.Batch(cp, lengths, np.array([])), model.order))
    assert np.exp(lp[np.cumsum(lengths) - 1]).sum() == pytest.approx(1.0, abs=1e-6)


def test_normalise() -> None:
    batch = lm.normalise(["  Hello\t\tWORLD 2024  ", "", None, "１２３ 中文\u3000文本", " \n "])
    start = np.cumsum(batch.lengths) - batch.lengths
    texts = ["".join(chr(c) for c in batch.cp[s : s + n]) for s, n in zip(start, batch.lengths, strict=True)]
    assert texts == ["hello world 0000", "", "", "000 中文 文本", ""]
    assert texts[0] == py_normalise("  Hello\t\tWORLD 2024  ")


def test_languages_follow_tag_language() -> None:
    batch = lm.normalise(
        [
            "这是一段中文文本。",
            "An English sentence.",
            "日本語のテキストです",
            "Привет мир",
            "12345",
            "用 Spark 处理数据",
        ]
    )
    assert batch.language.tolist() == ["zh", "en", "other", "other", "other", "zh"]


def test_hash_table_finds_every_key_and_only_those() -> None:
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, 50_000, dtype=np.uint64))
    table = lm.HashTable(keys)
    queries = np.concatenate([keys, rng.integers(0, 2**63, 50_000, dtype=np.uint64)])
    rows = table.find(queries)
    assert (rows[: len(keys)] == np.arange(len(keys))).all()
    absent = ~np.isin(queries[len(keys) :], keys)
    assert (rows[len(keys) :][absent] == -1).all()
    assert (table.rows >= 0).mean() <= 0.5


def test_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    model = lm.train(CORPUS * 5, order=3, holdout_every=2, min_chars=10)
    path = tmp_path / "m.npz"
    path.write_bytes(model.to_bytes())
    again = lm.load(str(path))
    texts = ["the cat sat on the mat", "公园里有很多花"]
    assert again.score(texts)[0] == pytest.approx(model.score(texts)[0])
    assert lm.read_header(path)["reference"] == model.reference
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.npz: not a Forgeflow n-gram model"):
        lm.read_header(bad)
    with pytest.raises(ValueError, match="no text to train on"):
        lm.train(["", "   "])


# ---------------------------------------------------------------- quality on real data


def _shared_corpus() -> tuple[list[str], list[str]]:
    en = [json.loads(line)["text"] for line in (DATA / "pretrain" / "c4_demo.jsonl").open(encoding="utf-8")]
    en += [r["output"] for r in json.loads((DATA / "sft" / "alpaca_en_demo.json").read_text("utf-8"))]
    zh = [r["output"] for r in json.loads((DATA / "sft" / "alpaca_zh_demo.json").read_text("utf-8"))]
    return en, zh


@pytest.fixture(scope="module")
def shared_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, lm.CharNGramModel, list[str]]:
    en, zh = _shared_corpus()
    texts = [t for pair in zip(en, zh, strict=False) for t in pair]
    # the last fifth is never seen in training: it is the fluent text the filter must keep
    cut = len(texts) * 4 // 5
    model = lm.train(texts[:cut], order=5)
    path = tmp_path_factory.mktemp("lm") / "shared.npz"
    path.write_bytes(model.to_bytes())
    return path, model, [t for t in texts[cut:] if len(t) >= 50]


def test_reference_perplexities_per_language(shared_model) -> None:
    _, model, _ = shared_model
    assert set(model.reference) == {"zh", "en"}
    for ref in model.reference.values():
        assert ref["docs"] >= 5 and ref["p50"] <= ref["p90"] <= ref["p95"] <= ref["p99"]
    # a character of Chinese carries far more information than a Latin letter: why limits are per language
    assert model.reference["zh"]["p50"] > 3 * model.reference["en"]["p50"]


def test_unseen_fluent_text_is_kept_and_shuffled_text_dropped(shared_model) -> None:
    """With the default limits. The model has seen about 0.3 M Chinese characters, so Chinese is the harder
    case: the fluent texts it scores highest are classical-style poems (perplexity filters penalise literary
    text), and the shuffled ones it scores lowest are lists of a few repeated characters."""
    _, model, unseen = shared_model
    limits = limits_for(model.reference, PerplexityFilter.Params.model_construct(**_default_params()))
    rng = random.Random(7)

    def shuffled(t: str) -> str:
        chars = list(t)
        rng.shuffle(chars)
        return "".join(chars)

    bounds = {"zh": (0.97, 0.10), "en": (0.99, 0.01)}  # (least kept of fluent, most kept of shuffled)
    for language, (fluent_kept, shuffled_kept) in bounds.items():
        for texts, want in [(unseen, fluent_kept), ([shuffled(t) for t in unseen], shuffled_kept)]:
            ppl, lang = model.score(texts, 50)
            sel = (lang == language) & np.isfinite(ppl)
            assert sel.sum() >= 100, language
            kept = (ppl[sel] <= limits[language]).mean()
            if want is fluent_kept:
                assert kept >= want, f"{language}: only {kept:.3f} of unseen fluent texts kept"
            else:
                assert kept <= want, f"{language}: {kept:.3f} of shuffled texts kept"


def _default_params() -> dict:
    return {name: f.default for name, f in PerplexityFilter.Params.model_fields.items() if name != "model"}


# ---------------------------------------------------------------- the operator in Spark


def test_perplexity_filter_in_spark(spark: SparkSession, shared_model, ff_home: Path) -> None:
    path, model, unseen = shared_model
    zh = next(t for t in unseen if lm.normalise([t]).language[0] == "zh" and len(t) > 80)
    en = next(t for t in unseen if lm.normalise([t]).language[0] == "en" and len(t) > 80)
    rng = random.Random(3)
    garbled = "".join(rng.sample(zh, len(zh)))
    texts = [zh, en, garbled, "太短了", "Привет мир, это русский текст, которого модель не видела совсем."]
    df = spark.createDataFrame(
        [(f"id{i:02d}", t, ("src", [])) for i, t in enumerate(texts)], schema("pretrain")
    )
    op = PerplexityFilter.from_step(
        OperatorStep(name="perplexity_filter", params={"model": str(path)}), 0, "pretrain"
    )
    assert OPERATORS["perplexity_filter"] is PerplexityFilter
    plan = op.annotate(df, PRETRAIN)._jdf.queryExecution().optimizedPlan().toString()
    assert "ArrowEvalPython" in plan and not op.fusable
    result = run_operators(df, [op], PRETRAIN)
    try:
        step = result.steps[0]
        kept = sorted(r["id"] for r in result.df.collect())
        # 'other' has no reference (none held out) and the short text is not scored: both are kept
        assert kept == ["id00", "id01", "id03", "id04"]
        assert (step.dropped, step.kept) == (1, 4)
        assert step.counters["unscored"] == 2
        reason = step.samples["dropped"][0]["reason"]
        assert re.fullmatch(r"perplexity [\d,.]+ > [\d,.]+ \(zh\)", reason), reason
    finally:
        result.release()

    # an absolute limit for 'other' scores the Russian text too (and drops it: unseen alphabet)
    strict = PerplexityFilter(PerplexityFilter.Params(model=str(path), max_perplexity={"other": 50.0}))
    ids = sorted(r["id"] for r in strict.apply(df, PRETRAIN).collect())
    assert ids == ["id00", "id01", "id03"]


def test_params_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match=r"params\.model: .*none.npz. not found .*forgeflow lm train"):
        PerplexityFilter.from_step(
            OperatorStep(name="perplexity_filter", params={"model": str(tmp_path / "none.npz")}),
            2,
            "pretrain",
        )
    with pytest.raises(
        OperatorError, match=r"(?s)operators\[1\] \(perplexity_filter\).*params.max_perplexity: .*must be > 0"
    ):
        PerplexityFilter.from_step(
            OperatorStep(
                name="perplexity_filter",
                params={"model": str(tmp_path / "none.npz"), "max_perplexity": {"zh": -1}},
            ),
            1,
            "pretrain",
        )


def test_scoring_in_slices_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    model = lm.train(CORPUS, order=3, holdout_every=0)
    texts = [*CORPUS, None, "", "公园" * 400, *CORPUS]
    whole = model.score(texts, 5)
    monkeypatch.setattr(lm, "CHUNK_CHARS", 37)  # slices end inside and between texts
    sliced = model.score(texts, 5)
    np.testing.assert_allclose(sliced[0], whole[0], rtol=1e-12)
    assert sliced[1].tolist() == whole[1].tolist()


def test_tag_mode_buckets_by_the_reference_and_drops_nothing(
    spark: SparkSession, shared_model, ff_home
) -> None:
    path, model, unseen = shared_model
    ppl, lang = model.score(unseen, 50)
    ref = model.reference
    zh = [i for i in range(len(unseen)) if lang[i] == "zh" and np.isfinite(ppl[i])]
    want = {}
    for i in zh[:30]:
        want[f"id{i:04d}"] = (
            "ppl:head"
            if ppl[i] <= ref["zh"]["p50"]
            else "ppl:middle"
            if ppl[i] <= ref["zh"]["p90"]
            else "ppl:tail"
        )
    assert {"ppl:head", "ppl:tail"} <= set(want.values())
    rows = [(k, unseen[int(k[2:])], ("src", ["ppl:old", "domain:x"])) for k in want]
    rows.append(("short", "太短了", ("src", ["ppl:old"])))
    df = spark.createDataFrame(rows, schema("pretrain"))
    op = PerplexityFilter(PerplexityFilter.Params(model=str(path), action="tag"))
    result = run_operators(df, [op], PRETRAIN)
    try:
        step = result.steps[0]
        tags = {r["id"]: r["meta"]["tags"] for r in result.df.collect()}
        assert step.dropped == 0 and step.counters["unscored"] == 1
        for k, bucket in want.items():
            assert tags[k] == ["domain:x", bucket]  # the earlier ppl: tag is replaced, others stay
        assert tags["short"] == []  # unscored: its stale bucket goes, no new one
        assert step.modified == len(want) + 1
    finally:
        result.release()
