"""LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (never a real network call)."""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pairs_fixtures import read_jsonl

from data_pipeline.constraints.llm_judge import JudgeConfig, JudgeError, JudgeParseError, LLMJudge
from data_pipeline.pairs import cli as build_pairs


def _word_rule_answer(messages: list[dict]) -> str:
    """A deterministic 'model': 'Mention the word W.' holds iff W is in the response; reversal adds 'Do not'."""
    user = messages[-1]["content"]
    if user.startswith("Constraint:"):
        text = re.search(r"<<<\n(.*)\n>>>", user, re.DOTALL).group(1)
        return json.dumps({"reversed": text.replace("Mention", "Do not mention")})
    response = re.search(r"Response:\n<<<\n(.*?)\n>>>", user, re.DOTALL).group(1)
    rules = re.findall(r"^\d+\. (Do not mention|Mention) the word (\w+)\.$", user.split("Constraints:")[1], re.M)
    return json.dumps({"judgements": [(word in response) == (kind == "Mention") for kind, word in rules]})


class FakeServer:
    """Threaded HTTP server; `script` answers (status, content) per request, default the word rule."""

    def __init__(self, script=None, barrier: threading.Barrier | None = None):
        self.script, self.barrier = script, barrier
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    index = len(server.requests) - 1
                try:
                    if server.barrier is not None:
                        server.barrier.wait(timeout=10)  # fails the test if fewer clients ever arrive together
                    status, content = (
                        server.script(index, body) if server.script else (200, _word_rule_answer(body["messages"]))
                    )
                finally:
                    with server.lock:
                        server.in_flight -= 1
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _judge(server, tmp_path, **kw) -> LLMJudge:
    sleeps = kw.pop("sleeps", [])
    config = JudgeConfig(server.url, "fake-model", tmp_path / "cache", backoff_s=0.01, **kw)
    return LLMJudge(config, sleep=sleeps.append)


def test_judge_and_reverse_parse_and_cache(tmp_path):
    with FakeServer() as server:
        judge = _judge(server, tmp_path)
        texts = ["Mention the word cat.", "Mention the word dog."]
        assert judge.judge("Q", "a cat sat", texts) == [True, False]
        assert judge.judge("Q", "a cat sat", texts) == [True, False]
        assert judge.reverse("Mention the word cat.") == "Do not mention the word cat."
        assert len(server.requests) == 2 and judge.counts["cache_hits"] == 1
        assert server.requests[0]["temperature"] == 0 and server.requests[0]["model"] == "fake-model"
        # A fresh client on the same cache makes no request at all.
        fresh = _judge(server, tmp_path)
        assert fresh.judge("Q", "a cat sat", texts) == [True, False]
        assert len(server.requests) == 2 and fresh.counts["cache_hits"] == 1
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_retry_on_500_with_exponential_backoff(tmp_path):
    script = lambda i, body: (500, "oops") if i < 2 else (200, '{"judgements": [true]}')
    sleeps: list[float] = []
    with FakeServer(script) as server:
        judge = _judge(server, tmp_path, sleeps=sleeps)
        assert judge.judge("Q", "R", ["Mention the word R."]) == [True]
    assert len(server.requests) == 3 and judge.counts["retries"] == 2
    assert sleeps == [0.01, 0.02]


def test_gives_up_after_max_retries_and_does_not_retry_400(tmp_path):
    with FakeServer(lambda i, body: (503, "busy")) as server:
        with pytest.raises(JudgeError, match="gave up after 3 attempts"):
            _judge(server, tmp_path, max_retries=2).judge("Q", "R", ["x"])
        assert len(server.requests) == 3
    with FakeServer(lambda i, body: (400, "bad")) as server:
        with pytest.raises(JudgeError, match="HTTP 400"):
            _judge(server, tmp_path / "b").judge("Q", "R", ["x"])
        assert len(server.requests) == 1


def test_concurrency_is_bounded_by_max_workers(tmp_path):
    # Requests wait at a 2-party barrier: with max_workers=2 every pair meets; a serial client would time out.
    with FakeServer(barrier=threading.Barrier(2)) as server:
        judge = _judge(server, tmp_path, max_workers=2)
        items = [("Q", f"resp {i} cat", ["Mention the word cat."]) for i in range(6)]
        assert judge.judge_many(items) == [[True]] * 6
    assert server.max_in_flight == 2


def test_parse_failures_are_reported_and_counted(tmp_path):
    answers = ['{"judgements": [true]}', "I think yes", '{"judgements": [true, false]}', '{"judgements": ["yes"]}']
    with FakeServer(lambda i, body: (200, answers[i])) as server:
        judge = _judge(server, tmp_path, max_workers=1)
        results = judge.judge_many([("Q", f"R{i}", ["c"]) for i in range(4)])
        assert results[0] == [True]
        assert all(isinstance(r, JudgeParseError) for r in results[1:])
        assert "expected 1 judgements, got 2" in str(results[2])
        assert judge.counts["parse_errors"] == 3


def test_api_key_comes_from_the_named_env_var(tmp_path, monkeypatch):
    with FakeServer() as server:
        with pytest.raises(JudgeError, match="RPO_TEST_KEY"):
            _judge(server, tmp_path, api_key_env="RPO_TEST_KEY")
        monkeypatch.setenv("RPO_TEST_KEY", "sekrit")
        _judge(server, tmp_path, api_key_env="RPO_TEST_KEY").reverse("Mention the word x.")
        assert server.headers[0]["Authorization"] == "Bearer sekrit"


def test_build_pairs_with_free_form_constraints(tmp_path):
    words = ["apple", "river", "candle", "stone"]
    instruction = {
        "id": "ff1",
        "task": "Write a sentence.",
        "turns": [{"role": "user", "content": "Write a sentence."}],
        "constraints": [{"id": w, "type": "free_form", "text": f"Mention the word {w}."} for w in words]
        + [{"id": "nc", "type": "punctuation:no_comma"}],
    }
    (tmp_path / "ins.jsonl").write_text(json.dumps(instruction) + "\n")
    texts = ["apple river candle stone here.", "nothing at all, really.", "apple and river only."]
    (tmp_path / "resp.jsonl").write_text("".join(json.dumps({"key": "ff1", "response": t}) + "\n" for t in texts))
    with FakeServer() as server:
        parser = argparse.ArgumentParser()
        build_pairs.add_arguments(parser)
        args = parser.parse_args(
            [
                "--recipe",
                "rpo",
                "--input",
                str(tmp_path / "ins.jsonl"),
                "--responses",
                str(tmp_path / "resp.jsonl"),
                "--output",
                str(tmp_path / "out"),
                "--judge-base-url",
                server.url,
                "--judge-model",
                "fake",
            ]
        )
        assert build_pairs.run(args) == 0
    pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    # resp0 passes all 5, resp1 fails all 5 (g=5), resp2 fails candle/stone (g=2 vs resp0, 3 vs resp1).
    got = [
        (p["provenance"]["chosen"]["response_id"], p["provenance"]["rejected"]["response_id"], p["margin"])
        for p in pairs
    ]
    assert got == [
        ("ff1#line1", "ff1#line2", 5),
        ("ff1#line2", "ff1#line1", 5),
        ("ff1#line2", "ff1#line3", 3),
        ("ff1#line3", "ff1#line2", 3),
    ]
    mirrored = pairs[1]["sequences"][0]["messages"][-1]["content"]
    assert mirrored.startswith("Write a sentence.\n\nRequirements:\n1. Do not mention the word apple.\n")
    assert mirrored.endswith("5. Use at least one comma in your response.")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["responses"]["by_outcome"]["in_pair"] == 3 and stats["judge"]["parse_errors"] == 0
    assert stats["constraint_types"]["free_form"] == {"seen": 4, "reversed_in_prompts": 6, "non_reversible_skipped": 0}


def test_connection_refused_fails_at_once_and_timeouts_are_retried(tmp_path):
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    judge = LLMJudge(JudgeConfig(f"http://127.0.0.1:{port}/v1", "m", tmp_path / "c"), sleep=sleeps.append)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="connection refused") as err:
        judge.judge("Q", "R", ["x"])
    assert time.monotonic() - start < 5 and sleeps == [] and judge.counts["requests"] == 1
    assert "rpo-jax serve" in str(err.value)

    def slow(index, body):
        if index == 0:
            time.sleep(0.5)  # longer than the client's timeout
        return 200, '{"judgements": [true]}'

    with FakeServer(slow) as server:
        judge = _judge(server, tmp_path / "t", timeout_s=0.2, sleeps=sleeps)
        assert judge.judge("Q", "R", ["x"]) == [True]
        assert judge.counts["retries"] == 1 and sleeps == [0.01]


def test_judge_errors_are_one_line_user_errors(tmp_path, capsys, monkeypatch):
    from rpo_jax.cli import main

    instruction = {
        "id": "f",
        "turns": [{"role": "user", "content": "Write."}],
        "constraints": [{"id": "a", "type": "free_form", "text": "Be kind."}],
    }
    (tmp_path / "ins.jsonl").write_text(json.dumps(instruction) + "\n")
    (tmp_path / "resp.jsonl").write_text(json.dumps({"key": "f", "response": "Hello."}) + "\n")
    base = ["build-pairs", "--recipe", "rpo", "--input", str(tmp_path / "ins.jsonl")]
    base += ["--responses", str(tmp_path / "resp.jsonl"), "--output", str(tmp_path / "out")]
    monkeypatch.delenv("RPO_ABSENT_KEY", raising=False)
    for extra, message in (
        (["--judge-base-url", "localhost:1/v1", "--judge-model", "m"], "must start with http://"),
        (["--judge-base-url", "http://127.0.0.1:1/v1", "--judge-model", "m", "--judge-max-workers", "0"], ">= 1"),
        (["--judge-base-url", "http://x/v1", "--judge-model", "m", "--judge-api-key-env", "RPO_ABSENT_KEY"], "not set"),
        (["--judge-base-url", "http://127.0.0.1:1/v1", "--judge-model", "m"], "connection refused"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
