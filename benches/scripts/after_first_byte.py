#!/usr/bin/env python3
"""The response side of each request's time inside the agent, read from its own ledger: from
the first byte of the provider's body (`ttft_us`) to the client's last byte written
(`latency_us`). For a response that arrives in one read this is the work between the
provider's answer and the client's send, plus the send itself, without the generator's or
the simulator's time, so two agents run in alternating windows can be compared on it where
their end-to-end p50 moves by more than the difference (the one-connection figures in
ARCHITECTURE.md, "Reading the usage after the send").

usage: after_first_byte.py DATA_DIR [DATA_DIR...]   (each agent's `data_dir`)
"""

import sqlite3
import sys


def quantile(values, q):
    return values[min(len(values) - 1, int(len(values) * q))]


def main():
    for data_dir in sys.argv[1:]:
        db = sqlite3.connect(f"file:{data_dir}/ledger.sqlite?mode=ro", uri=True)
        rows = db.execute(
            "SELECT latency_us - ttft_us, ttft_us, latency_us FROM usage"
            " WHERE ttft_us IS NOT NULL AND status = 200"
        ).fetchall()
        if not rows:
            print(f"{data_dir}: no rows with a first byte")
            continue
        after, ttft, latency = (sorted(r[i] for r in rows) for i in range(3))
        print(
            f"{data_dir}: {len(rows)} requests; after the first byte p10 / p50 / p90 "
            f"{quantile(after, .1)} / {quantile(after, .5)} / {quantile(after, .9)} us; "
            f"first byte p50 {quantile(ttft, .5)} us; latency p50 {quantile(latency, .5)} us"
        )


if __name__ == "__main__":
    main()
