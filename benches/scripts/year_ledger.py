"""Writes a year of synthetic requests into DATA_DIR/ledger.sqlite, as a ledger from before the
dashboard's rollups (the agent sums them when it opens it), for measuring the dashboard over a
year: `benches/results/2026-12-01-dashboard.md`.

usage: year_ledger.py DATA_DIR [ROWS]   (default 1,000,000: about two a minute; 20 teams,
8 models, 100 keys, 20,000 sessions, 1 in 97 an error)
"""

import os
import sqlite3
import sys
import time


def main():
    data_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    os.makedirs(data_dir, exist_ok=True)
    db = os.path.join(data_dir, "ledger.sqlite")
    if os.path.exists(db):
        sys.exit(f"{db} exists; give an empty data directory")
    c = sqlite3.connect(db)
    c.execute(
        """CREATE TABLE usage (
        id TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, latency_us INTEGER NOT NULL, ttft_us INTEGER,
        status INTEGER NOT NULL, outcome TEXT NOT NULL, api TEXT NOT NULL,
        team TEXT, project TEXT, user_id TEXT, session_id TEXT, workflow TEXT, cost_center TEXT,
        requested_model TEXT, served_model TEXT, provider TEXT,
        input_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL,
        key_id TEXT, cost_micro_usd INTEGER)"""
    )
    now = int(time.time() * 1000)
    year = 365 * 86_400_000
    step = year // n
    rows = (
        (
            f"req-{i}", now - year + i * step, 40_000, 20_000 + i % 5_000,
            429 if i % 97 == 0 else 200, "ok", "chat_completions",
            f"team-{i % 20}", None, None, f"session-{i % 20_000}" if i % 3 else None, None, None,
            "smol", f"model-{i % 8}", "openai", 500 + i % 3_000, 0, 0, 50 + i % 400, 0, 0,
            f"key_{i % 100}", 100 + i % 9_000,
        )
        for i in range(n)
    )
    c.executemany("INSERT INTO usage VALUES (" + ",".join("?" * 24) + ")", rows)
    c.commit()
    print(f"{n} requests of a year written to {db}")


if __name__ == "__main__":
    main()
