"""tiny.py's pretraining rows: format practice and scan drills end exactly as the KG-path chains do; the report's
error tables and dev/chains.py's diagnostics read what the model wrote."""
import random
import re

from common import extract_answer, is_well_formed
from dev.chains import force_conclusion, group_gap
from tiny import chain_breakdown, chain_right, format_practice, scan_drills, scan_verdicts

POOL = [{"options": {"A": "Aspirin", "B": "Heparin", "C": "Paracetamol", "D": "Warfarin"}},
        {"options": {"A": "Fever", "B": "Rash", "C": "Cough", "D": "Dyspnea", "E": "Pallor"}}]
SCAN = re.compile(r"So the answer is (.+?)\. ((?:[A-E]\. .+? (?:yes|no)\. ?)+)$")


def check_scan(line, options):
    """The scan names the options in order with their own letters up to the concluded name, its "yes" last."""
    m = SCAN.fullmatch(line)
    assert m, line
    verdicts = re.findall(r"([A-E])\. (.+?) (yes|no)\.", m.group(2))
    assert [(x, v) for x, v, _ in verdicts] == list(options.items())[:len(verdicts)], line
    assert [y for _, _, y in verdicts] == ["no"] * (len(verdicts) - 1) + ["yes"], line  # stops at the match
    L = verdicts[-1][0]
    assert options[L] == m.group(1), line
    return L


def test_format_practice_and_drills_end_with_the_scan():
    rng = random.Random(0)
    for row in format_practice(POOL, 40, rng):
        user, reply = row["messages"][1]["content"], row["messages"][2]["content"]
        name = re.search(r'reads "(.+?)"', user).group(1)
        opts = next(p["options"] for p in POOL if name in p["options"].values())
        assert is_well_formed(reply, "".join(opts))
        L = check_scan(reply.split("</think>")[0][len("<think>"):], opts)
        assert opts[L] == name and extract_answer(reply, "".join(opts)) == L
    asked = []
    for row in scan_drills(POOL, 200, rng):
        lines = row["text"].split("\n")
        opts = dict(l.split(". ", 1) for l in lines if not l.startswith("So "))
        scans = [l for l in lines if l.startswith("So ")]
        assert opts in [p["options"] for p in POOL] and len(scans) == 2
        asked += [check_scan(s, opts) for s in scans]
    # drawn with replacement: the same letter twice in a row happens (no answer by elimination), and all letters come
    assert set(asked) == set("ABCDE") and any(a == b for a, b in zip(asked[::2], asked[1::2]))


REC = {"options": {"A": "Aspirin", "B": "Heparin", "C": "Paracetamol", "D": "Warfarin"}, "answer": "C"}


def out(name, scan):
    return f"<think>Dengue is treated with {name}. So the answer is {name}. {scan}</think>\n<answer>C</answer>"


def test_chain_breakdown_and_verdicts_read_what_the_model_wrote():
    right = out("Paracetamol", "A. Aspirin no. B. Heparin no. C. Paracetamol yes.")
    lucky = out("Heparin", "A. Aspirin no. B. Warfarin no. C. Paracetamol yes.")  # wrong chain, right letter
    positional = out("Paracetamol", "A. Paracetamol no. B. Heparin yes.")  # "no" at the match: the letter prior
    assert (chain_right(right, REC), chain_right(lucky, REC), chain_right("<answer>C</answer>", REC)) == (
        True, False, False)
    b = chain_breakdown([("easy", True, True), ("easy", False, True), ("difficult", True, False),
                         ("difficult", False, False)])
    assert list(b) == ["easy", "difficult", "all"]
    assert b["easy"] == dict(n=2, chain=50.0, letter=100.0, letter_if_chain=100.0, letter_if_not=100.0,
                             right_with_wrong_chain=50.0)
    assert b["difficult"]["letter_if_chain"] == 0.0 and b["difficult"]["right_with_wrong_chain"] is None
    assert b["all"]["n"] == 4 and b["all"]["right_with_wrong_chain"] == 50.0
    twice = right.replace("</think>", " So the answer is Heparin. A. Aspirin no. B. Heparin yes.</think>")
    rows = [(t, REC["options"]) for t in (right, lucky, positional, "<answer>C</answer>", twice)]
    v = scan_verdicts(rows)
    # "A. Paracetamol" (positional) and "B. Warfarin" (lucky) misname their option: no verdict of theirs counts
    assert v["A"] == {"misnamed": [5, 20.0], "match": [0, None], "other": [4, 0.0]}
    # each scan is judged against its own conclusion: twice's "B. Heparin yes." is a match, positional's a "yes"
    # elsewhere
    assert v["B"] == {"misnamed": [5, 20.0], "match": [1, 100.0], "other": [3, 33.3]}
    assert v["C"] == {"misnamed": [3, 0.0], "match": [2, 100.0], "other": [1, 100.0]}  # lucky's "yes" elsewhere


def test_group_gap_compares_rollouts_within_their_group_only():
    # group 1: chains disagree, the right chain rewarded, the wrong ones half the time; group 2: all chains right
    # (no say on the chain, however the rewards fall); group 3: chains disagree, every rollout rewarded
    g1 = [(True, True), (False, True), (False, False)]
    g2 = [(True, True), (True, False)]
    g3 = [(True, True), (False, True)]
    assert group_gap([g1, g2, g3]) == dict(groups=3, varied=66.7, right=100.0, wrong=66.7)
    # pooled over groups, right chains are rewarded 75% and wrong ones 67%; group 2's rollouts do not count
    assert group_gap([g2]) == dict(groups=1, varied=0.0, right=None, wrong=None)


def test_force_conclusion_swaps_in_a_wrong_option_and_keeps_the_chain():
    text = out("Paracetamol", "A. Aspirin no. B. Heparin no. C. Paracetamol yes.")
    seen = set()
    for seed in range(20):
        pre, wrong = force_conclusion(text, REC, random.Random(seed))
        name = REC["options"][wrong]
        assert pre == f"<think>Dengue is treated with {name}. So the answer is {name}."
        seen.add(wrong)
    assert seen == {"A", "B", "D"}  # every wrong option, never the gold one
    assert force_conclusion("<think>Dengue.</think>\n<answer>C</answer>", REC, random.Random(0)) is None
