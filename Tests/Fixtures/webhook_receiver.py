#!/usr/bin/env python3
"""A webhook receiver for the opsbus tests (standard library only).

Records every request as one JSON line in --log: index, method, path, outcome ("ok", "fail", "hang"), headers
(lower-cased names), body (UTF-8 text) and signature_valid (the X-Opsbus-Signature header checked with the
verification snippet from WebhookSignature.swift, or null when no --secret is given or no header was sent).
A request is logged when it arrives, before it is answered.

Behaviour by request index (0-based, in order of arrival):
  index < --hang-first                       : hang for --hang-seconds, then close without answering
  index < --hang-first + --fail-first        : 500 with the body "receiver failure for test"
  otherwise                                  : --status (default 200) with {"ok":true}, plus a Location header
                                               when --location is given (to test that redirects are not followed)

It lives outside the test targets (Tests/Fixtures) so SwiftPM does not complain about an unhandled file.
"""
import argparse
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# The receiver-side snippet documented in Sources/OpsBusProcessor/Notifications/WebhookSignature.swift.
def verify_opsbus_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """header: the X-Opsbus-Signature value; body: the raw request body bytes, before JSON parsing."""
    fields = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for key, value in fields if key == "t"]
    signatures = [value for key, value in fields if key == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        return False
    if abs(time.time() - int(timestamps[0])) > tolerance:
        return False  # a replay of an old request, or clocks too far apart
    signed = timestamps[0].encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--hang-first", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=3600)
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--location")
    parser.add_argument("--secret")
    args = parser.parse_args()

    lock = threading.Lock()
    counter = [0]
    log = open(args.log, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with lock:
                index = counter[0]
                counter[0] += 1
            if index < args.hang_first:
                outcome = "hang"
            elif index < args.hang_first + args.fail_first:
                outcome = "fail"
            else:
                outcome = "ok"
            signature = self.headers.get("X-Opsbus-Signature")
            record = {
                "index": index,
                "method": self.command,
                "path": self.path,
                "outcome": outcome,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
                "signature_valid": None
                if args.secret is None or signature is None
                else verify_opsbus_signature(args.secret, signature, body),
            }
            with lock:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if outcome == "hang":
                time.sleep(args.hang_seconds)
                self.close_connection = True
                return
            status, payload = (500, b"receiver failure for test") if outcome == "fail" else (args.status, b'{"ok":true}')
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if outcome == "fail" else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if args.location and outcome == "ok":
                self.send_header("Location", args.location)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *arguments: object) -> None:
            pass  # the JSON log is the record

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
