"""tiny.py's pretraining rows: every fact both ways, format practice and drills that check the options as the KG
teacher's chains do and answer with the option's text; the probe's prompts end where the recalled name goes."""
import random
import re

from common import check_line, extract_answer, is_well_formed, sentence
from tiny import fact_texts, format_practice, scan_drills

POOL = [{"options": {"A": "Aspirin", "B": "Heparin", "C": "Paracetamol", "D": "Warfarin"}},
        {"options": {"A": "Fever", "B": "Rash", "C": "Cough", "D": "Dyspnea", "E": "Pallor", "F": "Itch"}}]
CHECK = re.compile(r"Looking for (.+?): ((?:[A-F]\. .+? (?:yes|no)(?:, |\.))+)")


def check_verdicts(line, options):
    """Every option in order with its own letter, "yes" on the looked-for name alone -> its letter."""
    m = CHECK.fullmatch(line)
    assert m, line
    verdicts = re.findall(r"([A-F])\. (.+?) (yes|no)", m.group(2))
    assert [(x, v) for x, v, _ in verdicts] == list(options.items()), line
    assert [x for x, v, y in verdicts if y == "yes"] == [x for x, v in options.items() if v == m.group(1)], line
    return next(x for x, v in options.items() if v == m.group(1))


def test_facts_both_directions_every_pass():
    facts = {("Dengue", "treated_with"): {"Paracetamol"}, ("Dengue", "has_symptom"): {"fever", "rash"},
             ("Paracetamol", "~treated_with"): {"Dengue"}, ("Dengue", "specialty"): {"Infectious disease"}}
    rows = fact_texts(facts, passes=3, rng=random.Random(0), per_row=2)
    sents = [s + "." for r in rows for s in r.split(".")[:-1]]
    want = [" " + sentence(h, r, t, rev) + "." for h, r, t in [("Dengue", "treated_with", "Paracetamol"),
            ("Dengue", "has_symptom", "fever"), ("Dengue", "has_symptom", "rash")] for rev in (False, True)]
    # the relations questions use only (no "specialty"), both ways, each once a pass, a leading space each
    assert sorted(sents) == sorted(want * 3) and len(rows) == 9
    assert " Paracetamol is used to treat Dengue." in want and " fever can be a sign of Dengue." in want


def test_format_practice_and_drills_check_the_options_and_answer_with_the_text():
    rng = random.Random(0)
    for row in format_practice(POOL, 40, rng):
        user, reply = row["messages"][1]["content"], row["messages"][2]["content"]
        opts = next(p["options"] for p in POOL if all(f"{k}. {v}" in user for k, v in p["options"].items()))
        name = re.search(r'reads "(.+?)"', user).group(1)
        think = reply.split("</think>")[0][len("<think>"):]
        check, concl = think.split(" So the answer is ")
        L = check_verdicts(check, opts)
        assert opts[L] == name and concl == f"{name}."
        assert reply.endswith(f"</think>\n<answer> {name}</answer>") and is_well_formed(reply, opts)
        assert extract_answer(reply, opts) == L
    for row in scan_drills(POOL, 100, rng):
        lines = row["text"].split("\n")
        opts = dict(re.fullmatch(r"([A-F])\. (.+)", x).groups() for x in lines if not x.startswith("Looking"))
        assert len(lines) == len(opts) + 2
        for line in lines[len(opts):]:
            check_verdicts(line, opts)


def test_check_line_is_the_chains_last_step():
    assert check_line(POOL[0]["options"], {"Heparin"}) == "A. Aspirin no, B. Heparin yes, C. Paracetamol no, D. Warfarin no"
    assert check_line(POOL[0]["options"], {"Heparin", "Warfarin"}).endswith("D. Warfarin yes")  # every right name
