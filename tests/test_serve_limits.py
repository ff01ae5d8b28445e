"""Serving under a hostile or careless client: the API key, the limits of ``ServeLimits``
(body, prompts, prompt tokens, max_tokens against the context, n, stop strings, a deadline,
a bounded queue), OpenAI-shaped errors, generations cancelled when their client leaves, stop
strings found in linear time, and ``relift serve``'s lifecycle (its port checked first, its
application removed on SIGTERM)."""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from relift_ray.background import free_port
from relift_ray.jobs.openai_api import ServeLimits, add_limit_args, limits_from_args
from relift_ray.jobs.text_engine import Job, TextEngine, TextTail
from relift_ray.records import SamplingParams

KEY = "sk-test-0123456789"
LIMITS = ServeLimits(max_body_bytes=4000, max_prompts=2, max_n=2, max_stops=2,
                     max_stop_chars=8, request_timeout_s=8.0, max_queue=3,
                     max_prompt_tokens=1000)


class CountingTokenizer:
    """One character per token; counts the characters decode reads."""
    eos_token_id = 0

    def __init__(self):
        self.read = 0

    def decode(self, ids, skip_special_tokens=True):
        self.read += len(ids)
        return "".join(chr(i) for i in ids)


def test_stop_strings_are_found_in_linear_time():
    tok = CountingTokenizer()
    text = "ab" * 2000 + "STOP" + "cd"
    tail = TextTail(tok, ["STOP", "xyz"])
    for ch in text:
        tail.add(ord(ch))
        if tail.stop_at is not None:
            break
    assert tail.stop_at == 4000 and tail.text == text[:4004]
    assert tail.safe() == 4000
    assert tok.read < 10 * len(tail.text)  # a window per token, not the whole text
    held = TextTail(CountingTokenizer(), ["STOP"])
    for ch in "abST":
        held.add(ord(ch))
    assert held.stop_at is None and held.safe() == 2  # "ST" may begin the stop string


@pytest.fixture(scope="module")
def toy_engine(relift_cache):
    return TextEngine(relift_cache)


def _job(prompt="Q:27+5*2\n", n=60, **kw):
    return Job([prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=n, seed=-1),
               None, [], ignore_eos=True, **kw)


def test_a_cancelled_job_stops_at_its_next_token(toy_engine):
    # a stream whose client leaves after 3 pieces of text: generation ends there
    job, seen = _job(), []

    def emit(row, delta):
        seen.append(delta)
        if len(seen) == 3:
            job.cancel()
    (c,) = toy_engine.stream(job, emit)
    assert len(seen) == 3 and len(c.token_ids) <= 4  # not the 60 it asked for
    # batched: a cancelled request does not hold the call; the other one runs to its end
    gone, kept = _job(), _job()
    gone.cancel()
    before = toy_engine.stats["cancelled"]
    out = toy_engine.run([gone, kept])
    assert len(out[0][0][0].token_ids) <= 1 and len(out[1][0][0].token_ids) == 60
    assert toy_engine.stats["cancelled"] == before + 1
    assert toy_engine.run([gone]) == [None]  # all gone before the call: no generate
    assert toy_engine.live() == {"running": 0, "running_cancelled": 0}


def test_counting_prompts_leaves_the_generators_tokenizer_as_it_is(toy_engine):
    # a generate call encodes its batch padded in a thread while the server counts prompts
    # on its event loop; a fast tokenizer keeps the padding setting in the object, so a
    # count on the same object would unpad a batch being encoded (a 500 under load)
    toy_engine.gen._encode(["Q:1+2\n", "Q:27+5*2\n"])  # leaves padding on
    assert toy_engine.tok.backend_tokenizer.padding is not None
    assert toy_engine.prompt_lengths(["Q:1+2\n"]) == [6]
    assert toy_engine.tok.backend_tokenizer.padding is not None


def test_limits_are_declared_once_and_set_from_flags():
    p = argparse.ArgumentParser()
    add_limit_args(p)
    args = p.parse_args(["--max-queue", "5", "--request-timeout-s", "2.5"])
    assert limits_from_args(args) == ServeLimits(max_queue=5, request_timeout_s=2.5)
    with pytest.raises(ValueError, match="max_n"):
        ServeLimits(max_n=0)


class FakeServer:
    name = "toy"

    def models(self):
        return {"object": "list", "data": []}

    def stats(self):
        raise RuntimeError("boom")

    async def completions(self, req):
        return {"ok": req.prompt}

    async def chat(self, req):
        return {}


def test_guard_checks_the_key_and_body_and_shapes_every_error():
    from fastapi.testclient import TestClient

    from relift_ray.jobs.openai_api import key_sha256, openai_app
    app = openai_app(FakeServer(), key_sha256(KEY), ServeLimits(max_body_bytes=100))
    c = TestClient(app, raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {KEY}"}

    def error(r, status, code=None):
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert code is None or err["code"] == code
        return err
    error(c.get("/v1/models"), 401, "invalid_api_key")
    error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert c.get("/v1/models", headers=auth).status_code == 200
    ok = c.post("/v1/completions", json={"prompt": "hi"}, headers=auth)
    assert ok.json() == {"ok": "hi"}
    error(c.post("/v1/completions", json={"prompt": "x" * 200}, headers=auth), 413)

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        yield b"x" * 200
        yield b'"}'
    error(c.post("/v1/completions", content=chunks(), headers=auth), 413)
    assert "Content-Length" in error(c.post("/v1/completions", content=b"{}", headers={
        **auth, "Content-Length": "x"}), 400)["message"]
    error(c.get("/v1/nothing", headers=auth), 404, "not_found")
    error(c.get("/stats", headers=auth), 500)
    assert error(c.post("/v1/completions", json={"prompt": 3}, headers=auth),
                 400)["param"] == "prompt"


def test_serve_refuses_a_public_address_without_a_key_and_a_busy_port(relift_cache, capsys,
                                                                      monkeypatch):
    from relift_ray.jobs.serve import serve_main
    monkeypatch.delenv("RELIFT_API_KEY", raising=False)
    assert serve_main(["--model", relift_cache, "--host", "0.0.0.0"]) == 2
    assert "API key" in capsys.readouterr().out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert serve_main(["--model", relift_cache, "--port", str(port)]) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().out


# ------------------------------------------------------------------ on Ray Serve
def _get(url, key=KEY, timeout=30):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    return json.loads(urllib.request.urlopen(req, timeout=timeout).read())


@pytest.mark.e2e
def test_relift_serve_removes_its_application_on_sigterm(ray_local, relift_cache):
    from ray import serve
    serve.shutdown()  # no Serve left by another module: this command starts its own
    port = free_port("127.0.0.1")
    relift = str(Path(sys.executable).parent / "relift")
    cmd = [relift, "serve", "--model", relift_cache, "--name", "toy", "--port", str(port),
           "--num-cpus", "0.25", "--address", ray_local.get_runtime_context().gcs_address]
    env = {**os.environ, "RELIFT_API_KEY": KEY}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: list = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.time() + 240
        while not any(" at http" in x for x in lines) and proc.poll() is None:
            assert time.time() < deadline, "".join(lines)
            time.sleep(1)
        assert proc.poll() is None, "".join(lines)
        assert any("joined" in x for x in lines)
        assert "relift" in serve.status().applications
        assert _get(f"http://127.0.0.1:{port}/v1/models")["data"][0]["id"] == "toy"
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode != 0 and "is in use" in second.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "relift" not in serve.status().applications  # nothing left in the cluster


@pytest.fixture(scope="module")
def long_model(relift_cache, tmp_path_factory):
    """The toy base with a context of 16,384 tokens: room for generations that run long (a
    16,000-token one takes about 55 s on a quiet 2-core machine, 4,000 only 7 s)."""
    path = tmp_path_factory.mktemp("toy-long")
    shutil.copytree(relift_cache, path, dirs_exist_ok=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["max_position_embeddings"] = 16384
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def guarded(ray_local, long_model):
    from ray import serve

    from relift_ray.jobs.serve import start
    serve.shutdown()  # a Serve left by another test keeps its own HTTP port
    url = start(long_model, port=free_port("127.0.0.1"), name="toy", num_cpus=0.25,
                api_key=KEY, limits=LIMITS)
    yield url
    serve.shutdown()


def _post(url, body, key=KEY, timeout=120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _settled(stats_url, seconds=6.0) -> dict:
    """/stats once nothing generates (or after ``seconds``)."""
    end = time.time() + seconds
    while True:
        s = _get(stats_url)
        if (s["running"] == 0 and s["admitted"] == 0) or time.time() > end:
            return s
        time.sleep(0.2)


@pytest.mark.e2e
def test_key_and_limits_answer_as_openai_does(guarded):
    import openai
    client = openai.OpenAI(base_url=guarded, api_key=KEY, max_retries=0, timeout=120)
    q = "Q:27+5*2\n"
    assert client.completions.create(model="toy", prompt=q, max_tokens=4,
                                     temperature=0).choices[0].text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt=q, max_tokens=4)
    assert e.value.body["code"] == "model_not_found"
    for kw, param in [({"prompt": [q] * 3}, "prompt"), ({"n": 3, "temperature": 1}, "n"),
                      ({"stop": ["a", "b", "c"]}, "stop"), ({"stop": ["x" * 9]}, "stop"),
                      ({"max_tokens": 17000}, "max_tokens"), ({"prompt": "1" * 2000}, "prompt")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**{"model": "toy", "prompt": q, "max_tokens": 4, **kw})
        assert e.value.body["param"] == param, kw
    assert "maximum context length is 16384" in str(
        pytest.raises(openai.BadRequestError, client.completions.create, model="toy",
                      prompt=q, max_tokens=16383).value)
    status, body, _ = _post(f"{guarded}/completions", b'{"prompt": "' + b"x" * 5000 + b'"}')
    assert status == 413 and body["error"]["code"] == "request_too_large"


@pytest.mark.e2e
def test_a_full_queue_answers_429_and_a_client_that_leaves_stops_its_generation(guarded):
    import httpx
    stats = f"{guarded.rsplit('/v1', 1)[0]}/stats"
    long = {"model": "toy", "prompt": "Q:1+2\n", "max_tokens": 16000, "ignore_eos": True,
            "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    before = _get(stats)
    with httpx.Client(timeout=60, headers=headers) as c:
        streams = [c.stream("POST", f"{guarded}/completions", json=long) for _ in range(3)]
        lines = streams[0].__enter__().iter_lines()  # (collected, it would close the stream)
        next(lines)  # generating
        for s in streams[1:]:
            s.__enter__()  # admitted, waiting for the engine
        r = c.post(f"{guarded}/completions", json={**long, "stream": False})
        assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "queue_full"
        assert _get(stats)["running"] == 1
        for s in streams:
            s.__exit__(None, None, None)  # the clients leave
    after = _settled(stats)
    assert after["running"] == 0 and after["admitted"] == 0, after
    assert after["cancelled"] - before["cancelled"] >= 1
    assert after["refused"] - before["refused"] == 1
    # a non-streaming request whose client gives up
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{guarded}/completions", json={**long, "stream": False}, timeout=2,
                   headers=headers)
    s = _settled(stats)
    assert s["running"] == 0 and s["admitted"] == 0, s


@pytest.mark.e2e
def test_a_request_past_its_deadline_gets_503_and_stops(guarded):
    stats = f"{guarded.rsplit('/v1', 1)[0]}/stats"
    t0 = time.time()
    status, body, _ = _post(f"{guarded}/completions", {
        "model": "toy", "prompt": "Q:1+2\n", "max_tokens": 16000, "ignore_eos": True,
        "temperature": 0})
    assert status == 503 and body["error"]["code"] == "timeout", body
    assert time.time() - t0 < LIMITS.request_timeout_s + 10
    s = _settled(stats)
    assert s["running"] == 0, s


@pytest.mark.e2e
def test_the_load_benchmark_loses_nothing_and_leaves_nothing_running(guarded):
    """benchmarks/bench_serve.py's mix of clients, a few seconds of it."""
    import importlib.util
    path = Path(__file__).parent.parent / "benchmarks" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.KEY = KEY
    r = bench.load(guarded, ["Q:27+5*2\n", "Q:3+4\n"], clients=8, seconds=6.0)
    assert r["lost"] == 0 and r["still_running"] == 0, r
    assert r["answered"] > 0 and r["left"] > 0, r
    assert {"400", "401", "413", "429"} <= set(r["refused"]), r
