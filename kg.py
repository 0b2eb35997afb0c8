"""kg.py: a medical knowledge graph with provenance from Wikipedia (Fleming-R1, arXiv 2509.15279, sec. 3.1).

Reads  a MediaWiki XML export (--dump, .xml or .xml.bz2, streamed: constant memory per page).
Writes OUT/entities.jsonl, OUT/edges.jsonl (with page, revision, field), OUT/stats.json, OUT/rejects.jsonl.

One parser (parse_page, mwparserfromhell) reads each page: relations from medical infobox fields (typed by field),
from wikilinks in article sections (typed by section) and drug classes from the lead ("is a [[beta blocker]]");
entities linked through wikilinks, redirects and first-letter case, typed by their own infobox, else by the slot
they fill.

Deliberate departures from the paper:
  1. No autonomous agent: a parser reads infoboxes and sections; --llm optionally reads the lead as well, and its
     relations are kept only when the tail is a page the lead links.
  2. A snapshot, not live pages: the paper's agent browses Wikipedia; we read a dump, fixed and auditable (every
     edge cites page + revision). For the medical pages only, export them with Special:Export (e.g. the members
     of a Category:, or the pages transcluding Template:Infobox medical condition) and pass that XML.
  3. The tiny run reads the shipped sample dump (data/sample_wiki.xml, --tiny).

  python kg.py --dump pages-articles.xml[.bz2] --out OUT   (or medical-pages-export.xml)
"""
import argparse, bz2, hashlib, json, os, re, sys, time
import xml.etree.ElementTree as ET
from array import array
from collections import Counter
import mwparserfromhell as mwp
import numpy as np

from common import atomic_write, make_llm, parse_with_preset, write_jsonl

# --tiny: the shipped sample dump (data/README.md)
TINY = dict(dump=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sample_wiki.xml"), out="out/kg_tiny")
TYPES = ("disease", "symptom", "test", "drug", "drug_class", "treatment", "anatomy", "pathogen", "gene",
         "specialty", "mechanism", "other")
RELATIONS = ("has_symptom", "has_complication", "caused_by", "risk_factor", "diagnosed_by", "differential",
             "prevented_by", "treated_by", "treated_with", "specialty", "drug_class", "contraindicated_in",
             "adverse_effect", "interacts_with", "mechanism", "location")

# infobox template name (lowercase) -> the type of the page that carries it
INFOBOX_TYPE = {"infobox medical condition (new)": "disease", "infobox medical condition": "disease",
                "infobox disease": "disease", "infobox drug": "drug", "drugbox": "drug",
                "infobox drug class": "drug_class", "infobox medical specialty": "specialty",
                "infobox diagnostic": "test", "infobox medical intervention": "treatment",
                "infobox interventions": "treatment", "infobox gene": "gene",
                **{f"infobox {a}": "anatomy" for a in ("anatomy", "artery", "bone", "brain", "muscle", "nerve",
                                                        "vein", "ligament", "lymph", "organ", "joint")}}
BOX_RE = re.compile(r"\{\{\s*(?:template:\s*)?((?:infobox[ _](?:medical|disease|drug|diagnostic|interventions?|gene|"
                    r"anatomy|artery|bone|brain|muscle|nerve|vein|ligament|lymph|organ|joint)|drugbox)[^|}\n<]*)", re.I)
TAXO_RE = re.compile(r"\{\{\s*(automatic taxobox|taxobox|speciesbox|subspeciesbox|virusbox|infobox virus)\b", re.I)

# (page type, infobox field) -> (relation, slot type of the tail, reversed: the tail is the head)
FIELDS = {
    "disease": {"symptoms": ("has_symptom", "symptom"), "complications": ("has_complication", "disease"),
                "causes": ("caused_by", "other"), "risks": ("risk_factor", "other"),
                "diagnosis": ("diagnosed_by", "test"), "differential": ("differential", "disease"),
                "prevention": ("prevented_by", "treatment"), "treatment": ("treated_by", "treatment"),
                "medication": ("treated_with", "drug"), "specialty": ("specialty", "specialty"),
                "field": ("specialty", "specialty"), "location": ("location", "anatomy")},
    # English Wikipedia's drugbox has only `class`; mdwiki.org forks add uses / side_effects / interactions
    "drug": {"class": ("drug_class", "drug_class"), "uses": ("treated_with", "disease", True),
             "side_effects": ("adverse_effect", "symptom"), "interactions": ("interacts_with", "drug"),
             "mechanism": ("mechanism", "mechanism")},
    "anatomy": {f: ("location", "anatomy") for f in ("partof", "part_of", "system", "location", "isPartOf")},
}
# section heading regex -> (relation, slot, reversed); first match wins, so "differential" precedes "diagnos"
SECTIONS = {
    "disease": [(r"differential", "differential", "disease"), (r"sign|symptom|presentation", "has_symptom", "symptom"),
                (r"complication", "has_complication", "disease"), (r"risk", "risk_factor", "other"),
                (r"cause|etiolog|aetiolog", "caused_by", "other"), (r"diagnos", "diagnosed_by", "test"),
                (r"prevent", "prevented_by", "treatment"), (r"treatment|management", "treated_by", "treatment")],
    "drug": [(r"contraindication", "contraindicated_in", "disease"),
             (r"medical use|^uses|indication", "treated_with", "disease", True),
             (r"adverse|side effect", "adverse_effect", "symptom"), (r"interaction", "interacts_with", "drug"),
             (r"mechanism|pharmacolog|pharmacodynamic", "mechanism", "mechanism")],
}
# subsections that do not inherit their parent's relation (Diagnosis > Classification, Management > Cost)
NEUTRAL = re.compile(r"classif|cost|histor|epidemiolog|prognos|research|societ|cultur|econom|terminolog|etymolog|"
                     r"animal|see also|reference|external|further|notes|legal|brand|name|chemi|synthes", re.I)
LIST_TEMPLATES = {"ubl", "unbulleted list", "plainlist", "plain list", "hlist", "flatlist", "bulleted list",
                  "bull list", "ublist", "nowrap", "flat list", "endplainlist", "endflatlist"}
NAMESPACES = set("file image category template wikipedia wp help portal special talk user media mediawiki module "
                 "draft wiktionary wikt commons s d w wikisource wikibooks meta mw book timedtext q v n b c".split())
STOP = set("disease|medical condition|medication|medicine|drug|symptom|syndrome|therapy|treatment|patient|physician|"
           "doctor|hospital|human|health|people|person|united states|food and drug administration|world health "
           "organization|chemical compound|none|unknown|other|others|rare|common|uncommon|various|variable|varies|"
           "usually|often|rarely|sometimes|gram|milligram|microgram|kilogram|litre|liter|millilitre|hour|day|week|"
           "month|year|percent|per cent|mole (unit)|baby|mother|adult|child|children|women|men|male|female|infant|"
           "elderly|medical diagnosis|diagnosis|prevention|prognosis|epidemiology|pharmacology|mechanism of action|"
           "medical sign|side effect|adverse effect|adverse drug reaction".split("|"))
# an unlinked item with one of these is a phrase ("a type of", "before birth"), not an entity name
FUNCTION_WORDS = set("a an the of in on at to for with without by from after before during may can is are be not no "
                     "due risk per than some most many few about up if when while also such as".split())
MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
NONENTITY_RE = re.compile(rf"^(\d[\d,.]*\s*(s|bc|ad|bce|ce)?|\d+(st|nd|rd|th) century|({MONTHS})( \d+)?|"
                          rf"\d+ ({MONTHS})|list of .*|.*\(disambiguation\))$", re.I)


def norm_title(s):
    """Wikilink target -> canonical page title ('[[diabetes_mellitus#Signs|x]]' -> 'Diabetes mellitus'), or None."""
    s = re.sub(r"[\s_]+", " ", str(s).split("#")[0].replace("&nbsp;", " ")).strip().lstrip(":").strip()
    if not s or len(s) > 200 or any(c in s for c in "<>[]{}|"):
        return None
    return s[0].upper() + s[1:]


def is_entity(title):
    """False for namespaced/interwiki links, years, dates, units and generic words (never written anywhere)."""
    if not title:
        return False
    pre = title.split(":", 1)[0].strip().lower()
    if ":" in title and (pre in NAMESPACES or re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", pre)):
        return False
    return title.lower() not in STOP and not NONENTITY_RE.match(title)


def tname(t):
    return re.sub(r"[\s_]+", " ", str(t.name).split("<!--")[0]).strip().lower().removeprefix("template:").strip()


# comments and <ref>s (their citations link publishers, not entities), dropped before parsing. A regex, for speed
# only: mwparserfromhell's node removal is quadratic on long pages; an unclosed <ref> is left for the parser.
NOISE_RE = re.compile(r"<!--.*?(?:-->|$)|<ref[^>]*/\s*>|<ref(?:\s[^>]*)?>.*?</ref\s*>|<references\s*/>", re.S | re.I)


def field_items(value, plain=True):
    """Infobox value -> entity titles. Lists come as <br>, commas, {{ubl}}, {{plainlist}}, {{hlist}}, bullet
    lines, with refs/comments/nested templates: list templates are flattened, others dropped, wikilinks kept;
    with plain=True an unlinked item of 1-4 plain words is kept too (many infobox symptoms are plain text)."""
    code = mwp.parse(NOISE_RE.sub("", str(value)))
    for _ in range(4):  # list templates may nest ({{plainlist| * {{nowrap|[[a]]}} }})
        for t in code.filter_templates(recursive=False):
            keep = tname(t) in LIST_TEMPLATES
            code.replace(t, "\n".join(str(p.value) for p in t.params if not p.showkey) if keep else "")
    links = []
    for l in code.filter_wikilinks():  # recursive: links sit inside ''italics'' and other tags too
        if code.contains(l):  # not nested in a link replaced already
            code.replace(l, f"\ue000{len(links)}\ue001")  # private-use marks (mwparserfromhell drops \x00)
            links.append(l)
    out = []
    for part in re.split(r"<\s*br\s*/?\s*>|\n|[,;•·/()]| or | and |</?(?:small|li|ul|p|div|span)[^>]*>", str(code)):
        idx = [int(i) for i in re.findall(r"\ue000(\d+)\ue001", part)]
        if idx:  # "after [[childbirth]]" in "Inability to produce milk after [[childbirth]]" is no item
            if len(re.sub(r"\ue000\d+\ue001", " ", mwp.parse(part).strip_code()).split()) <= 3:
                out += [norm_title(links[i].title) for i in idx]
        elif plain:
            txt = re.sub(r"^.*:\s*", "", mwp.parse(part).strip_code().replace("'''", "").replace("''", "")).strip()
            txt = re.sub(r"^(?:\*|#|:)+\s*|\.$", "", txt).strip()
            w = txt.lower().split()
            if re.fullmatch(r"[A-Za-z][A-Za-z'\- ]{2,40}", txt) and len(w) <= 4 and not set(w) & FUNCTION_WORDS \
                    and not txt.isupper():  # BPH: an abbreviation of the item before
                out.append(norm_title(txt))
    return [t for t in dict.fromkeys(out) if is_entity(t)]


def lead_class(lead):
    """'X is a [[beta blocker]] used ...' -> 'Beta blocker': the first linked noun phrase after is/are a/an."""
    for m in re.finditer(r"\b(?:is|are) (?:an?|the|one of the) ((?:[\w\-]+ ){0,3})\[\[([^\]|#]+)", lead):
        if not set(m.group(1).lower().split()) & {"used", "to", "for", "that", "which", "with", "by", "in"}:
            t = norm_title(m.group(2))
            if is_entity(t) and t.lower() not in ("medication", "drug"):
                return t
    return None


def parse_page(title, text):
    """Wikitext of one article -> {"type", "edges": [(head, rel, tail, field)], "slots": {title: slot type},
    "links": set of linked titles, "aliases", "lead", "lead_links", "error"}. type None = not medical."""
    title = norm_title(title)
    r = {"type": None, "edges": [], "slots": {}, "links": set(), "aliases": [], "lead": "", "lead_links": [],
         "error": None}
    m = next((m for m in BOX_RE.finditer(text) if re.sub(r"[\s_]+", " ", m[1]).strip().lower() in INFOBOX_TYPE), None)
    if not m:  # no medical infobox ({{Infobox medical person}} is not one)
        r["pathogen"] = bool(TAXO_RE.search(text))
        return r
    code = mwp.parse(NOISE_RE.sub("", text))
    box = next((t for t in code.filter_templates(recursive=False) if tname(t) in INFOBOX_TYPE), None)
    if box is None:
        line = text.count("\n", 0, m.start()) + 1
        r["error"] = f"infobox never closes or is malformed ({m.group(0).strip()!r} at line {line})"
        return r
    ptype = r["type"] = INFOBOX_TYPE[tname(box)]

    def add(tails, spec, field):
        rel, slot, rev = (*spec, False)[:3]
        r["links"].update(tails)
        for t in tails:
            if t and t != title:
                r["edges"].append((t, rel, title, field) if rev else (title, rel, t, field))
                r["slots"].setdefault(t, slot)
    fields = {str(p.name).strip().lower(): p.value for p in box.params}
    for name, spec in FIELDS.get(ptype, {}).items():
        if name.lower() in fields:
            add(field_items(fields[name.lower()]), spec, f"infobox:{name}")
    for name in [n for n in ("synonym", "synonyms", "other_names", "tradename") if n in fields]:  # fixed order
        r["aliases"] += [a for a in (s.strip(" '") for s in re.split(r"[,;]|<br\s*/?>", fields[name].strip_code()))
                         if 2 < len(a) < 60 and a.lower() not in ("others", "none")]
    code.remove(box)
    sections = code.get_sections(include_lead=True, flat=True)
    stack = []  # (level, spec) of the enclosing headings: a subsection inherits its parent's relation
    for i, sec in enumerate(sections):
        heads = sec.filter_headings(recursive=False)
        links = [norm_title(l.title) for l in sec.filter_wikilinks()]
        links = [t for t in dict.fromkeys(links) if is_entity(t)]
        r["links"].update(links)
        if i == 0 and not (heads and sec.startswith(str(heads[0]))):  # the lead
            r["lead"], r["lead_links"] = sec.strip_code().strip(), links
            if ptype == "drug" and not any(e[1] == "drug_class" for e in r["edges"]):
                c = lead_class(str(sec))
                if c:
                    add([c], ("drug_class", "drug_class"), "lead")
            continue
        h = heads[0]
        name = h.title.strip_code().strip()
        while stack and stack[-1][0] >= h.level:
            stack.pop()
        spec = next((s[1:] for s in SECTIONS.get(ptype, []) if re.search(s[0], name.lower())), None)
        spec = spec or (stack[-1][1] if stack and not NEUTRAL.search(name) else None)
        stack.append((h.level, spec))
        if spec:  # a tail the infobox already relates otherwise keeps the infobox relation (more specific)
            boxed = {(t, rel) for _, rel, t, f in r["edges"] if f.startswith("infobox:")}
            add([t for t in links if (t, spec[0]) in boxed or t not in {b[0] for b in boxed}], spec, f"section:{name}")
    return r


LLM_PROMPT = ("Read the opening of the Wikipedia article on {title} and list relations it states between "
              "{title} (the head) and one of these linked pages (the tail): {links}.\nRelations: {rels}.\n"
              "Answer with one JSON object per line, {{\"relation\": ..., \"tail\": ...}}, nothing else.\n\n{lead}")


class KG:
    """Accumulates pages, redirects and edges; finish() links, types and dedupes; write() saves atomically."""

    def __init__(self, out, llm=None):
        self.out, self.llm, self.llm_buf = out, llm, []
        os.makedirs(out, exist_ok=True)
        self.pages = {}       # title -> {"type", "revid", "length"} for medical pages
        self.hint = {}        # title -> pathogen, from taxoboxes of non-medical pages
        self.slots = {}       # title -> Counter of slot types it was linked from
        self.redirects = {}   # redirect title -> target title, loaded at finish() with only the ones we need
        self.red_f = open(os.path.join(out, ".redirects.tsv"), "w+", encoding="utf-8")  # enwiki has ~10M: disk
        self.aliases = {}     # title -> synonyms from its infobox
        self.edges = {}       # (head, rel, tail) -> [source, count]
        self.inl = Counter()  # title -> number of medical pages linking to it
        self.stats = Counter()
        self.nonmed = array("q")  # 8-byte hashes of pages read and found non-medical: compact at dump scale
        self.rejects = open(os.path.join(out, "rejects.jsonl"), "w")

    def reject(self, page, reason):
        self.stats["pages_rejected"] += 1
        self.rejects.write(json.dumps({"page": page, "reason": reason}) + "\n")

    def add_redirect(self, src, dst):
        src, dst = norm_title(src), norm_title(dst)
        if src and dst and src != dst:
            self.red_f.write(f"{src}\t{dst}\n")
            self.stats["redirects"] += 1

    def add_page(self, title, revid, text):
        """Parse one article and record it (or its reject)."""
        self.stats["pages_read"] += 1
        try:
            r = parse_page(title, text)
        except Exception as e:  # one bad page must never lose the graph
            r = {"type": None, "error": f"parser failed: {type(e).__name__}: {e}"}
        title = norm_title(title)
        if r["error"]:
            self.reject(title, r["error"])
            return
        if r["type"] is None:
            if r.get("pathogen"):
                self.hint[title] = "pathogen"
            self.nonmed.append(thash(title))
            dab = re.search(r"\{\{\s*(disambig|dab\b|hndis|set index)", text, re.I)
            self.reject(title, "disambiguation page" if dab else "non-medical: no medical infobox")
            return
        self.stats["pages_medical"] += 1
        self.pages[title] = {"type": r["type"], "revid": revid, "length": len(text)}
        if r["aliases"]:
            self.aliases[title] = r["aliases"]
        self.inl.update(r["links"])
        for t, s in r["slots"].items():
            self.slots.setdefault(t, Counter())[s] += 1
        for h, rel, t, field in r["edges"]:
            self.add_edge(h, rel, t, {"page": title, "revid": revid, "field": field})
        if self.llm and r["lead_links"]:  # leads go to the LLM in batches (throughput, not one call a page)
            self.llm_buf.append((title, revid, r["lead"], r["lead_links"]))
            if len(self.llm_buf) >= 32:
                self.flush_llm()

    def flush_llm(self):
        """Relations the LLM reads in the buffered leads, kept only when the tail is a page the lead links."""
        batch, self.llm_buf = self.llm_buf, []
        self.stats["llm_pages"] += len(batch)
        if not batch:
            return
        convs = [[{"role": "user", "content": LLM_PROMPT.format(title=t, links="; ".join(ls[:60]),
                                                                rels=", ".join(RELATIONS), lead=lead[:3000])}]
                 for t, _, lead, ls in batch]
        for (title, revid, _, links), texts in zip(batch, self.llm(convs, n=1, temperature=0.0, max_tokens=512)):
            for m in re.finditer(r"\{[^{}]*\}", texts[0] if texts else ""):
                try:
                    d = json.loads(m.group(0))
                    rel, tail = d.get("relation"), norm_title(d.get("tail", ""))
                except (ValueError, AttributeError):
                    continue
                if rel in RELATIONS and tail in links and tail != title:
                    self.slots.setdefault(tail, Counter())["other"] += 1
                    self.add_edge(title, rel, tail, {"page": title, "revid": revid, "field": "llm:lead"})

    def add_edge(self, h, rel, t, src):  # dedupe: the first provenance is kept, plus a count
        self.edges.setdefault((h, rel, t), [src, 0])[1] += 1

    def canon(self, t):
        for _ in range(5):  # double redirects exist; cycles end here
            if t not in self.redirects or t in self.pages:
                break
            t = self.redirects[t]
        return t

    def type_of(self, t):
        v = self.slots.get(t, Counter())
        own = self.pages.get(t, {}).get("type") or self.hint.get(t)
        if own == "disease" and v["symptom"] > v["disease"]:  # symptom pages (Fever) use the condition infobox
            return "symptom"
        if own:
            return own
        spec = [(n, s) for s, n in v.items() if s != "other"]
        return max(spec)[1] if spec else "other"

    def finish(self):
        """Resolve redirects, merge duplicates, type entities, count inlinks. -> (entities, edges, stats)."""
        self.flush_llm()
        # keep the redirects from a title we reference (entity linking) or into one (aliases)
        ref = set(self.pages) | set(self.slots) | set(self.inl) | {x for h, _, t in self.edges for x in (h, t)}
        self.red_f.flush()
        self.red_f.seek(0)
        for line in self.red_f:
            src, dst = line.rstrip("\n").split("\t")
            if src in ref or dst in ref:
                self.redirects[src] = dst
        slots = {}
        for t, c in self.slots.items():  # merge slot votes of redirect titles into their targets
            slots.setdefault(self.canon(t), Counter()).update(c)
        self.slots = slots
        edges, first, nonmed = {}, {}, np.sort(np.frombuffer(self.nonmed, dtype=np.int64))

        def isnon(t):  # binary search in the sorted hashes of the pages read and found non-medical
            x = thash(t)
            i = np.searchsorted(nonmed, x)
            return i < len(nonmed) and nonmed[i] == x
        for (h, rel, t), (src, n) in self.edges.items():
            h, t = self.canon(h), self.canon(t)
            if h == t:
                continue
            # a link in prose to a page we read and found non-medical: not an entity
            if src["field"].startswith("section:") and (isnon(h) or isnon(t)):
                self.stats["edges_dropped_nonmedical"] += 1
                continue
            if rel == "treated_by" and self.type_of(t) == "drug":
                rel = "treated_with"  # a drug linked from a "Treatment" field/section
            edges.setdefault((h, rel, t), [src, 0])[1] += n
            first.setdefault(h, src), first.setdefault(t, src)
        names = set(self.pages) | {x for h, _, t in edges for x in (h, t)}
        inl = Counter()
        for t, n in self.inl.items():
            inl[self.canon(t)] += n
        aliases = {}
        for a, t in self.redirects.items():
            aliases.setdefault(self.canon(t), []).append(a)
        ents = []
        for t in sorted(names):
            p = self.pages.get(t, {})
            al = {}
            for a in aliases.get(t, []) + self.aliases.get(t, []):  # first spelling wins, case-insensitively
                al.setdefault(a.lower(), a)
            al.pop(t.lower(), None)
            # an entity without its own page cites the page that first mentioned it
            source = {"page": t, "revid": p["revid"]} if p else {k: first[t][k] for k in ("page", "revid")}
            ents.append({"id": eid(t), "name": t, "type": self.type_of(t), "aliases": list(al.values()),
                         "inlinks": inl[t], "length": p.get("length", 0), "source": source})
        out_edges = [{"head": eid(h), "relation": rel, "tail": eid(t), "source": src, "count": n}
                     for (h, rel, t), (src, n) in edges.items()]
        st = dict(self.stats, entities=len(ents), edges=len(out_edges),
                  by_type=dict(Counter(e["type"] for e in ents)),
                  by_relation=dict(Counter(e["relation"] for e in out_edges)))
        for k in ("pages_read", "pages_medical", "pages_rejected", "redirects"):
            st.setdefault(k, 0)
        return ents, out_edges, st

    def write(self, extra):
        ents, edges, st = self.finish()
        st.update(extra)
        self.rejects.flush()
        write_jsonl(os.path.join(self.out, "entities.jsonl"), ents)  # atomic, like stats.json below
        write_jsonl(os.path.join(self.out, "edges.jsonl"), edges)
        atomic_write(os.path.join(self.out, "stats.json"), json.dumps(st, indent=1) + "\n")
        self.red_f.close()
        os.remove(self.red_f.name)
        return st


def thash(title):
    return int.from_bytes(hashlib.blake2b(title.encode(), digest_size=8).digest(), "little", signed=True)


def eid(title):
    return title.replace(" ", "_")


# ----------------------------------------------------------------------------- dump path

class DumpError(Exception):  # a broken dump file: the message names the file and the position
    pass


def iter_dump(path):
    """Stream (title, ns, revid, redirect_target|None, text) from a MediaWiki XML export (.xml or .xml.bz2).
    Elements are cleared as we go, so memory does not grow with the dump. Raises DumpError naming the position."""
    last, n = None, 0
    try:
        with (bz2.open if path.endswith(".bz2") else open)(path, "rb") as f:
            ctx = ET.iterparse(f, events=("start", "end"))
            _, root = next(ctx)
            for ev, el in ctx:
                if ev == "end" and el.tag.rsplit("}", 1)[-1] == "page":  # {*}: any export schema version
                    last, n, red = el.findtext("{*}title"), n + 1, el.find("{*}redirect")
                    yield (last, int(el.findtext("{*}ns") or 0), int(el.findtext("{*}revision/{*}id") or 0) or None,
                           red.get("title") if red is not None else None, el.findtext("{*}revision/{*}text") or "")
                    root.clear()  # drop finished pages from the tree
    except ET.ParseError as e:
        raise DumpError(f"{path}: line {e.position[0]}, column {e.position[1]}: truncated or malformed XML after "
                        f"page {n} ({last!r}): {e}") from None
    except (OSError, EOFError, StopIteration) as e:
        raise DumpError(f"{path}: corrupt or truncated file after page {n} ({last!r}): {e}") from None


def build_from_dump(path, out, llm=None):
    """Dump -> OUT files. On a broken dump, writes the graph built so far, then raises DumpError."""
    if not os.path.isfile(path):
        raise DumpError(f"{path}: no such file")
    kg, t0, err = KG(out, llm), time.time(), None
    tp = t0  # the last progress line
    try:
        for title, ns, revid, red, text in iter_dump(path):
            if red:
                kg.add_redirect(title, red)
            elif ns == 0:
                kg.add_page(title, revid, text)
            if time.time() - tp > 2:
                tp, n = time.time(), kg.stats["pages_read"]
                print(f"kg {n} pages {n / (tp - t0):.0f} pages/s medical {kg.stats['pages_medical']} "
                      f"edges {len(kg.edges)}", file=sys.stderr, flush=True)
    except DumpError as e:
        err = e
    st = kg.write({"source": path, "seconds": round(time.time() - t0, 2), "error": str(err) if err else None})
    if err:
        raise DumpError(f"{err} (the graph built so far is written to {out})")
    return st


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dump", help="pages-articles .xml or .xml.bz2 (or a Special:Export of the medical pages)")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--llm", help="OpenAI-compatible base URL or local model dir: relations from the lead")
    ap.add_argument("--llm-model", help="model name for --llm")
    a = parse_with_preset(ap, argv, TINY)
    if not a.out or not a.dump:
        ap.error("give --dump and --out (or --tiny)")
    llm = make_llm(a.llm, model_name=a.llm_model, cache_dir=os.path.join(a.out, "llm_cache")) if a.llm else None
    try:
        st = build_from_dump(a.dump, a.out, llm)
    except DumpError as e:
        sys.exit(f"kg: error: {e}")
    print(json.dumps({k: st[k] for k in ("pages_read", "pages_medical", "pages_rejected", "entities", "edges")}))

if __name__ == "__main__":
    main()
