"""The numpy shingler and MinHash behind near_dedupe: shingle sets, Jaccard, band keys, local components."""

from __future__ import annotations

import random

import numpy as np

from spark_ops.operators.minhash import MinHasher, jaccard, shingle
from spark_ops.operators.near_dedupe import local_components


def _set(texts: list[str | None], i: int, cjk: int = 5, word: int = 2) -> set[int]:
    return set(shingle(texts, cjk, word).of(i).tolist())


def test_cjk_character_ngrams_and_word_ngrams_are_counted_apart() -> None:
    texts = ["你好世界你好世界", "Hello, hello world!", "", None, "ab", "你好", "The cat sat 你好世界啊"]
    sh = shingle(texts, 5, 2)
    sizes = [len(np.unique(sh.of(i))) for i in range(len(texts))]
    # 8 CJK chars -> 4 distinct 5-grams; words hello hello world -> 2 bigrams; empty/None -> none;
    # shorter than n -> the whole text as one shingle; mixed: 1 CJK shingle + 2 word bigrams
    assert sizes == [4, 2, 0, 0, 1, 1, 3]


def test_shingles_ignore_case_punctuation_and_spacing_but_not_words() -> None:
    a = "The quick brown fox jumps over the lazy dog"
    assert _set([a, "the QUICK  brown fox, jumps over the lazy dog!"], 0) == _set(
        [a, "the QUICK  brown fox, jumps over the lazy dog!"], 1
    )
    assert _set([a, "The quick brown cat jumps over the lazy dog"], 0) != _set(
        [a, "The quick brown cat jumps over the lazy dog"], 1
    )


def test_shingles_do_not_cross_text_boundaries_in_a_batch() -> None:
    alone = [_set([t], 0, cjk=3) for t in ("春眠不觉晓", "处处闻啼鸟", "alpha beta", "gamma delta")]
    batch = shingle(["春眠不觉晓", "处处闻啼鸟", "alpha beta", "gamma delta"], 3, 2)
    assert [set(batch.of(i).tolist()) for i in range(4)] == alone


def test_jaccard_tracks_edit_rate_for_chinese() -> None:
    rng = random.Random(3)
    base = "".join(
        rng.choice("的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生")
        for _ in range(400)
    )
    edited = list(base)
    for i in rng.sample(range(len(base)), 8):  # 2 % of the characters
        edited[i] = "鸟"
    j_near = jaccard(shingle([base], 5, 2).of(0), shingle(["".join(edited)], 5, 2).of(0))
    other = "".join(rng.choice("春夏秋冬山水花鸟风月") for _ in range(400))
    j_far = jaccard(shingle([base], 5, 2).of(0), shingle([other], 5, 2).of(0))
    assert 0.6 < j_near < 0.95
    assert j_far < 0.05
    assert jaccard(np.array([], dtype=np.uint64), np.array([], dtype=np.uint64)) == 0.0


def test_band_keys_are_deterministic_and_collide_for_duplicates_only() -> None:
    texts = [
        "完全相同的一段中文文本，用来测试。" * 3,
        "完全相同的一段中文文本，用来测试。" * 3,
        "毫不相干的另一段内容" * 3,
    ]
    h1, h2 = MinHasher(20, 3, seed=7), MinHasher(20, 3, seed=7)
    p1, s1 = h1.signatures(shingle(texts, 5, 2))
    p2, s2 = h2.signatures(shingle(texts, 5, 2))
    k1, k2 = h1.band_keys(s1), h2.band_keys(s2)
    assert (p1 == p2).all() and (k1 == k2).all()
    assert (k1[0] == k1[1]).all()  # identical texts share every band
    assert not np.isin(k1[2], k1[0]).any()  # band index is mixed in, unrelated texts share none
    # texts without shingles get no signature at all
    present, sig = h1.signatures(shingle(["", None, "有内容"], 5, 2))
    assert present.tolist() == [2] and sig.shape == (1, 60)


def test_local_components_label_each_component_by_its_smallest_node() -> None:
    src = np.array([5, 7, 9, 100, -3], dtype=np.int64)
    dst = np.array([7, 9, 11, 101, 100], dtype=np.int64)
    nodes, labels = local_components(src, dst)
    got = dict(zip(nodes.tolist(), labels.tolist(), strict=True))
    assert got == {5: 5, 7: 5, 9: 5, 11: 5, 100: -3, 101: -3, -3: -3}
