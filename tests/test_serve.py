"""`rpo-jax serve`: the OpenAI chat protocol (validation, replies), stop strings while decoding, batching, lengths and
the official `openai` client (single, concurrent, n > 1, streaming, cancel) on a tiny scripted Llama
(tests/serve_fixtures.py), and `build-pairs` with a free-form constraint judged through the real `rpo-jax serve`
command on 127.0.0.1, whose judge cache then makes a rerun with the server stopped work offline. Faults and load:
tests/test_serve_faults.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_fixtures import JUDGE_ANSWER, counted_compiles, judge_settings, scripted_llama, shared_judge
from starlette.datastructures import Headers

from data_pipeline.errors import UserError
from rpo_jax.cli import main
from rpo_jax.generate.serving import ChatServer, ServeSettings, exposure_warning
from rpo_jax.generate.serving_engine import ShapeBuckets
from rpo_jax.generate.serving_protocol import RequestError, parse_chat_request
from rpo_jax.generate.serving_security import Guard
from rpo_jax.generate.serving_text import REPLACEMENT, ChoiceText

ANSWER = JUDGE_ANSWER
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
        ({"model": "m", "messages": USER, "stream": "yes"}, 400, "stream"),
        ({"model": "m", "messages": USER, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({"model": "m", "messages": USER, "stream": True, "stream_options": {"other": 1}}, 400, "stream_options"),
        ({"model": "m", "messages": [{"role": "user", "content": "a\ud800"}]}, 400, "messages[0].content"),
        ({"model": "m", "messages": USER, "stop": "\udfff"}, 400, "stop"),
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


def test_choice_text_holds_back_a_possible_stop_and_counts_tokens_through_it():
    pieces = {1: "a", 2: "b", 3: "c", 4: "E", 5: "ND", 6: "x", 7: REPLACEMENT}
    text = ChoiceText(lambda tokens: "".join(pieces[t] for t in tokens), ["END", "Q"])
    assert text.update([1, 2], False, False) == ""  # "ab" could still begin "END"
    assert text.update([1, 2, 3, 4], False, False) == "ab"
    # "END" spans tokens 4 and 5; token 6 came in the same chunk but is neither returned nor counted.
    assert text.update([1, 2, 3, 4, 5, 6], False, False) == "c"
    assert (text.finished, text.finish_reason, text.text, text.tokens) == (True, "stop", "abc", 5)
    plain = ChoiceText(lambda tokens: "".join(pieces[t] for t in tokens), [])
    assert plain.update([1, 7], False, False) == "a"  # a character whose bytes are still coming waits
    assert plain.update([1, 7, 2], True, False) == "\ufffdb" and (plain.finish_reason, plain.tokens) == ("length", 3)


def test_shapes_are_a_bounded_listed_set():
    buckets = ShapeBuckets.for_model(max_batch_size=6, batch_multiple=1, max_positions=1000)
    assert buckets.rows == (1, 2, 4, 6) and buckets.prompt == (64, 128, 256, 512, 1024)
    assert buckets.new_tokens == (32, 64, 128, 256, 512, 1024)
    assert ShapeBuckets.pick(buckets.prompt, 65) == 128 and "at most 120" in buckets.describe()
    assert ShapeBuckets.for_model(8, 8, 1024).rows == (8,)  # rows come in multiples of data x fsdp


def test_listening_beyond_localhost_warns_without_a_key_and_guards_by_host(tmp_path):
    (tmp_path / "model").mkdir()
    local = ServeSettings(model=str(tmp_path / "model"))
    exposed = dataclasses.replace(local, host="0.0.0.0")
    assert exposure_warning(local) is None and exposure_warning(dataclasses.replace(exposed, api_key="k")) is None
    assert "no API key" in exposure_warning(exposed) and "RPO_JAX_API_KEY" in exposure_warning(exposed)
    assert local.host_names == ("localhost", "127.0.0.1", "::1") and exposed.host_names == ("*",)
    anywhere = Guard(None, ("*",), None)
    assert anywhere.refusal(Headers({"host": "10.1.2.3:8000"})) is None
    assert anywhere.refusal(Headers({"host": "10.1.2.3", "origin": "https://page.example"})).status_code == 403
    named = Guard(None, ("pod-0.internal",), "k")
    assert named.refusal(Headers({"host": "pod-0.internal:8000", "authorization": "Bearer k"})) is None
    assert named.refusal(Headers({"host": "[::1]:8000", "authorization": "Bearer k"})).status_code == 403
    assert named.refusal(Headers({"host": "pod-0.internal", "authorization": "Bearer x"})).status_code == 401
    with pytest.raises(UserError, match="API key"):
        dataclasses.replace(local, api_key="")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder, engine = shared_judge(tmp_path_factory.getbasetemp())
    chat_server = ChatServer(judge_settings(folder, batch_wait_ms=300), engine).start()
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
    assert cut["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": '{"judgements": ['},
        "finish_reason": "stop",
    }
    # The stop string is applied while decoding: the tokens after the one completing "true" are not counted.
    ids = server.engine.tokenizer.encode(ANSWER, add_special_tokens=False)
    through_stop = next(k for k in range(1, 9) if "true" in server.engine.tokenizer.decode(ids[:k]))
    assert cut["usage"]["completion_tokens"] == through_stop < 8
    _, short = _post(url, {"model": "judge", "messages": USER, "max_tokens": 2, "n": 2, "temperature": 0})
    assert [(c["message"]["content"], c["finish_reason"]) for c in short["choices"]] == [('{"jud', "length")] * 2
    assert short["usage"]["completion_tokens"] == 4
    status, error = _post(url, {"model": "judge", "messages": USER, "max_tokens": 1000})
    assert status == 400 and error["error"]["param"] == "max_tokens" and "context" in error["error"]["message"]
    assert _post(url, b"{not json")[0] == 400
    assert _post(server.url + "/completions", {"model": "judge"})[0] == 404
    with urllib.request.urlopen(server.url + "/models", timeout=30) as reply:
        assert [m["id"] for m in json.loads(reply.read())["data"]] == ["judge"]


def test_every_request_gets_an_access_log_line(server, caplog):
    caplog.set_level(logging.INFO, logger="rpo_jax.serve")
    assert _post(server.url + "/chat/completions", {"model": "judge", "messages": USER, "temperature": 0})[0] == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(server.url + "/nowhere", timeout=30)
    deadline = time.monotonic() + 10  # a line is written once its answer has gone out: wait for the last one
    while time.monotonic() < deadline:
        lines = [r.getMessage() for r in caplog.records if r.name == "rpo_jax.serve"]
        if any('"GET /v1/nowhere" 404' in line for line in lines):
            break
        time.sleep(0.01)
    assert any('"POST /v1/chat/completions" 200' in line and line.endswith("tokens 49+8") for line in lines), lines
    assert any('"GET /v1/nowhere" 404' in line for line in lines), lines


def test_concurrent_requests_share_batches(server):
    before = server.engine.batches
    body = {"model": "judge", "messages": USER, "temperature": 0, "max_tokens": 24}
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda i: _post(server.url + "/chat/completions", body), range(6)))
    assert all(status == 200 and reply["choices"][0]["message"]["content"] == ANSWER for status, reply in replies)
    assert server.engine.batches - before < 6


def test_sampling_settings_compile_nothing(server):
    """New temperatures, top_p and max_tokens values (in one shape bucket) reuse the compiled programs."""
    url = server.url + "/chat/completions"
    assert _post(url, {"model": "judge", "messages": USER, "temperature": 0})[0] == 200
    bodies = [
        {"model": "judge", "messages": USER, "temperature": t, "top_p": p, "max_tokens": m}
        for t, p, m in [(0.3, 1.0, 5), (0.9, 0.5, 20), (1.7, 0.93, 32), (0.01, 0.2, 9), (0.0, 0.7, 31)]
    ]
    with counted_compiles() as compiled, ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda body: _post(url, body), bodies))
    assert all(status == 200 for status, _ in replies)
    assert all(r["usage"]["completion_tokens"] <= b["max_tokens"] for (_, r), b in zip(replies, bodies))
    assert compiled == []


def test_the_official_openai_client(server):
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    one = client.chat.completions.create(model="judge", messages=USER, temperature=0)
    assert one.choices[0].message.content == ANSWER and one.usage.completion_tokens == 8
    with pytest.raises(openai.NotFoundError):  # an early refusal leaves the connection usable for the next call
        client.chat.completions.create(model="other", messages=USER)
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda i: client.chat.completions.create(model="judge", messages=USER, n=i + 1), range(4))
        )
    assert [len(a.choices) for a in answers] == [1, 2, 3, 4]
    assert [c.index for c in answers[3].choices] == [0, 1, 2, 3]
    stream = client.chat.completions.create(
        model="judge", messages=USER, temperature=0, n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts = [
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    ]
    assert texts == [ANSWER, ANSWER]
    assert (
        sorted(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason) == ["stop"] * 2
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    stopped = client.chat.completions.create(model="judge", messages=USER, temperature=0, stop="true", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stopped) == '{"judgements": ['


def test_a_cancelled_stream_stops_decoding(server):
    """A client that closes its stream ends its row: it is no longer decoded and the next request is not kept
    waiting (temperature 2 on this model draws tokens that are almost never EOS: the row would run 500 tokens)."""
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    cancelled = server.engine.rows_cancelled
    stream = client.chat.completions.create(model="judge", messages=USER, temperature=2.0, max_tokens=500, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 30
    while server.engine.rows_cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.engine.rows_cancelled == cancelled + 1
    started = time.monotonic()
    assert (
        client.chat.completions.create(model="judge", messages=USER, temperature=0).choices[0].message.content == ANSWER
    )
    assert time.monotonic() - started < 10


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
