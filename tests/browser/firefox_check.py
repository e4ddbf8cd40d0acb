"""The dashboard in a real headless Firefox, driven over WebDriver BiDi (Firefox's own remote
protocol: no geckodriver needed). Used by tests/tests/dashboard.rs.

Usage: firefox_check.py URL STORY_COUNT SCREENSHOT.png
Prints one JSON object: the story ids drawn, the commit and diff the story panel showed for the
first story once clicked, the console errors; and writes the screenshot. Exit 0 when it could drive the browser.
"""

import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time

import websockets

PORT = 9333 + (int(time.time() * 1000) % 500)


class Session:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.errors = []

    def _note(self, msg):
        if msg.get("method") == "log.entryAdded" and msg["params"].get("level") == "error":
            self.errors.append(msg["params"].get("text"))

    async def cmd(self, method, params):
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            self._note(msg)
            if msg.get("id") == self.next_id:
                if msg.get("type") == "error":
                    raise RuntimeError(f"{method}: {msg}")
                return msg["result"]

    async def js(self, ctx, expr):
        r = await self.cmd("script.evaluate", {"expression": expr, "target": {"context": ctx}, "awaitPromise": True})
        return r["result"].get("value")

    async def until(self, ctx, expr, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            value = await self.js(ctx, expr)
            if value:
                return value
            await asyncio.sleep(0.1)
        return None

    async def drain(self):
        try:
            while True:
                self._note(json.loads(await asyncio.wait_for(self.ws.recv(), 0.5)))
        except asyncio.TimeoutError:
            pass


async def connect(seconds):
    deadline = time.time() + seconds
    while True:
        try:
            return await websockets.connect(f"ws://127.0.0.1:{PORT}/session", max_size=None)
        except OSError:
            if time.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def check(url, count, png):
    profile = tempfile.mkdtemp(prefix="sticler-firefox-")
    firefox = subprocess.Popen(
        ["firefox-esr", "--headless", "--remote-debugging-port", str(PORT), "--profile", profile,
         "--window-size", "1280,800"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s = Session(await connect(30))
        await s.cmd("session.new", {"capabilities": {}})
        await s.cmd("session.subscribe", {"events": ["log.entryAdded"]})
        ctx = (await s.cmd("browsingContext.getTree", {}))["contexts"][0]["context"]
        await s.cmd("browsingContext.navigate", {"context": ctx, "url": url, "wait": "complete"})
        nodes = f"document.querySelectorAll('#graph .node[data-id]').length === {count}"
        await s.until(ctx, nodes, 20)
        ids = await s.js(ctx, "[...document.querySelectorAll('#graph .node[data-id]')].map(n => n.dataset.id)")
        ids = [v["value"] for v in ids or []]
        centre = await s.js(ctx, "(() => { const r = document.querySelector('#graph .node[data-id]')"
                                 ".getBoundingClientRect(); return [Math.round(r.x + r.width / 2),"
                                 " Math.round(r.y + r.height / 2)]; })()")
        x, y = [v["value"] for v in centre]
        await s.cmd("input.performActions", {"context": ctx, "actions": [{
            "type": "pointer", "id": "mouse", "actions": [
                {"type": "pointerMove", "x": x, "y": y},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0}]}]})
        commit = await s.until(ctx, "document.getElementById('commit')?.textContent", 20)
        diff = await s.until(ctx, "document.getElementById('diff')?.textContent", 20)
        shot = await s.cmd("browsingContext.captureScreenshot", {"context": ctx})
        with open(png, "wb") as out:
            out.write(base64.b64decode(shot["data"]))
        await s.drain()
        print(json.dumps({"ids": ids, "commit": commit, "diff": diff, "console_errors": s.errors}))
    finally:
        firefox.kill()
        firefox.wait()


if __name__ == "__main__":
    asyncio.run(check(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
