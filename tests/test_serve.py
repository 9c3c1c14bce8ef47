"""`rpo-jax serve`: the OpenAI chat protocol (validation, replies), batching, stop strings and lengths on a tiny
scripted Llama (tests/serve_fixtures.py), and `build-pairs` with a free-form constraint judged through the real
`rpo-jax serve` command on 127.0.0.1, whose judge cache then makes a rerun with the server stopped work offline."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_fixtures import scripted_llama

from rpo_jax.cli import main
from rpo_jax.config.schema import MeshConfig
from rpo_jax.generate.serving import ChatEngine, ChatServer, ServeSettings
from rpo_jax.generate.serving_protocol import RequestError, parse_chat_request

ANSWER = '{"judgements": [true]}'
USER = [{"role": "user", "content": "Is this fine?"}]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other", "messages": USER}, 404, "model"),
        ({"model": "m", "messages": []}, 400, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"model": "m", "messages": USER, "temperature": 3}, 400, "temperature"),
        ({"model": "m", "messages": USER, "top_p": 0}, 400, "top_p"),
        ({"model": "m", "messages": USER, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "m", "messages": USER, "stream": True}, 400, "stream"),
        ({"model": "m", "messages": USER, "logit_bias": {}}, 400, "logit_bias"),
        ({"model": "m", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "m", "messages": USER, "n": 0}, 400, "n"),
    ],
)
def test_requests_are_validated_field_by_field(body, status, param):
    with pytest.raises(RequestError) as err:
        parse_chat_request(body, "m", 16)
    assert err.value.status == status and err.value.param == param


def test_request_defaults():
    request = parse_chat_request({"model": "m", "messages": USER, "stop": "x", "stream": False, "user": "u"}, "m", 16)
    assert (request.temperature, request.top_p, request.max_tokens, request.stop, request.n) == (
        1.0,
        1.0,
        16,
        ("x",),
        1,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = scripted_llama(tmp_path_factory.mktemp("model"), ANSWER)
    settings = ServeSettings(model=str(folder), port=0, model_name="judge", default_max_tokens=32, batch_wait_ms=300)
    chat_server = ChatServer(settings, ChatEngine(settings, MeshConfig(data=1, fsdp=-1, tensor=1))).start()
    yield chat_server
    chat_server.close()


def _post(url: str, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_chat_completions_follow_the_request(server):
    url = server.url + "/chat/completions"
    status, reply = _post(url, {"model": "judge", "messages": USER, "temperature": 0})
    assert status == 200 and reply["object"] == "chat.completion" and reply["model"] == "judge"
    assert reply["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
    ]
    assert reply["usage"]["completion_tokens"] == 8  # the answer's tokens; the EOS that ended it is not counted
    _, cut = _post(url, {"model": "judge", "messages": USER, "temperature": 0, "stop": ["true"]})
    assert (
        cut["choices"][0]["message"]["content"] == '{"judgements": [' and cut["choices"][0]["finish_reason"] == "stop"
    )
    _, short = _post(url, {"model": "judge", "messages": USER, "max_tokens": 2, "n": 2, "temperature": 0})
    assert [(c["message"]["content"], c["finish_reason"]) for c in short["choices"]] == [('{"jud', "length")] * 2
    status, error = _post(url, {"model": "judge", "messages": USER, "max_tokens": 5000})
    assert status == 400 and error["error"]["param"] == "max_tokens" and "context" in error["error"]["message"]
    assert _post(url, b"{not json")[0] == 400
    assert _post(server.url + "/completions", {"model": "judge"})[0] == 404
    with urllib.request.urlopen(server.url + "/models", timeout=30) as reply:
        assert [m["id"] for m in json.loads(reply.read())["data"]] == ["judge"]


def test_concurrent_requests_share_batches(server):
    before = server.engine.batches
    body = {"model": "judge", "messages": USER, "temperature": 0, "max_tokens": 24}
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda i: _post(server.url + "/chat/completions", body), range(6)))
    assert all(status == 200 and reply["choices"][0]["message"]["content"] == ANSWER for status, reply in replies)
    assert server.engine.batches - before < 6


def _start_serve(model_dir, tmp_path) -> tuple[subprocess.Popen, str]:
    """`rpo-jax serve` in a subprocess on a free port; (process, base URL) once it says it is serving."""
    command = [sys.executable, "-m", "rpo_jax.cli", "serve", "--model", str(model_dir), "--port", "0"]
    command += ["--model-name", "judge", "--max-tokens", "32", "--mesh", "data=1,fsdp=-1,tensor=1"]
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - read back below
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=300)
    if not found or " at http://" not in found[0]:
        process.kill()
        log.seek(0)
        raise AssertionError(f"rpo-jax serve did not start: {found} {log.read()[-3000:]}")
    return process, found[0].split(" at ")[1].split()[0]


def test_build_pairs_judged_by_rpo_jax_serve_then_offline_from_the_cache(tmp_path):
    instruction = {
        "id": "hello",
        "task": "Greet the reader.",
        "turns": [{"role": "user", "content": "Greet the reader."}],
        "constraints": [
            {"id": "polite", "type": "free_form", "text": "Be polite."},
            {"id": "comma", "type": "punctuation:no_comma"},
            {"id": "title", "type": "detectable_format:title"},
            {"id": "quoted", "type": "startend:quotation"},
        ],
    }
    (tmp_path / "ins.jsonl").write_text(json.dumps(instruction) + "\n")
    texts = ['"<<Hi>> Hello there dear reader"', "Hello, there", "<<Hi>> Hello, there"]
    (tmp_path / "resp.jsonl").write_text("".join(json.dumps({"key": "hello", "response": t}) + "\n" for t in texts))
    process, url = _start_serve(scripted_llama(tmp_path / "model", ANSWER), tmp_path)
    args = ["build-pairs", "--recipe", "rpo", "--input", str(tmp_path / "ins.jsonl")]
    args += ["--responses", str(tmp_path / "resp.jsonl"), "--min-g", "2", "--judge-base-url", url]
    args += ["--judge-model", "judge", "--judge-cache-dir", str(tmp_path / "cache")]
    try:
        assert main([*args, "--output", str(tmp_path / "online")]) == 0
    finally:
        process.terminate()
        process.wait(timeout=60)
    online = json.loads((tmp_path / "online" / "stats.json").read_text())
    # The free-form verdicts came from the server: 3 responses judged, then each emitted pair's prompt rechecked.
    assert online["judge"]["requests"] >= 3 and online["judge"]["parse_errors"] == 0
    assert online["emitted_records"] == 4
    assert online["constraint_types"]["free_form"]["seen"] == 1
    pairs = [json.loads(line) for line in (tmp_path / "online" / "pairs.jsonl").read_text().splitlines()]
    assert sorted(p["margin"] for p in pairs) == [2, 2, 3, 3]
    # The server is gone: the same build is answered from the judge cache alone.
    assert main([*args, "--output", str(tmp_path / "offline")]) == 0
    offline = json.loads((tmp_path / "offline" / "stats.json").read_text())
    assert offline["judge"]["requests"] == 0
    assert offline["judge"]["cache_hits"] == online["judge"]["requests"] + online["judge"]["cache_hits"]
    assert (tmp_path / "offline" / "pairs.jsonl").read_bytes() == (tmp_path / "online" / "pairs.jsonl").read_bytes()
