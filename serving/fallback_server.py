"""The fallback model server: a small OpenAI-compatible API over transformers, for when vLLM is absent.

    python -m serving.fallback_server --model DIR --served-model-name NAME --host 127.0.0.1 --port 8000

It serves ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /health``
with the request and response shapes of the OpenAI API (and vLLM's 400/404 error bodies), so evaluation,
the playground and the gateway work against it unchanged. It is a fallback, not an engine: one request
runs at a time, on CPU, without batching or streaming.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("forgeflow.fallback_server")


class ApiError(Exception):
    """An error answered in the OpenAI error format."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class _Sampling(BaseModel):
    """Sampling fields shared by both endpoints; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


class Generator:
    """Loads the model once and generates one request at a time."""

    def __init__(self, model_dir: Path, served_model_name: str, max_model_len: int | None) -> None:
        self.model_dir = model_dir
        self.served_model_name = served_model_name
        self._requested_len = max_model_len
        self._lock = threading.Lock()
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.max_model_len = 0
        self.eos_ids: set[int] = set()

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.monotonic()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        # float32: bf16 matmuls are slower than fp32 on most CPUs without AMX, and tiny models fit anyway.
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        config_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        if self._requested_len and config_len and self._requested_len > config_len:
            raise SystemExit(
                f"--max-model-len {self._requested_len} exceeds the model's max_position_embeddings "
                f"{config_len} ({self.model_dir}/config.json); lower it."
            )
        self.max_model_len = self._requested_len or config_len or 2048
        eos: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(i) for i in source)
        self.eos_ids = eos
        log.info(
            "model loaded from %s in %.1f s (max_model_len %d, eos ids %s, torch threads %d)",
            self.model_dir, time.monotonic() - started, self.max_model_len, sorted(eos), torch.get_num_threads(),
        )

    def chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        assert self.tokenizer is not None
        if not self.tokenizer.chat_template:
            raise ApiError(
                400,
                f"the model at {self.model_dir} has no chat template (tokenizer_config.json 'chat_template'); "
                "use /v1/completions, or save the tokenizer with a chat template",
            )
        conversation = [{"role": m.role, "content": _text_content(m, i)} for i, m in enumerate(messages)]
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        # The template writes the special tokens itself; adding BOS again would double it.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_prompt(self, prompt: str) -> list[int]:
        assert self.tokenizer is not None
        return list(self.tokenizer(prompt)["input_ids"])

    def generate(self, prompt_ids: list[int], req: _Sampling, default_max_tokens: int | None) -> Generation:
        """Sample a continuation of ``prompt_ids`` with ``req``'s settings (serialised by a lock)."""
        import torch

        assert self.model is not None and self.tokenizer is not None
        room = self.max_model_len - len(prompt_ids)
        max_tokens = req.max_completion_tokens or req.max_tokens or default_max_tokens or room
        if room <= 0 or max_tokens > room:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, {max_tokens} in "
                "the completion). Please reduce the length of the prompt or of max_tokens.",
                param="max_tokens",
            )
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        rng = torch.Generator().manual_seed(seed)
        with self._lock, torch.inference_mode():
            return self._sample(prompt_ids, req, max_tokens, [s for s in stops if s], rng)

    def _sample(
        self, prompt_ids: list[int], req: _Sampling, max_tokens: int, stops: list[str], rng: torch.Generator
    ) -> Generation:
        import torch

        assert self.model is not None and self.tokenizer is not None
        vocab = self.model.config.vocab_size
        counts = torch.zeros(vocab, dtype=torch.float32)
        out_ids: list[int] = []
        past = None
        step_input = torch.tensor([prompt_ids], dtype=torch.long)
        text, finish = "", "length"
        for _ in range(max_tokens):
            out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1, :vocab].float()
            if req.presence_penalty or req.frequency_penalty:
                # OpenAI's definition: penalise tokens already generated in this completion.
                logits = logits - req.presence_penalty * (counts > 0) - req.frequency_penalty * counts
            token = _pick(logits, req.temperature, req.top_p, rng)
            if token in self.eos_ids:
                finish = "stop"
                break
            out_ids.append(token)
            counts[token] += 1
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            step_input = torch.tensor([[token]], dtype=torch.long)
        return Generation(text, len(prompt_ids), len(out_ids), finish)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator) -> int:
    import torch

    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=rng))


def _text_content(message: ChatMessage, index: int) -> str:
    """A message's text; OpenAI content parts of type 'text' are joined, other parts are refused."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.get("type") != "text":
            raise ApiError(
                400,
                f"messages[{index}].content has a part of type {part.get('type')!r}; the fallback server "
                "accepts text only",
                param=f"messages[{index}].content",
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _check_common(req: _Sampling, served: str) -> None:
    if req.model != served:
        raise ApiError(404, f"The model `{req.model}` does not exist.", param="model", kind="NotFoundError")
    if req.n != 1:
        raise ApiError(400, f"n={req.n} is not supported by the fallback server; send n=1 (the default).", "n")
    if req.stream:
        raise ApiError(400, "stream=true is not supported by the fallback server; send stream=false.", "stream")


def _usage(g: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def create_app(generator: Generator) -> FastAPI:
    """The FastAPI app over a loaded ``generator``. Endpoints are sync: FastAPI runs them in a thread pool,
    and the generator's lock makes them take turns."""
    app = FastAPI(title="Forgeflow fallback server", docs_url=None, redoc_url=None)
    served = generator.served_model_name

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.status}}
        return JSONResponse(body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        # OpenAI and vLLM answer malformed requests with 400, not FastAPI's 422.
        msgs = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors())
        body = {"error": {"message": msgs, "type": "BadRequestError", "param": None, "code": 400}}
        return JSONResponse(body, status_code=400)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "backend": "fallback"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": served,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "forgeflow-fallback",
                    "root": str(generator.model_dir),
                    "max_model_len": generator.max_model_len,
                }
            ],
        }

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatCompletionRequest) -> dict[str, Any]:
        _check_common(req, served)
        g = generator.generate(generator.chat_prompt(req.messages), req, default_max_tokens=None)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason}
            ],
            "usage": _usage(g),
        }

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> dict[str, Any]:
        _check_common(req, served)
        if req.echo or req.logprobs is not None:
            raise ApiError(400, "echo and logprobs are not supported by the fallback server.", "echo")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise ApiError(400, f"prompt has {len(prompts)} entries; the fallback server takes one.", "prompt")
        # OpenAI's (and vLLM's) default for the legacy completions endpoint is 16 tokens.
        g = generator.generate(generator.text_prompt(prompts[0]), req, default_max_tokens=16)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served,
            "choices": [{"index": 0, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}],
            "usage": _usage(g),
        }

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Forgeflow's fallback OpenAI-compatible server (not vLLM).")
    parser.add_argument("--model", required=True, type=Path, help="Hugging Face model directory")
    parser.add_argument("--served-model-name", default=None, help="model name in the API (default: dir name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=None, help="longest context (default: the model's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} is not a Hugging Face model directory (no config.json)")
    served = args.served_model_name or args.model.name
    log.warning(
        "FORGEFLOW FALLBACK SERVER (transformers on CPU, one request at a time; NOT vLLM) starting: "
        "model %s as %r on http://%s:%d/v1", args.model, served, args.host, args.port,
    )
    generator = Generator(args.model, served, args.max_model_len)
    generator.load()
    uvicorn.run(create_app(generator), host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
