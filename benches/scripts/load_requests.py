#!/usr/bin/env python3
"""Reads a `tollgate-load` report on stdin and prints how many requests it completed, or exits
non-zero when any failed: a failed request takes a shorter path, so counting it would
understate the work per request (the instruction-count scripts divide by this)."""

import json
import sys

d = json.load(sys.stdin)
errors = d["errors"]
failed = errors["status"] + errors["io"] + errors["connect"]
if failed:
    sys.exit(f"{failed} requests failed: {errors}")
print(d["requests"])
