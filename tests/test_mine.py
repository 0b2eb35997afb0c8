"""mine.py: pass rates against a direct count (1 process and 2 ranks under torchrun), the pool selection rules,
the CLI on a tiny model. Run as a script (under torchrun) it is the worker of the 2-rank test."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import mine  # noqa: E402
import model as M  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}


def records(n=11):
    diffs = ("easy", "moderate", "difficult")
    return [dict(id=f"q{i}", source="t", question=f"question number {i}", options={"A": "yes", "B": "no"},
                 answer="AB"[i % 2], difficulty=diffs[i % 3], meta={}) for i in range(n)]


def expected_passes(i, n):
    """The fake sampler's sample j of item i: correct iff j < i % (n + 1); a malformed answer when j == n - 1."""
    return sum(j < i % (n + 1) and j != n - 1 for j in range(n))


def fake_generate(tok, recs, calls):
    """A stand-in for sampler.generate whose completions are known: sample j of item i is right iff
    j < i % (n + 1), except the last sample, which is right-lettered but malformed (no <think>); the greedy
    answer (temperature 0) is right iff i % 3 == 0."""
    by_prompt = {tuple(common.prompt_ids(tok, r)): i for i, r in enumerate(recs)}

    def generate(model, prompts, max_new_tokens, temperature=0.0, eos_ids=(), seed=None, pad_id=0, k=1,
                 kv_budget=None):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            i = by_prompt[tuple(p)]
            r = recs[i]
            wrong = "B" if r["answer"] == "A" else "A"
            if temperature == 0:
                out.append(tok.encode(f"<think>x</think><answer>{r['answer'] if i % 3 == 0 else wrong}</answer>")
                           + [eos_ids[0]])
                continue
            for j in range(k):
                body = f"<answer>{r['answer']}</answer>" if j == k - 1 else \
                    f"<think>x</think><answer>{r['answer'] if j < i % (k + 1) else wrong}</answer>"
                out.append(tok.encode(body) + [eos_ids[0]])
        return out
    return generate


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tok"))
    return M.train_tokenizer([common.SYSTEM_PROMPT] + [r["question"] for r in records()], d, vocab_size=300)


def test_pass_rates_direct_count(tok, monkeypatch):
    recs, calls = records(), []
    monkeypatch.setattr(mine.sampler, "generate", fake_generate(tok, recs, calls))
    rows = mine.mine(None, tok, recs, n=5, batch_size=3)
    assert [r["id"] for r in rows] == [r["id"] for r in recs]
    assert [r["passes"] for r in rows] == [expected_passes(i, 5) for i in range(len(recs))]
    assert rows[4] == dict(id="q4", difficulty="moderate", passes=4, n=5, pass_rate=0.8)
    assert calls == [3, 3, 3, 2]  # one generate call per batch: k samples of each prompt
    greedy = mine.mine(None, tok, recs, n=1, batch_size=11, temperature=0.0)  # validation: greedy only, 1 call
    assert calls[4:] == [11] and [r["passes"] for r in greedy] == [int(i % 3 == 0) for i in range(len(recs))]


def test_two_ranks_gather_in_order(tok, tmp_path):
    """torchrun 2 ranks: each evaluates its slice with the same number of generate calls; every rank gets all
    rows back in record order, equal to the 1-process count."""
    out = str(tmp_path / "rows.jsonl")
    tok.save_pretrained(str(tmp_path / "tok"))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    __file__, str(tmp_path / "tok"), out], env=ENV, check=True, cwd=ROOT, timeout=300)
    got = common.read_jsonl(out)
    assert [r["passes"] for r in got] == [expected_passes(i, 5) for i in range(len(records()))]
    assert [r["id"] for r in got] == [r["id"] for r in records()]


def rated(spec, n=8):
    """spec: [(id, difficulty, passes)] -> records, rates."""
    recs = [dict(id=i, difficulty=d) for i, d, _ in spec]
    return recs, [dict(id=i, difficulty=d, passes=p, n=n, pass_rate=p / n) for i, d, p in spec]


SPEC = [("d1", "difficult", 2), ("d2", "difficult", 0), ("d3", "difficult", 4), ("d4", "difficult", 6),
        ("e1", "easy", 1), ("e2", "easy", 0), ("m1", "moderate", 3), ("m2", "moderate", 0),
        ("m3", "moderate", 7), ("m4", "moderate", 5), ("m5", "moderate", 8), ("r1", "difficult", 1)]


def test_pool_rules():
    recs, rates = rated(SPEC)
    ids = lambda pool: [r["id"] for r in pool]  # noqa: E731
    # failures (<= 0.5): d1 d3 e1 m1 partial; d2 m2 e2 all-fail, capped at 25% of the hard part: 1 (d2, difficult
    # first); r1 flagged in review; 25% moderate from the learnable band above 0.5: ceil(5/3) = 2, lowest first
    pool = mine.select_pool(recs, rates, threshold=0.5, moderate_share=0.25, max_zero_share=0.25, review={"r1"})
    assert ids(pool) == ["d1", "d3", "d2", "m1", "m4", "m3", "e1"]
    assert ids(mine.select_pool(recs, rates, review={"r1"}, pool_size=4)) == ["d1", "d3", "d2", "m1"]
    every = mine.select_pool(recs, rates, max_zero_share=1.0, moderate_share=0.0)
    assert ids(every) == ["r1", "d1", "d3", "d2", "m1", "m2", "e1", "e2"]  # no cap, no extras, r1 not reviewed
    assert mine.select_pool(recs, rates, threshold=-1) == []  # nothing failed: empty pool, no extras
    # the tiny preset: the learnable band, 1-7 passes of 8 (m5, right every time, and the all-fail items out)
    band = mine.select_pool(recs, rates, threshold=0.875, moderate_share=0.0, max_zero_share=0.0, review={"r1"})
    assert ids(band) == ["d1", "d3", "d4", "m1", "m4", "m3", "e1"]
    text = mine.composition(pool, rates)
    assert "7 items of 12" in text and "difficult: 3 (1 all-fail)" in text and "moderate: 3 (0 all-fail)" in text


def test_cli_on_tiny_model(tmp_path, tok):
    recs = records(6)
    common.write_jsonl(str(tmp_path / "pool.jsonl"), recs)
    common.write_jsonl(str(tmp_path / "review.jsonl"), [recs[0]])
    M.init_model(str(tmp_path / "m"), len(tok), tokenizer=tok, hidden_size=32, intermediate_size=64,
                 num_attention_heads=2, num_key_value_heads=1)
    mine.main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "o"),
               "--review", str(tmp_path / "review.jsonl"), "--samples", "3", "--tiny", "--max-new-tokens", "8",
               "--max-zero-share", "1"])
    rates = common.read_jsonl(str(tmp_path / "o" / "pass_rates.jsonl"))
    assert [r["id"] for r in rates] == [r["id"] for r in recs] and all(r["n"] == 3 for r in rates)
    pool = common.read_jsonl(str(tmp_path / "o" / "hard_pool.jsonl"))
    # a random model never writes the format: every item fails, all are kept (zero share 1) except the reviewed
    assert all(r["passes"] == 0 for r in rates)
    assert sorted(r["id"] for r in pool) == sorted(r["id"] for r in recs[1:])


if __name__ == "__main__":  # torchrun worker of test_two_ranks_gather_in_order
    import torch.distributed as dist
    from transformers import AutoTokenizer
    rank, world, _ = M.setup_dist()
    try:
        tk, recs, calls = AutoTokenizer.from_pretrained(sys.argv[1]), records(), []
        mine.sampler.generate = fake_generate(tk, recs, calls)
        rows = mine.mine(None, tk, recs, n=5, batch_size=2)
        counts = [None] * world
        dist.all_gather_object(counts, len(calls))
        assert counts == [3, 3], counts  # 11 items, 6 and 5 per rank, 2 per call: 3 calls each
        if rank == 0:
            common.write_jsonl(sys.argv[2], rows)
    finally:
        dist.destroy_process_group()
    from conftest import end_worker  # reached only if the worker succeeded
    end_worker()
