"""The scripted model server itself (testing/modelserver.py): its replies, its usage
accounting and its proxy refusal, checked with plain HTTP so they hold without any CLI."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from testing.modelserver import FINAL_TEXT, USAGE_IN, USAGE_OUT, EditScript, ModelServer


@pytest.fixture
def server() -> Iterator[ModelServer]:
    srv = ModelServer(EditScript(path="/w/mod.py", rel="mod.py", before="X = 1\n", after="X = 2\n",
                                 old="X = 1", new="X = 2")).start()
    yield srv
    srv.stop()


def post(server: ModelServer, path: str, body: dict[str, Any]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def sse(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_anthropic_reads_then_edits_then_answers(server: ModelServer) -> None:
    tools = [{"name": "Read", "input_schema": {"properties": {"file_path": {}}}},
             {"name": "Edit", "input_schema": {"properties": {"file_path": {}, "old_string": {}, "new_string": {}}}}]
    _, first = post(server, "/v1/messages", {"tools": tools, "messages": [{"role": "user", "content": "go"}]})
    assert json.loads(first)["content"][0] == {"type": "tool_use", "id": "toolu_1", "name": "Read",
                                               "input": {"file_path": "/w/mod.py"}}
    history = [{"role": "assistant", "content": [{"type": "tool_use", "name": "Read"}]}]
    _, second = post(server, "/v1/messages", {"tools": tools, "messages": history, "stream": True})
    deltas = [e["delta"]["partial_json"] for e in sse(second) if e.get("type") == "content_block_delta"]
    assert json.loads(deltas[0]) == {"file_path": "/w/mod.py", "old_string": "X = 1", "new_string": "X = 2"}
    history.append({"role": "assistant", "content": [{"type": "tool_use", "name": "Edit"}]})
    _, third = post(server, "/v1/messages", {"tools": tools, "messages": history})
    assert json.loads(third)["content"][0]["text"] == FINAL_TEXT
    assert [s.step for s in server.served] == ["read", "edit", "final"]
    assert server.totals() == {"tokens_in": 3 * USAGE_IN, "tokens_cached": 3 * server.served[0].tokens_cached,
                               "tokens_out": 3 * USAGE_OUT, "requests": 3}


def test_chat_completions_stream_carries_the_edit_and_usage(server: ModelServer) -> None:
    system = "Use SEARCH/REPLACE blocks: <<<<<<< SEARCH"
    status, text = post(server, "/v1/chat/completions",
                        {"stream": True, "messages": [{"role": "system", "content": system}]})
    chunks = sse(text)
    assert status == 200 and text.rstrip().endswith("data: [DONE]")
    assert "<<<<<<< SEARCH\nX = 1\n=======\nX = 2\n>>>>>>> REPLACE" in chunks[0]["choices"][0]["delta"]["content"]
    assert chunks[-1]["usage"]["prompt_tokens"] == USAGE_IN


def test_responses_use_a_freeform_apply_patch_and_refuse_websocket(server: ModelServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/v1/responses", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert conn.getresponse().status == 404 and server.websocket_attempts == 1
    _, text = post(server, "/v1/responses", {"stream": True, "tools": [{"type": "custom", "name": "apply_patch"}]})
    done = next(e for e in sse(text) if e["type"] == "response.completed")["response"]
    assert done["output"][0]["type"] == "custom_tool_call"
    assert "*** Update File: mod.py\n@@\n-X = 1\n+X = 2\n" in done["output"][0]["input"]
    assert done["usage"]["input_tokens"] == USAGE_IN


def test_gemini_writes_with_its_declared_parameters(server: ModelServer) -> None:
    tools = [{"functionDeclarations": [{"name": "write_file", "parametersJsonSchema": {
        "properties": {"file_path": {}, "content": {}}}}]}]
    _, text = post(server, "/v1beta/models/m:streamGenerateContent", {"tools": tools, "contents": []})
    part = sse(text)[0]["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "write_file", "args": {"file_path": "/w/mod.py", "content": "X = 2\n"}}}


def test_every_other_destination_is_refused_and_recorded(server: ModelServer) -> None:
    tunnel = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    tunnel.set_tunnel("api.example.com", 443)
    with pytest.raises(OSError, match="403"):
        tunnel.request("GET", "/")
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    plain.request("GET", "http://telemetry.example.com/v1/collect")
    assert plain.getresponse().status == 403
    assert server.refused == ["CONNECT api.example.com:443", "GET http://telemetry.example.com/v1/collect"]
    assert server.served == []
