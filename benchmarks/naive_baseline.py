"""The naive baseline bench_sync.py compares the runner with: what a first script would do.

One query, rows fetched in slices, one /users/track request of 75 objects at a time, each waited for. No
validation beyond parsing the JSON, no watermark: it exists only to be measured.

    python benchmarks/naive_baseline.py SCHEMA.TABLE BRAZE_URL API_KEY [ROWS]   (PostgreSQL settings from $CDI_PG_*)

ROWS: send only the first ROWS rows (`LIMIT`), to sample a large table.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import redshift_connector


def main() -> None:
    table, url, api_key = sys.argv[1:4]
    limit = f" LIMIT {int(sys.argv[4])}" if len(sys.argv) > 4 else ""
    con = redshift_connector.connect(
        host=os.environ["CDI_PG_HOST"],
        port=int(os.environ["CDI_PG_PORT"]),
        user=os.environ["CDI_PG_USER"],
        password=os.environ["CDI_PG_PASSWORD"],
        database=os.environ["CDI_PG_DATABASE"],
        ssl=False,
    )
    cur = con.cursor()
    cur.execute(f"SELECT external_id, payload FROM {table} ORDER BY updated_at{limit}")
    sent = 0
    while rows := cur.fetchmany(75):
        batch = [{"external_id": external_id, **json.loads(payload)} for external_id, payload in rows]
        request = urllib.request.Request(
            f"{url}/users/track",
            data=json.dumps({"attributes": batch}).encode(),
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            response.read()
        sent += len(batch)
    print(json.dumps({"rowsSynced": sent}))


if __name__ == "__main__":
    main()
