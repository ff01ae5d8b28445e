"""Serving: the transformers deployment on Ray Serve answers real HTTP requests in OpenAI's
completions format, with the same text the generator gives directly."""
import json
import socket
import urllib.error
import urllib.request

import pytest

from relift_ray.records import Question, SamplingParams
from relift_ray.serve import RequestError, parse_request


def test_request_parsing_and_errors_name_the_field():
    prompts, p = parse_request({"prompt": "Q:1+1", "max_tokens": 8, "temperature": 0})
    assert prompts == ["Q:1+1"] and (p.max_new_tokens, p.temperature, p.n) == (8, 0.0, 1)
    assert parse_request({"prompt": ["a", "b"], "n": 2})[1].n == 2
    for body, param in [({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": [1]}, "prompt"),
                        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
                        ({"prompt": "a", "max_tokens": 1.5}, "max_tokens"),
                        ({"prompt": "a", "temperature": "hot"}, "temperature"),
                        ({"prompt": "a", "top_p": 0}, "top_p"), ([], "body")]:
        with pytest.raises(RequestError) as e:
            parse_request(body)
        assert e.value.param == param


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.e2e
def test_cpu_deployment_answers_http_requests(ray_local, relift_cache):
    from ray import serve

    from relift_ray.generators.hf import HFGenerator
    from relift_ray.serve import start
    from relift_ray.toy.task import make_questions

    q = make_questions("test")[0]
    url = start(relift_cache, port=_free_port(), name="toy-base", num_cpus=0.25)
    try:
        status, out = _post(f"{url}/completions", {"model": "toy-base", "prompt": q.prompt,
                                                   "max_tokens": 48, "temperature": 0})
        assert status == 200, out
        assert out["object"] == "text_completion" and out["model"] == "toy-base"
        (choice,) = out["choices"]
        direct = HFGenerator(relift_cache).generate(
            [Question(id="0", prompt=q.prompt, answer="")],
            SamplingParams(n=1, temperature=0.0, max_new_tokens=48))[0][0]
        assert choice["text"] == direct.text and "\\boxed{" in choice["text"]
        assert choice["finish_reason"] == "stop"
        assert out["usage"]["completion_tokens"] == len(direct.response_ids)
        assert out["usage"]["prompt_tokens"] == len(direct.prompt_ids)

        status, out = _post(f"{url}/completions", {"prompt": [q.prompt, q.prompt], "n": 2,
                                                   "max_tokens": 4, "temperature": 1.0})
        assert status == 200 and [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
        assert all(c["finish_reason"] == "length" for c in out["choices"])

        status, out = _post(f"{url}/completions", {"prompt": "1+1", "max_tokens": -3})
        assert status == 400 and out["error"]["param"] == "max_tokens"
        with urllib.request.urlopen(f"{url}/models", timeout=30) as r:
            assert json.loads(r.read())["data"][0]["id"] == "toy-base"
    finally:
        serve.shutdown()
