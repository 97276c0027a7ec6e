"""The operator contract: a named step with typed params whose ``apply(df, ctx)`` is a pure DataFrame transform.

An operator never filters rows itself. ``annotate`` rewrites text columns and/or adds a boolean ``_keep``
column (and an optional ``_note`` saying why a record goes); ``apply`` then drops the rows that are not kept.
Keeping the decision as a column is what lets the pipeline count kept / dropped / modified records and
sample them in one pass over cached data, for every operator, without each operator counting for itself.

Subclass :class:`Mapper` (rewrite text with a string -> string column expression), :class:`Filter`
(a keep predicate) or :class:`Operator` directly (anything that needs the whole frame, e.g. a dedupe), and
register it with :func:`register`.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_ops.canonical import TEXT_COLUMNS, content_columns, map_text, map_text_vectorised
from tasks.specs import OperatorStep, Usage

KEEP = "_keep"
NOTE = "_note"
# Prefix of per-record counter columns an operator may add in ``annotate`` (e.g. ``_stat_phone`` = how many
# phone numbers a record held). The pipeline sums each into the step's ``counters`` and drops them.
STAT = "_stat_"


def holds_any(text: Column, chars: str) -> Column:
    """True where ``text`` holds any of ``chars``: translate() deletes them, a table lookup per character --
    far cheaper than a regex scan, so it gates the regex of a mapper whose every match contains one."""
    return F.length(F.translate(text, chars, "")) != F.length(text)


def stat_columns(df: DataFrame) -> list[str]:
    """The counter columns (``_stat_*``) of an annotated frame."""
    return [c for c in df.columns if c.startswith(STAT)]


class OperatorError(ValueError):
    """A recipe step that cannot run: unknown operator or invalid params (names the step and field)."""


class OperatorParams(BaseModel):
    """Parameters every operator accepts; subclasses add their own fields, each with a description."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str] | None = Field(
        default=None,
        description="Text columns to act on; default: the usage's text columns (text, or context + target).",
    )


@dataclass(frozen=True)
class OperatorContext:
    """What an operator knows about the run: the usage (hence the schema) and the record order."""

    usage: Usage
    order_by: tuple[str, ...] = ("id",)


class Operator(ABC):
    """One recipe step. Construction only stores params; Spark work happens in ``annotate``."""

    name: ClassVar[str]
    Params: ClassVar[type[OperatorParams]] = OperatorParams
    # True when a record's result depends on that record alone (no joins, windows or aggregates over the
    # frame): consecutive row-local steps run fused in one pass (spark_ops.pipeline).
    row_local: ClassVar[bool] = False

    @property
    def fusable(self) -> bool:
        """May run fused with neighbouring steps in one projection: row-local and pure Spark SQL. Steps with
        Python (pandas) UDFs run alone: Catalyst's projection collapsing around Python UDFs grew
        exponentially with the fused depth (minutes of planning for desensitize + sensitive_words)."""
        return self.row_local

    def __init__(self, params: OperatorParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_step(cls, step: OperatorStep, index: int, usage: Usage) -> Operator:
        """Validate ``step.params``; errors name the step index, operator and field."""
        label = f"operators[{index}] ({step.name})"
        try:
            params = cls.Params.model_validate(step.params)
        except ValidationError as e:
            lines = [f"{label}: invalid params"]
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "(root)"
                lines.append(f"  - params.{loc}: {err['msg']}")
            raise OperatorError("\n".join(lines)) from e
        allowed = content_columns(usage)
        for c in params.columns or ():
            if c not in allowed:
                raise OperatorError(
                    f"{label}: params.columns: {c!r} is not a text column of usage {usage}; "
                    f"use some of {', '.join(allowed)}"
                )
        return cls(params)

    def columns(self, ctx: OperatorContext) -> tuple[str, ...]:
        """The text columns this step acts on."""
        return tuple(self.params.columns) if self.params.columns else TEXT_COLUMNS[ctx.usage]

    def writes(self, ctx: OperatorContext) -> tuple[str, ...]:
        """Columns ``annotate`` may rewrite; the pipeline compares them before/after to count modifications."""
        return ()

    @abstractmethod
    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        """``df`` with rewritten columns and, for steps that drop records, ``_keep`` (and ``_note``)."""

    def apply(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        """The transform itself: annotate, then drop what is not kept."""
        out = self.annotate(df, ctx)
        if KEEP in out.columns:
            out = out.filter(F.col(KEEP)).drop(KEEP)
        out = out.drop(*stat_columns(out))
        return out.drop(NOTE) if NOTE in out.columns else out

    def describe(self) -> dict:
        """The step as recorded in the manifest: name and resolved params."""
        return {"name": self.name, "params": self.params.model_dump(mode="json")}


class Mapper(Operator):
    """Rewrites text: implement ``rewrite`` for one string column; it is applied to every shape of text.

    What Spark SQL cannot express goes in ``python_rewrite``: a ``str -> str`` function run after
    ``rewrite`` in a vectorised pandas UDF (Arrow batches), never a row-at-a-time Python UDF.
    """

    row_local = True

    def writes(self, ctx: OperatorContext) -> tuple[str, ...]:
        return self.columns(ctx)

    @abstractmethod
    def rewrite(self, text: Column) -> Column:
        """A string -> string column expression (Spark SQL functions; null in, null out)."""

    def python_rewrite(self) -> Callable[[str], str] | None:
        """An optional picklable ``str -> str`` function applied after ``rewrite``; None: Spark SQL only."""
        return None

    @property
    def fusable(self) -> bool:
        # A python_rewrite is a pandas UDF in the plan: such a step runs alone (see Operator.fusable).
        return self.row_local and self.python_rewrite() is None

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        types = {f.name: f.dataType for f in df.schema.fields}
        out = df.withColumns({c: map_text(c, types[c], self.rewrite) for c in self.columns(ctx)})
        fn = self.python_rewrite()
        if fn is not None:
            out = out.withColumns({c: map_text_vectorised(c, types[c], fn) for c in self.columns(ctx)})
        return out


class Filter(Operator):
    """Drops records: implement ``keep`` (a boolean column; null counts as drop) and optionally ``note``."""

    row_local = True

    @abstractmethod
    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        """True for records to keep."""

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column | None:
        """Why a record is dropped (only read for dropped records)."""
        return None

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        keep = F.coalesce(self.keep(df, ctx), F.lit(False))
        out = df.withColumn(KEEP, keep)
        note = self.note(df, ctx)
        if note is not None:
            out = out.withColumn(NOTE, F.when(~F.col(KEEP), note))
        return out


OPERATORS: dict[str, type[Operator]] = {}


def register(cls: type[Operator]) -> type[Operator]:
    """Class decorator: make an operator available to recipes under its ``name``."""
    if cls.name in OPERATORS and OPERATORS[cls.name] is not cls:
        raise ValueError(f"operator name {cls.name!r} is taken by {OPERATORS[cls.name].__qualname__}")
    OPERATORS[cls.name] = cls
    return cls


def build_operators(steps: list[OperatorStep], usage: Usage) -> list[Operator]:
    """Instantiate a recipe, validating every step before any Spark work starts."""
    ops = []
    for i, step in enumerate(steps):
        cls = OPERATORS.get(step.name)
        if cls is None:
            close = difflib.get_close_matches(step.name, OPERATORS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OperatorError(
                f"operators[{i}]: unknown operator {step.name!r}{hint}; available: {', '.join(sorted(OPERATORS))}"
            )
        ops.append(cls.from_step(step, i, usage))
    return ops
