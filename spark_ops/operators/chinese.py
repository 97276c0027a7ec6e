"""Simplified <-> traditional Chinese with OpenCC (the official bindings), in a pandas UDF.

OpenCC converts phrase by phrase (头发 -> 頭髮 but 发展 -> 發展), which a character table cannot. Loading a
converter reads its dictionaries, so each Python worker builds one per configuration and keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pyspark.sql import Column

from spark_ops.operators.base import Mapper, OperatorParams, register

if TYPE_CHECKING:
    import opencc

OpenccConfig = Literal[
    "s2t", "t2s", "s2tw", "tw2s", "s2hk", "hk2s", "s2twp", "tw2sp", "t2tw", "t2hk", "tw2t", "hk2t"
]
_CONVERTERS: dict[str, opencc.OpenCC] = {}


def converter(config: str) -> opencc.OpenCC:
    """This process's OpenCC converter for ``config`` (built once: loading the dictionaries costs ~10 ms)."""
    conv = _CONVERTERS.get(config)
    if conv is None:
        import opencc

        conv = _CONVERTERS[config] = opencc.OpenCC(
            f"{config}.json" if not config.endswith(".json") else config
        )
    return conv


def _convert(config: str, text: str) -> str:
    return converter(config).convert(text)


@register
class ChineseConverter(Mapper):
    """Convert between simplified and traditional Chinese (OpenCC, phrase-aware); other text is unchanged."""

    name = "convert_chinese"

    class Params(OperatorParams):
        config: OpenccConfig = Field(
            default="t2s",
            description="OpenCC conversion: t2s / s2t (traditional <-> simplified), s2tw / tw2s (Taiwan "
            "standard), s2twp / tw2sp (Taiwan with phrases: 软件 <-> 軟體), s2hk / hk2s (Hong Kong), ...",
        )

    params: Params

    def rewrite(self, text: Column) -> Column:
        return text

    def python_rewrite(self) -> Callable[[str], str] | None:
        return partial(_convert, self.params.config)
