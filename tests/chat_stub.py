"""A scripted OpenAI-compatible chat server on 127.0.0.1, in a thread with its own event loop.

``serve_chat_stub(reply)`` answers ``POST /v1/chat/completions`` (streamed or not, keyless)
with ``reply(body)``'s text and records every request body, so a test can drive Greenroom's
``openai`` provider, from async code or through the synchronous CLI, without leaving loopback.
"""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["ChatStub", "serve_chat_stub"]

#: Seconds the server may take to start or stop.
_START_S = 10.0


@dataclass
class ChatStub:
    """The running stub: its base URL and the request bodies it received, in order."""

    base_url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": body["model"],
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _app(stub: ChatStub, reply: Callable[[dict[str, Any]], str]) -> web.Application:
    lock = threading.Lock()

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        with lock:
            stub.requests.append(body)
        text = reply(body)
        usage = {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = text.split(" ")
        events = [_chunk(body, {"role": "assistant", "content": ""}, None)]
        events += [
            _chunk(body, {"content": word if i == 0 else " " + word}, None)
            for i, word in enumerate(words)
        ]
        events.append(_chunk(body, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**_chunk(body, {}, None), "choices": [], "usage": usage})
        for event in events:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


@contextmanager
def serve_chat_stub(reply: Callable[[dict[str, Any]], str]) -> Iterator[ChatStub]:
    """Serve ``reply`` until the block ends; the server runs in a thread of its own, so both
    async tests and ``asyncio.run`` inside a CLI command can call it."""
    stub = ChatStub()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(stub, reply))

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stub.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    thread = threading.Thread(target=loop.run_forever, name="chat-stub", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(_START_S)
    try:
        yield stub
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(_START_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_START_S)
        loop.close()
