"""The headless runner's bad inputs and bad answers, through its functions and its command line: one line naming
the file or the server, exit code 1, no traceback, and the runner still usable afterwards.

The answers come from a small fake server on a free port: it speaks just enough HTTP and WebSocket to accept a
prompt and then send what a ComfyUI server never sends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts import run_workflow as rw

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "api" / "lumina2_t2i.json"


def fake_server(prompt_answer: bytes, frames: list[bytes]):
    """A server answering POST /prompt with `prompt_answer` and greeting a WebSocket with the text `frames`."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                chunk = self.rfile.readline()
                if not chunk:
                    return
                head += chunk
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in head.decode().split("\r\n")[1:] if line)}  # fmt: skip
            if headers.get("upgrade", "").lower() == "websocket":
                accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + rw.WS_GUID).encode()).digest())
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")  # fmt: skip
                for frame in frames:
                    self.wfile.write(bytes([0x81, len(frame)]) + frame)  # FIN + text, unmasked, < 126 bytes
                self.rfile.read(2)  # hold the connection until the client closes it
                return
            self.rfile.read(int(headers.get("content-length", 0)))
            length = str(len(prompt_answer)).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + length
                             + b"\r\nConnection: close\r\n\r\n" + prompt_answer)  # fmt: skip

    return Handler


@contextmanager
def serving(prompt_answer: bytes = b'{"prompt_id": "p1"}', frames: list[bytes] = ()) -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), fake_server(prompt_answer, list(frames)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Case:
    """api(tmp_path, server) must raise `error`; argv(tmp_path, server) is the same mistake on the command line."""

    id: str
    error: type[Exception]
    names: tuple[str, ...]  # {workflow} and {server} are replaced
    api: Callable[[Path, str], object]
    argv: Callable[[Path, str], list[str]]
    prompt_answer: bytes = b'{"prompt_id": "p1"}'
    frames: tuple[bytes, ...] = ()


def not_json(tmp_path: Path) -> Path:
    path = tmp_path / "workflow.json"
    path.write_text("<html>not a workflow</html>")
    return path


def follow(server: str) -> None:
    """What the runner does against `server`: connect, queue, follow the WebSocket."""
    with rw.connect(server, "client") as ws:
        prompt_id = rw.queue_prompt(server, {}, "client")
        rw.wait_for_completion(ws, prompt_id, timeout=10)


CASES = [
    Case("workflow_not_json", ValueError, ("{workflow} is not JSON", "API-format workflow"),
         api=lambda tmp, server: rw.load_graph(str(not_json(tmp))),
         argv=lambda tmp, server: [str(not_json(tmp)), "--server", server]),
    Case("server_port_not_a_number", ValueError, ("--server 127.0.0.1:notaport: the port is not a number",),
         api=lambda tmp, server: rw.check_server("127.0.0.1:notaport"),
         argv=lambda tmp, server: [str(WORKFLOW), "--server", "127.0.0.1:notaport"]),
    Case("server_https", ValueError, ("--server https://127.0.0.1:8188: only plain http servers are supported",),
         api=lambda tmp, server: rw.check_server("https://127.0.0.1:8188"),
         argv=lambda tmp, server: [str(WORKFLOW), "--server", "https://127.0.0.1:8188"]),
    Case("websocket_frame_not_json", rw.ProtocolError, ("a WebSocket message is not JSON ('hello'...)",),
         api=lambda tmp, server: follow(server), argv=lambda tmp, server: [str(WORKFLOW), "--server", server],
         frames=(b"hello",)),
    Case("websocket_frame_not_an_object", rw.ProtocolError, ("a WebSocket message is JSON but not an object",),
         api=lambda tmp, server: follow(server), argv=lambda tmp, server: [str(WORKFLOW), "--server", server],
         frames=(b"[1, 2]",)),
    Case("http_answer_not_json", rw.ProtocolError, ("the answer to /prompt is not JSON", "is this a ComfyUI server"),
         api=lambda tmp, server: follow(server), argv=lambda tmp, server: [str(WORKFLOW), "--server", server],
         prompt_answer=b"<html>a web page</html>"),
]  # fmt: skip


def expected(case: Case, tmp_path: Path, server: str) -> list[str]:
    return [text.format(workflow=tmp_path / "workflow.json", server=server) for text in case.names]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api(case, tmp_path):
    with serving(case.prompt_answer, case.frames) as server, pytest.raises(case.error) as caught:
        case.api(tmp_path, server)
    message = str(caught.value)
    assert "\n" not in message
    for text in expected(case, tmp_path, server):
        assert text in message, message
    assert rw.load_graph(str(WORKFLOW))  # still usable


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(case, tmp_path, capsys):
    with serving(case.prompt_answer, case.frames) as server:
        assert rw.main(case.argv(tmp_path, server)) == rw.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected(case, tmp_path, server):
        assert text in err, err


def test_a_good_answer_still_completes_after_bad_ones(capsys):
    done = [json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p1"}}).encode()]
    with serving(frames=done) as server, rw.connect(server, "client") as ws:
        assert rw.wait_for_completion(ws, rw.queue_prompt(server, {}, "client"), timeout=10) == ("success", {})
