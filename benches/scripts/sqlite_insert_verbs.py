#!/usr/bin/env python3
"""What the insert verb costs per row in SQLite with and without an AFTER DELETE trigger on the
table (the ledger's rollups have such triggers): the figures behind `ledger::insert` using
`INSERT OR IGNORE` first (ARCHITECTURE.md, benches/results/2026-12-02-idle-task.md).

The same shape as the ledger in small: `id TEXT PRIMARY KEY`, an index on the timestamp, WAL,
`synchronous = NORMAL`, `recursive_triggers` on, rows in 2,048-row transactions. Best of 3.

usage: sqlite_insert_verbs.py [ROWS]   (default 100,000)
"""

import os
import sqlite3
import sys
import tempfile
import time


def per_row_us(verb, trigger, rows, path):
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("pragma journal_mode=WAL")
    c.execute("pragma synchronous=NORMAL")
    c.execute("pragma recursive_triggers=ON")
    c.execute("create table usage(id text primary key, ts_ms integer not null, team text,"
              " model text, tokens integer not null)")
    c.execute("create index usage_ts on usage(ts_ms)")
    c.execute("create table rollup(team text primary key, n integer)")
    if trigger:
        c.execute("create trigger usage_sub after delete on usage begin"
                  " update rollup set n = n - 1 where team = old.team; end")
    data = [(f"req-{i:012d}", 1_700_000_000_000 + i, None, "smol", i) for i in range(rows)]
    start = time.perf_counter()
    for b in range(0, rows, 2048):
        c.execute("begin")
        c.executemany(f"{verb} into usage values (?,?,?,?,?)", data[b:b + 2048])
        c.execute("commit")
    elapsed = time.perf_counter() - start
    c.close()
    return elapsed / rows * 1e6


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    path = os.path.join(tempfile.mkdtemp(prefix="tollgate-sqlite-"), "verbs.db")
    print("| statement | with the delete trigger | without |\n|---|---:|---:|")
    for verb in ("INSERT OR REPLACE", "INSERT OR IGNORE", "INSERT"):
        cells = [min(per_row_us(verb, t, rows, path) for _ in range(3)) for t in (True, False)]
        print(f"| `{verb}` | {cells[0]:.3f} µs/row | {cells[1]:.3f} |")


if __name__ == "__main__":
    main()
