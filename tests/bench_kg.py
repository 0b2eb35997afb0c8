"""Benchmark kg.py's dump path: pages/s and peak memory, extrapolated to a 100k-entity graph.

  python tests/bench_kg.py [--dump data/sample_wiki.xml] [--copies 40] [--filler 0]

Concatenates the dump's pages `copies` times (titles suffixed so every copy is a distinct page), optionally
adds `filler` non-medical pages per copy (a real dump is ~95% non-medical), compresses to .bz2, runs
build_from_dump in a fresh process and reports pages/s, entities/s and peak RSS (resource.getrusage). Peak RSS
minus the baseline of an empty run, divided by entities, gives the per-entity cost used for the 100k estimate.
"""
import argparse, bz2, json, os, re, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dump(src, dst, copies, filler):
    text = open(src, encoding="utf-8").read()
    head, body = text[:text.index("<page>")], text[text.index("<page>"):text.rindex("</mediawiki>")]
    pad = "<page><title>Filler {k} {i}</title><ns>0</ns><id>1</id><revision><id>1</id><text>" + "".join(
        f"{{{{Infobox settlement|name=x{j}}}}} Filler {j} is a [[town]] in [[France]] near [[river {j}]]. " for j in range(60)
    ) + "</text></revision></page>\n"  # ~5 KB, about the size of an average article
    with bz2.open(dst, "wt", encoding="utf-8", compresslevel=1) as f:
        f.write(head)
        for k in range(copies):
            # suffix every title and link target so copies do not merge into one graph
            if not filler:  # the medical pages, or (filler > 0) only non-medical pages
                f.write(re.sub(r"(<title>|<redirect title=\"|\[\[)(?![^\]|<\"]*:)([^\]|<\"#]+)", lambda m: f"{m[1]}{m[2]} {k}", body))
            f.write("".join(pad.replace("{k}", str(k)).replace("{i}", str(i)) for i in range(filler)))
        f.write("</mediawiki>\n")


def run(dump, out):
    code = (f"import json, resource, sys, time; sys.path.insert(0, {ROOT!r}); import kg; t = time.time(); "
            f"st = kg.build_from_dump({dump!r}, {out!r}) if {dump!r} else {{}}; "
            f"print(json.dumps(dict(st, wall=time.time() - t, "
            f"cpu=resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime, "
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
    ap.add_argument("--filler", type=int, default=200, help="non-medical pages per copy, for the second run")
    # first run: copies of the medical sample; second run: copies * filler non-medical pages
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        base = run("", "")
        res = []
        for filler in (0, a.filler):
            big = os.path.join(d, f"big{filler}.xml.bz2")
            make_dump(a.dump, big, a.copies, filler)
            st = run(big, os.path.join(d, f"out{filler}"))
            st["dump_mb_bz2"] = round(os.path.getsize(big) / 2**20, 2)
            res.append(st)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in st.items()
                              if k in ("dump_mb_bz2", "pages_read", "pages_medical", "entities", "edges", "wall",
                                       "cpu", "maxrss_mb")} | {"pages_per_s_wall": round(st["pages_read"] / st["wall"], 1),
                                                               "pages_per_s_cpu": round(st["pages_read"] / st["cpu"], 1)}))
    m, f = res
    med_cpu = (m["cpu"] - base["cpu"]) / m["pages_medical"]                        # s per medical page
    non_cpu = (f["cpu"] - base["cpu"]) / f["pages_read"]                          # s per other page
    kb_ent = max(m["maxrss_mb"] - base["maxrss_mb"], 0) * 1024 / m["entities"]
    print(f"baseline: {base['maxrss_mb']:.0f} MB RSS, {base['cpu']:.2f} s cpu (imports)")
    print(f"medical page: {1e3 * med_cpu:.1f} ms cpu ({1 / med_cpu:.0f}/s); non-medical page: "
          f"{1e3 * non_cpu:.2f} ms cpu ({1 / non_cpu:.0f}/s); {kb_ent:.2f} KB RSS per entity")
    # 100k entities: here one medical page brings ~entities/medical entities (its link tails)
    n_med = 100_000 * m["pages_medical"] / m["entities"]
    for n_other, what in ((0, "medical pages only"), (6_800_000, "+ a full enwiki dump's ~6.8M other articles")):
        h = (n_med * med_cpu + n_other * non_cpu) / 3600
        print(f"100k entities, {what}: ~{n_med:,.0f} medical pages, ~{h:.2f} h single core, "
              f"~{base['maxrss_mb'] + kb_ent * 100_000 / 1024:,.0f} MB peak")


if __name__ == "__main__":
    main()
