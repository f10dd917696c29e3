"""A small upstream for the gate's tests and benchmark, run as its own process (aiohttp).

Layer: tests. A standalone script: imports nothing from haplane, writes only its request log.

    python tests/gate/backend.py --port P --name NAME --log FILE [--drop-gets] [--hang]

Every request except /readyz and /control/* is appended to FILE ("METHOD PATH" per line, written
before the answer), so a test can count what reached this upstream even after SIGKILL.

- GET /readyz: 200 {"ready": true, "name"} or 503 once flipped; POST /control/ready?value=0|1;
- GET /whoami: {"name"}; GET /headers: {"name", "headers"}; GET /slow?seconds=S: {"name"} late;
- GET /ws: a websocket echoing text messages prefixed with the name;
- GET /stream?interval=S (with or without ?watch=1): chunked JSON lines {"name", "seq"}, one per
  chunk every S seconds, until the client goes away;
- POST /count: reads the body, answers {"name", "bytes"};
- POST /echo: answers the request body;
- POST /die: reads the body, records it, then SIGKILLs itself (no answer);
- GET /drop: with --drop-gets, records it and closes the connection without an answer;
- ANY /hang: with --hang, records it and never answers; otherwise answers {"name"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal

from aiohttp import web


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--drop-gets", action="store_true")
    ap.add_argument("--hang", action="store_true")
    args = ap.parse_args()
    ready = [True]
    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(request: web.Request) -> None:
        os.write(log_fd, f"{request.method} {request.path}\n".encode())

    def answer(data: object, status: int = 200) -> web.Response:
        return web.Response(text=json.dumps(data), status=status, content_type="application/json")

    async def readyz(request: web.Request) -> web.Response:
        if ready[0]:
            return answer({"ready": True, "name": args.name})
        return answer({"ready": False, "name": args.name}, 503)

    async def control_ready(request: web.Request) -> web.Response:
        ready[0] = request.query.get("value", "1") == "1"
        return answer({"ready": ready[0]})

    async def whoami(request: web.Request) -> web.Response:
        record(request)
        return answer({"name": args.name})

    async def headers(request: web.Request) -> web.Response:
        record(request)
        return answer({"name": args.name, "headers": dict(request.headers)})

    async def slow(request: web.Request) -> web.Response:
        record(request)
        await asyncio.sleep(float(request.query.get("seconds", "1")))
        return answer({"name": args.name})

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(f"{args.name}: {msg.data}")
        return ws

    async def stream(request: web.Request) -> web.StreamResponse:
        record(request)
        interval = float(request.query.get("interval", "0.05"))
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        seq = 0
        while True:
            await response.write(json.dumps({"name": args.name, "seq": seq}).encode() + b"\n")
            seq += 1
            await asyncio.sleep(interval)

    async def count(request: web.Request) -> web.Response:
        record(request)
        body = await request.read()
        return answer({"name": args.name, "bytes": len(body)})

    async def echo(request: web.Request) -> web.Response:
        record(request)
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    async def die(request: web.Request) -> web.Response:
        await request.read()
        record(request)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    async def drop(request: web.Request) -> web.Response:
        record(request)
        if args.drop_gets:
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(3600)
        return answer({"name": args.name})

    async def hang(request: web.Request) -> web.Response:
        record(request)
        if args.hang:
            await asyncio.sleep(3600)
        return answer({"name": args.name})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/control/ready", control_ready)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/headers", headers)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/stream", stream)
    app.router.add_post("/count", count)
    app.router.add_post("/echo", echo)
    app.router.add_post("/die", die)
    app.router.add_get("/drop", drop)
    app.router.add_route("*", "/hang", hang)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
