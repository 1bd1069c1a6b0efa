"""Queue an API-format workflow on a running ComfyUI server, follow it to the end, print the files it wrote.

    python scripts/run_workflow.py workflows/api/lumina2_t2i.json --server 127.0.0.1:8188 \
        --prompt "a red fox in snow" --seed 7 --set 5.steps=20 --set 5.cfg=4.5

Overrides: --prompt / --negative set `prompt` on the encode node wired into LuminaFlowSampler's positive /
negative input; --seed sets every LuminaFlowSampler's seed; --transformer / --text-encoder / --vae set `file` on
every LuminaLoadTransformer / LuminaLoadGemma or LuminaLoadT5 / LuminaLoadVAE; --set NODE_ID.INPUT=VALUE sets anything
else (VALUE is read as JSON when it parses, so 20, 4.5, true and [1, 0] are typed; quote a string that
looks like a number: --set '3.prompt="1984"').

Exit codes: 0 done, 1 bad workflow, override or --server / server unreachable or not answering like ComfyUI,
2 rejected by the server's validation (or a bad command line), 3 a node failed, 4 interrupted, 5 timed out.
Every error is one line on stderr (one per node error for a rejection).

Standard library only (a minimal WebSocket client included), so it runs with any Python >= 3.10.
The functions are importable: tests/integration/test_comfyui.py drives ComfyUI through them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

EXIT_OK, EXIT_BAD_INPUT, EXIT_REJECTED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
SAMPLER = "LuminaFlowSampler"
LOADER_FILE_OVERRIDES = {
    "transformer": ("LuminaLoadTransformer",), "text_encoder": ("LuminaLoadGemma", "LuminaLoadT5"),
    "vae": ("LuminaLoadVAE",),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Workflow overrides


def nodes_of(graph: dict, class_type: str) -> list[str]:
    """Ids of the nodes of one class, in the file's order."""
    return [node_id for node_id, node in graph.items() if node.get("class_type") == class_type]


def linked_node(graph: dict, node_id: str, input_name: str) -> str:
    """The id of the node whose output feeds `input_name` of `node_id` (API links are [source id, slot])."""
    link = graph[node_id]["inputs"].get(input_name)
    if not (isinstance(link, list) and len(link) == 2 and str(link[0]) in graph):
        raise ValueError(f"input '{input_name}' of node {node_id} is not linked to a node of this workflow")
    return str(link[0])


def parse_value(text: str):
    """'20' -> 20, '4.5' -> 4.5, 'true' / 'True' -> True, '[1, 2]' -> [1, 2]; anything else stays a string."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(text: str) -> tuple[str, str, object]:
    """'5.steps=20' -> ('5', 'steps', 20). Node ids may not contain '.'; input names may contain anything but '='."""
    target, sep, value = text.partition("=")
    node_id, dot, input_name = target.partition(".")
    if not (sep and dot and node_id and input_name):
        raise ValueError(f"--set expects NODE_ID.INPUT=VALUE, got {text!r}")
    return node_id.strip(), input_name.strip(), parse_value(value)


def apply_overrides(
    graph: dict,
    prompt: str | None = None,
    negative: str | None = None,
    seed: int | None = None,
    transformer: str | None = None,
    text_encoder: str | None = None,
    vae: str | None = None,
    sets: list[tuple[str, str, object]] = (),
) -> dict:
    """A copy of `graph` with the overrides applied; raises ValueError naming what does not fit the workflow."""
    graph = copy.deepcopy(graph)
    samplers = nodes_of(graph, SAMPLER)
    for side, text in (("positive", prompt), ("negative", negative)):
        if text is None:
            continue
        if not samplers:
            raise ValueError(f"--{side if side == 'negative' else 'prompt'} needs a {SAMPLER} in the workflow")
        for sampler in samplers:
            encoder = linked_node(graph, sampler, side)
            if "prompt" not in graph[encoder]["inputs"]:
                name = f"node {encoder} ({graph[encoder]['class_type']})"
                raise ValueError(f"{name} feeding {SAMPLER} {sampler}.{side} has no 'prompt' input")
            graph[encoder]["inputs"]["prompt"] = text
    if seed is not None:
        if not samplers:
            raise ValueError(f"--seed needs a {SAMPLER} in the workflow")
        for sampler in samplers:
            graph[sampler]["inputs"]["seed"] = seed
    files = {"transformer": transformer, "text_encoder": text_encoder, "vae": vae}
    for option, file in files.items():
        if file is None:
            continue
        class_types = LOADER_FILE_OVERRIDES[option]
        loaders = [node for class_type in class_types for node in nodes_of(graph, class_type)]
        if not loaders:
            raise ValueError(f"--{option.replace('_', '-')} needs a {' or '.join(class_types)} node in the workflow")
        for loader in loaders:
            graph[loader]["inputs"]["file"] = file
    for node_id, input_name, value in sets:
        if node_id not in graph:
            raise ValueError(f"--set {node_id}.{input_name}: no node {node_id!r}; the workflow has {sorted(graph)}")
        graph[node_id]["inputs"][input_name] = value
    return graph


def load_graph(path: str) -> dict:
    """The API-format workflow in `path`; ValueError naming the file when it is not one (OSError when unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            graph = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        expected = "expected an API-format workflow (Export (API) in ComfyUI)"
        raise ValueError(f"{path} is not JSON ({err}); {expected}") from None
    if not isinstance(graph, dict) or "nodes" in graph and isinstance(graph["nodes"], list):
        raise ValueError(f"{path} is a UI-format workflow; this script needs the API format (Export (API) in ComfyUI)")
    if not all(isinstance(node, dict) and "class_type" in node for node in graph.values()):
        raise ValueError(f"{path}: every entry of an API workflow must be a node with a class_type")
    return graph


# ---------------------------------------------------------------------------------------------------------------
# HTTP


class ProtocolError(Exception):
    """The server answered something a ComfyUI server does not send (not JSON where JSON is due)."""


class PromptRejected(Exception):
    """POST /prompt answered 400: `body` is ComfyUI's {"error": {...}, "node_errors": {...}}."""

    def __init__(self, body: dict):
        super().__init__(body.get("error", {}).get("message", "prompt rejected"))
        self.body = body


def base_url(server: str) -> str:
    return server.rstrip("/") if "://" in server else f"http://{server.rstrip('/')}"


def check_server(server: str) -> str:
    """`server` as a base URL (http://host:port), or ValueError saying what is wrong with it."""
    url = base_url(server)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(
            f"--server {server}: only plain http servers are supported (this runner speaks HTTP and WebSocket "
            "without TLS); give host:port or http://host:port"
        )
    try:
        parts.port  # noqa: B018 (parsing it is the check)
    except ValueError:
        raise ValueError(f"--server {server}: the port is not a number from 0 to 65535; give host:port") from None
    if not parts.hostname:
        raise ValueError(f"--server {server}: no host name; give host:port, e.g. 127.0.0.1:8188")
    return url


def request_json(server: str, path: str, body: dict | None = None, timeout: float = 30.0):
    """GET (body None) or POST JSON; returns the decoded answer, or None for an empty one."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url(server) + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return parse_json(raw, f"the answer to {path}") if raw.strip() else None


def parse_json(raw: bytes | str, what: str):
    """json.loads, or ProtocolError naming `what` and the start of the text."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        start = raw[:60].decode("utf-8", "replace") if isinstance(raw, bytes) else raw[:60]
        raise ProtocolError(f"{what} is not JSON ({start!r}...): is this a ComfyUI server?") from None


def queue_prompt(server: str, graph: dict, client_id: str) -> str:
    """POST /prompt; returns the prompt id, or raises PromptRejected when validation fails."""
    try:
        answer = request_json(server, "/prompt", {"prompt": graph, "client_id": client_id})
    except urllib.error.HTTPError as err:
        if err.code != 400:
            raise
        raise PromptRejected(parse_json(err.read() or b"{}", "the rejection of /prompt")) from None
    return answer["prompt_id"]


def interrupt(server: str, prompt_id: str | None = None) -> None:
    request_json(server, "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})


def get_history(server: str, prompt_id: str, wait: float = 10.0) -> dict:
    """The /history entry of one prompt, polling briefly: it appears once the prompt has finished."""
    deadline = time.monotonic() + wait
    while True:
        history = request_json(server, f"/history/{urllib.parse.quote(prompt_id)}")
        if prompt_id in history:
            return history[prompt_id]
        if time.monotonic() > deadline:
            raise TimeoutError(f"prompt {prompt_id} has no /history entry after {wait:.0f} s")
        time.sleep(0.1)


def rejection_lines(body: dict) -> list[str]:
    """ComfyUI's 400 answer as readable lines: the overall error, then one line per node error."""
    error, node_errors = body.get("error") or {}, body.get("node_errors") or {}
    if isinstance(error, str):  # very old servers answered a bare string
        error = {"message": error}
    headline = f"error: {error.get('message', 'prompt rejected')}"
    if error.get("details") and not node_errors:  # with node errors, details only repeats them
        headline += f": {error['details']}"
    lines = [headline]
    for node_id, info in node_errors.items():
        for reason in info.get("errors", []):
            details = reason.get("details") or ""
            if reason.get("type") == "custom_validation_failed":
                # ComfyUI files a VALIDATE_INPUTS message under every input it validated: "width - <message>",
                # "height - <message>", ...; the message alone says it once.
                details = details.removeprefix(f"{(reason.get('extra_info') or {}).get('input_name')} - ")
            line = f"  node {node_id} ({info.get('class_type', '?')}): {reason.get('message', '?')}"
            line += f": {details}" if details else ""
            if line not in lines:
                lines.append(line)
    return lines


def output_files(history: dict) -> list[dict]:
    """Files a finished prompt wrote: [{"node", "type", "subfolder", "filename", "path"}] from its /history entry.

    `path` is relative to the ComfyUI folder of its type (output, temp or input): subfolder/filename.
    """
    files = []
    for node_id, outputs in history.get("outputs", {}).items():
        for items in outputs.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    subfolder = item.get("subfolder", "")
                    files.append({
                        "node": node_id, "type": item.get("type", "output"), "subfolder": subfolder,
                        "filename": item["filename"], "path": f"{subfolder}/{item['filename']}".lstrip("/"),
                    })  # fmt: skip
    return files


def view_url(server: str, file: dict) -> str:
    query = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file["subfolder"], "type": file["type"]})
    return f"{base_url(server)}/view?{query}"


# ---------------------------------------------------------------------------------------------------------------
# A minimal WebSocket client (RFC 6455): handshake, masked client frames, fragmented and control frames.

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(Exception):
    pass


class WebSocket:
    def __init__(self, server: str, path: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(base_url(server))
        if parts.scheme != "http":
            raise ValueError(f"only plain http servers are supported, got {server!r}")
        host, port = parts.hostname, parts.port or 80
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if status.split()[1:2] != ["101"] or headers.get("sec-websocket-accept") != expected:
            self.sock.close()
            raise ConnectionError(f"WebSocket handshake with {server}{path} failed: {status}")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise WebSocketClosed("the server closed the connection")
        self._buffer += chunk

    def send(self, opcode: int, payload: bytes = b"") -> None:
        header = bytes([0x80 | opcode])  # FIN, no fragmentation
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])  # mask bit: clients must mask every frame
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _frame(self) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame; consumes nothing until the whole frame is here, so a
        timeout never leaves half a frame read."""
        while True:
            buf = self._buffer
            if len(buf) >= 2:
                length, start = buf[1] & 0x7F, 2
                if length >= 126:
                    size = 2 if length == 126 else 8
                    length, start = int.from_bytes(buf[2 : 2 + size], "big"), 2 + size
                masked = bool(buf[1] & 0x80)  # servers do not mask, but tolerate it
                end = start + 4 * masked + length
                if len(buf) >= start and len(buf) >= end:
                    payload = buf[start + 4 * masked : end]
                    if masked:
                        mask = buf[start : start + 4]
                        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    self._buffer = buf[end:]
                    return bool(buf[0] & 0x80), buf[0] & 0x0F, payload
            self._fill()

    def recv(self, timeout: float | None = None) -> tuple[int, bytes]:
        """The next text or binary message as (opcode, payload); answers pings; raises WebSocketClosed on close
        and TimeoutError when nothing complete arrives within `timeout` seconds."""
        self.sock.settimeout(timeout)
        message_opcode, parts = None, []
        try:
            while True:
                fin, opcode, payload = self._frame()
                if opcode == OP_PING:
                    self.send(OP_PONG, payload)
                elif opcode == OP_PONG:
                    continue
                elif opcode == OP_CLOSE:
                    self.close(payload[:2])
                    raise WebSocketClosed("the server closed the WebSocket")
                else:
                    if opcode != OP_CONTINUATION:
                        message_opcode = opcode
                    parts.append(payload)
                    if fin:
                        return message_opcode, b"".join(parts)
        except TimeoutError:  # socket.timeout is an alias of it
            raise TimeoutError("no WebSocket message in time") from None

    def close(self, code: bytes = struct.pack("!H", 1000)) -> None:
        with contextlib.suppress(OSError):
            self.send(OP_CLOSE, code)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(server: str, client_id: str, timeout: float = 10.0) -> WebSocket:
    """Open ComfyUI's /ws for `client_id`; open it before queueing so no message of the prompt is missed."""
    return WebSocket(server, f"/ws?clientId={urllib.parse.quote(client_id)}", timeout)


# ---------------------------------------------------------------------------------------------------------------
# Following a prompt


def wait_for_completion(ws: WebSocket, prompt_id: str, timeout: float, on_message=None) -> tuple[str, dict]:
    """Follow the WebSocket until the prompt ends; returns ("success", {}), ("error", execution_error data) or
    ("interrupted", execution_interrupted data). Binary (preview) frames are skipped. `on_message(type, data)`
    sees every JSON message of this prompt. Raises TimeoutError after `timeout` seconds.

    ComfyUI sends `executing` with node null after it has stored the prompt's /history entry, also after an
    error or an interrupt, so the history is readable once this returns.
    """
    deadline = time.monotonic() + timeout
    outcome: tuple[str, dict] = ("success", {})
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
        opcode, payload = ws.recv(timeout=remaining)
        if opcode != OP_TEXT:
            continue  # previews: 8-byte header + JPEG/PNG
        message = parse_json(payload, "a WebSocket message")
        if not isinstance(message, dict):
            raise ProtocolError(f"a WebSocket message is JSON but not an object ({payload[:60]!r})")
        kind, data = message.get("type"), message.get("data") or {}
        if data.get("prompt_id", prompt_id) != prompt_id:
            continue
        if on_message:
            on_message(kind, data)
        if kind == "execution_error":
            outcome = ("error", data)
        elif kind == "execution_interrupted":
            outcome = ("interrupted", data)
        elif kind == "executing" and data.get("node") is None:
            return outcome


def print_progress(kind: str, data: dict) -> None:
    if kind == "progress":
        print(f"node {data.get('node')}: step {data.get('value')}/{data.get('max')}", flush=True)
    elif kind == "executing" and data.get("node") is not None:
        print(f"node {data['node']}: running", flush=True)
    elif kind == "execution_cached" and data.get("nodes"):
        print(f"cached: nodes {', '.join(map(str, data['nodes']))}", flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        check_server(args.server)
        graph = apply_overrides(
            load_graph(args.workflow), prompt=args.prompt, negative=args.negative, seed=args.seed,
            transformer=args.transformer, text_encoder=args.text_encoder, vae=args.vae,
            sets=[parse_set(s) for s in args.set],
        )  # fmt: skip
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    client_id = uuid.uuid4().hex
    try:
        with connect(args.server, client_id) as ws:
            prompt_id = queue_prompt(args.server, graph, client_id)
            print(f"queued prompt {prompt_id}", flush=True)
            status, data = wait_for_completion(ws, prompt_id, args.timeout, print_progress)
            if status == "success":
                history = get_history(args.server, prompt_id)
    except PromptRejected as err:
        print("\n".join(rejection_lines(err.body)), file=sys.stderr)
        return EXIT_REJECTED
    except TimeoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (OSError, WebSocketClosed, ProtocolError) as err:  # URLError and refused connections are OSErrors
        print(f"error: cannot talk to ComfyUI at {args.server}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if status == "error":
        node = f"node {data.get('node_id')} ({data.get('node_type')})"
        message = f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}"
        print(f"error: {node} failed: {message}", file=sys.stderr)
        return EXIT_FAILED
    if status == "interrupted":
        print(f"interrupted at node {data.get('node_id')} ({data.get('node_type')})", file=sys.stderr)
        return EXIT_INTERRUPTED
    for file in output_files(history):
        print(f"{file['type']}: {file['path']}  {view_url(args.server, file)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", help="API-format workflow JSON, e.g. workflows/api/lumina2_t2i.json")
    parser.add_argument("--server", default="127.0.0.1:8188", help="host:port of ComfyUI (default %(default)s)")
    parser.add_argument("--prompt", help="text of the encode node wired into LuminaFlowSampler.positive")
    parser.add_argument("--negative", help="text of the encode node wired into LuminaFlowSampler.negative")
    parser.add_argument("--seed", type=int, help="seed of every LuminaFlowSampler")
    parser.add_argument("--transformer", help="file of every LoadLuminaTransformer")
    parser.add_argument("--text-encoder", help="file of every LoadGemma / LoadT5")
    parser.add_argument("--vae", help="file of every LoadLuminaVAE")
    parser.add_argument("--set", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                        help="set any input; VALUE is parsed as JSON when it can be (repeatable)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the end (default 3600)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
