"""A tiny OpenAI-compatible chat-completions server on loopback for tests (http.server in a thread).

    def reply(messages, n, temperature):          # -> list of n reply strings
        return ["<think>x</think>\n<answer>A</answer>"] * n
    with FakeLLMServer(reply, fail=[500]) as srv:  # the first request gets HTTP 500, the next ones succeed
        llm = make_llm(srv.url, model_name="m")
        ...
        srv.requests        # number of POSTs received (failed ones included)
        srv.payloads        # the JSON bodies received
        srv.auth            # the Authorization headers received
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLMServer:
    def __init__(self, reply=None, fail=()):
        self.reply = reply or (lambda messages, n, temperature: ["<think>ok</think>\n<answer>A</answer>"] * n)
        self.fail = list(fail)  # HTTP statuses returned, in order, before answering normally
        self.requests, self.payloads, self.auth = 0, [], []
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with srv.lock:
                    srv.requests += 1
                    srv.payloads.append(body)
                    srv.auth.append(self.headers.get("Authorization"))
                    status = srv.fail.pop(0) if srv.fail else 200
                if self.path.rstrip("/") != "/v1/chat/completions" and not self.path.endswith("/chat/completions"):
                    status = 404
                if status == 200:
                    texts = srv.reply(body.get("messages"), int(body.get("n", 1)), body.get("temperature", 1.0))
                    out = {"id": "fake", "object": "chat.completion", "model": body.get("model"),
                           "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                        "finish_reason": "stop"} for i, t in enumerate(texts)]}
                else:
                    out = {"error": {"message": f"injected {status}"}}
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
