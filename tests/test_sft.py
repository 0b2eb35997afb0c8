"""sft.py on a tiny model (CPU): the loss mask covers exactly the assistant turn and its <|im_end|>; the loss
falls; a killed run (SIGKILL) resumes to the same final weights; the saved folder reloads in transformers with the
same logits; torchrun with 2 processes (gloo, FSDP2) matches 1 process with the same global batch; bad input fails
clearly."""
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file

import model as M
import sft
from common import chat_ids, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIS = ["Dengue", "Malaria", "Influenza", "Measles", "Typhoid", "Cholera"]
SYM = ["fever", "rash", "cough", "headache", "diarrhea", "vomiting", "chills", "myalgia"]


def chat_row(i):
    d, s = DIS[i % 6], SYM[(i * 3) % 8]
    return {"id": f"r{i}", "messages": [
        {"role": "system", "content": "Answer the question."},
        {"role": "user", "content": f"A patient presents with {s}. Which disease? A. {d} B. {DIS[(i + 1) % 6]}"},
        {"role": "assistant", "content": f"<think>{s.capitalize()} points to {d}. {d} is option A.</think>\n"
                                         f"<answer>A</answer>"}]}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    rows = [chat_row(i) for i in range(40)] + [{"text": f"{x} is a disease with {y}."} for x in DIS for y in SYM[:2]]
    with open(d / "sft.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [json.dumps(r) for r in rows]
    tok = M.train_tokenizer(texts, str(d / "tok"), vocab_size=400)
    M.init_model(str(d / "init"), len(tok), seed=0, tokenizer=tok, hidden_size=64, intermediate_size=128,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return d, tok


def args(d, out, *extra):
    return ["--data", str(d / "sft.jsonl"), "--init", str(d / "init"), "--out", str(out), "--steps", "10",
            "--batch-size", "8", "--micro-batch", "3", "--lr", "3e-3", "--warmup", "2", "--val-frac", "0.1",
            "--eval-every", "5", "--max-len", "256", *extra]


def weights(run):
    return load_file(os.path.join(run, "final", "model.safetensors"))


def test_loss_mask_and_helpers(env):
    d, tok = env
    row = chat_row(3)
    ids, start = sft.encode(tok, row, "x:1", sft.special_ids(tok))
    assert tok.decode(ids[start:]) == row["messages"][2]["content"] + "<|im_end|>"
    assert ids[:start] == chat_ids(tok, row["messages"][:2])  # the prompt exactly as generation sees it
    ids, start = sft.encode(tok, {"text": "fever and rash"}, "x:2", sft.special_ids(tok))
    assert start == 1 and tok.decode(ids) == "fever and rash<|endoftext|>"
    x, y = sft.pad_batch([[5, 6, 7, 8], [1, 2]], [2, 1], pad_id=0)
    assert x.tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]] and y.tolist() == [[-100, 7, 8, -100], [2, -100, -100, -100]]
    assert M.lr_at(0, 100, 10, 1.0) == pytest.approx(0.1) and M.lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert M.lr_at(55, 100, 10, 1.0, 0.1) == pytest.approx(0.55) and M.lr_at(100, 100, 10, 1.0) == pytest.approx(0.1)
    # ranks get the same number of micro-batches, together exactly the global batch
    lens = [5, 9, 2, 7, 7]
    parts = [sft.split_for_rank([0, 1, 2, 3, 4], lens, r, 2, 2) for r in range(2)]
    assert [len(p) for p in parts] == [2, 2] and parts[1][1] is None
    assert sorted(i for p in parts for m in p if m for i in m) == [0, 1, 2, 3, 4]


def test_shared_prefix_runs_once_with_the_same_loss_and_gradients(env):
    # chat rows of different lengths open with one system prompt: token_loss_sum runs it once (group_logprobs);
    # the summed loss and every gradient equal the plain padded forward's. Text rows (start 1) never share.
    d, tok = env
    sp = sft.special_ids(tok)
    data = [sft.encode(tok, chat_row(i), "x", sp) for i in (0, 1, 5, 7)]
    P = next(j for j in range(99) if len({ids[j] for ids, _ in data}) > 1)
    assert 8 <= P <= min(st for _, st in data)
    model = M.load_model(str(d / "init"))
    grads = []
    assert sft.shares_prefix(data, range(4)) and not sft.shares_prefix(data, range(4), min_shared=P + 1)
    for shared in (True, False):  # the shared path, the plain path
        model.zero_grad()
        loss, n = sft.token_loss_sum(model, data, [0, 1, 2, 3], 0, "cpu", nullcontext(), shared)
        loss.backward()
        grads.append((loss.item(), n, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (l1, n1, g1), (l2, n2, g2) = grads
    assert n1 == n2 == sum(len(ids) for ids, _ in data) and l1 == pytest.approx(l2, rel=1e-5) and l1 > 0
    assert all(torch.allclose(g1[k], g2[k], atol=1e-6, rtol=1e-4) for k in g1)
    assert sum(g.abs().sum() for g in g1.values()) > 0


@pytest.mark.parametrize("text_rows", [0, 3])
def test_every_rank_runs_the_same_passes(env, text_rows):
    """With per-block FSDP units each pass through a block is an all-gather, so every rank must make the same passes
    in the same order whatever rows its micro-batches hold (NCCL hangs otherwise): 11 chat rows (a shared system
    prompt: group_logprobs, two passes) or with text rows among them (one pass), over 2 and 8 simulated ranks,
    micro-batches of 2, single rows and dummies included."""
    d, tok = env
    sp = sft.special_ids(tok)
    data = [sft.encode(tok, chat_row(i), "x", sp) for i in range(11)]
    data += [sft.encode(tok, {"text": f"{x} is a disease."}, "x", sp) for x in DIS[:text_rows]]
    model = M.load_model(str(d / "init"))
    passes = []
    model.model.layers[0].register_forward_hook(lambda *a: passes.append(a[1][0].shape))
    items, lengths = list(range(len(data))), [len(ids) for ids, _ in data]
    shared = sft.shares_prefix(data, items)
    assert shared == (text_rows == 0)
    for world in (2, 8):
        per_rank = []
        for rank in range(world):
            passes.clear()
            with torch.no_grad():
                for idx in sft.split_for_rank(items, lengths, rank, world, 2):
                    sft.token_loss_sum(model, data, idx, 0, "cpu", nullcontext(), shared)
                    passes.append("end of micro-batch")
            per_rank.append([p if isinstance(p, str) else "pass" for p in passes])
        assert all(p == per_rank[0] for p in per_rank), (world, per_rank)
        assert per_rank[0].count("pass") == (2 if shared else 1) * per_rank[0].count("end of micro-batch")


def test_packed_rows_give_the_padded_batch_loss_and_gradients(env):
    # token_loss_sum's plain path packs rows (pack_batch + segment_ids): the log-probs and gradients equal the
    # padded batch's, where no row sees another; rows of mixed lengths and loss starts, packing several per row
    d, tok = env
    sp = sft.special_ids(tok)
    data = [sft.encode(tok, r, "x", sp) for r in (chat_row(2), {"text": "Dengue is a disease with fever."},
                                                   {"text": "rash"}, {"text": "Malaria, cough"}, chat_row(4))]
    x, y, pos, seg = sft.pack_batch([ids for ids, _ in data], [st for _, st in data], 0)
    assert len(x) < len(data) and x.shape[1] == max(len(ids) for ids, _ in data)  # really packed
    assert (y != -100).sum() == sum(len(ids) - max(st, 1) for ids, st in data)
    model = M.load_model(str(d / "init"))
    grads = []
    for packed in (True, False):
        model.zero_grad()
        if packed:
            lp = model.seq_logprobs(x, y, entropy=False, position_ids=pos, segment_ids=seg)[0]
        else:
            lp = model.seq_logprobs(*sft.pad_batch([ids for ids, _ in data], [st for _, st in data], 0), entropy=False)[0]
        (-lp.sum()).backward()
        grads.append((lp.sum().item(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = grads
    assert l1 == pytest.approx(l2, rel=1e-5) and all(torch.allclose(g1[k], g2[k], atol=1e-6, rtol=1e-4) for k in g1)
    # a row packed behind another is not seen by it: without the segments, the loss changes
    lp = model.seq_logprobs(x, y, entropy=False, position_ids=pos)[0]
    assert lp.sum().item() != pytest.approx(l1, rel=1e-4)  # (a random model attends diffusely: 7e-4 here)


def test_train_resume_reload_and_two_ranks(env, tmp_path):
    d, tok = env
    full, killed, two, blocks = tmp_path / "full", tmp_path / "killed", tmp_path / "two", tmp_path / "blocks"
    # 2 processes (gloo + FSDP2) in the background while the 1-process runs go on: the whole model one unit, as in
    # the tiny preset, and one unit per block (the default: gradients reduce-scattered every micro-batch, and the
    # global batches mix rows that share a system prompt with rows that do not)
    env2 = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               os.path.join(ROOT, "sft.py"), *args(d, out, "--micro-batch", "2", *extra)],
                              env=env2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for out, extra in ((two, ["--no-fsdp-per-block"]), (blocks, []))]
    try:
        sft.main(args(d, full))
        m = read_jsonl(full / "metrics.jsonl")
        losses = [r["loss"] for r in m if "loss" in r]
        vals = [r["val_loss"] for r in m if "val_loss" in r]
        assert len(losses) == 10 and len(vals) == 2 and all(r["tokens_per_s"] > 0 for r in m if "loss" in r)
        assert sum(losses[-3:]) / 3 < losses[0] - 0.5 and vals[1] < vals[0], (losses, vals)
        # SIGKILLed once it has saved a state, then the same command again: the same final weights and metrics as
        # the uninterrupted run, each step logged once (the killed process sums with this one's thread count)
        env1 = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "sft.py"), *args(d, killed, "--save-every", "2")],
                             env=env1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = killed / "state" / "state.json"
        while not state.exists() and p.poll() is None:
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not (killed / "final").exists() and 2 <= json.load(open(state))["extra"]["step"] < 10
        sft.main(args(d, killed, "--save-every", "2"))
        km = [r for r in read_jsonl(killed / "metrics.jsonl") if "loss" in r]
        assert [r["step"] for r in km] == list(range(1, 11)) and [r["loss"] for r in km] == pytest.approx(losses)
        a, b = weights(full), weights(killed)
        sft.main(args(d, killed))  # a finished run is not redone
        assert len(read_jsonl(killed / "metrics.jsonl")) == len(m)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
        assert any(not torch.allclose(a[k], load_file(str(d / "init" / "model.safetensors"))[k]) for k in a)
        # the final folder reloads in transformers with the logits of model.load_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
        hf = AutoModelForCausalLM.from_pretrained(str(full / "final"), dtype=torch.float32).eval()
        tok2 = AutoTokenizer.from_pretrained(str(full / "final"))
        ids = torch.tensor([sft.encode(tok2, chat_row(1), "x", sft.special_ids(tok2))[0]])
        with torch.no_grad():
            assert torch.allclose(hf(ids).logits, M.load_model(str(full / "final"))(ids), atol=1e-4)
        for proc, run in zip(procs, (two, blocks)):
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out
            c = weights(run)
            # fp32 summation order differs between 1 and 2 ranks (~1e-5 after 10 Adam steps); a wrong loss divisor
            # would move the weights by the order of the learning rate (1e-3)
            assert max((a[k] - c[k]).abs().max().item() for k in a) < 5e-5
            assert [r["val_loss"] for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r] == pytest.approx(vals)
            two_m = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
            assert [r["loss"] for r in two_m] == pytest.approx(losses, rel=1e-4)
            # Adam hides a constant gradient scale in the weights; the logged norm shows a wrong divisor
            assert [r["grad_norm"] for r in two_m] == pytest.approx([r["grad_norm"] for r in m if "loss" in r],
                                                                   rel=1e-4)
    finally:
        for proc in procs:
            proc.kill()


def test_bad_input(env, tmp_path):
    d, tok = env
    bad = tmp_path / "bad.jsonl"
    rows = [chat_row(0), {"messages": chat_row(1)["messages"][:2]}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = args(d, tmp_path / "r")
    base[1] = str(bad)
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'messages' must end with a non-empty assistant"):
        sft.main(base)
    # a chat row over --max-len is rejected with its reason (not truncated), a long text row is cut into windows;
    # nothing left -> an error
    long = tmp_path / "long.jsonl"
    row = chat_row(0)
    row["messages"][2]["content"] += " fever" * 100
    long.write_text(json.dumps(chat_row(0)) + "\n" + json.dumps(row) + "\n")
    base[1] = str(long)
    sft.main(base[:-2] + ["--max-len", "100", "--steps", "1"])
    rej = read_jsonl(tmp_path / "r" / "rejects.jsonl")
    assert len(rej) == 1 and rej[0]["line"] == 2 and "> --max-len 100" in rej[0]["reason"]
    with pytest.raises(ValueError, match="no usable rows"):
        sft.main(base[:-2] + ["--max-len", "10", "--out", str(tmp_path / "r2")])
    ids = tok("fever " * 50, add_special_tokens=False)["input_ids"] + [sft.special_ids(tok)[0]]
    long.write_text(json.dumps({"text": "fever " * 50}) + "\n")
    train, _, rej = sft.load_data(str(long), tok, 16, 0.0, 0)
    # windows overlap by one token: the targets (ids[start:] of each window) are ids[1:], each once
    assert rej == [] and [x for w, s in train for x in w[s:]] == ids[1:] and max(len(w) for w, _ in train) == 16
    assert all(w[0] == prev[-1] for prev, w in zip([w for w, _ in train], [w for w, _ in train][1:]))
    with pytest.raises(ValueError, match="exceeds the model context"):
        sft.main(args(d, tmp_path / "r3", "--max-len", "4096"))
    # a model whose vocabulary is smaller than the tokenizer's
    small = tmp_path / "small"
    M.init_model(str(small), 100, tokenizer=tok, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 num_key_value_heads=1)
    with pytest.raises(ValueError, match="vocab_size is 100"):
        sft.main(args(d, tmp_path / "r4", "--init", str(small)))


def test_loss_through_the_fused_logprob_equals_cross_entropy_on_full_logits():
    """token_loss_sum sends only the loss positions through lm_head (kernels.logprob): same value and gradient as
    cross-entropy over the full (B, T, V) logits."""
    torch.manual_seed(0)
    model = M.Transformer(M.ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, head_dim=8))
    data = [(torch.randint(1, 97, (n,)).tolist(), st) for n, st in ((9, 4), (5, 1), (12, 7))]
    loss, n = sft.token_loss_sum(model, data, [0, 1, 2], 0, "cpu", torch.autocast("cpu", enabled=False), False)
    g = torch.autograd.grad(loss, model.lm_head.weight)[0]
    x, y = sft.pad_batch([d[0] for d in data], [d[1] for d in data], 0)
    ref = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
    g_ref = torch.autograd.grad(ref, model.lm_head.weight)[0]
    assert n == 26 and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g, g_ref, atol=1e-5)
