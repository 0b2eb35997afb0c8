"""report.py: escaping, the fixed/broken counts against predictions.jsonl, a revision link per provenance edge, the
--eval CLI; and the smoke run's report in a real headless Chromium, driven through the DevTools protocol over
--remote-debugging-pipe (fd 3 in, fd 4 out, NUL-ended JSON): no websocket, webdriver or node package needed."""
import base64, fcntl, json, os, re, select, shutil, subprocess, time
from urllib.parse import urlencode

import pytest

import report
from common import read_jsonl, read_records

EVIL = "<script>window.pwned = 1</script> & <b>bold</b> </script><!--<script>"


def blob(path):
    """The page's item data, as the browser's JSON.parse reads it."""
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', open(path).read(), re.S)
    return json.loads(m.group(1))


def fake_eval(d, verdicts, outputs=None):
    """An eval.py folder answering items q0..: verdict 1 right, 0 wrong, 2 unparsable, None not evaluated."""
    os.makedirs(d)
    with open(os.path.join(d, "predictions.jsonl"), "w") as f:
        for i, v in enumerate(verdicts):
            if v is not None:
                pred = {1: "A", 0: "B", 2: None}[v]
                out = (outputs or {}).get(i, f"<think>t{i}</think>\n<answer>{pred or 'A or B'}</answer>")
                f.write(json.dumps({"bench": "jsonl", "id": f"q{i}", "sample": 0, "output": out, "pred": pred,
                                    "answer": "A", "correct": v == 1, "well_formed": True, "difficulty": None}) + "\n")
    json.dump({"model": d + "/ckpt", "n": 1, "temperature": 0.0, "max_new_tokens": 8, "seed": 0},
              open(os.path.join(d, "setup.json"), "w"))
    return d


def test_model_and_benchmark_text_is_escaped(tmp_path):
    bench = tmp_path / "b.jsonl"  # a benchmark question and options with markup too
    bench.write_text(json.dumps({"id": "q0", "source": "x", "question": "Is " + EVIL,
                                 "options": {"A": "<i>x</i> &amp;", "B": "y"}, "answer": "A"}) + "\n")
    d = fake_eval(str(tmp_path / "a<b>&c"), [1, 2], outputs={0: EVIL + "<answer>A</answer>"})
    out = report.main(["--eval", d, "--bench", f"jsonl={bench}", "--out", str(tmp_path / "r.html")])
    text = open(out).read()
    assert text.count("</script>") == 2 and "<!--" not in text  # ours only: the data cannot end its tag early
    assert "window.pwned" in text and "<b>bold" not in text.split("id=\"data\"")[0]
    assert "a&lt;b&gt;&amp;c" in text and "a<b>&c" not in text.split("id=\"data\"")[0]  # a folder name in the summary
    items = blob(out)["items"]
    assert items[0]["out"][0] == EVIL + "<answer>A</answer>" and items[0]["q"] == "Is " + EVIL  # intact as data


def test_fixed_and_broken_counts_match_predictions(tmp_path):
    run = tmp_path / "run"
    v = {"base": [0, 1, 0, 2, 1, 0], "sft": [0, 1, 1, 0, 2, 1], "rl1": [1, 0, 2, 1, 1, 1], "rl2": [1, 1, 0, 2, 1, None]}
    fake_eval(str(run / "eval_base"), v["base"])
    for st in ("sft", "rl1", "rl2"):
        fake_eval(str(run / "seed0" / "eval" / st), v[st])
    os.makedirs(run / "synth")
    (run / "synth" / "test.jsonl").write_text("")
    data = blob(report.main(["--run", str(run)]))
    assert [m["label"] for m in data["models"]] == ["Base", "cold start s0", "RL 1 s0", "RL 2 s0"]
    got = {t["name"].split(" (")[0]: (t["fixed"], t["broken"]) for t in data["trans"]}
    right = lambda st: {r["id"]: r["correct"] for r in read_jsonl(run / f"seed0/eval/{st}/predictions.jsonl")}
    for after, before in (("rl1", "sft"), ("rl2", "rl1")):  # computed directly from the files
        a, b = right(after), right(before)
        want = (sum(a[i] and not b[i] for i in a if i in b), sum(b[i] and not a[i] for i in a if i in b))
        assert got[report.STAGES[after] + " s0"] == want
    assert got == {"RL 1 s0": (3, 2), "RL 2 s0": (1, 1)}  # q5: no RL 2 answer


def test_a_revision_link_per_provenance_edge(tmp_path):
    prov = [{"page": "Gout", "revid": 123, "field": "infobox:symptoms", "head": "Gout", "relation": "has_symptom",
             "tail": "Pain"}, {"page": "X", "revid": "bad\"", "field": "f", "head": "a", "relation": "r", "tail": "b"}]
    rec = {"id": "q0", "source": "synthetic", "question": "Q?", "options": {"A": "Gout", "B": "Flu"}, "answer": "A",
           "meta": {"family": "diagnosis", "provenance": prov, "given": ["Pain"], "hidden": None,
                    "answer_name": "Gout", "correct": ["Gout"], "distractors": [{"name": "Flu", "why": "same type"}]}}
    bench = tmp_path / "t.jsonl"
    bench.write_text(json.dumps(rec) + "\n")
    d = fake_eval(str(tmp_path / "e"), [1])
    item = blob(report.main(["--eval", d, "--bench", f"jsonl={bench}", "--out", str(tmp_path / "r.html")]))["items"][0]
    assert [e["url"] for e in item["prov"]["edges"]] == ["https://en.wikipedia.org/w/index.php?oldid=123", None]
    assert item["prov"]["distractors"] == [{"name": "Flu", "why": "same type"}] and item["fam"] == "diagnosis"

def test_rl_curves_as_svg_a_polyline_per_seed_and_stage(tmp_path):
    """Two charts (reward, validation), each a polyline per seed and RL stage: a colour a seed, stage 2 dashed; the
    reward is a moving average over up to 20 steps, its min and max written on the axis."""
    run = tmp_path / "run"
    fake_eval(str(run / "eval_base"), [1, 0])
    os.makedirs(run / "synth")
    (run / "synth" / "test.jsonl").write_text("")
    for s in (0, 1):
        for st, n in (("rl1", 30), ("rl2", 5)):
            os.makedirs(run / f"seed{s}" / st)
            rows = [{"step": i, "reward": i / n} for i in range(n)] + [{"step": i, "val_acc": 0.5} for i in (0, n)]
            (run / f"seed{s}" / st / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    charts = re.findall(r"<svg .*?</svg>", open(report.main(["--run", str(run)])).read(), re.S)
    assert len(charts) == 2
    want = {f"{st} s{s}" for s in (0, 1) for st in ("RL 1", "RL 2")}
    for chart, points in zip(charts, ({"RL 1": 30, "RL 2": 5}, {"RL 1": 2, "RL 2": 2})):
        lines = re.findall(r'<polyline fill="none" stroke="(#\w+)"( stroke-dasharray="4")? points="([^"]*)">'
                           r"<title>(.*?)</title>", chart)
        assert len(lines) == 4 and {t for *_, t in lines} == want
        assert all(bool(dash) == t.startswith("RL 2") and len(pts.split()) == points[t[:4]]
                   for _, dash, pts, t in lines)
        colour = {t: c for c, *_, t in lines}
        assert colour["RL 1 s0"] == colour["RL 2 s0"] != colour["RL 1 s1"] == colour["RL 2 s1"]
    assert ">0.00</text>" in charts[0] and ">0.65</text>" in charts[0]  # RL 1's last window: mean of 10/30..29/30


# ----------------------------------------------------------------------------------------------------------
# a real browser

CHROMIUM = shutil.which("chromium")
# the flags that work on a closed network: without the background-networking ones, Chromium's own connections fail
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
         "--disable-background-networking", "--disable-component-update", "--window-size=1280,1000",
         "--remote-debugging-pipe"]


def devtools(profile, timeout=60):
    """Start Chromium; -> (call(method, session=None, **params) -> result, events so far, the process)."""
    cmd_r, cmd_w = os.pipe()
    ev_r, ev_w = os.pipe()

    def fds():  # in the child: our commands on fd 3, its messages on fd 4 (moved high first: no fd clobbers another)
        a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(ev_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"], preexec_fn=fds,
                            close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(cmd_r), os.close(ev_w)
    events, buf, n = [], [b""], [0]

    def call(method, session=None, **params):
        n[0] += 1
        os.write(cmd_w, json.dumps({"id": n[0], "method": method, "params": params,
                                    **({"sessionId": session} if session else {})}).encode() + b"\0")
        end = time.time() + timeout
        while True:
            for m in [m for m in events if m.get("id") == n[0]]:
                assert "error" not in m, (method, m["error"])
                return m.get("result", {})
            assert select.select([ev_r], [], [], max(0, end - time.time()))[0], f"{method}: no reply"
            chunk = os.read(ev_r, 1 << 20)
            assert chunk, "chromium closed the pipe"
            *msgs, buf[0] = (buf[0] + chunk).split(b"\0")
            events.extend(json.loads(m) for m in msgs)
    return call, events, proc


def open_page(call, events, url):
    """A new tab at url, loaded, its console and exceptions recorded; -> (session, evaluate(js) -> value)."""
    target = call("Target.createTarget", url="about:blank")["targetId"]
    s = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        call(domain + ".enable", s)
    call("Page.navigate", s, url=url)
    for _ in range(200):
        if any(m.get("method") == "Page.loadEventFired" and m.get("sessionId") == s for m in events):
            break
        call("Runtime.evaluate", s, expression="0")  # reading replies reads events too
        time.sleep(0.05)
    ev = lambda js: call("Runtime.evaluate", s, expression=js, returnByValue=True)["result"].get("value")
    return s, ev


def click(call, s, ev, selector):
    """A real mouse click at the centre of the element (scrolled into view)."""
    x, y = ev(f"(e => {{ e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();"
              f" return [r.x + r.width / 2, r.y + r.height / 2]; }})(document.querySelector({json.dumps(selector)}))")
    for kind in ("mousePressed", "mouseReleased"):
        call("Input.dispatchMouseEvent", s, type=kind, x=x, y=y, button="left", clickCount=1)


def errors(events):
    return [m for m in events if m.get("method") == "Runtime.exceptionThrown"
            or m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] in ("error", "assert")
            or m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error"]


def browser_check(run, tmp):
    """Open RUN/report.html: no console error; clicking a tier and a "fixed by RL 2" count filters to the numbers
    the files give; an opened synthetic item links each edge to its revision; a screenshot in RUN."""
    test = {r["id"]: r for r in read_records(os.path.join(run, "synth", "test.jsonl"))}
    call, events, proc = devtools(os.path.join(tmp, "profile"))
    try:
        s, ev = open_page(call, events, "file://" + os.path.abspath(os.path.join(run, "report.html")))
        count = lambda: ev("document.getElementById('count').textContent")
        assert count() == f"{len(test)} of {len(test)} items"
        tier = "difficult"
        click(call, s, ev, f'button[data-f="tier={tier}"]')
        assert count() == f"{sum(r['difficulty'] == tier for r in test.values())} of {len(test)} items"
        assert ev("location.hash") == f"#tier={tier}"
        right = lambda st: {r["id"]: r["correct"] for r in read_jsonl(os.path.join(run, "seed0", "eval", st,
                                                                                   "predictions.jsonl"))}
        rl2, rl1 = right("rl2"), right("rl1")
        i = next(i for i, t in enumerate(blob(os.path.join(run, "report.html"))["trans"])
                 if t["name"].startswith("RL 2 s0"))
        click(call, s, ev, f'button[data-f="{urlencode({"change": f"{i}:fixed"})}"]')
        assert count() == f"{sum(rl2[k] and not rl1[k] for k in rl2)} of {len(test)} items"
        ev("document.querySelector('#change').value = ''; document.querySelector('#change').onchange()")
        click(call, s, ev, "#rows tr.it")
        first = next(iter(test.values()))
        assert ev("document.querySelectorAll('.det a[href^=\"https://en.wikipedia.org/w/index.php?oldid=\"]').length") \
            == len(first["meta"]["provenance"])
        ev("document.querySelector('#rows tr.it').scrollIntoView()")  # the screenshot: the opened item
        png = os.path.join(run, "report.png")
        open(png, "wb").write(base64.b64decode(call("Page.captureScreenshot", s)["data"]))
        assert not errors(events), errors(events)
        return png
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium (.ci/run does)")
def test_smoke_run_report_in_chromium(smoke_run, tmp_path):
    png = browser_check(str(smoke_run), str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium (.ci/run does)")
def test_model_output_with_script_renders_as_text_in_chromium(tmp_path):
    out = report.main(["--eval", fake_eval(str(tmp_path / "e"), [2], outputs={0: EVIL}), "--out",
                       str(tmp_path / "r.html")])
    call, events, proc = devtools(str(tmp_path / "profile"))
    try:
        s, ev = open_page(call, events, "file://" + out)
        click(call, s, ev, "#rows tr.it")
        assert ev("document.querySelector('.det pre').textContent") == EVIL  # the reasoning, shown as written
        assert ev("window.pwned") is None and ev("document.querySelectorAll('.det b, .det script').length") == 0
        assert not errors(events), errors(events)
    finally:
        proc.kill()
        proc.wait()
