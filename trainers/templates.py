"""Chat templates per model: the base tokenizer's own, a bundled one by name, or a Jinja file.

Bundled templates live in include/chat_templates/ (chatml, qwen2, llama3). A base model whose tokenizer has no
template gets ChatML, which is also what the tiny models use and what vLLM falls back to. The chosen template
is saved with the tokenizer, so the served model renders prompts exactly as it was trained on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.settings import PROJECT_ROOT
from trainers.data import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEMPLATES_DIR = PROJECT_ROOT / "include" / "chat_templates"
DEFAULT_TEMPLATE = "chatml"


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


def load_template(choice: str) -> str:
    """The Jinja text of a bundled template (by name) or of a ``.jinja`` file (by path)."""
    if choice.endswith(".jinja") or "/" in choice:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise DataError(f"chat_template {choice}: no such file")
        return path.read_text(encoding="utf-8")
    path = TEMPLATES_DIR / f"{choice}.jinja"
    if not path.is_file():
        raise DataError(
            f"chat_template {choice!r} is not a bundled template ({', '.join(template_names())}) nor a .jinja path"
        )
    return path.read_text(encoding="utf-8")


def choose_chat_template(tokenizer: PreTrainedTokenizerBase, choice: str | None) -> str:
    """Set the tokenizer's chat template as the spec says; returns what was used, for the run's params.

    ``None`` keeps the tokenizer's own template, or sets ChatML when it has none.
    """
    if choice is None:
        if tokenizer.chat_template:
            return "base"
        choice = DEFAULT_TEMPLATE
    tokenizer.chat_template = load_template(choice)
    return choice
