"""grpo.py: advantages and loss on hand-computed examples, gradient == naive eq. 1, normalisation independent of
micro-batches and ranks (2-rank update == 1-rank update), a real learning run from reward alone under torchrun,
kill-and-resume. Run as a script (under torchrun) it is the distributed worker of the rank-equivalence test."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import grpo  # noqa: E402
import model as M  # noqa: E402
import sft  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
WORDS = "fever cough rash ache pain chill sore swelling itch cramp nausea dizzy".split()


# ----------------------------------------------------------------------------------------------- tiny assets

def make_records(n, seed=0, answer="B"):
    """Multiple-choice records whose right answer is always `answer`: learnable from reward alone."""
    rng = random.Random(seed)
    diffs = ("easy", "moderate", "difficult")
    return [dict(id=f"q{i}", source="synthetic", question=f"Case {i}: which finding fits {rng.choice(WORDS)}?",
                 options={L: rng.choice(WORDS) for L in "ABCD"}, answer=answer, difficulty=diffs[i % 3], meta={})
            for i in range(n)]


def sft_format(model, tok, records, steps=60, lr=3e-3, seed=0):
    """A brief cold start: teach the answer *format* with a uniformly random letter (reward ~ 0.25 after it)."""
    import sft
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    for _ in range(steps):
        batch = rng.sample(records, 16)
        ps = [common.prompt_ids(tok, r) for r in batch]
        cs = [tok.encode(f"<think>{rng.choice(WORDS)}</think>\n<answer>{rng.choice('ABCD')}</answer><|im_end|>")
              for _ in batch]
        x, y = sft.pad_batch([p + c for p, c in zip(ps, cs)], [len(p) for p in ps], tok.pad_token_id)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def make_assets(root, n=48, seed=0):
    """root/{data.jsonl, val.jsonl, sft/} : records, a tiny tokenizer and a format-SFT'd tiny model."""
    os.makedirs(root, exist_ok=True)
    recs, val = make_records(n, seed), make_records(12, seed + 1)
    for r in val:
        r["id"] = "v" + r["id"]
    common.write_jsonl(os.path.join(root, "data.jsonl"), recs)
    common.write_jsonl(os.path.join(root, "val.jsonl"), val)
    texts = [common.SYSTEM_PROMPT, "<think>x</think>\n<answer>A</answer>"] + \
        [r["question"] + " " + " ".join(f"{k}. {v}" for k, v in r["options"].items()) for r in recs]
    tok = M.train_tokenizer(texts * 4, os.path.join(root, "tok"), vocab_size=400)
    torch.manual_seed(seed)
    model = M.init_model(os.path.join(root, "init"), len(tok), seed=seed, tokenizer=tok, hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    sft_format(model, tok, recs)
    M.save_model(model, os.path.join(root, "sft"), tok)
    return tok


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grpo"))
    tok = make_assets(root)
    return root, tok


def metrics(run):
    return [r for r in common.read_jsonl(os.path.join(run, "metrics.jsonl")) if "reward" in r]


def run_args(root, out, *extra):
    return ["--stage", "1", "--data", f"{root}/data.jsonl", "--init", f"{root}/sft", "--out", out, "--tiny",
            "--prompts", "8", "--k", "8", "--max-new-tokens", "24", "--lr", "2e-3", "--eval-every", "1000",
            "--plateau-window", "1000",
            *extra]


# ----------------------------------------------------------------------------------------------- the objective

def test_group_advantages_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [1.0, -0.5, 0.0, 0.0]])
    want = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [0.875, -0.625, -0.125, -0.125]])
    assert torch.allclose(grpo.group_advantages(r), want)
    s = grpo.group_advantages(r, std_norm=True)  # row 0: unbiased std sqrt(1/3) -> 0.5 / 0.57735 = 0.866
    assert torch.allclose(s[0], torch.tensor([0.866, -0.866, -0.866, 0.866]), atol=1e-3)
    assert torch.equal(s[1], torch.zeros(4)) and torch.isfinite(s).all()  # all-equal group: 0, not NaN


def test_policy_loss_hand_computed():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([0.5, -1.0])
    # eq. 1: -(0.5 * (-1 - 2) + (-1) * (-0.5)) = 1.0
    assert grpo.policy_loss(logp, mask, adv).item() == pytest.approx(1.0)
    # PPO clip, ratio e^0.3 = 1.35: A > 0 clipped at 1.2 * 0.5 on 2 tokens, A < 0 keeps -1.35 -> -(1.2 - 1.35)
    got = grpo.policy_loss(logp, mask, adv, old_logp=logp - 0.3, clip_eps=0.2).item()
    assert got == pytest.approx(-(1.2 - torch.tensor(0.3).exp().item()), abs=1e-5)
    # k3 KL with ref - logp = 0.5 on the 3 real tokens: 0.1 * 3 * (e^0.5 - 0.5 - 1) added
    got = grpo.policy_loss(logp, mask, adv, ref_logp=logp + 0.5, kl_coef=0.1).item()
    assert got == pytest.approx(1.0 + 0.3 * (torch.tensor(0.5).exp().item() - 1.5), abs=1e-5)


def test_plateau_rules():
    w, pat = 3, 4
    assert grpo.plateau([0.1] * 2, [0.0] * 2, w, pat, 0.01, 0.9) is None  # fewer than `window` steps
    assert grpo.plateau([0.1] * 3, [1.0, 0.9, 0.95], w, pat, 0.01, 0.9).startswith("reward sparsity")
    rising = [0.1 * i for i in range(10)]
    assert grpo.plateau(rising, [0.0] * 10, w, pat, 0.01, 0.9) is None
    flat = rising[:4] + [0.3] * 8  # the moving average stops improving after step 5
    assert grpo.plateau(flat, [0.0] * 12, w, pat, 0.01, 0.9).startswith("reward plateau")
    assert grpo.plateau(flat[:9], [0.0] * 9, w, pat, 0.01, 0.9) is None  # still rising within `patience`


def test_val_overlapping_the_pool_is_refused(tmp_path):
    """--val must hold no item of --data: not a copy under another id, nor the same id with the same options. The
    same question with other options is another item (3 such stems here), as is the same id with other options."""
    recs, val = make_records(20), make_records(12, seed=1)
    for r in val:
        r["id"] = "v" + r["id"]
    assert sum(v["question"] in {r["question"] for r in recs} for v in val) == 3
    leak = [dict(recs[3], id="copy"), dict(val[0], id="q5", options=recs[5]["options"])]
    common.write_jsonl(tmp_path / "data.jsonl", recs)
    common.write_jsonl(tmp_path / "val.jsonl", val + [dict(val[1], id="q7")])
    args = grpo.get_args(["--stage", "1", "--data", str(tmp_path / "data.jsonl"), "--val", str(tmp_path / "val.jsonl"),
                          "--init", "x", "--out", "y", "--prompts", "4"])
    assert len(grpo.load_data(args, 1)[2]) == 13
    common.write_jsonl(tmp_path / "val.jsonl", val + leak)
    msg = f"--val {tmp_path}/val.jsonl: 2 of its 14 records are items of the training pool --data {tmp_path}/data.jsonl"
    with pytest.raises(SystemExit, match=re.escape(msg) + ".*e.g. copy, q5"):
        grpo.load_data(args, 1)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    c = M.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return M.Transformer(c)


def fixed_batch(P=4, k=4, eos=3, seed=0):
    """Rollouts by hand: P prompts x k completions of random lengths, some ending with the EOS (= the pad id),
    rewards with one all-equal group."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    prompts = [[rnd(4, 64) for _ in range(rnd(2, 6))] for _ in range(P)]
    rows = []
    for i in range(P * k):
        c = [rnd(4, 64) for _ in range(rnd(1, 7))]
        rows.append((prompts[i // k], c + [eos] if i % 3 else c))
    rewards = torch.tensor([[1.0, 0.0, -0.5, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, -0.5], [0.0, 1.0, 1.0, 1.0]])
    return rows, rewards


def uargs(**kw):
    import argparse
    d = dict(k=4, micro_batch=3, token_mean=False, loss_norm=10.0, temperature=0.7, ppo_epochs=1,
             clip_eps=0.0, kl_coef=0.0, grad_clip=1e9, drop_zero_var=False)
    d.update(kw)
    return argparse.Namespace(**d)


def one_update(model, rows, rewards, args, world=1, rank=0):
    """grpo.update with SGD(lr=1) on this rank's share: the weight change is minus the gradient."""
    adv = grpo.group_advantages(rewards).flatten()
    zero = (rewards.amax(1) == rewards.amin(1)).repeat_interleave(rewards.shape[1])
    keep = (~zero).float() if args.drop_zero_var else torch.ones(len(rows))
    n = len(rows) // world
    s = slice(rank * n, (rank + 1) * n)
    grpo.update(model, torch.optim.SGD(model.parameters(), lr=1.0), rows[s], adv[s], keep[s], args, world, pad_id=3)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_group_logprobs_equal_seq_logprobs(model_type):
    """The prefix-shared forward (each prompt once, its KV cache replicated for the k completions) gives the
    log-probs, entropies and gradients of the plain forward over every prompt + completion row."""
    rows, _ = fixed_batch()
    torch.manual_seed(0)
    model = M.Transformer(M.ModelConfig(
        model_type=model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    x, y = sft.pad_batch([p + c for p, c in rows], [len(p) for p, c in rows], 0)
    a, ent_a = model.seq_logprobs(x, y, 0.7)
    a.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    batch = grpo.group_batch(rows, [list(range(i, i + 4)) for i in range(0, len(rows), 4)], 0, "cpu")
    b, ent_b = model.group_logprobs(*batch, 0.7)
    b.sum().backward()
    torch.testing.assert_close(b[batch[3] != -100], a[y != -100], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)
    assert batch[0].shape[0] == 4 and batch[2].shape[0] == 16  # 4 prompts were run, not 16


@pytest.mark.parametrize("variant", ["eq1", "token_mean", "drop_zero_var"])
def test_update_gradient_equals_naive_eq1(variant):
    """The micro-batched, padded, fused-log-prob gradient == autograd of eq. 1 written naively, one unpadded
    sequence at a time with full logits (pad id == EOS id: the EOS counts, pads do not)."""
    rows, rewards = fixed_batch()
    args = uargs(**{variant: True} if variant != "eq1" else {})
    model = tiny_model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    one_update(model, rows, rewards, args)
    ref = tiny_model()
    adv = grpo.group_advantages(rewards).flatten()
    zero = (rewards.amax(1) == rewards.amin(1)).repeat_interleave(4)
    keep = [not (variant == "drop_zero_var" and z) for z in zero.tolist()]
    total = 0.0
    for (p, c), a, kp in zip(rows, adv, keep):
        logits = ref(torch.tensor([p + c]))[0, len(p) - 1:-1] / args.temperature  # predicts c
        lp = logits.log_softmax(-1).gather(1, torch.tensor(c)[:, None]).sum()
        total = total + (a * lp if kp else 0.0 * lp)
    if variant == "token_mean":
        loss = -total / sum(len(c) for _, c in rows)
    else:
        loss = -total / (sum(keep) * args.loss_norm)
    loss.backward()
    for k, p in ref.named_parameters():
        torch.testing.assert_close(before[k] - dict(model.named_parameters())[k], p.grad, atol=2e-6, rtol=1e-4)
    assert any(p.grad.abs().max() > 1e-4 for p in ref.parameters())  # a real, non-zero gradient was compared


def test_two_ranks_equal_one_rank(tmp_path):
    """torchrun 2 ranks (FSDP2, gloo), each with half the groups, == 1 process with all: the loss divisor is
    global (uneven --drop-zero-var counts per rank, different micro-batch splits)."""
    out = str(tmp_path / "two")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    __file__, out], env=ENV, check=True, cwd=ROOT, timeout=300)
    rows, rewards = fixed_batch()
    model = tiny_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    one_update(model, rows, rewards, uargs(drop_zero_var=True))
    two = M.load_model(out).state_dict()
    moved = 0.0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(two[k], v, atol=1e-6, rtol=1e-5)
        moved = max(moved, (v - init[k]).abs().max().item())
    assert moved > 1e-4


# ----------------------------------------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def quick_run(assets):
    root, _ = assets
    out = os.path.join(root, "quick")
    grpo.main(run_args(root, out, "--max-steps", "10"))
    return out


def test_learning_quick(quick_run):
    """One process, 10 steps from a format-only cold start (letters uniform): the reward rises from reward
    alone (the right letter is always B). Seeds: data 0, init 0, run 0. Measured -0.03 -> 0.36 (first 3 vs
    last 3 steps); asserted margin +0.15."""
    m = metrics(quick_run)
    first, last = sum(r["reward"] for r in m[:3]) / 3, sum(r["reward"] for r in m[-3:]) / 3
    print(f"quick learning: mean reward {first:.3f} (first 3 steps) -> {last:.3f} (last 3)")
    assert last > first + 0.15, (first, last)
    r = m[-1]
    assert 0 <= r["format_rate"] <= 1 and 0 <= r["zero_adv_frac"] <= 1 and r["entropy"] > 0 and r["t_gen"] > 0
    assert os.path.isfile(os.path.join(quick_run, "final", "model.safetensors"))


def test_resume_continues_the_same_run(assets, quick_run):
    """2 steps, then the same command with --max-steps 3 resumes from RUN_DIR/state: its steps (reward, loss,
    grad norm: functions of the weights, optimizer state and RNG) are those of the uninterrupted quick run."""
    root, _ = assets
    b = os.path.join(root, "resumed")
    grpo.main(run_args(root, b, "--max-steps", "2", "--save-every", "2"))
    grpo.main(run_args(root, b, "--max-steps", "3", "--save-every", "2"))
    keys = ("step", "reward", "loss", "grad_norm", "entropy")
    assert [[r[k] for k in keys] for r in metrics(b)] == [[r[k] for k in keys] for r in metrics(quick_run)[:3]]


def test_stage2_mines_and_remines_with_every_variant(assets):
    """Stage 2 without --pool mines at step 0 and re-mines at step 2 (RUN_DIR/mine_0, mine_2); every loss
    variant on at once (std-norm, KL to the frozen init, PPO clip with 2 epochs, token mean, drop zero-var)."""
    root, _ = assets
    out = os.path.join(root, "stage2")
    recs = make_records(48)  # gold letters A-D in turn: a policy that always answers B is right greedily on 1 in 4
    for i, r in enumerate(recs):
        r["answer"] = "ABCD"[i % 4]
    common.write_jsonl(os.path.join(root, "data_abcd.jsonl"), recs)
    args = run_args(root, out, "--max-steps", "3", "--remine-every", "2", "--mine-n", "4", "--k", "4",
                    "--prompts", "4", "--mine-max-zero-share", "1", "--std-norm", "--kl-coef", "0.05",
                    "--clip-eps", "0.2", "--ppo-epochs", "2", "--token-mean", "--drop-zero-var")
    args[args.index("--data") + 1] = os.path.join(root, "data_abcd.jsonl")
    grpo.main(["--stage", "2"] + args[2:])
    for s in (0, 2):
        rates = {x["id"]: x for x in common.read_jsonl(os.path.join(out, f"mine_{s}", "pass_rates.jsonl"))}
        pool = common.read_jsonl(os.path.join(out, f"mine_{s}", "hard_pool.jsonl"))
        assert len(rates) == 48 and all(x["n"] == 4 for x in rates.values())
        # --tiny's rule: the learnable band, pass rate <= 0.875 and not every sample right (all-fail allowed here)
        assert pool and all(rates[r["id"]]["passes"] < 4 for r in pool)
        assert {r["id"] for r in pool} == {i for i, x in rates.items() if x["passes"] < 4}
    m = metrics(out)
    assert [r["step"] for r in m] == [0, 1, 2] and all(r["skipped"] or r["grad_norm"] > 0 for r in m)
    # the logged KL to the init: 0 while the policy is the init, > 0 once an update has moved it
    kl = [r.get("kl") for r in m if not r["skipped"]]
    assert kl[0] is not None and abs(kl[0]) < 1e-6 and kl[-1] > 0


def test_stage2_reuses_the_recorded_validation_score(assets, monkeypatch):
    """best/ records its validation score; stage 2 started from it on the same split keeps that score for step 0
    instead of evaluating the same weights again. On another split (here: fewer items) it evaluates."""
    root, _ = assets
    val = ["--val", f"{root}/val.jsonl", "--eval-every", "1000"]
    a = os.path.join(root, "val_s1")
    grpo.main(run_args(root, a, "--max-steps", "1", *val))
    score = common.read_jsonl(os.path.join(a, "best", "val_score.jsonl"))[0]
    assert list(score.values())[0] == max(r["val_acc"] for r in common.read_jsonl(f"{a}/metrics.jsonl") if "val_acc" in r)
    calls, real = [], grpo.evaluate
    monkeypatch.setattr(grpo, "evaluate", lambda *x: calls.append(1) or real(*x))
    for limit, n_eval in ((0, 1), (6, 2)):  # step 0 reused + step 1 run; then both run
        b = os.path.join(root, f"val_s2_{limit}")
        args = run_args(root, b, "--max-steps", "1", "--pool", f"{root}/data.jsonl", "--val-limit", str(limit), *val)
        args[args.index("--init") + 1] = os.path.join(a, "best")
        calls.clear()
        grpo.main(["--stage", "2"] + args[2:])
        v = [r for r in common.read_jsonl(f"{b}/metrics.jsonl") if "val_acc" in r]
        assert len(calls) == n_eval and [r["step"] for r in v] == [0, 1]
        if limit == 0:
            assert v[0]["val_acc"] == list(score.values())[0]


@pytest.mark.slow
def test_learning_two_ranks(assets):
    """torchrun 2 ranks, 30 steps: mean reward of the last 5 steps >= first 5 + 0.3 (measured: about -0.05 ->
    0.6). Seeds: data 0, init 0, run 0. Validation picks RUN_DIR/best."""
    root, _ = assets
    out = os.path.join(root, "two_ranks")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    os.path.join(ROOT, "grpo.py"), *run_args(root, out, "--max-steps", "30", "--val",
                                                             f"{root}/val.jsonl", "--eval-every", "10")],
                   env=ENV, check=True, cwd=ROOT, timeout=900)
    m = metrics(out)
    first, last = sum(r["reward"] for r in m[:5]) / 5, sum(r["reward"] for r in m[-5:]) / 5
    print(f"2-rank learning: mean reward {first:.3f} (first 5 steps) -> {last:.3f} (last 5)")
    assert last > first + 0.3, (first, last)
    evals = [r for r in common.read_jsonl(os.path.join(out, "metrics.jsonl")) if "val_acc" in r]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert os.path.isfile(os.path.join(out, "best", "model.safetensors"))


def _final(out):
    return M.load_model(os.path.join(out, "final")).state_dict()


@pytest.mark.slow
def test_kill_and_resume(assets):
    """SIGKILL a running grpo.py after its first checkpoint; the same command resumes and ends where an
    uninterrupted run ends."""
    root, _ = assets
    ref, out = os.path.join(root, "kill_ref"), os.path.join(root, "kill")
    argv = lambda o: [sys.executable, os.path.join(ROOT, "grpo.py"), *run_args(root, o, "--max-steps", "6",
                                                                               "--save-every", "2")]
    # the reference runs under the same ENV (one thread): a different thread count sums in a different order
    subprocess.run(argv(ref), env=ENV, check=True, cwd=ROOT, timeout=600, stdout=subprocess.DEVNULL)
    cmd = argv(out)
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    state = os.path.join(out, "state", "state.json")
    t0 = time.time()
    while not os.path.isfile(state) and time.time() - t0 < 300:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    with open(state) as f:
        saved = json.load(f)["extra"]["step"]
    assert 2 <= saved < 6  # killed mid-run
    subprocess.run(cmd, env=ENV, check=True, cwd=ROOT, timeout=600)
    assert [r["step"] for r in metrics(out)] == list(range(6))
    fa, fb = _final(ref), _final(out)
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], atol=1e-6, rtol=0)


if __name__ == "__main__":  # torchrun worker of test_two_ranks_equal_one_rank
    import torch.distributed as dist
    rank, world, _ = M.setup_dist()
    try:
        model = M.shard_model(tiny_model())  # which registers the log-prob methods with FSDP2
        rows, rewards = fixed_batch()
        one_update(model, rows, rewards, uargs(drop_zero_var=True), world, rank)
        M.save_model(model, sys.argv[1])
    finally:
        dist.destroy_process_group()
    from conftest import end_worker  # reached only if the worker succeeded
    end_worker()
