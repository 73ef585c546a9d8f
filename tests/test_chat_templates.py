"""Chat templates: the model's own, a built-in or a file by choice, and a loud plain fallback for base models."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from finesteer_edge import SteeredLlama
from finesteer_edge.llama.chat_template import BUILTIN_TEMPLATES, ChatTemplate, ChatTemplateError
from finesteer_edge.testing.packs import make_random_pack
from finesteer_edge.testing.tiny_model import write_tiny_model

from .conftest import run_cli

KW = dict(n_ctx=256, n_threads=1)
SYS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model: no tokenizer.chat_template key at all."""
    return write_tiny_model(tmp_path_factory.mktemp("base") / "base.gguf", "qwen2", chat_template=None)


def write_jsonl_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_of(llm: SteeredLlama, messages: list[dict[str, str]]) -> str:
    return "".join(llm.session.token_text(t) for t in llm.prompt_tokens(messages))


def test_base_model_falls_back_to_plain_loudly(base_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "finesteer_edge"), pytest.warns(UserWarning, match="no chat template"):
        llm = SteeredLlama(base_model, **KW)
    assert "PLAIN text" in caplog.text and "--chat-template" in caplog.text
    assert llm.chat_template.name == "plain (fallback)"
    assert text_of(llm, [{"role": "user", "content": "hi"}]) == "hi"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "x"}]
    assert text_of(llm, chat) == "user: hi\nassistant: yo\nuser: x\nassistant:"
    llm.close()


def test_an_explicit_choice_is_silent_and_used(base_model: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when the user chose
        plain = SteeredLlama(base_model, chat_template="plain", **KW)
        chatml = SteeredLlama(base_model, chat_template="chatml", **KW)
        f = tmp_path / "mine.jinja"
        f.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
        mine = SteeredLlama(base_model, chat_template=str(f), **KW)
    assert text_of(plain, [{"role": "user", "content": "hi"}]) == "hi"
    assert text_of(chatml, SYS) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" \
                                   "<|im_start|>assistant\n"
    assert mine.chat_template.name == "mine.jinja"
    assert text_of(mine, SYS) == "[system] Be brief.\n[user] hi\n[assistant] "
    r = chatml.generate("hi", max_tokens=4)
    assert r.prompt_tokens == len(chatml.prompt_tokens([{"role": "user", "content": "hi"}]))
    for llm in (plain, chatml, mine):
        llm.close()


def test_an_unknown_choice_fails_before_loading(base_model: Path) -> None:
    with pytest.raises(ChatTemplateError, match="unknown chat template 'nope'.*chatml"):
        SteeredLlama(base_model, chat_template="nope", **KW)


def test_a_template_the_renderer_cannot_run_falls_back_loudly(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "bad.gguf", "llama", chat_template="{% for m in messages %}{{ m.content ")
    with pytest.warns(UserWarning, match="cannot be rendered here"):
        llm = SteeredLlama(model, **KW)
    assert llm.chat_template.name == "plain (fallback)"
    llm.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = SteeredLlama(model, chat_template="chatml", **KW)
    assert text_of(fixed, [{"role": "user", "content": "hi"}]).startswith("<|im_start|>user\nhi")
    fixed.close()


@pytest.mark.parametrize("name", [n for n in BUILTIN_TEMPLATES if n != "plain"])
def test_builtin_templates_place_the_system_prompt_as_their_family_does(name: str) -> None:
    t = ChatTemplate(BUILTIN_TEMPLATES[name], bos_token="<B>", name=name)
    text = t.render(SYS + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}])
    assert text.index("Be brief.") < text.index("hi") < text.index("ok") < text.index("more")
    if name == "gemma":  # no system role: folded into the first user turn
        assert text.startswith("<B><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n") and "system" not in text
        assert text.endswith("<start_of_turn>model\n") and "<start_of_turn>model\nok<end_of_turn>" in text
    else:  # a turn of its own
        assert "system" in text and text.count("Be brief.") == 1
    if name == "llama3":
        assert text.startswith("<B><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    if name == "phi3":
        assert text.startswith("<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n")
        assert text.endswith("<|assistant|>\n")


def test_cli_chat_template_option_and_fallback_warning(base_model: Path) -> None:
    r = run_cli("generate", str(base_model), "--no-pack", "--prompt", "hi", "-n", "3", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "no chat template" in r.stderr and "--chat-template" in r.stderr
    assert json.loads(r.stdout)["chat_template"] == "plain (fallback)"
    r = run_cli("generate", str(base_model), "--no-pack", "--prompt", "hi", "-n", "3", "--json", "--threads", "1",
                "--chat-template", "chatml")
    assert r.returncode == 0, r.stderr
    assert "no chat template" not in r.stderr and json.loads(r.stdout)["chat_template"] == "chatml"
    r = run_cli("generate", str(base_model), "--no-pack", "--prompt", "hi", "--chat-template", "nope")
    assert r.returncode == 2 and "unknown chat template" in r.stderr


def test_extract_records_the_template_it_used(base_model: Path, tmp_path: Path) -> None:
    from finesteer_edge.train.activations import load_activations

    rows = [{"prompt": f"Say something about topic {i}", "desired": "Gladly.", "undesired": "No.",
             "split": "train" if i < 4 else "val"} for i in range(6)]
    data = write_jsonl_rows(tmp_path / "pairs.jsonl", rows)
    acts = tmp_path / "acts.safetensors"
    r = run_cli("extract", str(base_model), "--task", "pairs", "--data", str(data), "--out", str(acts),
                "--chat-template", "chatml", "--threads", "1", "--n-ctx", "256")
    assert r.returncode == 0, r.stderr
    assert load_activations(acts).meta["chat_template"] == "chatml"


def test_steering_runs_on_a_base_model_with_a_chosen_template(base_model: Path, tmp_path: Path) -> None:
    pack = make_random_pack(base_model, tmp_path / "pack", tau=-1.0, vector_norm=30.0)
    llm = SteeredLlama(base_model, pack, chat_template="chatml", **KW)
    r = llm.generate("hi", max_tokens=4)
    assert r.steered and llm.selftest is not None
    llm.close()
