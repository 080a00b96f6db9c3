"""A scripted model server on 127.0.0.1 for the real agent CLIs' contract tests.

It speaks the APIs the CLIs use, each with streaming (SSE):

- OpenAI Chat Completions (`/v1/chat/completions`): aider (text edit formats) and
  opencode (tool calls);
- OpenAI Responses (`/v1/responses`): codex. It has no WebSocket transport: an upgrade
  request gets 404, so codex takes its HTTPS fallback path;
- Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`): Claude Code;
- Gemini (`/v1beta/models/<m>:generateContent`, `:streamGenerateContent`, `:countTokens`).

Every reply follows one script (`EditScript`): read the file if the CLI offers a read tool,
then edit it with the edit tool the CLI offers (found by name and by its parameter names),
then answer with a final message. Which step comes next is judged from the conversation the
CLI sends (the tool calls already in it), so the server holds no per-session state. Each
reply reports `USAGE` (fixed token counts, below 1000 so that aider's rounding is exact);
`served` lists what was served, per request.

It is also the HTTP(S) proxy for the CLI under test (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY point
at it): a request for any other destination (a CONNECT tunnel or an absolute URL naming
another host) is refused with 403 and recorded in `refused`; a test fails when that list is
not empty. Nothing here opens a connection anywhere.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Token counts served with every reply: (input incl. cached, cached, output).
USAGE_IN = 900
USAGE_CACHED = 300
USAGE_OUT = 60
FINAL_TEXT = "Done: the edit is made."

_READ_TOOLS = ("read", "read_file", "view")
_EDIT_TOOLS = ("edit", "replace", "str_replace", "str_replace_based_edit_tool")
_WRITE_TOOLS = ("write", "write_file", "create_file")
_PATH_KEYS = ("file_path", "filePath", "absolute_path", "path")
_OLD_KEYS = ("old_string", "oldString", "old_str")
_NEW_KEYS = ("new_string", "newString", "new_str")
_CONTENT_KEYS = ("content", "file_text")


@dataclass(frozen=True)
class EditScript:
    """The edit the scripted model asks for: in `path` (absolute; `rel` inside the
    worktree), `old` becomes `new`; `before` and `after` are the whole file."""

    path: str
    rel: str
    before: str
    after: str
    old: str
    new: str


@dataclass(frozen=True)
class Served:
    api: str
    path: str
    tokens_in: int
    tokens_cached: int
    tokens_out: int
    step: str


@dataclass
class ModelServer:
    script: EditScript
    served: list[Served] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    websocket_attempts: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every request body, for diagnosis
    _httpd: _QuietServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ModelServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.owner = self
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="modelserver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def proxy_env(self) -> dict[str, str]:
        """Proxy variables that send every other destination to this server (refused)."""
        env = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = self.url
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    # -- what was served ----------------------------------------------------------------

    def record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def refuse(self, what: str) -> None:
        with self._lock:
            self.refused.append(what)

    def totals(self) -> dict[str, int]:
        return {
            "tokens_in": sum(s.tokens_in for s in self.served),
            "tokens_cached": sum(s.tokens_cached for s in self.served),
            "tokens_out": sum(s.tokens_out for s in self.served),
            "requests": len(self.served),
        }


# -- the script: which call comes next ---------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    params: tuple[str, ...]
    kind: str  # "function" or "custom" (a freeform tool, e.g. codex's apply_patch)


@dataclass(frozen=True)
class Step:
    """The reply: a tool call (name, arguments or freeform input) or the final text."""

    tool: Tool | None
    args: Mapping[str, Any] | str | None = None
    label: str = "final"


def _pick(tools: list[Tool], names: tuple[str, ...]) -> Tool | None:
    for name in names:
        for tool in tools:
            if tool.name.lower() == name:
                return tool
    return None


def _key(tool: Tool, keys: tuple[str, ...]) -> str:
    return next((k for k in keys if k in tool.params), keys[0])


def _patch(script: EditScript) -> str:
    minus = "".join(f"-{line}\n" for line in script.old.splitlines())
    plus = "".join(f"+{line}\n" for line in script.new.splitlines())
    return f"*** Begin Patch\n*** Update File: {script.rel}\n@@\n{minus}{plus}*** End Patch\n"


def next_step(script: EditScript, tools: list[Tool], called: list[str]) -> Step:
    """Read (when a read tool is offered), then edit, then the final text."""
    called_lower = [c.lower() for c in called]
    edit = _pick(tools, _EDIT_TOOLS)
    write = _pick(tools, _WRITE_TOOLS)
    patch = _pick(tools, ("apply_patch",))
    shell = _pick(tools, ("shell", "shell_command", "exec_command", "local_shell"))
    editors = [t.name.lower() for t in (edit, write, patch) if t is not None]
    if any(c in editors for c in called_lower) or (not editors and shell and called_lower):
        return Step(None)
    read = _pick(tools, _READ_TOOLS)
    if edit is not None:
        if read is not None and read.name.lower() not in called_lower:
            return Step(read, {_key(read, _PATH_KEYS): script.path}, "read")
        args = {_key(edit, _PATH_KEYS): script.path, _key(edit, _OLD_KEYS): script.old,
                _key(edit, _NEW_KEYS): script.new}
        if "instruction" in edit.params:  # gemini's replace requires one
            args["instruction"] = f"In {script.rel}, replace {script.old!r} with {script.new!r}."
        return Step(edit, args, "edit")
    if patch is not None:
        if patch.kind == "custom":
            return Step(patch, _patch(script), "edit")
        return Step(patch, {_key(patch, ("input", "patch")): _patch(script)}, "edit")
    if write is not None:
        return Step(write, {_key(write, _PATH_KEYS): script.path, _key(write, _CONTENT_KEYS): script.after}, "edit")
    if shell is not None:
        heredoc = f"apply_patch <<'EOF'\n{_patch(script)}EOF\n"
        if "cmd" in shell.params:
            return Step(shell, {"cmd": heredoc}, "edit")
        if shell.name == "shell_command":
            return Step(shell, {"command": heredoc}, "edit")
        return Step(shell, {"command": ["apply_patch", _patch(script)]}, "edit")
    return Step(None)


def aider_reply(script: EditScript, system: str) -> str:
    """An edit in the format aider's system prompt asks for (diff or whole)."""
    if "<<<<<<< SEARCH" in system:
        return (
            f"{script.rel}\n```\n<<<<<<< SEARCH\n{script.old.rstrip()}\n=======\n"
            f"{script.new.rstrip()}\n>>>>>>> REPLACE\n```\n"
        )
    return f"{script.rel}\n```\n{script.after.rstrip()}\n```\n"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _params(schema: Any) -> tuple[str, ...]:
    props = schema.get("properties") if isinstance(schema, dict) else None
    return tuple(props) if isinstance(props, dict) else ()


# -- the HTTP side -----------------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    """A client that closes its connection early (a CLI retrying, or exiting when its turn
    is over) is normal; anything else a handler raises is recorded as refused, so the test
    that started the server fails on it instead of printing a traceback and going on."""

    owner: ModelServer | None = None
    resets: int = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError)):
            self.resets += 1
            return
        if self.owner is not None:
            self.owner.refuse(f"handler error: {error!r}")


class _Handler(BaseHTTPRequestHandler):
    owner: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    # Proxy: a tunnel anywhere is refused.
    def do_CONNECT(self) -> None:
        self.owner.refuse(f"CONNECT {self.path}")
        self._send(403, {"error": "autopack test model server: no other destination is allowed"})

    def do_GET(self) -> None:
        if not self._for_me():
            return
        path = urlsplit(self.path).path
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.owner.websocket_attempts += 1
            self._send(404, {"error": {"message": "WebSocket transport not supported here"}})
            return
        if path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}],
                             "models": [{"name": "models/test-model"}]})
            return
        self._send(404, {"error": {"message": f"no route {path}"}})

    def do_HEAD(self) -> None:
        if self._for_me():
            self._send(200, {})

    def do_POST(self) -> None:
        if not self._for_me():
            return
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.owner.requests.append(f"POST {path}")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, {"error": {"message": "body is not JSON"}})
            return
        if isinstance(body, dict):
            self.owner.bodies.append({"path": path, **body})
        if path.endswith("/chat/completions"):
            self._chat(body, path)
        elif path.endswith("/responses"):
            self._responses(body, path)
        elif path.endswith("/messages/count_tokens"):
            self._send(200, {"input_tokens": USAGE_IN})
        elif path.endswith("/messages"):
            self._anthropic(body, path)
        elif ":countTokens" in path:
            self._send(200, {"totalTokens": USAGE_IN})
        elif ":generateContent" in path or ":streamGenerateContent" in path:
            self._gemini(body, path, stream=":streamGenerateContent" in path)
        else:
            self._send(404, {"error": {"message": f"no route {path}"}})

    def _for_me(self) -> bool:
        """A request for another host (absolute-form, as proxies get it) is refused."""
        if self.path.startswith("/"):
            return True
        parts = urlsplit(self.path)
        if parts.hostname in ("127.0.0.1", "localhost") and parts.port == self.owner.port:
            return True
        self.owner.refuse(f"{self.command} {self.path}")
        self._send(403, {"error": "autopack test model server: no other destination is allowed"})
        return False

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: Iterator[tuple[str | None, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            chunk = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            self.wfile.write(chunk.encode())
            self.wfile.flush()
        self.close_connection = True

    def _served(self, api: str, path: str, label: str) -> None:
        self.owner.record(Served(api, path, USAGE_IN, USAGE_CACHED, USAGE_OUT, label))

    # -- OpenAI Chat Completions -----------------------------------------------------------

    def _chat(self, body: dict[str, Any], path: str) -> None:
        script = self.owner.script
        messages = body.get("messages") or []
        tools = [
            Tool(str(t["function"].get("name", "")), _params(t["function"].get("parameters")), "function")
            for t in body.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        called = [
            str(c.get("function", {}).get("name", ""))
            for m in messages if isinstance(m, dict)
            for c in (m.get("tool_calls") or []) if isinstance(c, dict)
        ]
        content: str | None
        call: dict[str, Any] | None = None
        if tools:
            step = next_step(script, tools, called)
            content = FINAL_TEXT if step.tool is None else None
            if step.tool is not None:
                call = {"id": f"call_{len(called) + 1}", "type": "function",
                        "function": {"name": step.tool.name, "arguments": json.dumps(step.args)}}
            label = step.label
        else:
            system = "\n".join(str(m.get("content", "")) for m in messages
                               if isinstance(m, dict) and m.get("role") == "system")
            # aider: one exchange per message (its prompt holds example assistant turns)
            content = aider_reply(script, system)
            label = "edit"
        self._served("chat", path, label)
        usage = {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT, "total_tokens": USAGE_IN + USAGE_OUT,
                 "prompt_tokens_details": {"cached_tokens": USAGE_CACHED}}
        model = str(body.get("model", "test-model"))
        finish = "tool_calls" if call else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if call:
                message["tool_calls"] = [call]
            self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                             "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                             "usage": usage})
            return

        def chunks() -> Iterator[tuple[str | None, Any]]:
            base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
            delta: dict[str, Any] = {"role": "assistant"}
            if content:
                delta["content"] = content
            if call:
                delta["tool_calls"] = [{"index": 0, **call}]
            yield None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            yield None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            yield None, {**base, "choices": [], "usage": usage}
            yield None, "[DONE]"

        self._sse(chunks())

    # -- OpenAI Responses --------------------------------------------------------------------

    def _responses(self, body: dict[str, Any], path: str) -> None:
        script = self.owner.script
        tools = []
        for t in body.get("tools") or []:
            if not isinstance(t, dict):
                continue
            kind = "custom" if t.get("type") == "custom" else "function"
            tools.append(Tool(str(t.get("name", "")), _params(t.get("parameters")), kind))
        items = body.get("input") or []
        called = [str(i.get("name", "")) for i in items if isinstance(i, dict)
                  and i.get("type") in ("function_call", "custom_tool_call", "local_shell_call")]
        step = next_step(script, tools, called)
        n = len(called) + 1
        if step.tool is None:
            item: dict[str, Any] = {"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
                                    "content": [{"type": "output_text", "text": FINAL_TEXT, "annotations": []}]}
        elif step.tool.kind == "custom":
            item = {"type": "custom_tool_call", "id": f"ctc_{n}", "call_id": f"call_{n}", "name": step.tool.name,
                    "input": step.args, "status": "completed"}
        else:
            item = {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": step.tool.name,
                    "arguments": json.dumps(step.args), "status": "completed"}
        self._served("responses", path, step.label)
        usage = {"input_tokens": USAGE_IN, "input_tokens_details": {"cached_tokens": USAGE_CACHED},
                 "output_tokens": USAGE_OUT, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": USAGE_IN + USAGE_OUT}
        response = {"id": f"resp_{n}", "object": "response", "created_at": int(time.time()),
                    "model": str(body.get("model", "test-model")), "status": "in_progress", "output": []}
        if not body.get("stream"):
            self._send(200, {**response, "status": "completed", "output": [item], "usage": usage})
            return

        def events() -> Iterator[tuple[str | None, Any]]:
            yield "response.created", {"type": "response.created", "response": response}
            yield "response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                 "item": {**item, "status": "in_progress"}}
            if item["type"] == "message":
                yield "response.output_text.delta", {"type": "response.output_text.delta", "item_id": item["id"],
                                                     "output_index": 0, "content_index": 0, "delta": FINAL_TEXT}
            yield "response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}
            done = {**response, "status": "completed", "output": [item], "usage": usage}
            yield "response.completed", {"type": "response.completed", "response": done}

        self._sse(events())

    # -- Anthropic Messages ------------------------------------------------------------------

    def _anthropic(self, body: dict[str, Any], path: str) -> None:
        script = self.owner.script
        tools = [Tool(str(t.get("name", "")), _params(t.get("input_schema")), "function")
                 for t in body.get("tools") or [] if isinstance(t, dict)]
        called = [
            str(block.get("name", ""))
            for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant"
            for block in _as_list(m.get("content"))
            if isinstance(block, dict) and block.get("type") == "tool_use"
        ]
        step = next_step(script, tools, called) if tools else Step(None)
        self._served("anthropic", path, step.label if tools else "side")
        n = len(called) + 1
        model = str(body.get("model", "test-model"))
        if step.tool is None:
            text = FINAL_TEXT if tools else "ok"
            block: dict[str, Any] = {"type": "text", "text": text}
            stop = "end_turn"
        else:
            block = {"type": "tool_use", "id": f"toolu_{n}", "name": step.tool.name, "input": step.args}
            stop = "tool_use"
        usage = {"input_tokens": USAGE_IN - USAGE_CACHED, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": USAGE_CACHED, "output_tokens": USAGE_OUT}
        message = {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": model,
                   "stop_reason": None, "stop_sequence": None}
        if not body.get("stream"):
            self._send(200, {**message, "content": [block], "stop_reason": stop, "usage": usage})
            return

        def events() -> Iterator[tuple[str | None, Any]]:
            yield "message_start", {"type": "message_start",
                                    "message": {**message, "content": [], "usage": {**usage, "output_tokens": 1}}}
            if block["type"] == "text":
                yield "content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}}
                yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": block["text"]}}
            else:
                yield "content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {**block, "input": {}}}
                yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "input_json_delta",
                                                        "partial_json": json.dumps(block["input"])}}
            yield "content_block_stop", {"type": "content_block_stop", "index": 0}
            yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                    "usage": {"output_tokens": USAGE_OUT}}
            yield "message_stop", {"type": "message_stop"}

        self._sse(events())

    # -- Gemini ------------------------------------------------------------------------------

    def _gemini(self, body: dict[str, Any], path: str, stream: bool) -> None:
        script = self.owner.script
        tools = [
            Tool(str(d.get("name", "")), _params(d.get("parameters") or d.get("parametersJsonSchema")), "function")
            for t in body.get("tools") or [] if isinstance(t, dict)
            for d in t.get("functionDeclarations") or [] if isinstance(d, dict)
        ]
        called = [
            str(p["functionCall"].get("name", ""))
            for c in body.get("contents") or [] if isinstance(c, dict) and c.get("role") == "model"
            for p in c.get("parts") or [] if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)
        ]
        config = body.get("generationConfig") or {}
        wants_json = isinstance(config, dict) and config.get("responseMimeType") == "application/json"
        if tools:
            step = next_step(script, tools, called)
            part: dict[str, Any] = (
                {"text": FINAL_TEXT} if step.tool is None
                else {"functionCall": {"name": step.tool.name, "args": step.args}}
            )
            label = step.label
        else:  # a side request (routing, next-speaker check, ...): a small JSON answer
            answer = {"reasoning": "scripted", "next_speaker": "user", "model_choice": "flash"}
            part = {"text": json.dumps(answer) if wants_json else "ok"}
            label = "side"
        self._served("gemini", path, label)
        model = re.sub(r":.*$", "", path.rsplit("/", 1)[-1])
        reply = {
            "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": USAGE_IN, "candidatesTokenCount": USAGE_OUT,
                              "cachedContentTokenCount": USAGE_CACHED, "totalTokenCount": USAGE_IN + USAGE_OUT},
            "modelVersion": model,
        }
        if not stream:
            self._send(200, reply)
            return
        self._sse(iter([(None, reply)]))
