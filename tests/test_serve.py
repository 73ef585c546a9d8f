"""``finesteer-edge serve``: the real server (subprocess, 127.0.0.1) on the tiny model, driven by the official
``openai`` client. Packs: ``open`` (tau 0: its gate opens on every prompt) and ``shut`` (tau 2: never)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import openai
import pytest

from finesteer_edge import SteeredLlama
from finesteer_edge.testing.packs import make_random_pack
from finesteer_edge.testing.servers import finesteer_serve_cmd, free_port, running
from finesteer_edge.testing.tiny_model import TinyConfig, write_tiny_model

KEY = "sk-test-key"
N_CTX = 1024
THREADS = "1"
MSG = [{"role": "user", "content": "hello there"}]
LONG = dict(temperature=1.0, top_p=1.0, seed=22)
"""Sampling under which the tiny model's answer to MSG fills the context (no early EOS)."""


@pytest.fixture(scope="module")
def packs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve_packs")
    return {"open": make_random_pack(tiny_model, d / "open", tau=0.0, name="open"),
            "shut": make_random_pack(tiny_model, d / "shut", tau=2.0, seed=1, name="shut")}


@pytest.fixture(scope="module")
def server(tiny_model: Path, packs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    cmd = finesteer_serve_cmd(str(tiny_model), "--pack", str(packs["open"]), "--pack", str(packs["shut"]),
                              "--port", str(port), "--parallel", "2", "--threads", THREADS, "--n-ctx", str(N_CTX),
                              "--api-key", KEY, "--max-body-bytes", "65536")
    # Two malloc arenas (one per slot thread) instead of glibc's default 8 per core: the load test below looks
    # for leaks, and arena growth steps (docs/SERVE.md "Memory") are not leaks but can exceed its 16 MiB bound.
    with running(cmd, port, tmp_path_factory.mktemp("serve_log") / "server.log", env={"MALLOC_ARENA_MAX": "2"}) as s:
        yield s


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def plain(tiny_model: Path):
    """A no-pack run on the same file and settings: what an unsteered request must reproduce exactly."""
    with SteeredLlama(tiny_model, None, n_ctx=N_CTX, n_threads=int(THREADS)) as llm:
        yield llm


def chat(client: openai.OpenAI, steering: object = "default", **kw):
    extra = {} if steering == "default" else {"extra_body": {"steering": steering}}
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="tiny", messages=MSG, **extra, **kw)


def stream_text(client: openai.OpenAI, steering: object = "default", **kw) -> tuple[str, dict]:
    chunks = list(chat(client, steering, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    return text, finals[0].model_extra["steering"]


class Raw:
    """Plain HTTP for what the openai client will not send (bad JSON, chunked bodies, no key)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None,
                 key: str | None = KEY) -> tuple[int, dict]:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        h = {"Content-Type": "application/json", **auth, **(headers or {})}
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=h)  # an iterator body goes out chunked
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            conn.close()


@pytest.fixture
def raw(server) -> Raw:
    return Raw(server.port)


# ---------------------------------------------------------------------- endpoints
def test_models_and_health(raw: Raw, client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].model_extra["packs"] == ["open", "shut"]
    assert client.models.retrieve("tiny").id == "tiny"
    status, h = raw("GET", "/health", key=None)  # no key needed for the health check
    assert status == 200
    assert h["status"] == "ok" and h["slots"]["total"] == 2
    assert h["defaults"]["packs"] == ["open", "shut"] and set(h["packs"]) == {"open", "shut"}


def test_default_request_gets_every_pack_each_gated_on_its_own(client: openai.OpenAI, plain: SteeredLlama) -> None:
    r = chat(client)
    st = r.model_extra["steering"]
    assert st["steered"] is True and st["mode"] == "exact" and st["gate"] == "pack" and st["vector"] == "head"
    p, q = st["packs"]
    assert p["name"] == "open" and p["steered"] and p["gate_score"] >= p["threshold"] == 0.0
    assert q["name"] == "shut" and not q["steered"] and q["gate_score"] < q["threshold"] == 2.0
    assert p["vector"] == q["vector"] == "head"
    assert len(p["expert_weights"]) == 4 and abs(sum(p["expert_weights"]) - 1) < 1e-4 and p["strength"] == 1.0
    assert r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length"
    # steering changes this model's answer (else the identity tests below would prove nothing)
    assert r.choices[0].message.content != plain.generate(MSG, max_tokens=24).text


def test_streaming_equals_non_streaming_with_steering_in_the_final_chunk(client: openai.OpenAI) -> None:
    r = chat(client)
    text, st = stream_text(client)
    assert text == r.choices[0].message.content
    assert st == r.model_extra["steering"]


def test_steering_null_is_identical_to_a_no_pack_run(client: openai.OpenAI, plain: SteeredLlama) -> None:
    ref = plain.generate(MSG, max_tokens=24)
    r = chat(client, None)
    assert r.choices[0].message.content == ref.text
    assert r.model_extra["steering"] == {"steered": False, "packs": [], "mode": None, "gate": None, "vector": None}
    assert stream_text(client, None)[0] == ref.text
    assert chat(client, {"packs": []}).choices[0].message.content == ref.text


def test_closed_gate_and_zero_strength_leave_the_answer_unsteered(client: openai.OpenAI, plain: SteeredLlama) -> None:
    ref = plain.generate(MSG, max_tokens=24).text
    r = chat(client, {"packs": ["shut"]})
    (p,) = r.model_extra["steering"]["packs"]
    assert p["name"] == "shut" and not p["steered"] and p["gate_score"] < p["threshold"]
    assert r.choices[0].message.content == ref
    forced = chat(client, {"packs": ["shut"], "gate": "always", "strength": 0.0})
    assert forced.model_extra["steering"]["steered"] is True
    assert forced.choices[0].message.content == ref  # a zero vector adds nothing
    never = chat(client, {"gate": "never"})
    assert never.model_extra["steering"]["steered"] is False and never.choices[0].message.content == ref


def test_per_request_mode_vector_and_strength_are_applied_and_reported(client: openai.OpenAI) -> None:
    base = chat(client).choices[0].message.content
    r = chat(client, {"mode": "fast", "vector": "mean", "strength": 2.0})
    st = r.model_extra["steering"]
    assert (st["mode"], st["vector"], st["packs"][0]["strength"]) == ("fast", "mean", 2.0)
    assert r.choices[0].message.content != base
    proj = chat(client, {"vector": "projected"}).model_extra["steering"]
    assert proj["vector"] == "projected" and proj["packs"][0]["vector"] == "projected" and proj["steered"]
    hd = chat(client, {"vector": "head_direction"})
    st = hd.model_extra["steering"]
    assert st["vector"] == "head_direction" and st["packs"][0]["vector"] == "head_direction" and st["steered"]
    assert hd.choices[0].message.content != base
    with pytest.raises(openai.BadRequestError):
        chat(client, {"vector": "sideways"})
    # nothing leaks into the next request on the same slots
    assert chat(client).model_extra["steering"]["mode"] == "exact"
    assert chat(client).choices[0].message.content == base


@pytest.fixture(scope="module")
def local(tiny_model: Path, packs: dict[str, Path]):
    """The runtime run locally with the server's settings: both packs in one instance, and ``open`` alone."""
    both = SteeredLlama(tiny_model, packs=[packs["open"], packs["shut"]], n_ctx=N_CTX, n_threads=int(THREADS))
    alone = SteeredLlama(tiny_model, packs["open"], n_ctx=N_CTX, n_threads=int(THREADS))
    yield {"both": both, "open": alone}
    both.close()
    alone.close()


def _local(llm: SteeredLlama, enabled: tuple[str, ...] | None = None, gate: str = "pack", **kw):
    from finesteer_edge import SteeringSettings

    kw.setdefault("max_tokens", 24)
    return llm.generate(MSG, steering=SteeringSettings(gate=gate, enabled=enabled), **kw)  # type: ignore[arg-type]


def test_two_packs_in_one_request_report_two_outcomes(client: openai.OpenAI, local: dict) -> None:
    r = chat(client, {"packs": ["open", "shut"]})
    st = r.model_extra["steering"]
    ref = _local(local["both"])
    assert r.choices[0].message.content == ref.text
    assert [(p["name"], p["steered"]) for p in st["packs"]] == [("open", True), ("shut", False)]
    assert [p["gate_score"] for p in st["packs"]] == pytest.approx([o.gate_score for o in ref.packs], rel=1e-6)
    assert stream_text(client, {"packs": ["open", "shut"]}) == (ref.text, st)  # the final chunk reports both
    again = chat(client, {"packs": ["shut", "open", "shut"]}).model_extra["steering"]  # in the order asked, once each
    assert [p["name"] for p in again["packs"]] == ["shut", "open"]


def test_combined_vector_and_subsets_match_the_local_runtime(client: openai.OpenAI, local: dict) -> None:
    """Both gates forced open: the server adds both vectors as SteeredLlama(packs=[both]) does; a subset
    applies only its own (the other pack is loaded in the slot but shut)."""
    both = chat(client, {"packs": ["open", "shut"], "gate": "always"})
    assert [p["steered"] for p in both.model_extra["steering"]["packs"]] == [True, True]
    ref_both = _local(local["both"], gate="always")
    ref_open = _local(local["open"], gate="always")
    ref_shut = _local(local["both"], ("shut",), gate="always")
    assert len({ref_both.text, ref_open.text, ref_shut.text}) == 3  # each vector changes the answer
    assert both.choices[0].message.content == ref_both.text and both.usage.completion_tokens == ref_both.tokens
    sub = chat(client, {"packs": ["open"], "gate": "always"})
    assert sub.choices[0].message.content == ref_open.text
    assert [p["name"] for p in sub.model_extra["steering"]["packs"]] == ["open"]
    assert chat(client, {"packs": ["shut"], "gate": "always"}).choices[0].message.content == ref_shut.text


def test_concurrent_requests_with_different_pack_subsets(client: openai.OpenAI, local: dict,
                                                          plain: SteeredLlama) -> None:
    subsets: dict[str, object] = {"open": {"packs": ["open"], "gate": "always"},
                                  "shut": {"packs": ["shut"], "gate": "always"},
                                  "both": {"packs": ["open", "shut"], "gate": "always"}, "none": None}
    refs = {"open": _local(local["open"], gate="always", max_tokens=200, **LONG).text,
            "shut": _local(local["both"], ("shut",), gate="always", max_tokens=200, **LONG).text,
            "both": _local(local["both"], gate="always", max_tokens=200, **LONG).text,
            "none": plain.generate(MSG, max_tokens=200, **LONG).text}
    assert len(set(refs.values())) == 4
    out: dict[str, tuple[str, dict]] = {}
    start = threading.Barrier(len(subsets))

    def run(name: str) -> None:
        start.wait()
        out[name] = stream_text(client, subsets[name], max_tokens=200, **LONG)

    threads = [threading.Thread(target=run, args=(name,)) for name in subsets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {k: v[0] for k, v in out.items()} == refs
    assert [p["name"] for p in out["both"][1]["packs"]] == ["open", "shut"] and out["none"][1]["packs"] == []


def test_chat_template_is_passed_to_the_slots(tiny_model: Path, tmp_path: Path, plain: SteeredLlama) -> None:
    port = free_port()
    cmd = finesteer_serve_cmd(str(tiny_model), "--no-pack", "--chat-template", "chatml", "--port", str(port),
                              "--threads", THREADS, "--n-ctx", str(N_CTX))
    with SteeredLlama(tiny_model, None, n_ctx=N_CTX, n_threads=int(THREADS), chat_template="chatml") as ref, \
            running(cmd, port, tmp_path / "server.log") as srv:
        assert "chat template: chatml" in srv.log_text()
        c = openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=120)
        text = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=24, temperature=0).choices[0]
        expected = ref.generate(MSG, max_tokens=24).text
        assert expected != plain.generate(MSG, max_tokens=24).text  # the template changes the prompt
        assert text.message.content == expected
    bad = finesteer_serve_cmd(str(tiny_model), "--no-pack", "--chat-template", "nosuch", "--port", str(free_port()))
    import subprocess

    proc = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "nosuch" in proc.stderr


def test_one_context_per_slot_holds_every_pack(tiny_model: Path, packs: dict[str, Path]) -> None:
    from finesteer_edge.serve.engine import ServeConfig, build_engine

    engine = build_engine(ServeConfig(tiny_model, [packs["open"], packs["shut"]], parallel=2, n_ctx=256, n_threads=1,
                                      chat_template="chatml"))
    try:
        llms = [slot.llm for slot in engine.pool.slots]
        assert len({id(x) for x in llms}) == 2 and all(x.pack_names == ["open", "shut"] for x in llms)
        assert all(x.chat_template.name == "chatml" for x in llms)
        # every pack passed verify_pack on every slot's context, self-test included
        assert all([(r.pack_name, r.ran, r.ok) for r in x.reports] == [
            (n, ["checksums", "fingerprint", "selftest"], True) for n in ("open", "shut")] for x in llms)
        assert engine.defaults.packs == ("open", "shut") and not engine.failed
    finally:
        engine.close()


def test_every_turn_runs_on_the_thread_that_built_its_slot(tiny_model: Path, packs: dict[str, Path]) -> None:
    """llama.cpp keeps an OpenMP team per calling thread: a slot built (self-test) on one thread and driven from
    another decoded ~20% slower (bench/serve.py). Turns ran on any pool thread; now each on its slot's own."""
    import uvicorn

    from finesteer_edge.serve.app import create_app
    from finesteer_edge.serve.engine import ServeConfig, build_engine

    engine = build_engine(ServeConfig(tiny_model, [packs["open"]], parallel=2, n_ctx=256, n_threads=1,
                                      chat_template="chatml"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

        def ask(i: int) -> None:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4)

        workers = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        llms = [slot.llm for slot in engine.pool.slots]
        assert any(x.session.tokens for x in llms)  # the slots really ran turns
        assert [x.foreign_thread_calls for x in llms] == [0, 0]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()
    # and the counter does count: the same instance driven from this (another) thread
    other = SteeredLlama(tiny_model, packs["open"], n_ctx=256, n_threads=1)
    elsewhere = threading.Thread(target=lambda: other.generate("hi", max_tokens=2))
    elsewhere.start()
    elsewhere.join()
    other.generate("hi", max_tokens=2)  # its own thread: not counted
    assert other.foreign_thread_calls == 1
    other.close()


def test_completions_endpoint(client: openai.OpenAI, plain: SteeredLlama) -> None:
    r = client.completions.create(model="tiny", prompt="hello there", max_tokens=24, temperature=0,
                                  extra_body={"steering": None})
    assert r.object == "text_completion" and r.choices[0].text == plain.generate(MSG, max_tokens=24).text
    s = list(client.completions.create(model="tiny", prompt="hello there", max_tokens=24, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in s if c.choices)
    assert text == client.completions.create(model="tiny", prompt="hello there", max_tokens=24,
                                             temperature=0).choices[0].text
    assert [c.model_extra["steering"]["steered"] for c in s if c.choices and c.choices[0].finish_reason] == [True]
    assert s[-1].usage.completion_tokens == 24


def test_content_parts_and_developer_role(client: openai.OpenAI) -> None:
    a = client.chat.completions.create(model="tiny", max_tokens=8, temperature=0, messages=[
        {"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    b = client.chat.completions.create(model="tiny", max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert a.choices[0].message.content == b.choices[0].message.content


# ---------------------------------------------------------------------- errors
def _err(excinfo: pytest.ExceptionInfo) -> dict:
    body = excinfo.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("steering, param, code", [
    ({"packs": ["nope"]}, "steering.packs", "unknown_pack"),
    ({"packs": ["open", "nope"]}, "steering.packs", "unknown_pack"),
    ({"strength": 100}, "steering.strength", "invalid_strength"),
    ({"strength": "strong"}, "steering.strength", "invalid_request"),
    ({"mode": "slow"}, "steering.mode", "invalid_request"),
    ({"gate": "sometimes"}, "steering.gate", "invalid_request"),
    ({"threshold": -0.5}, "steering.threshold", "invalid_request"),
    ({"threshold": "high"}, "steering.threshold", "invalid_request"),
    ({"pack": ["open"]}, "steering.pack", "invalid_request"),  # a typo is an error, not silently unsteered
])
def test_bad_steering_is_a_400(client: openai.OpenAI, steering: dict, param: str, code: str) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as ei:
            chat(client, steering, stream=stream)
        e = _err(ei)
        assert (e["param"], e["code"], e["type"]) == (param, code, "invalid_request_error")


def test_non_finite_strength_is_a_400(raw: Raw) -> None:
    body = b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"steering":{"strength":NaN}}'
    status, r = raw("POST", "/v1/chat/completions", body)
    assert status == 400 and r["error"]["type"] == "invalid_request_error"


def test_prompt_over_the_context_is_a_400_not_a_stream(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "hello " * 1500}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(model="tiny", messages=long, max_tokens=4, stream=stream)
        e = _err(ei)
        assert e["code"] == "context_length_exceeded" and str(N_CTX) in e["message"]


def test_body_over_the_limit_is_a_413(client: openai.OpenAI, raw: Raw) -> None:
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 70000}])
    assert ei.value.status_code == 413 and _err(ei)["code"] == "request_too_large"
    # chunked, without Content-Length: counted while read
    big = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 70000}]}).encode()
    status, r = raw("POST", "/v1/chat/completions", iter([big[:1000], big[1000:]]))
    assert status == 413 and r["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
])
def test_malformed_requests_are_400(raw: Raw, body: dict, param: str) -> None:
    status, r = raw("POST", "/v1/chat/completions", body)
    assert status == 400, r
    assert r["error"]["param"] == param


def test_invalid_json_unknown_route_and_model(raw: Raw, client: openai.OpenAI) -> None:
    status, r = raw("POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and r["error"]["type"] == "invalid_request_error"
    status, r = raw("GET", "/v1/nowhere")
    assert status == 404 and r["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("gpt-4")
    assert _err(ei)["code"] == "model_not_found"


def test_api_key_is_enforced(server, raw: Raw) -> None:
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    assert _err(ei)["code"] == "invalid_api_key"
    for key in (None, "wrong"):
        status, r = raw("GET", "/v1/models", key=key)
        assert status == 401 and r["error"]["code"] == "invalid_api_key"
    assert raw("GET", "/health", key=None)[0] == 200


# ---------------------------------------------------------------------- concurrency
def test_two_concurrent_streams_do_not_see_each_others_steering(client: openai.OpenAI, plain: SteeredLlama) -> None:
    ref_plain = plain.generate(MSG, max_tokens=200, **LONG).text
    ref_steered = stream_text(client, max_tokens=200, **LONG)[0]
    assert ref_steered != ref_plain
    out: dict[str, tuple[str, dict]] = {}
    start = threading.Barrier(2)

    def run(name: str, steering: object) -> None:
        start.wait()
        out[name] = stream_text(client, steering, max_tokens=200, **LONG)

    threads = [threading.Thread(target=run, args=("steered", "default")),
               threading.Thread(target=run, args=("plain", None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert out["plain"][0] == ref_plain and out["plain"][1]["steered"] is False
    assert out["steered"][0] == ref_steered and out["steered"][1]["steered"] is True


def _health(server) -> dict:
    return Raw(server.port)("GET", "/health", key=None)[1]


def _wait_idle(server, slots: int, cancelled: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = _health(server)
        if h["slots"]["idle"] == slots and h["stats"]["cancelled"] >= cancelled:
            return h
        assert time.monotonic() < deadline, h
        time.sleep(0.02)


def test_client_disconnect_stops_generation(server, client: openai.OpenAI, plain: SteeredLlama) -> None:
    full = plain.generate(MSG, max_tokens=N_CTX, **LONG)
    assert full.tokens > 500  # the uncancelled answer is long
    before = _health(server)["stats"]["cancelled"]
    s = chat(client, None, stream=True, max_tokens=N_CTX, **LONG)
    next(iter(s))
    s.close()  # the client goes away after the first chunk
    h = _wait_idle(server, 2, before + 1)
    last = h["stats"]["last_cancelled"]
    assert last["pieces_after_cancel"] <= 1
    assert last["pieces"] < full.tokens


ENDLESS_CTX = 8192


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose greedy turns never end by themselves: a turn that fills its 8192-token context
    takes about 17 s on one thread, long enough to disconnect from in the middle of it."""
    return write_tiny_model(tmp_path_factory.mktemp("endless") / "endless.gguf", "llama",
                            TinyConfig(context_length=ENDLESS_CTX), endless=True)


def test_non_streaming_client_disconnect_stops_generation(endless_model: Path, tmp_path: Path) -> None:
    """A non-streaming client that gives up frees its slot at once: the turn is cancelled within a token of
    the disconnect, not run to max_tokens (before, the route only looked for a disconnect after 0.25 s
    without a token, which never happens while tokens flow, so the turn ran on to the end of the context)."""
    port = free_port()
    cmd = finesteer_serve_cmd(str(endless_model), "--no-pack", "--port", str(port), "--parallel", "1",
                              "--threads", THREADS, "--n-ctx", str(ENDLESS_CTX))
    with running(cmd, port, tmp_path / "server.log") as srv:
        for i, endpoint in enumerate(("chat", "completions")):
            impatient = openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=0.5)
            with pytest.raises(openai.APITimeoutError):
                if endpoint == "chat":  # no max_tokens: up to the whole context
                    impatient.chat.completions.create(model="tiny", messages=MSG, temperature=0)
                else:
                    impatient.completions.create(model="tiny", prompt="hello there", max_tokens=ENDLESS_CTX,
                                                 temperature=0)
            impatient.close()
            gone = time.monotonic()
            h = _wait_idle(srv, 1, i + 1, timeout=30)
            assert time.monotonic() - gone < 5, "the slot stayed busy after the client left"
            last = h["stats"]["last_cancelled"]
            assert 0 < last["pieces"] < ENDLESS_CTX // 2 and last["pieces_after_cancel"] <= 1, last
        c = openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=5)  # the slot is free
        assert c.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0).usage \
            .completion_tokens == 8


def test_full_queue_is_a_503_with_retry_after(tiny_model: Path, tmp_path: Path, plain: SteeredLlama) -> None:
    port = free_port()
    cmd = finesteer_serve_cmd(str(tiny_model), "--no-pack", "--port", str(port), "--parallel", "1",
                              "--max-queue", "0", "--threads", THREADS, "--n-ctx", str(N_CTX))
    with running(cmd, port, tmp_path / "server.log") as srv:
        c = openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=120)
        long = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=N_CTX, stream=True, **LONG)
        next(iter(long))  # the only slot is now busy for ~900 more tokens
        with pytest.raises(openai.APIStatusError) as ei:
            c.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
        assert ei.value.status_code == 503 and ei.value.response.headers["Retry-After"] == "1"
        assert _err(ei)["code"] == "server_busy"
        long.close()
        _wait_idle(srv, 1, 1)
        r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=24, temperature=0)
        assert r.choices[0].message.content == plain.generate(MSG, max_tokens=24).text


def _broken_copy(pack: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(pack, dest)
    head = dest / "head.onnx"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))
    return dest


def test_bad_steering_options_are_refused_with_the_shared_vocabulary(tiny_model: Path) -> None:
    """--mode/--gate/--vector are checked against finesteer_edge.vocab (one home for the words), as generate
    checks them: a usage error naming the choices, before any model is loaded."""
    from finesteer_edge.vocab import GATE_POLICIES, MODES, VECTOR_SOURCES, choices

    from .conftest import run_cli

    for flag, allowed in (("--mode", MODES), ("--gate", GATE_POLICIES), ("--vector", VECTOR_SOURCES)):
        proc = run_cli("serve", str(tiny_model), "--no-pack", flag, "bogus", "--port", str(free_port()), timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert f"{flag} must be {choices(allowed)}, not 'bogus'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failing_pack_stops_the_server(tiny_model: Path, tiny_model_other: Path, packs: dict[str, Path],
                                         tmp_path: Path) -> None:
    from .conftest import run_cli

    broken = _broken_copy(packs["open"], tmp_path / "broken")
    other = make_random_pack(tiny_model_other, tmp_path / "other", name="other")
    for bad, words in ((broken, "sha256"), (other, "does not fit")):
        proc = run_cli("serve", str(tiny_model), "--pack", str(packs["shut"]), "--pack", str(bad),
                       "--port", str(free_port()), "--threads", THREADS, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and words in lines[-1], proc.stderr
        assert not any("Traceback" in ln for ln in lines)


def test_allow_unsteered_serves_without_the_failing_pack_and_says_so(tiny_model: Path, packs: dict[str, Path],
                                                                     tmp_path: Path, plain: SteeredLlama) -> None:
    broken = _broken_copy(packs["open"], tmp_path / "broken")
    port = free_port()
    cmd = finesteer_serve_cmd(str(tiny_model), "--pack", str(broken), "--pack", str(packs["shut"]),
                              "--allow-unsteered", "--port", str(port), "--threads", THREADS, "--n-ctx", str(N_CTX))
    with running(cmd, port, tmp_path / "server.log") as srv:
        assert "STEERING DISABLED" in srv.log_text()
        c = openai.OpenAI(base_url=srv.base_url, api_key="none", max_retries=0, timeout=120)
        r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=24, temperature=0)
        st = r.model_extra["steering"]
        assert st["steered"] is False and "sha256" in st["unsteered_reason"]
        assert r.choices[0].message.content == plain.generate(MSG, max_tokens=24).text
        with pytest.raises(openai.BadRequestError) as ei:
            c.chat.completions.create(model="tiny", messages=MSG, max_tokens=2, extra_body={"steering": {
                "packs": ["broken"]}})
        assert _err(ei)["code"] == "pack_unavailable"
        ok = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=2,
                                       extra_body={"steering": {"packs": ["shut"]}})
        assert ok.model_extra["steering"]["packs"][0]["name"] == "shut"


@pytest.mark.slow  # ~20 s on 2 cores
def test_bounded_load_no_failures_and_flat_rss(server, client: openai.OpenAI, plain: SteeredLlama) -> None:
    """200 requests from 8 client threads (steered and not, streaming and not) on 2 slots: every one
    answers 200 with the exact text a sequential run gives, and the server's RSS and threads stay flat."""
    import concurrent.futures

    import psutil

    prompts = ["hello there", "what is a cat", "tell me a story", "count to five"]
    ref = {(p, False): plain.generate([{"role": "user", "content": p}], max_tokens=12).text for p in prompts}
    for p in prompts:
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": p}], max_tokens=12,
                                           temperature=0)
        assert r.model_extra["steering"]["steered"]
        ref[(p, True)] = r.choices[0].message.content
    proc = psutil.Process(server.proc.pid)

    def one(i: int) -> bool:
        p, steered, stream = prompts[i % 4], bool(i % 3), bool(i % 2)
        kw = dict(model="tiny", messages=[{"role": "user", "content": p}], max_tokens=12, temperature=0)
        if not steered:
            kw["extra_body"] = {"steering": None}
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
        else:
            text = client.chat.completions.create(**kw).choices[0].message.content
        return text == ref[(p, steered)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        warm = list(pool.map(one, range(40)))
        rss0, threads0 = proc.memory_info().rss, proc.num_threads()
        rest = list(pool.map(one, range(40, 200), timeout=300))
    rss1, threads1 = proc.memory_info().rss, proc.num_threads()
    assert all(warm) and all(rest), f"{(warm + rest).count(False)} answers differ from the sequential run"
    assert rss1 - rss0 < 16 << 20, f"RSS grew {(rss1 - rss0) >> 20} MiB over 160 requests"
    assert threads1 <= threads0 + 2
    h = _health(server)
    assert h["slots"]["idle"] == 2 and h["slots"]["waiting"] == 0
