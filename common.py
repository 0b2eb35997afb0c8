"""Shared pieces of nano-fleming: JSONL I/O, the unified record, the prompt, the answer rule and the reward, the KG's
facts in words, the difficulty heuristic, an LLM client (HTTP or a local folder), the presets.

Unified record (every stage reads and writes these):
    {"id": "medqa-17", "source": "medqa", "question": "...", "options": {"A": "...", "B": "...", ...},
     "answer": "C", "difficulty": "easy"|"moderate"|"difficult"|None, "meta": {...}}

The answer rule (extract_answer: the option in the last <answer></answer> block, as the paper's Table 3 prompt asks):
eval.py scores with it and grpo.py rewards with it, so accuracy and reward can never disagree.
"""
import bisect
import concurrent.futures
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
import unicodedata
from collections import defaultdict

LETTERS = "ABCDEFGHIJKLMNOPQRSTU"  # JMED has 21 options, A..U
DIFFICULTIES = ("easy", "moderate", "difficult")


# ----------------------------------------------------------------------------------------------- JSONL I/O

def iter_jsonl(path):
    """(line number, row) for each non-blank line; a line that is not JSON yields a ValueError in place of the
    row, so each caller decides whether bad input stops the run (read_jsonl) or goes to a rejects file."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, ValueError(f"invalid JSON: {e.msg} (column {e.colno})")


def read_jsonl(path, check=None):
    """Rows of a JSONL file (blank lines skipped); bad JSON, or a row in which check(row) finds a problem, raises
    ValueError("path:line: problem")."""
    rows = []
    for i, row in iter_jsonl(path):
        problem = str(row) if isinstance(row, ValueError) else check(row) if check else None
        if problem:
            raise ValueError(f"{path}:{i}: {problem}")
        rows.append(row)
    return rows


def atomic_write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def write_jsonl(path, rows):
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path, row):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:  # one write call per row: a crash loses at most the last line
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_appended(path):
    """The rows a killed run appended to `path` (append_jsonl), ready to append to again: a torn last line (a kill
    mid-write) is dropped from the file, a last row without its newline gets one; a bad line elsewhere raises
    ValueError("path:line: ..."). [] without a file."""
    if not (path and os.path.exists(path)):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    rows, torn = [], bool(lines) and not lines[-1].endswith("\n")
    for i, line in enumerate(lines, 1):
        try:
            rows += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError:
            if i < len(lines):
                raise ValueError(f"{path}:{i}: not a JSON row") from None
            torn = True
    if torn:
        write_jsonl(path, rows)
    return rows


# ----------------------------------------------------------------------------------------------- the unified record

def check_record(rec):
    """The first problem of a unified record as a string naming the field, or None if it is valid."""
    if not isinstance(rec, dict):
        return "record is not a JSON object"
    for k in ("id", "source", "question"):
        if not isinstance(rec.get(k), str) or not rec[k].strip():
            return f"field {k!r} must be a non-empty string"
    opts = rec.get("options")
    if not isinstance(opts, dict) or len(opts) < 2:
        return "field 'options' must be an object with at least 2 options"
    if list(opts) != list(LETTERS[:len(opts)]):
        return f"field 'options' keys must be {LETTERS[:len(opts)]!r} in order, got {''.join(map(str, opts))!r}"
    for k, v in opts.items():
        if not isinstance(v, str) or not v.strip():
            return f"field 'options.{k}' must be a non-empty string"
    if rec.get("answer") not in opts:
        return f"field 'answer' must be one of {''.join(opts)!r}, got {rec.get('answer')!r}"
    if rec.get("difficulty") not in (None,) + DIFFICULTIES:
        return f"field 'difficulty' must be one of {DIFFICULTIES} or null, got {rec.get('difficulty')!r}"
    if not isinstance(rec.get("meta", {}), dict):
        return "field 'meta' must be an object"
    return None


def read_records(path):
    """Unified records of a JSONL file; raises ValueError("path:line: field ...") on the first bad one."""
    return read_jsonl(path, check_record)


def norm_text(text):
    """NFKC, whitespace runs as one space, lower case: the form in which two texts count as the same."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def item_keys(rec):
    """Two records are one item when they share a key: the option set with the normalised question, or with the id.
    Neither question nor id alone: generic stems recur with other options (48 in CareQA, "Indicate the correct
    answer:"), and loaders without ids number rows (MedQA train and test both have medqa-17)."""
    opts = frozenset(map(norm_text, rec["options"].values()))
    return (opts, norm_text(rec["question"])), (opts, "id", rec["id"])


# ----------------------------------------------------------------------------------------------- the prompt

SYSTEM_PROMPT = ("You are a medical expert answering a multiple-choice question. First think step by step "
                 "inside <think> </think> tags, then give the single best option, its letter or its full text, inside "
                 "<answer> </answer> tags, for example <answer>C</answer>.")


def options_text(options):
    """{"A": "Fever", "B": "Rash"} -> "A. Fever\nB. Rash", the layout of every prompt (and of tiny.py's drills)."""
    return "\n".join(f"{k}. {v}" for k, v in options.items())


def build_messages(record):
    options = options_text(record["options"])
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{record['question'].strip()}\n\n{options}"}]


def chat_ids(tokenizer, messages):
    """Token ids of a conversation rendered with the chat template, ending with the assistant header."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"])


def prompt_ids(tokenizer, record):
    return chat_ids(tokenizer, build_messages(record))


def pad_id(tokenizer):
    """The id that fills padding (it never carries a loss or is attended to): the tokenizer's pad, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def common_prefix(seqs, limit):
    """The length (at most `limit`) of the prefix all token lists in `seqs` share: a system prompt and chat
    template that sampler.generate and sft.token_loss_sum run once for all rows."""
    return next((j for j in range(limit) if any(s[j] != seqs[0][j] for s in seqs)), limit)


def eos_ids(tokenizer):
    """Ids that end a completion: ChatML <|im_end|> and <|endoftext|> (instruct models emit either)."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ------------------------------------------------------------------------------------- the answer rule and the reward

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)(?:\s+is)?|答案|选项)"
                     r"\s*[:\-]?\s*", re.I)
_LETTER = re.compile(r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=$|[.:)]))[.:)]?(.*)$", re.S)
_OTHER_MARK = re.compile(r"(?:^|\s)(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.)])\s+\S")  # "B. text": another option?
_FULLWIDTH = str.maketrans("（）【】：．", "()[]:.")


def extract_answer(text, letters):
    """The option letter in the LAST <answer>...</answer> block of `text`, or None. `letters`: the valid letters
    ("ABCD"), or the record's options dict, which also lets an option's own text hold what looks like a mark
    ("C. S. aureus", "A. E. coli").

    Accepted block contents (surrounding whitespace ignored): "C", "(C)", "[C]", "C.", "C)", "C:",
    "C. <option text>", "(C) <option text>", "Option C", "Answer: C", "The answer is (C)"; lowercase only as the
    whole content ("c", "(c)"). None for: no block, a last block without its close tag, a letter not in
    `letters`, several options ("A or B", "A, C", "A. x B. y"), a letter inside a word ("Aspirin", "I think").
    Only the block is read, so words like "I" or "A" in the reasoning can never be taken for options (JMED: A..U).
    With the options dict, a block that is exactly one option's full text (norm_text) is that option's letter
    ("Heparin" -> "B": the tiny run's chains conclude with a name); a lone letter stays a letter even if an option
    reads "C".
    """
    start = text.rfind(_ANSWER_OPEN)
    end = text.find(_ANSWER_CLOSE, start) if start >= 0 else -1
    if end < 0:
        return None  # no block, or a truncated one: unparsable, never guessed
    s = text[start + len(_ANSWER_OPEN):end].translate(_FULLWIDTH).strip()
    if isinstance(letters, dict) and not re.fullmatch(r"[(\[]?[A-Za-z][)\].:]?", s):
        named = [L for L, v in letters.items() if norm_text(v) == norm_text(s)]
        if len(named) == 1:
            return named[0]
    m = re.fullmatch(r"[(\[]?([a-z])[)\].]?", s)  # lowercase only when it is the whole content
    if m:
        letter = m.group(1).upper()
    else:
        m = _LETTER.match(_PREFIX.sub("", s, count=1))
        if not m:
            return None
        letter = m.group(1) or m.group(2) or m.group(3)
        rest = m.group(4)
        if rest and not rest[0].isspace() and rest[0] not in ".:)":
            return None  # a letter inside a word
        rest = rest.strip()
        own = letters.get(letter) if isinstance(letters, dict) else None
        if own and rest.startswith(own):
            rest = rest[len(own):]  # the option's own text: its "S." is not another option
        if any((a or b or c) in letters for a, b, c in _OTHER_MARK.findall(rest)):
            return None  # another option named too ("A. x B. y")
    return letter if letter in letters else None


_EOS_TEXT = re.compile(r"(?:\s|<\|im_end\|>|<\|endoftext\|>)+$")
_WELL_FORMED = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.S)


def is_well_formed(text, letters):
    """True iff the completion (prompt excluded) is exactly one non-empty <think>...</think>, then one
    <answer>...</answer> holding a valid letter, and nothing after it but whitespace / the chat EOS text.
    `letters` as in extract_answer."""
    body = _EOS_TEXT.sub("", text)
    m = _WELL_FORMED.fullmatch(body)
    if not m or not m.group(1).strip():
        return False
    inner = m.group(1) + m.group(2)
    if any(tag in inner for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return False
    return extract_answer(body, letters) is not None


def reward(text, record):
    """The GRPO reward r_i of the paper's objective (eq. 1-3), rule-based, correctness + format only (no length
    term): 1.0 well-formed and correct, 0.0 well-formed and wrong, -0.5 malformed whatever letter it holds. Malformed
    never earns more than a tidy wrong output, which gets no bonus that could be farmed; GRPO subtracts the group
    mean, so only the differences between the levels matter."""
    if not is_well_formed(text, record["options"]):
        return -0.5
    return 1.0 if extract_answer(text, record["options"]) == record["answer"] else 0.0


# ------------------------------------------------------------ the KG's facts in words (synth.py, distill.py, tiny.py)

RELATION_SENTENCES = {  # relation -> (forward: head first, ends at the tail; reverse: tail first, ends at the head)
    "has_symptom": ("{h} can present with {t}", "{t} can be a sign of {h}"),
    "has_complication": ("{h} can be complicated by {t}", "{t} can be a complication of {h}"),
    "caused_by": ("{h} is caused by {t}", "{t} can cause {h}"),
    "risk_factor": ("{h} has the risk factor {t}", "{t} is a risk factor for {h}"),
    "diagnosed_by": ("{h} is diagnosed with {t}", "{t} is used to diagnose {h}"),
    "differential": ("{h} is a differential of {t}", "{t} has the differential {h}"),
    "prevented_by": ("{h} is prevented by {t}", "{t} prevents {h}"),
    "treated_by": ("{h} is treated by {t}", "{t} treats {h}"),
    "treated_with": ("{h} is treated with {t}", "{t} is used to treat {h}"),
    "specialty": ("{h} is managed in {t}", "{t} manages {h}"),
    "drug_class": ("{h} is a {t}", "{t} includes {h}"),
    "contraindicated_in": ("{h} is contraindicated in {t}", "{t} contraindicates {h}"),
    "adverse_effect": ("{h} can cause {t}", "{t} is an adverse effect of {h}"),
    "interacts_with": ("{h} interacts with {t}", "{t} interacts with {h}"),
    "mechanism": ("{h} acts by {t}", "{t} is the mechanism of {h}"),
    "location": ("{h} affects {t}", "{t} is affected by {h}"),
}
FINDINGS = ("has_symptom", "risk_factor")  # the relations whose tails a question gives as findings


def sentence(h, rel, t, reverse=False):
    """One KG edge in words, ending at the entity a reader would recall (the tail, or the head when reversed):
    sentence("Dengue", "treated_with", "Paracetamol") -> "Dengue is treated with Paracetamol"."""
    fwd, rev = RELATION_SENTENCES.get(rel, ("{h} " + rel.replace("_", " ") + " {t}", "{t} is linked to {h}"))
    return (rev if reverse else fwd).format(h=h, t=t)


def check_line(options, right):
    """A checking chain's last step (distill.kg_chain; tiny.py's drills): every option with its verdict, "yes" for
    the names in `right` -> "A. Aspirin no, B. Heparin yes"."""
    return ", ".join(f"{L}. {x} {'yes' if x in right else 'no'}" for L, x in options.items())


def plain(name):
    """An entity name in running text: 'Fever' -> 'fever', 'Anorexia (symptom)' -> 'anorexia' (Wikipedia's
    disambiguation suffix dropped); acronyms and proper names (second letter upper) are kept."""
    name = re.sub(r"\s*\([^()]*\)$", "", name) or name
    return name[0].lower() + name[1:] if len(name) > 1 and name[1].islower() and name[0].isupper() else name


def join(words):
    """['fever', 'rash', 'cough'] -> 'fever, rash and cough'."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# relation -> type the head should have; kg.py edges written the other way round are flipped on load
HEAD_TYPE = {"has_symptom": "disease", "risk_factor": "disease", "diagnosed_by": "disease",
             "treated_with": "disease", "treated_by": "disease", "has_complication": "disease",
             "contraindicated_in": "drug", "drug_class": "drug", "mechanism": "drug"}


def load_kg(kg_dir):
    """kg.py's KG_DIR -> entities by id, adjacency out[rel][head] -> {tail: source} (synth.py's questions, distill.py's
    checks and tiny.py's facts read the same graph); edges with unknown ids are skipped."""
    def check(e):
        return next((f"field {k!r} must be a non-empty string" for k in ("id", "name", "type")
                     if not isinstance(e.get(k), str) or not e[k].strip()), None)
    ents = {e["id"]: e for e in read_jsonl(os.path.join(kg_dir, "entities.jsonl"), check)}
    out = defaultdict(lambda: defaultdict(dict))
    for e in read_jsonl(os.path.join(kg_dir, "edges.jsonl")):
        h, r, t = e.get("head"), e.get("relation"), e.get("tail")
        if h not in ents or t not in ents or h == t:
            continue
        want = HEAD_TYPE.get(r)
        if want and ents[h]["type"] != want and ents[t]["type"] == want:
            h, t = t, h  # the same fact written tail-first
        out[r][h].setdefault(t, e.get("source") or {})
    return ents, out


def kg_facts(kg_dir):
    """{(head name, relation): {tail names}} of the KG, and the same keyed by (tail name, "~" + relation): the facts
    distill.py's checking chains cite and tiny.py's Base learns; findings spelled as questions spell them (plain)."""
    ents, out = load_kg(kg_dir)
    facts = {}
    for rel, heads in out.items():
        for h, tails in heads.items():
            for t in tails:
                hn, tn = ents[h]["name"], plain(ents[t]["name"]) if rel in FINDINGS else ents[t]["name"]
                facts.setdefault((hn, rel), set()).add(tn)
                facts.setdefault((tn, "~" + rel), set()).add(hn)
    return facts


def difficulty_heuristic(recs, rare_quantile=0.5):
    """Tiers without an LLM (synthetic items), in place; -> the inlinks cut. The disease to be recognised is rare when
    its inlinks are among the lowest `rare_quantile` of `recs` (ties together): 1 hop common = easy; 1 hop rare or 2
    hops common = moderate; 2 hops rare or 3+ hops = difficult. A meta.rarity.rare already set (synth.py: one cut for
    all splits) is kept; a record without hops keeps its difficulty, else "moderate" (difficulty_source "default")."""
    vals = sorted(r["meta"]["rarity"]["disease_inlinks"] for r in recs
                  if "hops" in r["meta"] and "rare" not in r["meta"]["rarity"])
    cut = max((v for v in set(vals) if bisect.bisect_right(vals, v) <= rare_quantile * len(vals)), default=-1)
    for r in recs:
        hops, m = r["meta"].get("hops"), r["meta"]
        if hops is None:
            m.setdefault("difficulty_source", "given" if r.get("difficulty") else "default")
            r["difficulty"] = r.get("difficulty") or "moderate"
            continue
        rare = m["rarity"].setdefault("rare", m["rarity"]["disease_inlinks"] <= cut)
        r["difficulty"] = "easy" if hops == 1 and not rare else "moderate" if hops == 1 or (hops == 2 and not rare) \
            else "difficult"
        m["difficulty_source"] = "heuristic"
    return cut


# ------------------ LLM client: llm(conversations, n, temperature, max_tokens, seed) -> [[text] * n per conversation]

def make_llm(spec, model_name=None, cache_dir=None, concurrency=4, api_key_env="OPENAI_API_KEY", max_retries=5,
             backoff=1.0, batch_size=64):
    """An LLM callable over an OpenAI-compatible API (`spec` an http(s) base URL) or a local HF-format folder
    (model.load_model + sampler.generate). HTTP: the key from env var `api_key_env` (never logged or cached);
    429/5xx/connection errors retried with exponential backoff; `concurrency` requests in parallel; with
    `cache_dir` each call is cached as a JSON file keyed by its inputs, so a killed run resumes without paying twice."""
    if re.match(r"https?://", spec):
        return _http_llm(spec.rstrip("/"), model_name or "default", cache_dir, concurrency, api_key_env,
                         max_retries, backoff)
    import torch
    from transformers import AutoTokenizer
    from model import load_model
    cuda = torch.cuda.is_available()
    model = load_model(spec, device="cuda" if cuda else "cpu", dtype=torch.bfloat16 if cuda else torch.float32)
    return make_local_llm(model, AutoTokenizer.from_pretrained(spec), batch_size=batch_size)


def _http_llm(base, model_name, cache_dir, concurrency, api_key_env, max_retries, backoff):
    import requests
    session = requests.Session()
    stats = {"cache_hits": 0, "retries": 0}
    lock = threading.Lock()

    def post(payload):
        headers = {"Content-Type": "application/json"}
        if os.environ.get(api_key_env):
            headers["Authorization"] = "Bearer " + os.environ[api_key_env]
        for attempt in range(max_retries + 1):
            try:
                r = session.post(base + "/chat/completions", json=payload, headers=headers, timeout=600)
                if r.status_code == 200:
                    return r.json()
                err = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code != 429 and r.status_code < 500:
                    raise RuntimeError(f"{base}/chat/completions: {err}")  # a client error will not heal
            except (requests.ConnectionError, requests.Timeout) as e:
                err = f"{type(e).__name__}: {e}"
            if attempt == max_retries:
                raise RuntimeError(f"{base}/chat/completions failed after {max_retries + 1} tries: {err}")
            with lock:
                stats["retries"] += 1
            time.sleep(backoff * 2 ** attempt)

    def one(messages, n, temperature, max_tokens, seed):
        call = {"model": model_name, "messages": messages, "n": n, "temperature": temperature,
                "max_tokens": max_tokens, "seed": seed}
        key = hashlib.sha256(json.dumps(list(call.values()), sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        path = os.path.join(cache_dir, key + ".json") if cache_dir else None
        if path and os.path.exists(path):
            with lock:
                stats["cache_hits"] += 1
            with open(path, encoding="utf-8") as f:
                return json.load(f)["texts"]
        texts = []
        while len(texts) < n:  # some servers ignore n: ask again (new seed) for the missing samples
            choices = post({**call, "n": n - len(texts), "seed": seed + len(texts)}).get("choices") or []
            if not choices:
                raise RuntimeError(f"{base}/chat/completions: response without choices")
            for c in choices[:n - len(texts)]:
                msg = c.get("message") or {}
                content = msg.get("content") or ""
                reasoning = msg.get("reasoning_content") or msg.get("reasoning")
                if reasoning and "<think>" not in content:  # servers that split reasoning out of the content
                    content = f"<think>{reasoning}</think>\n{content}"
                texts.append(content)
        if path:
            atomic_write(path, json.dumps({**call, "texts": texts}, ensure_ascii=False))
        return texts

    def llm(conversations, n=1, temperature=0.0, max_tokens=512, seed=0):
        with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(lambda m: one(m, n, temperature, max_tokens, seed), conversations))

    llm.stats = stats
    return llm


def make_local_llm(model, tokenizer, batch_size=64):
    """The LLM callable over an already loaded model.py Transformer + tokenizer (sampler.generate, batched, within
    sampler.KV_BUDGET). Prompts are sorted by length so each batch wastes little left padding."""
    from sampler import generate
    stops, pad = eos_ids(tokenizer), pad_id(tokenizer)

    def llm(conversations, n=1, temperature=0.0, max_tokens=512, seed=0):
        prompts = [chat_ids(tokenizer, m) for m in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out = [None] * len(prompts)
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            comps = generate(model, [prompts[i] for i in idx], max_tokens, temperature=temperature,
                             eos_ids=stops, seed=seed + b, pad_id=pad, k=n)
            for j, i in enumerate(idx):
                rows = comps[j * n:(j + 1) * n]
                out[i] = [tokenizer.decode(r[:-1] if r and r[-1] in stops else r, skip_special_tokens=False)
                          for r in rows]
        return out
    return llm


# --------------------------------------------------------------- the --tiny presets, statistics, progress and metrics

def parse_with_preset(parser, argv, tiny, variant=None):
    """parser.parse_args(argv), where --tiny makes `tiny` (the stage's TINY preset: the tiny CPU run's values)
    the defaults, so flags given explicitly still win. A dict inside `tiny` holds a variant's own values, picked by
    `--tiny NAME` (sft.py: base | cold; bare --tiny: the first) or by variant(args) (grpo.py: the stage)."""
    names = [k for k, v in tiny.items() if isinstance(v, dict)]
    shown = "the tiny CPU run's preset: " + ", ".join(f"{k}={v}" for k, v in tiny.items())
    if names and variant is None:
        parser.add_argument("--tiny", nargs="?", const=names[0], choices=names, help=shown)
    else:
        parser.add_argument("--tiny", action="store_true", help=shown)
    args = parser.parse_known_args(argv)[0]
    if args.tiny:
        own = tiny.get(args.tiny if variant is None else variant(args), {})
        parser.set_defaults(**{**{k: v for k, v in tiny.items() if k not in names}, **own})  # the variant wins
    return parser.parse_args(argv)


def mean_se(xs):
    """(mean, standard error of the mean) of a list of numbers; None where undefined (no items; one item has no
    standard error)."""
    m = sum(xs) / len(xs) if xs else None
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else None
    return m, se


class Progress:
    """Progress(total, name).update(n=1, **metrics) prints 'name 120/1000 12.3 it/s ETA 1m10s k=v' every ~2 s."""

    def __init__(self, total, name="", every=2.0):
        self.total, self.name, self.every = total, name, every
        self.done, self.t0, self.last = 0, time.time(), 0.0

    def update(self, n=1, **metrics):
        self.done += n
        now = time.time()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        secs = int((self.total - self.done) / rate if rate > 0 else 0)
        eta = f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"{self.name} {self.done}/{self.total} {rate:.1f} it/s ETA {eta} {extra}".strip(),
              file=sys.stderr, flush=True)


class MetricsLog:
    """MetricsLog(path).log(dict): append one JSON line with a 'time' field (unix seconds)."""

    def __init__(self, path):
        self.path = path

    def log(self, row):
        append_jsonl(self.path, {"time": round(time.time(), 3), **row})
