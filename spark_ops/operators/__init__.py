"""The operator catalogue. Importing this package registers every operator in ``OPERATORS``."""

from spark_ops.operators import (  # noqa: F401  (registration side effect)
    abnormal,
    chinese,
    dedupe,
    desensitize,
    filters,
    near_dedupe,
    normalize,
    perplexity,
    replace,
    sensitive_words,
    tagging,
)
from spark_ops.operators.base import (
    KEEP,
    NOTE,
    OPERATORS,
    Filter,
    Mapper,
    Operator,
    OperatorContext,
    OperatorError,
    OperatorParams,
    build_operators,
    register,
)

__all__ = [
    "KEEP",
    "NOTE",
    "OPERATORS",
    "Filter",
    "Mapper",
    "Operator",
    "OperatorContext",
    "OperatorError",
    "OperatorParams",
    "build_operators",
    "register",
]
