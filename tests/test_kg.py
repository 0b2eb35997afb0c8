"""kg.py: infobox/section extraction, entity linking, the dump path, bad input. Real markup samples from
../shared/wikitext are used when present (skipped otherwise)."""
import bz2, glob, json, os, random, subprocess, sys
import pytest
import kg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared", "wikitext")
SAMPLE = os.path.join(ROOT, "data", "sample_wiki.xml")


def edges_of(r):
    return {(h, rel, t) for h, rel, t, _ in r["edges"]}


def read_out(out):
    ents = {e["id"]: e for e in map(json.loads, open(os.path.join(out, "entities.jsonl")))}
    edges = [json.loads(l) for l in open(os.path.join(out, "edges.jsonl"))]
    return ents, edges, json.load(open(os.path.join(out, "stats.json")))


def triples(edges):
    return {(e["head"], e["relation"], e["tail"]) for e in edges}


def xml_dump(pages):
    """pages: [(title, text)] or [(title, None, redirect_target)] -> MediaWiki export XML."""
    from xml.sax.saxutils import escape, quoteattr
    out = ['<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">',
           "<siteinfo><sitename>Test</sitename></siteinfo>"]
    for i, p in enumerate(pages):
        red = f"<redirect title={quoteattr(p[2])} />" if len(p) > 2 else ""
        text = p[1] if p[1] is not None else f"#REDIRECT [[{p[2]}]]"
        out.append(f"<page><title>{escape(p[0])}</title><ns>0</ns><id>{i + 1}</id>{red}<revision><id>{100 + i}"
                   f"</id><timestamp>2024-01-01T00:00:00Z</timestamp><text xml:space=\"preserve\">{escape(text)}"
                   f"</text></revision></page>")
    return "\n".join(out + ["</mediawiki>\n"])


# ----------------------------------------------------------------------------- list values written many ways
LISTS = {
    "br": "[[Fever]]<br>[[cough|Coughing]]<br />[[Night sweats]]",
    "commas": "[[Fever]], [[cough]]<ref>{{cite web|url=http://x|publisher=[[Lancet]]}}</ref>, [[night sweats]]",
    "ubl": "{{ubl|[[Fever]]|[[Cough]]|[[Night_sweats]]}}",
    "plainlist": "{{plainlist|\n* [[Fever]]\n* [[Cough]] <!-- [[Hemoptysis]] -->\n* {{nowrap|[[Night sweats]]}}\n}}",
    "hlist": "{{hlist|[[fever]]|[[cough]]|[[night sweats]]}}",
    "bullets": "\n* [[Fever]]<ref name=a/>\n* ''[[Cough]]''\n* [[Night sweats#Causes|sweating at night]]",
}


@pytest.mark.parametrize("style", list(LISTS))
def test_infobox_list_styles(style):
    text = f"{{{{Infobox medical condition\n| name = Tuberculosis\n| symptoms = {LISTS[style]}\n}}}}\nLead."
    r = kg.parse_page("tuberculosis", text)
    assert r["type"] == "disease"
    assert sorted(t for _, rel, t in edges_of(r)) == ["Cough", "Fever", "Night sweats"], style


def test_plain_items_and_noise():
    v = ("Inability to produce milk after [[childbirth]], [[Infertility]] (BPH)<br>'''Baby''': jaundice, "
         "a type of thing, 1999, [[File:X.png|thumb|[[Liver]]]], [[Category:Diseases]], [[2004]], [[March 3]]")
    items = kg.field_items(v)
    assert items == ["Infertility", "Jaundice"]
    assert kg.field_items(v, plain=False) == ["Infertility"]


def test_condition_fields_sections_and_provenance():
    text = """{{Infobox medical condition (new)
| name = Gout | synonyms = Podagra, arthritis urica
| field = [[Rheumatology]]
| symptoms = Red, tender, hot [[joint pain|painful joint]]s<ref>x</ref>
| complications = [[Kidney stone]]s
| causes = [[Uric acid|High uric acid]]
| risks = [[Obesity]], [[alcohol (drug)|alcohol]]
| diagnosis = [[Joint aspiration]]
| differential = [[Septic arthritis]], [[pseudogout]]
| prevention = [[Weight loss]]
| treatment = [[Ice]]
| medication = [[NSAID]]s, [[colchicine]]
}}
'''Gout''' is a form of [[inflammatory arthritis]].
== Signs and symptoms ==
Gout can present as [[podagra]].
=== Complications ===
[[Kidney stone]]s and [[tophus|tophi]].
=== History ===
Named after [[Hippocrates]].
== Treatment ==
[[Allopurinol]] prevents attacks.
== Epidemiology ==
Common in [[New Zealand]].
"""
    r = kg.parse_page("Gout", text)
    e = edges_of(r)
    for want in [("Gout", "specialty", "Rheumatology"), ("Gout", "has_symptom", "Joint pain"),
                 ("Gout", "has_complication", "Kidney stone"), ("Gout", "caused_by", "Uric acid"),
                 ("Gout", "risk_factor", "Alcohol (drug)"), ("Gout", "diagnosed_by", "Joint aspiration"),
                 ("Gout", "differential", "Pseudogout"), ("Gout", "prevented_by", "Weight loss"),
                 ("Gout", "treated_by", "Ice"), ("Gout", "treated_with", "Colchicine"),
                 ("Gout", "has_symptom", "Podagra"), ("Gout", "has_complication", "Tophus"),
                 ("Gout", "treated_by", "Allopurinol")]:
        assert want in e, want
    tails = {t for _, _, t in e}
    assert "Hippocrates" not in tails and "New Zealand" not in tails and "Inflammatory arthritis" not in tails
    src = {(h, rel, t): f for h, rel, t, f in r["edges"]}
    assert src[("Gout", "has_complication", "Tophus")] == "section:Complications"
    assert src[("Gout", "treated_with", "Colchicine")] == "infobox:medication"
    assert r["aliases"] == ["Podagra", "arthritis urica"]


def test_drug_sections_and_lead_class():
    text = """{{Drugbox | tradename = Inderal | routes_of_administration = [[By mouth]] }}
'''Propranolol''' is a [[beta blocker]] used to treat [[hypertension]].
== Medical uses ==
Used for [[hypertension|high blood pressure]] and [[migraine]] prevention.
== Contraindications ==
Not for people with [[asthma]].
== Side effects ==
[[Bradycardia]] may occur.
== Interactions ==
With [[verapamil]].
== Pharmacology ==
=== Mechanism of action ===
Blocks [[beta-adrenergic receptor]]s.
"""
    e = edges_of(kg.parse_page("Propranolol", text))
    assert e == {("Propranolol", "drug_class", "Beta blocker"), ("Hypertension", "treated_with", "Propranolol"),
                 ("Migraine", "treated_with", "Propranolol"), ("Propranolol", "contraindicated_in", "Asthma"),
                 ("Propranolol", "adverse_effect", "Bradycardia"), ("Propranolol", "interacts_with", "Verapamil"),
                 ("Propranolol", "mechanism", "Beta-adrenergic receptor")}
    assert kg.lead_class("X is a medication used to treat [[gout]].") is None


def test_anatomy_and_other_infoboxes():
    r = kg.parse_page("liver", "{{Infobox anatomy\n| Name = Liver\n| System = [[Digestive system]]\n"
                               "| Artery = [[Hepatic artery proper]]\n}}\nThe liver is an [[organ (biology)|organ]].")
    assert r["type"] == "anatomy" and edges_of(r) == {("Liver", "location", "Digestive system")}
    assert kg.parse_page("Cough", "{{Infobox medical condition (new)\n| name = Cough\n}}")["type"] == "disease"
    assert kg.parse_page("E. coli", "{{Speciesbox | genus = Escherichia}}")["pathogen"]
    assert kg.parse_page("Eravacycline", "{{Chembox | Name = x}}")["type"] is None
    r = kg.parse_page("Dr X", "{{Infobox medical person | name = X}}\n{{Infobox_Medical_condition\n| symptoms = [[a]]")
    assert r["type"] is None and "never closes" in r["error"]  # the person box is no medical infobox
    assert kg.parse_page("Dr X", "{{Infobox medical person | name = X}}") == kg.parse_page("Y", "plain")


def test_alias_order_does_not_depend_on_the_hash_seed():
    # a page with two alias fields: their order once followed a set's, which differs between interpreter runs
    code = ("import kg; print(kg.parse_page('Gout', '{{Infobox medical condition\\n| other_names = Podagra\\n'"
            "'| synonyms = Uratic arthritis\\n}}')['aliases'])")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert outs == {"['Uratic arthritis', 'Podagra']\n"}


def test_norm_title_and_entity_filter():
    assert kg.norm_title(" diabetes_mellitus#Signs ") == "Diabetes mellitus"
    assert kg.norm_title(":fever") == "Fever"
    for bad in ["File:A.png", "Category:Gout", "wikt:fever", "de:Fieber", "1999", "1990s", "March 3",
                "19th century", "Disease", "Milligram", "List of drugs"]:
        assert not kg.is_entity(kg.norm_title(bad)), bad
    assert kg.is_entity("HIV/AIDS") and kg.is_entity("Rho(D) immune globulin")


# ----------------------------------------------------------------------------- the dump path end to end
PAGES = [
    ("Gout", "{{Infobox medical condition|symptoms=[[joint pain]]|medication=[[colchicine]], [[NSAIDs]]"
             "|treatment=[[Allopurinol]]|complications=[[kidney stones]]}}\n'''Gout''' affects the [[big toe]].\n"
             "== Diagnosis ==\n[[Joint aspiration]] shows crystals. [[Efficacy]] of tests.\n"),
    ("Pseudogout", "{{Infobox disease|symptoms=[[Joint pain]]|differential=[[gout]]}}\nLead.\n"),
    ("Colchicine", "{{Infobox drug|class=[[Anti-gout agent]]}}\n'''Colchicine''' is a drug.\n"
                   "== Side effects ==\n[[Diarrhea]].\n"),
    ("Allopurinol", "{{Drugbox}}\n'''Allopurinol''' is a [[xanthine oxidase inhibitor]].\n"),
    ("Kidney stone disease", "{{Infobox medical condition (new)|symptoms=[[Abdominal pain]]}}\nLead.\n"),
    ("Kidney stones", None, "Kidney stone disease"),
    ("Joint pain", "{{Infobox medical condition (new)|name=Arthralgia}}\nJoint pain is a [[symptom]].\n"),
    ("Arthralgia", None, "Joint pain"),
    ("Lyme disease", "{{Infobox medical condition|causes=[[Borrelia]]}}"),
    ("Borrelia", "{{Automatic taxobox | taxon = Borrelia}}\n'''Borrelia''' is a genus of bacteria."),
    ("Efficacy", "'''Efficacy''' is the ability to produce a result. [[1999]]"),
    ("Broken", "{{Infobox medical condition\n| symptoms = [[Fever]]\n'''Broken''' never closes its infobox.\n"),
]


def test_dump_end_to_end(tmp_path):
    p = tmp_path / "d.xml"
    p.write_text(xml_dump(PAGES))
    st = kg.build_from_dump(str(p), str(tmp_path / "out"))
    ents, edges, st2 = read_out(tmp_path / "out")
    assert st == st2 and st["pages_read"] == 10 and st["pages_medical"] == 7 and st["redirects"] == 2
    t = triples(edges)
    assert ("Gout", "has_complication", "Kidney_stone_disease") in t  # via the redirect page
    assert ("Gout", "treated_with", "Allopurinol") in t               # treated_by -> drug tail -> treated_with
    assert ("Gout", "treated_with", "Colchicine") in t and ("Allopurinol", "drug_class",
                                                            "Xanthine_oxidase_inhibitor") in t
    assert ("Gout", "diagnosed_by", "Joint_aspiration") in t
    assert not any("Efficacy" in (h, tl) for h, _, tl in t)          # prose link to a non-medical page
    assert st["edges_dropped_nonmedical"] == 1
    assert ents["Kidney_stone_disease"]["aliases"] == ["Kidney stones"]
    assert ents["Joint_pain"]["aliases"] == ["Arthralgia"] and ents["Joint_pain"]["type"] == "symptom"
    assert ents["Colchicine"]["type"] == "drug" and ents["Gout"]["type"] == "disease"
    assert ents["Anti-gout_agent"]["type"] == "drug_class" and ents["Diarrhea"]["type"] == "symptom"
    assert ents["Joint_pain"]["inlinks"] == 2 and ents["Gout"]["source"] == {"page": "Gout", "revid": 100}
    assert ents["Gout"]["length"] == len(PAGES[0][1]) and ents["Diarrhea"]["length"] == 0
    assert ents["Diarrhea"]["source"] == {"page": "Colchicine", "revid": 102}  # no page: where it was mentioned
    e = next(e for e in edges if e["tail"] == "Joint_pain" and e["head"] == "Gout")
    assert e["source"] == {"page": "Gout", "revid": 100, "field": "infobox:symptoms"} and e["count"] == 1
    assert set(e["relation"] for e in edges) <= set(kg.RELATIONS)
    assert set(e["type"] for e in ents.values()) <= set(kg.TYPES)
    assert all(e["head"] in ents and e["tail"] in ents for e in edges)
    rej = [json.loads(l) for l in open(tmp_path / "out" / "rejects.jsonl")]
    assert {"page": "Efficacy", "reason": "non-medical: no medical infobox"} in rej
    assert any(r["page"] == "Broken" and "never closes" in r["reason"] for r in rej)
    assert st["pages_rejected"] == 3 and ents["Borrelia"]["type"] == "pathogen"  # typed by its taxobox


def test_dedupe_counts(tmp_path):
    pages = [("A", "{{Infobox disease|symptoms=[[Fever]]}}\n== Signs and symptoms ==\n[[fever]] [[Fever|high temperature]]"),
             ("B", "{{Infobox disease|symptoms=[[fever]]}}")]
    p = tmp_path / "d.xml"
    p.write_text(xml_dump(pages))
    kg.build_from_dump(str(p), str(tmp_path / "o"))
    ents, edges, _ = read_out(tmp_path / "o")
    a = [e for e in edges if e["head"] == "A"]
    assert len(a) == 1 and a[0]["count"] == 2 and a[0]["source"]["field"] == "infobox:symptoms"
    assert ents["Fever"]["inlinks"] == 2


def test_llm_grounded_only(tmp_path):
    calls = []

    def llm(convs, n=1, temperature=0.0, max_tokens=512, seed=0):
        calls.append(len(convs))
        return [['{"relation": "has_symptom", "tail": "tophus"}\n{"relation": "has_symptom", "tail": "Moon"}\n'
                 '{"relation": "eats", "tail": "Tophus"}'] for _ in convs]
    p = tmp_path / "d.xml"
    p.write_text(xml_dump([("Gout", "{{Infobox disease}}\n'''Gout''' causes [[tophus|tophi]].\n")]))
    kg.build_from_dump(str(p), str(tmp_path / "o"), llm=llm)
    _, edges, st = read_out(tmp_path / "o")
    assert calls == [1] and st["llm_pages"] == 1
    assert [(e["head"], e["relation"], e["tail"], e["source"]["field"]) for e in edges] == [
        ("Gout", "has_symptom", "Tophus", "llm:lead")]


# ----------------------------------------------------------------------------- bad input
def test_truncated_xml_keeps_graph(tmp_path):
    full = xml_dump(PAGES[:4])
    p = tmp_path / "cut.xml"
    p.write_text(full[:full.index("<title>Allopurinol")])
    with pytest.raises(kg.DumpError, match=r"cut\.xml: line \d+, column \d+: truncated"):
        kg.build_from_dump(str(p), str(tmp_path / "o"))
    ents, edges, st = read_out(tmp_path / "o")
    assert st["pages_read"] == 3 and "cut.xml" in st["error"] and ("Gout", "treated_with", "Colchicine") in triples(edges)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "kg.py"), "--dump", str(p), "--out", str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "cut.xml: line" in r.stderr and "written to" in r.stderr
    assert os.path.exists(tmp_path / "c" / "edges.jsonl")


def test_corrupt_bz2_keeps_graph(tmp_path):
    rng = random.Random(0)
    pad = "".join(f"\n== Notes ==\n{rng.randbytes(3000).hex()}" for _ in range(3))  # incompressible filler
    data = bz2.compress(xml_dump([(t, x + pad if x else x, *r) for t, x, *r in PAGES[:4]] * 20).encode(), 1)
    p = tmp_path / "bad.xml.bz2"
    p.write_bytes(data[:len(data) // 2] + bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 64])
                  + data[len(data) // 2 + 64:])
    # bz2 checks a block's CRC at its end, so garbage may reach the XML parser first: either error names the spot
    with pytest.raises(kg.DumpError, match=r"bad\.xml\.bz2: (corrupt or truncated file after page \d+|line \d+, col)"):
        kg.build_from_dump(str(p), str(tmp_path / "o"))
    _, edges, st = read_out(tmp_path / "o")
    assert st["pages_read"] > 0 and len(edges) > 0
    q = tmp_path / "short.xml.bz2"
    q.write_bytes(data[:len(data) // 3])
    with pytest.raises(kg.DumpError, match="short.xml.bz2"):
        kg.build_from_dump(str(q), str(tmp_path / "o2"))


def test_parser_failure_is_a_reject(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RecursionError("too deep")
    p = tmp_path / "d.xml"
    p.write_text(xml_dump(PAGES[:2]))
    monkeypatch.setattr(kg, "parse_page", boom)
    st = kg.build_from_dump(str(p), str(tmp_path / "o"))
    assert st["pages_rejected"] == 2
    assert "RecursionError" in open(tmp_path / "o" / "rejects.jsonl").readline()


# ----------------------------------------------------------------------------- real samples (../shared/wikitext)
def shared(path):
    f = os.path.join(SHARED, path)
    if not os.path.exists(f):
        pytest.skip(f"{f} not present")
    return f


REAL = {  # file -> (type, edges that must be found)
    "mdwiki-python-files/sample_text.wiki": ("disease", {("X", "treated_with", "Fluconazole"),
                                                         ("X", "risk_factor", "Diabetes"),
                                                         ("X", "caused_by", "Candida (fungus)")}),
    "derived/Hypoprolactinemia.wiki": ("disease", {("X", "has_complication", "Infertility"),
                                                   ("X", "specialty", "Gynecology")}),
    "derived/Rh_disease_infobox.wiki": ("disease", {("X", "prevented_by", "Rho(D) immune globulin"),
                                                    ("X", "has_symptom", "Jaundice")}),
    "fix_refs/test.php.md": ("disease", {("X", "has_complication", "Hydrops fetalis")}),
    "fix_refs/del_dup_input.txt": ("drug", set()),
    "fix_refs/infobox2_input.txt": ("drug", {("X", "drug_class", "Protein kinase inhibitor")}),
    "fix_refs/infobox2_tempse_input.txt": ("drug", {("X", "drug_class", "Protein kinase inhibitor")}),
    "mdwiki.org_scripts/test1_work_on_text_source.wiki": ("drug", {("X", "drug_class", "Typical antipsychotic"),
                                                                   ("Schizophrenia", "treated_with", "X")}),
    "mdwiki.org_scripts/test2_work_on_text_source.wiki": ("drug", {("X", "adverse_effect", "Dry mouth")}),
    "mdwiki.org_scripts/test3_work_on_text_source.wiki": ("drug", {("X", "contraindicated_in", "Chronic kidney disease"),
                                                                   ("Benign prostatic hyperplasia", "treated_with", "X"),
                                                                   ("X", "adverse_effect", "Dizziness")}),
    "mdwiki.org_scripts/chembox_work_on_text_source.wiki": (None, set()),
    "dbpedia/Mapping_en_medical_excerpt.txt": (None, set()),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_samples(name):
    r = kg.parse_page("X", open(shared(name), encoding="utf-8").read())
    typ, want = REAL[name]
    assert r["type"] == typ and r["error"] is None
    assert want <= edges_of(r), want - edges_of(r)


def test_every_shared_sample_is_covered():
    if not os.path.isdir(SHARED):
        pytest.skip("no shared samples")
    files = {os.path.relpath(f, SHARED) for f in glob.glob(os.path.join(SHARED, "**", "*"), recursive=True)
             if os.path.isfile(f)}
    assert files - set(REAL) - {"SOURCES.md"} == {"derived/enwiki_fragment_selected_pages.xml",
                                 "gensim/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"}


def test_real_dump_fragments(tmp_path):
    st = kg.build_from_dump(shared("derived/enwiki_fragment_selected_pages.xml"), str(tmp_path / "a"))
    ents, edges, _ = read_out(tmp_path / "a")
    assert st["pages_read"] == 3 and st["redirects"] == 2 and st["pages_medical"] == 2
    assert ents["Autism"]["type"] == "disease" and ents["Autism"]["source"]["revid"] > 0
    assert {("Autism", "specialty", "Psychiatry"), ("Abortion", "specialty", "Obstetrics")} <= triples(edges)
    st = kg.build_from_dump(shared("gensim/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"),
                            str(tmp_path / "b"))
    assert st["pages_read"] == 106 and st["redirects"] == 100 and st["pages_medical"] == 2 and st["error"] is None
    assert st["pages_rejected"] == 104 and st["edges"] > 20


# ----------------------------------------------------------------------------- the shipped sample dump
def test_sample_dump(tmp_path):
    """Edges checked by reading data/sample_wiki.xml: each exercises one way of writing the markup."""
    if not os.path.exists(SAMPLE):
        pytest.skip("data/sample_wiki.xml not written yet")
    st = kg.build_from_dump(SAMPLE, str(tmp_path / "o"))
    ents, edges, _ = read_out(tmp_path / "o")
    assert st["error"] is None and st["pages_medical"] >= 30 and st["edges"] >= 300
    assert all(e["head"] in ents and e["tail"] in ents for e in edges)
    t = {(e["head"], e["relation"], e["tail"]): e["source"] for e in edges}
    want = {("Heart_failure", "has_symptom", "Fatigue"): "infobox:symptoms",          # {{ubl}} + redirect Tiredness
            ("Wilson's_disease", "treated_with", "Penicillamine"): "infobox:medication",  # {{hlist}}
            ("Wilson's_disease", "diagnosed_by", "Liver_biopsy"): "infobox:diagnosis",    # bullet lines
            ("Levothyroxine", "drug_class", "Thyroid_hormone"): "infobox:class",          # [[target|label]]<ref>
            ("Hypertension", "treated_with", "Metoprolol"): "section:Medical uses",       # head = the disease
            ("Metoprolol", "contraindicated_in", "Cardiogenic_shock"): "section:Contraindications",
            ("Levothyroxine", "interacts_with", "Warfarin"): "section:Interactions",
            ("Metoprolol", "drug_class", "Beta_blocker"): "lead"}
    for k, field in want.items():
        assert k in t and t[k]["field"] == field and t[k]["revid"], k
    assert "Heart attack" in ents["Myocardial_infarction"]["aliases"]
    assert ents["Fatigue"]["type"] == "symptom" and ents["Beta_blocker"]["type"] == "drug_class"
    assert ents["Metoprolol"]["type"] == "drug" and ents["Metoprolol"]["inlinks"] >= 2
    rej = [json.loads(l) for l in open(tmp_path / "o" / "rejects.jsonl")]
    assert {"page": "MI", "reason": "disambiguation page"} in rej
    assert not any(r["page"].startswith("Talk:") for r in rej)  # other namespaces are skipped, not rejected


def test_cli_llm_through_common(tmp_path):
    """--llm goes through common.make_llm (imported only then) to an OpenAI-compatible server."""
    pytest.importorskip("common")
    fake = pytest.importorskip("fake_llm_server")
    p = tmp_path / "d.xml"
    p.write_text(xml_dump([("Gout", "{{Infobox disease}}\n'''Gout''' causes [[tophus|tophi]] and [[fever]].\n")]))
    reply = lambda messages, n, temperature: ['{"relation": "has_symptom", "tail": "Tophus"}\n'
                                              '{"relation": "has_symptom", "tail": "Chills"}'] * n
    with fake.FakeLLMServer(reply) as srv:
        r = subprocess.run([sys.executable, os.path.join(ROOT, "kg.py"), "--dump", str(p), "--out", str(tmp_path / "o"),
                            "--llm", srv.url, "--llm-model", "m"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    _, edges, _ = read_out(tmp_path / "o")
    assert triples(edges) == {("Gout", "has_symptom", "Tophus")} and srv.requests == 1
    assert "Tophus; Fever" in json.dumps(srv.payloads[0])  # the prompt lists the lead's links
