"""Benchmark kg.py's dump path: pages/s and peak memory, extrapolated to a 100k-entity graph.

  python tests/bench_kg.py [--dump data/sample_wiki.xml] [--copies 40] [--filler 0]

Concatenates the dump's pages `copies` times (titles suffixed so every copy is a distinct page), optionally
adds `filler` non-medical pages per copy (a real dump is ~95% non-medical), compresses to .bz2, runs
build_from_dump in a fresh process and reports pages/s, entities/s and peak RSS (resource.getrusage). Peak RSS
minus the baseline of an empty run, divided by entities, gives the per-entity cost used for the 100k estimate.
"""
import argparse, bz2, json, os, re, resource, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dump(src, dst, copies, filler):
    text = open(src, encoding="utf-8").read()
    head, body = text[:text.index("<page>")], text[text.index("<page>"):text.rindex("</mediawiki>")]
    pad = "<page><title>Filler {k} {i}</title><ns>0</ns><id>1</id><revision><id>1</id><text>" + \
          "Filler is a [[town]] in [[France]]. " * 60 + "</text></revision></page>\n"
    with bz2.open(dst, "wt", encoding="utf-8", compresslevel=1) as f:
        f.write(head)
        for k in range(copies):
            # suffix every title and link target so copies do not merge into one graph
            f.write(re.sub(r"(<title>|<redirect title=\"|\[\[)(?![^\]|<\"]*:)([^\]|<\"#]+)", lambda m: f"{m[1]}{m[2]} {k}", body))
            f.write("".join(pad.format(k=k, i=i) for i in range(filler)))
        f.write("</mediawiki>\n")


def run(dump, out):
    code = (f"import json, resource, sys, time; sys.path.insert(0, {ROOT!r}); import kg; t = time.time(); "
            f"st = kg.build_from_dump({dump!r}, {out!r}) if {dump!r} else {{}}; "
            f"print(json.dumps(dict(st, wall=time.time() - t, "
            f"maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                                                                                         "OMP_NUM_THREADS": "1"})
    if r.returncode:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", default=os.path.join(ROOT, "data", "sample_wiki.xml"))
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--filler", type=int, default=0, help="non-medical pages added per copy")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        big = os.path.join(d, "big.xml.bz2")
        make_dump(a.dump, big, a.copies, a.filler)
        base = run("", "")["maxrss_mb"]
        st = run(big, os.path.join(d, "out"))
        size = os.path.getsize(big) / 2**20
    pps, eps = st["pages_read"] / st["wall"], st["entities"] / st["wall"]
    per_ent_kb = max(st["maxrss_mb"] - base, 0) * 1024 / max(st["entities"], 1)
    print(json.dumps({"dump_mb_bz2": round(size, 2),
                      "pages_read": st["pages_read"], "medical": st["pages_medical"], "entities": st["entities"],
                      "edges": st["edges"], "wall_s": round(st["wall"], 1), "pages_per_s": round(pps, 1),
                      "entities_per_s": round(eps, 1), "peak_rss_mb": round(st["maxrss_mb"], 1),
                      "baseline_rss_mb": round(base, 1), "kb_per_entity": round(per_ent_kb, 2)}, indent=1))
    # 100k entities: time scales with pages read (~pages per entity as here), memory with entities
    ratio = 100_000 / max(st["entities"], 1)
    print(f"extrapolated to 100k entities: ~{st['pages_read'] * ratio:,.0f} medical-ish pages, "
          f"~{st['wall'] * ratio / 3600:.2f} h on this machine, ~{base + per_ent_kb * 100_000 / 1024:,.0f} MB peak")


if __name__ == "__main__":
    main()
