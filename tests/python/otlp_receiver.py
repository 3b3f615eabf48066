"""An OTLP/HTTP trace receiver for tests/e2e/otlp.rs, built on the official OpenTelemetry
protobuf definitions (opentelemetry-proto): every POST /v1/traces body is decoded as an
ExportTraceServiceRequest (a body that does not decode is answered 400 and not recorded), and
each span is appended to OUT as one JSON line (the protobuf JSON mapping, plus its trace and
span ids in hex and its resource attributes).

Usage: python otlp_receiver.py OUT [--fail N]   (answers 503 to the first N exports)
Prints `otlp-receiver listening on 127.0.0.1:PORT` once bound.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

OUT = sys.argv[1]
FAIL = int(sys.argv[sys.argv.index("--fail") + 1]) if "--fail" in sys.argv else 0
state = {"refused": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        if state["refused"] < FAIL:
            state["refused"] += 1
            self.send_response(503)
            self.end_headers()
            return
        req = trace_service_pb2.ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except DecodeError as e:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(e).encode())
            return
        with open(OUT, "a") as out:
            for rs in req.resource_spans:
                resource = json_format.MessageToDict(rs.resource)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        d = json_format.MessageToDict(span)
                        d["traceIdHex"] = span.trace_id.hex()
                        d["spanIdHex"] = span.span_id.hex()
                        d["parentSpanIdHex"] = span.parent_span_id.hex()
                        d["resource"] = resource
                        d["scope"] = ss.scope.name
                        out.write(json.dumps(d) + "\n")
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"otlp-receiver listening on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
