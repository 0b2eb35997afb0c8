import os
import socket

import pytest

from common import (LETTERS, RELATION_SENTENCES, SYSTEM_PROMPT, MetricsLog, Progress, append_jsonl, build_messages,
                    check_record, eos_ids, extract_answer, is_well_formed, make_llm, parse_with_preset, prompt_ids,
                    read_jsonl, read_records, reward, sentence, write_jsonl)
from fake_llm_server import FakeLLMServer

REC = {"id": "q1", "source": "test", "question": "Which drug?", "options": {"A": "aspirin", "B": "heparin",
       "C": "warfarin", "D": "insulin"}, "answer": "C", "difficulty": None, "meta": {}}


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    words = "system user assistant A B C D . Which drug ? aspirin heparin warfarin insulin".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"])
    hf.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return hf


# ---------------------------------------------------------------------------------------------- JSONL, records

def test_jsonl_roundtrip_append_and_bad_line(tmp_path):
    p = str(tmp_path / "sub" / "a.jsonl")
    write_jsonl(p, [{"x": 1}, {"y": "é"}])
    append_jsonl(p, {"z": [1, 2]})
    assert read_jsonl(p) == [{"x": 1}, {"y": "é"}, {"z": [1, 2]}]
    assert os.listdir(tmp_path / "sub") == ["a.jsonl"]  # no temp file left behind
    with open(p, "a") as f:
        f.write("\n{broken\n")
    with pytest.raises(ValueError, match=r"a\.jsonl:5: invalid JSON"):
        read_jsonl(p)


@pytest.mark.parametrize("change,field", [
    ({"id": ""}, "'id'"), ({"question": None}, "'question'"), ({"options": {"A": "x"}}, "'options'"),
    ({"options": {"A": "x", "C": "y"}}, "'options' keys"), ({"options": {"A": "x", "B": " "}}, "options.B"),
    ({"answer": "E"}, "'answer'"), ({"answer": "c"}, "'answer'"), ({"difficulty": "hard"}, "'difficulty'"),
    ({"meta": []}, "'meta'")])
def test_check_record_names_the_field(change, field):
    assert check_record(REC) is None
    assert field in check_record({**REC, **change})


def test_read_records_reports_path_line_field(tmp_path):
    p = str(tmp_path / "r.jsonl")
    write_jsonl(p, [REC, {**REC, "id": "q2"}, {**REC, "answer": "Z"}])
    with pytest.raises(ValueError, match=r"r\.jsonl:3: field 'answer'"):
        read_records(p)
    write_jsonl(p, [REC, {**REC, "id": "q2"}])
    assert [r["id"] for r in read_records(p)] == ["q1", "q2"]


# ---------------------------------------------------------------------------------------------- prompt

def test_build_messages_and_prompt_ids():
    msgs = build_messages(REC)
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"] == SYSTEM_PROMPT
    assert "<think>" in SYSTEM_PROMPT and "<answer>" in SYSTEM_PROMPT
    assert msgs[1]["content"].endswith("A. aspirin\nB. heparin\nC. warfarin\nD. insulin")
    tok = tiny_tokenizer()
    ids = prompt_ids(tok, REC)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    text = tok.decode(ids)
    assert "warfarin" in text and text.rstrip().endswith("<|im_start|> assistant")
    assert eos_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]


# ---------------------------------------------------------------------------------------------- the answer rule

OPTS = {"A": "Aspirin", "B": "Heparin", "C": "Low molecular heparin", "D": "E. coli"}
EXTRACT = [  # (text, letters, expected)
    ("<think>x</think><answer>C</answer>", "ABCD", "C"),
    ("<answer>(C)</answer>", "ABCD", "C"), ("<answer>[C]</answer>", "ABCD", "C"),
    ("<answer>C.</answer>", "ABCD", "C"), ("<answer>C)</answer>", "ABCD", "C"),
    ("<answer>Option C</answer>", "ABCD", "C"), ("<answer>Answer: C</answer>", "ABCD", "C"),
    ("<answer>The answer is (B)</answer>", "ABCD", "B"), ("<answer>C. warfarin</answer>", "ABCD", "C"),
    ("<answer>\n  D \n</answer>", "ABCD", "D"),
    ("<answer>c</answer>", "ABCD", "C"), ("<answer>(c)</answer>", "ABCD", "C"),
    ("<answer>c. warfarin</answer>", "ABCD", None),            # lowercase only as the whole block
    ("<answer>A or B</answer>", "ABCD", None), ("<answer>A, C</answer>", "ABCD", None),
    ("<answer>AB</answer>", "ABCD", None), ("<answer>A. aspirin B. heparin</answer>", "ABCD", None),
    ("<answer>Aspirin</answer>", "ABCD", None), ("<answer>I think B</answer>", LETTERS, None),
    ("<think>I am A sure</think><answer>Insulin</answer>", LETTERS, None),  # JMED: A..U words never match
    ("<think>I pick U</think>", LETTERS, None),
    ("<answer>E</answer>", "ABCD", None),                       # not an option of this question
    ("<answer>E</answer>", LETTERS, "E"),
    ("<answer>A</answer> wait, no: <answer>B</answer>", "ABCD", "B"),  # the last block wins
    ("<answer>A</answer> wait <answer>B", "ABCD", None),        # last block unclosed: never guessed
    ("<answer>C", "ABCD", None), ("no tags, the answer is C", "ABCD", None), ("", "ABCD", None),
    ("<answer></answer>", "ABCD", None),
    ("<think>这是肺炎的典型表现</think><answer>C</answer>", "ABCDE", "C"),
    ("<answer>（C）</answer>", "ABCDE", "C"), ("<answer>答案：D</answer>", "ABCDE", "D"),
    ("<answer>选C</answer>", "ABCDE", None),
    ("<answer>C</answer> because the answer is definitely C", "ABCD", "C"),
    # an option's own text that looks like a mark: a mark only counts for a letter of the question, and with the
    # options dict the chosen option's own text is read as one ("E. coli" in a 5-option question)
    ("<answer>C. S. aureus</answer>", "ABCD", "C"), ("<answer>(C) S. aureus</answer>", "ABCD", "C"),
    ("<answer>A. E. coli</answer>", {"A": "E. coli", "B": "x", "C": "y", "D": "z", "E": "w"}, "A"),
    ("<answer>A. E. coli</answer>", "ABCDE", None),             # without the texts, E. reads as option E
    ("<answer>A. E. coli B. x</answer>", {"A": "E. coli", "B": "x", "C": "y", "D": "z", "E": "w"}, None),
    # one option's full text, case and whitespace normalised, is that option (the tiny run's chains answer so)
    ("<answer> Heparin</answer>", OPTS, "B"), ("<answer>heparin </answer>", OPTS, "B"),
    ("<answer>Low  molecular heparin</answer>", OPTS, "C"), ("<answer>E. coli</answer>", OPTS, "D"),
    ("<answer>Heparin</answer>", "ABCD", None),                 # without the texts: no letter, never guessed
    ("<answer>Hepari</answer>", OPTS, None), ("<answer>Heparin or Aspirin</answer>", OPTS, None),
    ("<answer>A</answer>", {"A": "B", "B": "A"}, "A"),           # a lone letter stays a letter
    ("<answer>Twin</answer>", {"A": "Twin", "B": "twin"}, None),  # two options read the same: never guessed
]


@pytest.mark.parametrize("text,letters,expected", EXTRACT)
def test_extract_answer(text, letters, expected):
    assert extract_answer(text, letters) == expected


WELL_FORMED = [
    ("<think>reasoning</think>\n<answer>C</answer>", True),
    ("<think>reasoning</think>\n<answer>C</answer><|im_end|>", True),
    ("\n<think>r</think><answer>(C)</answer>\n<|endoftext|>\n", True),
    ("<think> \n</think><answer>C</answer>", False),                  # empty reasoning
    ("<answer>C</answer>", False),                                    # no think block
    ("<think>r</think><answer>C</answer> trailing text", False),      # text after the block
    ("<think>r</think><answer>A</answer><answer>C</answer>", False),  # two answer blocks
    ("<think>a</think><think>b</think><answer>C</answer>", False),    # two think blocks
    ("preamble <think>r</think><answer>C</answer>", False),
    ("<think>r</think><answer>A or C</answer>", False),
    ("<think>r</think><answer>C", False),
    ("<think>r<answer>C</answer>", False),
]


@pytest.mark.parametrize("text,expected", WELL_FORMED)
def test_is_well_formed(text, expected):
    assert is_well_formed(text, "ABCD") is expected


def test_text_answers_are_well_formed_and_rewarded():
    rec = {"options": OPTS, "answer": "B"}
    assert is_well_formed("<think>r</think>\n<answer> Heparin</answer>", OPTS)
    assert reward("<think>r</think>\n<answer> Heparin</answer>", rec) == 1.0
    assert reward("<think>r</think>\n<answer> Aspirin</answer>", rec) == 0.0
    assert reward("<think>r</think>\n<answer> Warfarin</answer>", rec) == -0.5  # no option: malformed


def test_sentences_end_at_the_recalled_name():
    assert sentence("Dengue", "treated_with", "Paracetamol") == "Dengue is treated with Paracetamol"
    assert sentence("Dengue", "treated_with", "Paracetamol", reverse=True) == "Paracetamol is used to treat Dengue"
    for rel, (fwd, rev) in RELATION_SENTENCES.items():  # a probe's prompt is the sentence without its last name
        assert fwd.startswith("{h} ") and fwd.endswith(" {t}") and rev.startswith("{t} ") and rev.endswith(" {h}")


def test_preset_variant_overrides_the_shared_value():
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1.0)
    tiny = dict(micro_batch=16, lr=0.5, cold=dict(lr=0.1), base=dict(micro_batch=32))  # bare --tiny: the first
    assert vars(parse_with_preset(p, ["--tiny", "base"], tiny)) == dict(micro_batch=32, lr=0.5, tiny="base")
    p2 = argparse.ArgumentParser()
    p2.add_argument("--micro-batch", type=int, default=2)
    p2.add_argument("--lr", type=float, default=1.0)
    assert vars(parse_with_preset(p2, ["--tiny", "--lr", "3"], tiny)) == dict(micro_batch=16, lr=3.0, tiny="cold")


def test_reward_levels_and_ordering():
    good, wrong = "<think>r</think>\n<answer>C</answer>", "<think>r</think>\n<answer>B</answer>"
    malformed_right = ["<answer>C</answer>", "<think>r</think><answer>C</answer> extra", "C",
                       "<think>r</think><answer>A</answer><answer>C</answer>"]
    assert reward(good, REC) == 1.0 and reward(wrong, REC) == 0.0
    for t in malformed_right + ["", "<think>r</think><answer>A or C</answer>"]:
        assert reward(t, REC) == -0.5, t
    # a correct letter in a broken format earns less than a tidy wrong answer, which earns less than a right one
    assert max(reward(t, REC) for t in malformed_right) < reward(wrong, REC) < reward(good, REC)
    # the reward of a well-formed output agrees with extract_answer for every option
    for x in "ABCD":
        assert reward(f"<think>r</think><answer>{x}</answer>", REC) == float(x == REC["answer"])
    # the answer may repeat its option's text, even one that starts like another option ("E. coli")
    bugs = {**REC, "options": {"A": "E. coli", "B": "S. aureus", "C": "C. difficile", "D": "Listeria"}}
    assert reward(f"<think>r</think><answer>{REC['answer']}. C. difficile</answer>", bugs) == float(
        REC["answer"] == "C")
    assert [reward(f"<think>r</think><answer>{x}. {t}</answer>", bugs) for x, t in bugs["options"].items()] == [
        float(x == REC["answer"]) for x in bugs["options"]]


# ---------------------------------------------------------------------------------------------- HTTP client

def test_http_llm_retry_cache_n_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-secret")
    convs = [build_messages(REC), build_messages({**REC, "question": "Other?"})]

    def reply(messages, n, temperature):
        return [f"<think>{messages[-1]['content'][:5]} t={temperature} #{i}</think><answer>A</answer>" for i in range(n)]

    with FakeLLMServer(reply, fail=[500]) as srv:
        llm = make_llm(srv.url, model_name="m1", cache_dir=str(tmp_path / "cache"), concurrency=2,
                       api_key_env="FAKE_KEY", backoff=0.01)
        out = llm(convs, n=3, temperature=0.7, max_tokens=32, seed=5)
        assert [len(o) for o in out] == [3, 3] and out[0][0].startswith("<think>Which")
        assert out[1][2].startswith("<think>Other") and out[1][2].endswith("#2</think><answer>A</answer>")
        assert srv.requests == 3 and llm.stats["retries"] == 1           # the 500 was retried
        assert set(srv.auth) == {"Bearer sk-secret"}
        body = srv.payloads[-1]
        assert (body["model"], body["n"], body["temperature"], body["max_tokens"], body["seed"]) == ("m1", 3, 0.7, 32, 5)
        assert len(os.listdir(tmp_path / "cache")) == 2
        cached = open(next((tmp_path / "cache").iterdir())).read()
        assert "sk-secret" not in cached                                  # the key is never written down
        # a fresh client (a resumed run) is served from the cache without any request
        llm2 = make_llm(srv.url, model_name="m1", cache_dir=str(tmp_path / "cache"), api_key_env="FAKE_KEY")
        assert llm2(convs, n=3, temperature=0.7, max_tokens=32, seed=5) == out
        assert srv.requests == 3 and llm2.stats["cache_hits"] == 2
        llm2(convs[:1], n=3, temperature=0.7, max_tokens=32, seed=6)      # another seed is another call
        assert srv.requests == 4


def test_http_llm_server_ignoring_n_and_client_errors(tmp_path):
    with FakeLLMServer(lambda m, n, t: ["<answer>B</answer>"]) as srv:  # always one choice, whatever n
        llm = make_llm(srv.url, model_name="m", backoff=0.01)
        assert llm([build_messages(REC)], n=3) == [["<answer>B</answer>"] * 3]
        assert srv.requests == 3 and [p["seed"] for p in srv.payloads] == [0, 1, 2]
    with FakeLLMServer(fail=[400]) as srv:  # a client error is not retried
        llm = make_llm(srv.url, model_name="m", backoff=0.01)
        with pytest.raises(RuntimeError, match="HTTP 400"):
            llm([build_messages(REC)])
        assert srv.requests == 1
    with FakeLLMServer(fail=[503, 429, 503]) as srv:  # gives up after max_retries + 1 tries
        llm = make_llm(srv.url, model_name="m", backoff=0.01, max_retries=2)
        with pytest.raises(RuntimeError, match="after 3 tries"):
            llm([build_messages(REC)])
        assert srv.requests == 3


def test_http_llm_connection_error_is_retried():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port any more
    llm = make_llm(f"http://127.0.0.1:{port}/v1", model_name="m", backoff=0.01, max_retries=2)
    with pytest.raises(RuntimeError, match="after 3 tries.*ConnectionError"):
        llm([build_messages(REC)])
    assert llm.stats["retries"] == 2


# ---------------------------------------------------------------------------------------------- progress, metrics

def test_progress_and_metrics(tmp_path, capsys):
    p = Progress(4, "eval", every=3600)
    p.update(acc=0.5)
    p.update()
    assert capsys.readouterr().err.startswith("eval 1/4 ")  # first call prints, the second is throttled
    p.update(2, acc=0.25)
    err = capsys.readouterr().err
    assert err.startswith("eval 4/4 ") and "acc=0.25" in err  # the last update always prints
    log = MetricsLog(str(tmp_path / "m.jsonl"))
    log.log({"step": 1, "loss": 2.0})
    log.log({"step": 2})
    rows = read_jsonl(str(tmp_path / "m.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and all(isinstance(r["time"], float) for r in rows)
