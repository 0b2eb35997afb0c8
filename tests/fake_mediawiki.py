"""A small MediaWiki-Action-API-shaped server on 127.0.0.1 for testing kg.py's crawler.

Serves action=query with list=embeddedin / list=categorymembers (with `continue`, `batch` items a page),
prop=revisions (rvprop=content|ids, rvslots=main, up to 50 titles, redirects=1 resolution, first-letter
normalisation) in formatversion=2 shapes. Optional faults: a maxlag error on the first request, HTTP 503 on
chosen request numbers, a delay per request. Counts everything: `hits` (all requests), `served` (the
normalised params of every successful response), `agents` (User-Agent headers), `bad` (protocol violations).
"""
import json, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qsl


def _norm(t):
    t = t.replace("_", " ").strip()
    return t[:1].upper() + t[1:]


class FakeWiki:
    def __init__(self, pages, redirects=None, embedded=None, categories=None, batch=2, maxlag_first=True,
                 fail_on=(), delay=0.0, rv_parts=False):
        self.pages = {_norm(t): text for t, text in pages.items()}  # title -> wikitext
        self.redirects = {_norm(a): _norm(b) for a, b in (redirects or {}).items()}
        self.embedded = embedded or {}      # "Template:X" -> [titles]
        self.categories = categories or {}  # "Category:X" -> [titles, "Category:Sub", ...]
        self.batch, self.maxlag_first, self.fail_on, self.delay = batch, maxlag_first, set(fail_on), delay
        self.rv_parts = rv_parts  # content of a big prop=revisions batch comes in two parts (rvcontinue)
        self.hits, self.served, self.agents, self.bad = 0, [], [], []
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ API semantics
    def _list(self, items, prefix, q):
        start = int(q.get(prefix + "continue", "0|0").split("|")[1])
        out = {"batchcomplete": True, "query": {}}
        if start + self.batch < len(items):
            out["continue"] = {prefix + "continue": f"0|{start + self.batch}", "continue": "-||"}
        return out, items[start:start + self.batch]

    def answer(self, q):
        if q.get("format") != "json" or q.get("formatversion") != "2" or q.get("maxlag") != "5":
            self.bad.append(("params", q))
        if q.get("list") == "embeddedin":
            out, items = self._list(self.embedded.get(q["eititle"], []), "ei", q)
            out["query"]["embeddedin"] = [{"pageid": 1000 + i, "ns": 0, "title": t} for i, t in enumerate(items)]
            return out
        if q.get("list") == "categorymembers":
            out, items = self._list(self.categories.get(q["cmtitle"], []), "cm", q)
            out["query"]["categorymembers"] = [{"ns": 14 if t.startswith("Category:") else 0, "title": t}
                                               for t in items]
            return out
        if q.get("prop") == "revisions":
            titles = q["titles"].split("|")
            if len(titles) > 50:
                self.bad.append(("toomanyvalues", len(titles)))
                return {"error": {"code": "toomanyvalues", "info": "Too many values supplied for titles"}}
            query, pages = {}, []
            for t in titles:
                n = _norm(t)
                if n != t:
                    query.setdefault("normalized", []).append({"fromencoded": False, "from": t, "to": n})
                if q.get("redirects") and n in self.redirects:
                    query.setdefault("redirects", []).append({"from": n, "to": self.redirects[n]})
                    n = self.redirects[n]
                if n in self.pages:
                    rid = 5000 + sorted(self.pages).index(n)
                    pages.append({"pageid": rid - 4000, "ns": 0, "title": n, "revisions": [
                        {"revid": rid, "parentid": rid - 1,
                         "slots": {"main": {"contentmodel": "wikitext", "contentformat": "text/x-wiki",
                                            "content": self.pages[n]}}}]})
                else:
                    pages.append({"ns": 0, "title": n, "missing": True})
            query["pages"] = list({p["title"]: p for p in pages}.values())
            if self.rv_parts and len(query["pages"]) > 2:  # like $wgAPIMaxResultSize: half now, half later
                half = len(query["pages"]) // 2
                second = "rvcontinue" in q
                for i, p in enumerate(query["pages"]):
                    if (i < half) == second:
                        p.pop("revisions", None)
                if not second:
                    return {"continue": {"rvcontinue": f"{half}|0", "continue": "||"}, "query": query}
            return {"batchcomplete": True, "query": query}
        return {"error": {"code": "badvalue", "info": f"unsupported request {q}"}}

    # ------------------------------------------------------------------ HTTP plumbing
    def start(self):
        wiki = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                q = dict(parse_qsl(urlsplit(self.path).query))
                with wiki.lock:  # also enforces one request at a time on the server side
                    wiki.hits += 1
                    n = wiki.hits
                    wiki.agents.append(self.headers.get("User-Agent"))
                    time.sleep(wiki.delay)
                    if n == 1 and wiki.maxlag_first:
                        code, body, hdr = 200, {"error": {"code": "maxlag", "info": "Waiting for db1: 7 seconds lagged",
                                                          "lag": 7}}, {"Retry-After": "0"}
                    elif n in wiki.fail_on:
                        code, body, hdr = 503, {"error": "unavailable"}, {}
                    else:
                        code, body, hdr = 200, wiki.answer(q), {}
                        if "error" not in body:
                            wiki.served.append(tuple(sorted(q.items())))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in hdr.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except BrokenPipeError:  # the client was killed mid-request (the resume test does that)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/w/api.php"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
