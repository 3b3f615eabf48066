#!/usr/bin/env python3
"""What preparing the ledger's 16-row INSERT costs (ledger/bind.rs: `ManyRows` is prepared once
per batch, rusqlite's statement stays cached): runs the statement N times on an in-memory
ledger with Python's statement cache off and on, and prints the difference per call.

    python3 benches/scripts/sqlite_prepare_cost.py
"""

import os
import re
import sqlite3
import time

MOD = os.path.join(os.path.dirname(__file__), "../../agent/src/ledger/mod.rs")
ROWS = 16
N = 300


def main():
    src = open(MOD).read()
    schema = src[src.index("CREATE TABLE IF NOT EXISTS usage"):src.index("CREATE INDEX IF NOT EXISTS usage_ts")]
    cols = re.findall(r"\b([a-z_]+) (?:TEXT|INTEGER|REAL)", schema)
    row = "(" + ", ".join(["?"] * len(cols)) + ")"
    sql = f"INSERT OR IGNORE INTO usage ({', '.join(cols)}) VALUES " + ", ".join([row] * ROWS)
    args = []
    for i in range(ROWS):
        # id, ts_ms, latency_us, ttft_us, status, outcome, api, then NULL or 0
        values = [f"id{i}", 1, 1, None, 200, "ok", "chat"] + [None] * (len(cols) - 7)
        for k in range(16, 22):  # the NOT NULL token counts
            values[k] = 0
        args += values

    def per_call(cache):
        c = sqlite3.connect(":memory:", cached_statements=cache)
        c.execute(schema)
        start = time.perf_counter()
        for _ in range(N):
            c.execute("SAVEPOINT a")
            c.execute(sql, args)
            c.execute("ROLLBACK TO a")
        return (time.perf_counter() - start) / N * 1e6

    uncached, cached = per_call(0), per_call(128)
    print(f"{len(cols)} columns x {ROWS} rows: {uncached:.0f} us uncached, {cached:.0f} us cached, "
          f"prepare ~{uncached - cached:.0f} us")


if __name__ == "__main__":
    main()
