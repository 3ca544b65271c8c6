"""wrk, driven by one Lua script shape: requests built from the lines of a file.

Each line of the file is either the variable part of a GET path (``prefix .. line ..
suffix``: an origin ``lat=..&lon=..``, a page ``page=3``, or nothing) or a request body (sent
to ``prefix``). The script walks the lines in order from a start line given on wrk's command
line, so consecutive runs can be handed disjoint stretches of one shuffled file of origins:
no origin is asked twice in the whole bench unless the file runs out (``Cursor`` says so).
wrk's ``--latency`` distribution gives the percentiles (the ``done`` hook prints them).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LUA = """
local lines = {}
local count = 0
local n = 0
local method, prefix, suffix = %(method)s, %(prefix)s, %(suffix)s
local headers = %(headers)s

init = function(args)
  for line in io.lines(%(file)s) do
    lines[#lines + 1] = line
  end
  count = #lines
  n = (tonumber(args[1]) or math.random(count)) %% count
end

request = function()
  n = n %% count + 1
  if method == "GET" then
    return wrk.format("GET", prefix .. lines[n] .. suffix, headers)
  end
  return wrk.format(method, prefix, headers, lines[n])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"connect\\": %%d, " ..
    "\\"read\\": %%d, \\"write\\": %%d, \\"status\\": %%d, \\"timeout\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d, \\"max_us\\": %%d}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def lua_string(text: str) -> str:
    """A Lua long string: taken as is, nothing escaped, so nothing may close it early."""
    if "]==]" in text or not text.isascii() or "\n" in text or "\r" in text:
        raise ValueError(f"cannot quote {text!r} for Lua")
    return f"[==[{text}]==]"


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    """The file a script reads: one request's variable part a line (ASCII, no line breaks)."""
    items = list(lines)
    for item in items:
        if not item.isascii() or "\n" in item or "\r" in item:
            raise ValueError(f"cannot send {item!r} as one line")
    if not items:
        raise ValueError("a wrk script needs at least one line")
    path.write_text("".join(f"{item}\n" for item in items), encoding="ascii")
    return path


def lua_script(
    path: Path,
    lines_file: Path,
    *,
    method: str = "GET",
    prefix: str = "/",
    suffix: str = "",
    headers: dict[str, str] | None = None,
) -> Path:
    """A wrk script sending the lines of ``lines_file`` in order: GET ``prefix + line +
    suffix``, or ``method`` ``prefix`` with the line as the body."""
    header_table = ", ".join(
        f"[ {lua_string(name)} ] = {lua_string(value)}" for name, value in (headers or {}).items()
    )
    path.write_text(
        LUA
        % {
            "method": lua_string(method),
            "prefix": lua_string(prefix),
            "suffix": lua_string(suffix),
            "headers": "{" + header_table + "}",
            "file": lua_string(str(lines_file.resolve())),
        },
        encoding="ascii",
    )
    return path


@dataclass
class Load:
    """One wrk run, from the Lua ``done`` hook."""

    requests: int
    seconds: float
    errors: int  # non-2xx/3xx answers, plus connect/read/write errors and timeouts
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    start: int = 0  # the first line of the file this run sent
    connections: int = 0
    drain_seconds: float = 0.0  # after wrk stopped, until the server had caught up

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    base: str,
    script: Path,
    seconds: float,
    *,
    connections: int,
    threads: int = 1,
    start: int | None = None,
) -> Load:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "--timeout", "60s", "-s", str(script), base]  # fmt: skip
    if start is not None:
        argv += ["--", str(start)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((row for row in done.stdout.splitlines() if row.startswith("BENCH-JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    figures = json.loads(line.removeprefix("BENCH-JSON "))
    errors = sum(figures[name] for name in ("connect", "read", "write", "status", "timeout"))
    return Load(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        errors=errors,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        start=start or 0,
        connections=connections,
    )


@dataclass
class Cursor:
    """Where the next run starts in a file of ``count`` lines, so runs get disjoint stretches.
    ``repeated`` counts lines sent a second time (the file ran out and wrapped)."""

    count: int
    position: int = 0
    repeated: int = 0

    def take(self, load: Load, connections: int) -> None:
        # Requests still in flight when wrk stopped were sent but not counted: skip them too.
        used = load.requests + connections
        end = load.start + used
        self.position = end % self.count
        self.repeated += max(0, end - self.count)
