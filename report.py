"""report.py: the audit page of a run: one static, self-contained HTML file that shows, for every evaluated item, what
each model reasoned and answered, and where a synthetic question's facts came from (the paper's claim is
verifiability: "transparent steps that can be checked").

Reads  RUN in run_tiny.sh's layout (synth/test.jsonl, eval_base, seed*/eval/{sft,rl1,rl2}, ablation.json,
       seed*/rl{1,2}/metrics.jsonl), or any eval.py output folders (--eval) with the benchmark files they read
       (--bench, for the questions and options; without it, a row shows what predictions.jsonl holds).
Writes RUN/report.html (or --out): a summary (ablation table with paired gains ± SE, accuracy by tier and
       benchmark, what each RL stage fixed and broke, the RL curves in SVG, the setup) and a row per item that opens on
       click: question, options, gold, each model's reasoning, answer block, what common.extract_answer read and the
       verdict, and for a synthetic item its KG path with each edge's Wikipedia revision and each distractor's why.

No CDN, no framework: plain JavaScript filters the rows and renders an opened item. Every string from a model, a
benchmark or Wikipedia is escaped: html.escape in the summary, a JSON blob rendered with textContent for the items.

    python report.py --run runs/tiny
    python report.py --eval out/sft out/rl2 --bench medqa=medqa/test.jsonl --out report.html
"""
import argparse, datetime, hashlib, html, json, os, re, subprocess
from urllib.parse import urlencode

from benchmarks import load_benchmark
from common import DIFFICULTIES, atomic_write, mean_se, read_jsonl, read_records

ROOT = os.path.dirname(os.path.abspath(__file__))
STAGES = {"sft": "cold start", "rl1": "RL 1", "rl2": "RL 2"}  # tiny.py's stages after Base, in order
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")  # the RL curves: one a seed
WIKI = "https://en.wikipedia.org/w/index.php?oldid="  # a page at one revision: the text the KG edge was read from


# ----------------------------------------------------------------------------------------------- the data

def tiny_models(run):
    """[(label, eval folder, index of the model it is compared with or None)] of run_tiny.sh's layout, and the
    seeds: one Base, then per seed cold start -> RL 1 -> RL 2; each RL stage vs the stage before it, same seed."""
    models = [("Base", os.path.join(run, "eval_base"), None)]
    seeds = sorted(int(s[4:]) for s in os.listdir(run) if s.startswith("seed") and s[4:].isdigit())
    for s in seeds:
        at = {}
        for st, label in STAGES.items():
            d = os.path.join(run, f"seed{s}", "eval", st)
            if os.path.exists(os.path.join(d, "predictions.jsonl")):
                at[st] = len(models)
                models.append((f"{label} s{s}", d, at.get({"rl1": "sft", "rl2": "rl1"}.get(st))))
    return models, seeds


def build(models, records):
    """The page's data. records: {(bench, id): unified record} for the questions (may be empty). An item is every
    (bench, id) some model answered, in the records' order; sample 0 only (greedy, as the ablation table)."""
    preds = [{(r["bench"], r["id"]): r for r in read_jsonl(os.path.join(d, "predictions.jsonl")) if r["sample"] == 0}
             for _, d, _ in models]
    seen = set().union(*preds)
    keys = [k for k in records if k in seen] + sorted(seen - set(records))
    items = []
    for k in keys:
        rec, first = records.get(k, {}), next(p[k] for p in preds if k in p)
        meta = rec.get("meta") or {}
        rows = [p.get(k) for p in preds]
        it = {"id": k[1], "bench": k[0], "q": rec.get("question"), "opts": rec.get("options"), "gold": first["answer"],
              "tier": rec.get("difficulty") or first.get("difficulty") or "—", "fam": meta.get("family") or "—",
              "out": [r and r["output"] for r in rows], "pred": [r and r["pred"] for r in rows],
              "ok": [None if r is None else 1 if r["correct"] else 2 if r["pred"] is None else 0 for r in rows]}
        # ok per model: 1 right, 0 wrong, 2 unparsable (extract_answer read nothing), None not evaluated
        if meta.get("provenance"):  # a synthetic item: its KG path and the Wikipedia revision of every edge
            it["prov"] = {x: meta.get(x) for x in ("given", "hidden", "answer_name", "correct", "distractors")}
            it["prov"]["edges"] = [dict(e, url=WIKI + str(e["revid"]) if str(e.get("revid")).isdigit() else None)
                                   for e in meta["provenance"]]
        items.append(it)
    trans = []  # each compared model: items fixed (right now, wrong or unparsable before), broken, paired gain ± SE
    for i, (label, _, p) in enumerate(models):
        if p is None:
            continue
        pairs = [(it["ok"][i] == 1, it["ok"][p] == 1) for it in items if None not in (it["ok"][i], it["ok"][p])]
        gain, se = mean_se([100 * (a - b) for a, b in pairs])
        trans.append({"name": f"{label} (vs {models[p][0]})", "after": i, "before": p,
                      "fixed": sum(a and not b for a, b in pairs), "broken": sum(b and not a for a, b in pairs),
                      "gain": gain, "gain_se": se})
    return {"models": [{"label": m[0], "dir": m[1]} for m in models], "items": items, "trans": trans}


# ----------------------------------------------------------------------------------------------- the summary

def table(head, rows):
    """An HTML table; cells are text (escaped) or ("html", markup) for the few cells this file builds itself."""
    cell = lambda c, tag: f"<{tag}>" + (c[1] if isinstance(c, tuple) else html.escape(str(c))) + f"</{tag}>"
    return ("<table>" + ("<tr>" + "".join(cell(h, "th") for h in head) + "</tr>" if head else "")
            + "".join("<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows) + "</table>")


def go(label, **filters):
    """A button that sets the item filters (tier="easy", change="2:fixed"; none: all items) and scrolls to them."""
    return ("html", f'<button data-f="{html.escape(urlencode(filters))}">{html.escape(str(label))}</button>')


def pm(m, se):
    return "—" if m is None or m != m else f"{m:+.1f}" + ("" if se is None or se != se else f" ± {se:.1f}")


def ablation_html(path):
    """tiny.py report's table (mean over seeds; gains are paired per-question differences pooled over seeds)."""
    if not os.path.exists(path):
        return ""
    res = json.load(open(path, encoding="utf-8"))
    tiers = [t for t in res["stages"]["base"] if t not in ("label", "all")]
    rows = [[row["label"], f"{row['all']['accuracy']:.1f}", pm(row["all"].get("gain"), row["all"].get("gain_se"))]
            + [f"{row[t]['accuracy']:.1f}" + (f" ({pm(row[t]['gain'], row[t]['gain_se'])})" if "gain" in row[t]
                                               else "") for t in tiers] for row in res["stages"].values()]
    head = ["stage", "accuracy (all)", "gain vs previous (paired, ± SE)"] + [
        f"{t} (n={res['stages']['base'][t]['n']}): acc. (gain)" for t in tiers]
    ctl = [[c["label"], " ".join(map(str, c["seeds"])), f"{c['accuracy']:.1f}",
            "; ".join(f"{pm(*v)} vs {k[3:]}" for k, v in c.items() if k.startswith("vs_"))]
           for c in res.get("controls", {}).values()]  # beside the table, never tuned on (docs/tiny_runs.md#controls)
    return (f"<h2>Ablation (tiny.py report: {res['n_test']} test items, seeds {res['seeds']}, accuracy = mean over "
            f"seeds)</h2>" + table(head, rows)
            + (table(["control", "seeds", "accuracy", "paired gain (± SE)"], ctl) if ctl else ""))


def summary_html(data, run, seeds, files):
    items, models = data["items"], data["models"]
    tiers = [t for t in DIFFICULTIES if any(it["tier"] == t for it in items)]
    tiers += sorted({it["tier"] for it in items} - set(tiers))
    benches = sorted({it["bench"] for it in items})
    cols = [("all", None)] + [(t, "tier") for t in tiers] + [(b, "bench") for b in benches]
    def pct(j, key=None, v=None, verdict=1):  # % of the items model j answered (of that tier/bench) with that verdict
        oks = [it["ok"][j] for it in items if (key is None or it[key] == v) and it["ok"][j] is not None]
        return f"{100 * sum(o == verdict for o in oks) / len(oks):.1f}" if oks else "—"
    acc_rows = [[m["label"]] + [pct(j, k, v) for v, k in cols] + [pct(j, verdict=2)] for j, m in enumerate(models)]
    head = ["model"] + [go(f"{v} (n={sum(k is None or it[k] == v for it in items)})", **({k: v} if k else {}))
                        for v, k in cols] + ["unparsable"]
    out = [ablation_html(os.path.join(run, "ablation.json")) if run else "",
           "<h2>Accuracy (%) by tier and benchmark (greedy: sample 0; unparsable counts as wrong)</h2>",
           table(head, acc_rows)]
    if data["trans"]:
        out += ["<h2>What each RL stage changed (click a count to list those items)</h2>", table(
            ["stage (vs the stage before it)", "fixed: right now, wrong before", "broken: wrong now, right before",
             "paired gain (%) ± SE"],
            [[t["name"], go(t["fixed"], change=f"{i}:fixed"), go(t["broken"], change=f"{i}:broken"),
              pm(t["gain"], t["gain_se"])] for i, t in enumerate(data["trans"])])]
    out += rl_html(run, seeds) if run else []
    setups = [(m, json.load(open(os.path.join(m["dir"], "setup.json"), encoding="utf-8"))
               if os.path.exists(os.path.join(m["dir"], "setup.json")) else {}) for m in models]
    out += ["<h2>Setup</h2>", table(None, [
        ["report written", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
        ["code (git commit of report.py's checkout; the run's stages record none)", git_commit()],
        ["seeds", " ".join(map(str, seeds)) or "—"], ["run folder", run or "—"]]),
        table(["model", "checkpoint", "samples", "temperature", "max new tokens", "seed", "eval folder", "evaluated"],
              [[m["label"]] + [s.get(k, "?") for k in ("model", "n", "temperature", "max_new_tokens", "seed")]
               + [m["dir"], mtime(os.path.join(m["dir"], "predictions.jsonl"))] for m, s in setups]),
        table(["data file", "bytes", "sha256 (first 16)", "modified"],
              [[f, os.path.getsize(f), sha256(f), mtime(f)] for f in files if os.path.exists(f)])]
    return "\n".join(out)


def rl_html(run, seeds):
    """The RL curves of seed*/rl{1,2}/metrics.jsonl as inline SVG, stage 2's steps after stage 1's, and a line per RL
    stage: the reward's moving average over up to 20 steps, and the validation accuracy at each evaluation."""
    rows, reward, val, key = [], [], [], []
    for c, s in enumerate(seeds):
        x0, colour = 0, COLOURS[c % len(COLOURS)]
        key.append(f'<b style="color:{colour}">seed {s}</b>')
        for st in ("rl1", "rl2"):
            f = os.path.join(run, f"seed{s}", st, "metrics.jsonl")
            m = read_jsonl(f) if os.path.exists(f) else []
            r = [x["reward"] for x in m if "reward" in x]
            v = [(x0 + x["step"], 100 * x["val_acc"]) for x in m if "val_acc" in x]
            if not r:
                continue
            ma = [sum(r[max(0, i - 19):i + 1]) / min(i + 1, 20) for i in range(len(r))]  # over up to 20 steps
            reward.append((f"{STAGES[st]} s{s}", colour, st == "rl2", [(x0 + i, y) for i, y in enumerate(ma)]))
            val.append((f"{STAGES[st]} s{s}", colour, st == "rl2", v))
            rows.append([f"{STAGES[st]} s{s}", len(r), f"{r[0]:.3f}", f"{r[-1]:.3f}", f"{max(r):.3f}",
                         f"{max(y for _, y in v):.1f}" if v else "—"])
            x0 += len(r)  # one reward row a step
    return ["<h2>RL curves</h2>", f"<p>{' '.join(key)}; solid: RL 1, dashed: RL 2 (its steps after RL 1's)</p>",
            svg("mean reward (moving average over 20 steps)", reward) + svg("validation accuracy (%)", val),
            table(["stage", "steps", "reward: first", "last", "best", "best validation accuracy (%)"], rows)]


def svg(title, curves, w=460, h=200):
    """A line chart: curves [(label, colour, dashed, [(step, y)])], one polyline each, the axes from step 0 and over
    the data's y range, their min and max written beside them."""
    pts = [p for *_, ps in curves for p in ps]
    if not pts:
        return ""
    x1, y0, y1 = max(x for x, _ in pts) or 1, min(y for _, y in pts), max(y for _, y in pts)
    y1 = y1 if y1 > y0 else y0 + 1  # a flat curve: drawn on the axis, no division by zero
    at = lambda x, y: f"{40 + (w - 50) * x / x1:.1f},{h - 20 - (h - 35) * (y - y0) / (y1 - y0):.1f}"
    out = [f'<svg width="{w}" height="{h}" font-size="10"><text x="40" y="10">{html.escape(title)}</text>',
           f'<polyline fill="none" stroke="#888" points="{at(0, y1)} {at(0, y0)} {at(x1, y0)}"/>',
           f'<text x="2" y="{h - 17}">{y0:.2f}</text><text x="2" y="18">{y1:.2f}</text>',
           f'<text x="40" y="{h - 5}">step 0</text><text x="{w - 10}" y="{h - 5}" text-anchor="end">{x1}</text>']
    for label, colour, dashed, ps in curves:
        dash = ' stroke-dasharray="4"' if dashed else ""
        out.append(f'<polyline fill="none" stroke="{colour}"{dash} points="{" ".join(at(x, y) for x, y in ps)}">'
                   f"<title>{html.escape(label)}</title></polyline>")
    return "".join(out) + "</svg>"


def git_commit():
    try:
        git = lambda *a: subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, check=True).stdout
        return git("rev-parse", "HEAD").strip() + (" (with uncommitted changes)" if git(
            "status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def mtime(path):
    return datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC") if os.path.exists(path) else "—"


# ----------------------------------------------------------------------------------------------- the page

def page(data, summary, title):
    # "<" only occurs inside JSON strings: escaping "</" and "<!--" keeps the blob from ending or changing state early
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("</", "<\\/").replace("<!--", "\\u003c!--")
    fill = {"TITLE": html.escape(title), "SUMMARY": summary, "DATA": blob}  # one pass: no inserted text is rescanned
    return re.sub(r"\$(TITLE|SUMMARY|DATA)\b", lambda m: fill[m.group(1)], TEMPLATE)


TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>$TITLE</title>
<style>
body{font:13px/1.35 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}h2{font-size:15px;margin:1.2em 0 .3em}
button{font:inherit;padding:0 4px;cursor:pointer}select{margin-right:1em}
#items td.v{text-align:center;width:2.2em}.v1{background:#d6f5d6}.v0{background:#f8d0d0}.v2{background:#e4e4e4}
tr.it{cursor:pointer}tr.it:hover{background:#eef}tr.gold td{font-weight:bold}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:16em;overflow:auto;max-width:60em}
.det>td{background:#fcfcf7;padding:6px 14px}.q{font-size:14px;max-width:70em}
</style></head><body>
<h1>$TITLE</h1>
$SUMMARY
<h2 id="items-title">Items (click a row for the question, each model's reasoning and the facts' sources)</h2>
<p>tier <select id="tier"><option value="">all</option></select> family <select id="fam"><option value="">all</option>
</select> benchmark <select id="bench"><option value="">all</option></select> change <select id="change">
<option value="">any</option></select> <b id="count"></b></p>
<p>✓ right · ✗ wrong · ? unparsable (no single option in the last &lt;answer&gt; block) · blank: not evaluated
</p>
<table id="items"><thead><tr><th>#</th><th>id</th><th>benchmark</th><th>tier</th><th>family</th></tr></thead>
<tbody id="rows"></tbody></table>
<script type="application/json" id="data">$DATA</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent), $ = id => document.getElementById(id);
const FILTERS = ["tier", "fam", "bench", "change"], GLYPH = ["✗", "✓", "?"];
const VERDICT = ["wrong", "right", "unparsable"];
function el(tag, text, cls, parent) {  // data only ever becomes textContent
  const e = document.createElement(tag);
  if (text != null) e.textContent = String(text);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}
const row = (table, cells, tag = "td") => el("tr", null, null, table).append(...cells.map(c => el(tag, c)));
const fixed = (it, t) => it.ok[t.after] === 1 && (it.ok[t.before] === 0 || it.ok[t.before] === 2);
const broken = (it, t) => it.ok[t.before] === 1 && (it.ok[t.after] === 0 || it.ok[t.after] === 2);
for (const k of ["tier", "fam", "bench"])
  for (const v of [...new Set(D.items.map(it => it[k]))].sort()) el("option", v, null, $(k)).value = v;
D.trans.forEach((t, i) => [["fixed", fixed], ["broken", broken]].forEach(([kind, f]) =>
  el("option", `${kind} by ${t.name}: ${D.items.filter(it => f(it, t)).length}`, null, $("change")).value =
    i + ":" + kind));
const head = document.querySelector("#items thead tr");
D.models.forEach(m => el("th", m.label, null, head).title = m.dir);
const details = {}, rows = D.items.map((it, i) => {
  const tr = el("tr", null, "it");
  for (const v of [i + 1, it.id, it.bench, it.tier, it.fam]) el("td", v, null, tr);
  it.ok.forEach(v => el("td", v == null ? "" : GLYPH[v], "v v" + v, tr));
  tr.onclick = () => {  // lazy: an item's details are built the first time it is opened
    if (details[i]) return details[i].hidden = !details[i].hidden;
    details[i] = el("tr", null, "det");
    render(it, el("td", null, null, details[i])).colSpan = 5 + D.models.length;
    tr.after(details[i]);
  };
  return tr;
});
$("rows").append(...rows);
function render(it, td) {
  el("p", it.q ?? "(question not available: give report.py its benchmark file with --bench)", "q", td);
  const opts = el("table", null, null, td), chose = L => D.models.filter((m, j) => it.pred[j] === L).map(m => m.label);
  for (const [L, text] of Object.entries(it.opts || {})) {
    const tr = el("tr", null, L === it.gold ? "gold" : null, opts);
    for (const v of [L, text, (L === it.gold ? "gold · " : "") + "chosen by: " + (chose(L).join(", ") || "none")])
      el("td", v, null, tr);
  }
  el("p", "Gold: " + it.gold + (it.opts && it.opts[it.gold] != null ? " = " + it.opts[it.gold] : ""), null, td);
  const p = it.prov;
  if (p) {
    el("h4", "Provenance: the KG path and where each fact was read", null, td);
    el("p", `Given: ${p.given.join(", ")} · hidden: ${p.hidden ?? "none (the disease is asked)"} · answer: ` +
       `${p.answer_name} · every answer the KG accepts: ${(p.correct || []).join(", ")}`, null, td);
    const t = el("table", null, null, td);
    row(t, ["head", "relation", "tail", "Wikipedia page", "field", "revision"], "th");
    for (const e of p.edges) {
      const tr = el("tr", null, null, t);
      [e.head, e.relation, e.tail, e.page, e.field].forEach(v => el("td", v, null, tr));
      const a = el("a", e.revid, null, el("td", null, null, tr));
      if (e.url) a.href = e.url;
    }
    if (p.distractors) {
      const d = el("table", null, null, td);
      row(d, ["distractor", "why it was chosen"], "th");
      for (const x of p.distractors) row(d, [x.name, x.why]);
    }
  }
  const t = el("table", null, null, td);
  row(t, ["model", "reasoning", "answer block (as written)", "extract_answer read", "verdict"], "th");
  D.models.forEach((m, j) => {
    const o = it.out[j];
    if (o == null) return;
    const k = o.lastIndexOf("<answer>"), tr = el("tr", null, null, t), pred = it.pred[j];
    el("td", m.label, null, tr);
    el("pre", k < 0 ? o : o.slice(0, k), null, el("td", null, null, tr));
    el("pre", k < 0 ? "(no <answer> block)" : o.slice(k), null, el("td", null, null, tr));
    el("td", pred == null ? "nothing" : pred + (it.opts && it.opts[pred] != null ? " = " + it.opts[pred] : ""),
       null, tr);
    el("td", VERDICT[it.ok[j]], "v" + it.ok[j], tr);
  });
  return td;
}
function apply() {
  const want = FILTERS.map(k => $(k).value), [t, kind] = want[3].split(":");
  let n = 0;
  D.items.forEach((it, i) => {
    const show = ["tier", "fam", "bench"].every((k, j) => !want[j] || it[k] === want[j]) &&
                 (!want[3] || (kind === "fixed" ? fixed : broken)(it, D.trans[+t]));
    rows[i].hidden = !show;
    if (details[i]) details[i].hidden = true;
    n += show;
  });
  $("count").textContent = `${n} of ${D.items.length} items`;
  const q = new URLSearchParams(FILTERS.filter(k => $(k).value).map(k => [k, $(k).value])).toString();
  history.replaceState(null, "", q ? "#" + q : location.pathname);  // a filtered view is a link
}
function setFilters(q) {
  const p = new URLSearchParams(q);
  FILTERS.forEach(k => $(k).value = p.get(k) || "");
  apply();
}
FILTERS.forEach(k => $(k).onchange = apply);
document.querySelectorAll("button[data-f]").forEach(b => b.onclick = () => {
  setFilters(b.dataset.f);
  $("items-title").scrollIntoView();
});
setFilters(location.hash.slice(1));
</script></body></html>
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run_tiny.sh's RUN folder (writes RUN/report.html)")
    p.add_argument("--eval", nargs="+", help="eval.py output folders, in order: each is compared with the one before")
    p.add_argument("--bench", nargs="*", default=[], metavar="NAME=PATH",
                   help="the benchmark files the --eval folders answered (eval.py's --bench), for the questions")
    p.add_argument("--out", help="default RUN/report.html")
    a = p.parse_args(argv)
    if bool(a.run) == bool(a.eval) or not (a.out or a.run):
        p.error("give --run RUN, or --eval DIR [DIR ...] --out FILE")
    records, files, seeds = {}, [], []
    if a.run:
        models, seeds = tiny_models(a.run)
        test = os.path.join(a.run, "synth", "test.jsonl")  # run_tiny.sh evaluates it as --bench jsonl=TEST
        records = {("jsonl", r["id"]): r for r in read_records(test)}
        files = [test] + [os.path.join(a.run, f) for f in ("kg/entities.jsonl", "kg/edges.jsonl", "pool/train.jsonl",
                                                             "sft.jsonl")]
    else:
        names = [os.path.basename(os.path.normpath(d)) for d in a.eval]
        names = names if len(set(names)) == len(names) else a.eval
        models = [(n, d, i - 1 if i else None) for i, (n, d) in enumerate(zip(names, a.eval))]
        for spec in a.bench:  # keyed as eval.py names a benchmark given twice
            name, path = spec.split("=", 1)
            key = name if not any(k[0] == name for k in records) else \
                f"{name}:{os.path.splitext(os.path.basename(path))[0]}"
            records.update({(key, r["id"]): r for r in load_benchmark(name, path)})
            files.append(path)
    data = build(models, records)
    out = a.out or os.path.join(a.run, "report.html")
    title = f"nano-fleming audit report: {a.run or ', '.join(a.eval)}"
    atomic_write(out, page(data, summary_html(data, a.run, seeds, files), title))
    print(f"report: {out} ({os.path.getsize(out) / 1e6:.2f} MB; {len(data['items'])} items x "
          f"{len(data['models'])} models)")
    return out


if __name__ == "__main__":
    main()
