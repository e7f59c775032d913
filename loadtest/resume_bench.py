"""Time a WebSocket `resume` from seq 0 over a conversation with one 25,000-token reply: the
cost of paged replays (docs/websocket.md, "Resuming from far back is paged").

    cargo build --release -p engine -p loadtest --bins
    python3 -m venv /tmp/wsvenv && /tmp/wsvenv/bin/pip install websockets requests
    /tmp/wsvenv/bin/python loadtest/resume_bench.py                      # in-memory store
    createdb -h 127.0.0.1 -U postgres pagebench   # an empty database, migrated at start
    /tmp/wsvenv/bin/python loadtest/resume_bench.py postgres://postgres@127.0.0.1:5432/pagebench

BIN_DIR overrides where the release binaries are; the engine's files go to a temp dir.
"""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import requests, websockets

BIN = os.environ.get("BIN_DIR", "target/release")
WORK = tempfile.mkdtemp(prefix="resume-bench-")
ENGINE, FAKE = 19002, 19001
db = sys.argv[1] if len(sys.argv) > 1 else ""
cfg = f"""[server]\nlisten = "127.0.0.1:{ENGINE}"\n[telemetry]\nlog_level = "warn"\n[cache]\nexact = false\nsemantic = false\n[limits]\nmax_message_bytes = 65536\n[[models]]\nname = "primary"\nprovider = "openai_compatible"\nupstream_model = "gpt-4o"\nbase_url = "http://127.0.0.1:{FAKE}/v1"\n"""
if db:
    cfg += f'[database]\nurl = "{db}"\n'
open(f"{WORK}/engine.toml", "w").write(cfg)
env = dict(os.environ, SWITCHYARD_BOOTSTRAP_EMAIL="b@example.com", SWITCHYARD_BOOTSTRAP_PASSWORD="bench-password-1")
fake = subprocess.Popen([f"{BIN}/fake-llm", "--listen", f"127.0.0.1:{FAKE}", "--tokens", "25000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
eng = subprocess.Popen([f"{BIN}/switchyard", "--config", f"{WORK}/engine.toml"], env=env, stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/engine.log", "w"))
try:
    base = f"http://127.0.0.1:{ENGINE}"
    for _ in range(300):
        try:
            if requests.get(base + "/readyz").status_code == 200: break
        except Exception: pass
        time.sleep(0.1)
    tok = requests.post(base + "/api/v1/auth/login", json={"email": "b@example.com", "password": "bench-password-1"}).json()["access_token"]
    h = {"authorization": f"Bearer {tok}"}
    cid = requests.post(base + "/api/v1/conversations", json={}, headers=h).json()["id"]
    r = requests.post(base + f"/api/v1/conversations/{cid}/messages", json={"content": "go", "stream": False}, headers=h)
    assert r.status_code == 200, r.text
    last = requests.get(base + f"/api/v1/conversations/{cid}", headers=h).json()
    last_seq = last.get("last_seq") or last.get("conversation", {}).get("last_seq")
    async def resume():
        async with websockets.connect(f"ws://127.0.0.1:{ENGINE}/ws/{cid}", subprotocols=["switchyard.v1", f"bearer.{tok}"], max_size=None) as ws:
            t0 = time.perf_counter(); n = 0
            await ws.send(json.dumps({"type": "resume", "after_seq": 0}))
            while True:
                f = json.loads(await ws.recv())
                if "seq" in f and f["seq"] is not None:
                    n += 1
                    if f["seq"] >= last_seq: break
            return n, time.perf_counter() - t0
    for i in range(3):
        n, dt = asyncio.run(resume())
        print(f"{'pg' if db else 'memory'} run {i}: {n} events (last_seq {last_seq}) in {dt*1000:.0f} ms = {n/dt:,.0f} events/s")
finally:
    eng.terminate(); fake.terminate(); eng.wait(); fake.wait()
