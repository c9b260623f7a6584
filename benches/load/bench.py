#!/usr/bin/env python3
"""smartgate load benchmark driver (stdlib only). Normally started by benches/load/run.sh, which installs the
tools and builds smartgate first; see benches/load/README.md for what is measured and how to read it.

    bench.py --work DIR --out DIR [--smartgate BIN] [--passthrough BIN] [--duration 10s]
             [--variants direct,nginx,hyper,sg-jwt,sg-opaque]
             [--no-memory] [--no-rate] [--command STR]
    bench.py --render RESULTS.json          # re-write the Markdown table from a results file

Every process it starts is recorded in DIR/pids (run.sh's EXIT trap kills what is left) and stopped on exit.
All traffic goes to 127.0.0.1.
"""

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ISSUER = "https://bench.example"
CLK_TCK = os.sysconf("SC_CLK_TCK")

VARIANTS = {
    "direct": "(a) upstream nginx, direct",
    "nginx": "(b) nginx reverse proxy (no auth)",
    "hyper": "(e) hyper pass-through: smartgate's HTTP stack without its checks (benches/load/passthrough.rs)",
    "sg-jwt": "(c) smartgate, JWT",
    "sg-opaque": "(d) smartgate, opaque token (introspection, cached)",
}
# (scenario id, FHIR path relative to the base, connections)
READ, SEARCH = "Patient/A", "Observation?patient=A"
SCENARIOS = [
    ("read", READ, 1),
    ("read", READ, 16),
    ("read", READ, 64),
    ("read", READ, 256),
    ("search-50", SEARCH, 16),
    ("bundle-1k", SEARCH + "&_count=1000", 16),
    ("bundle-10k", SEARCH + "&_count=10000", 4),
]
TARGETS = {
    "read_vs_nginx": 0.9,
    "search_vs_nginx": 0.75,
    "rss_idle_mb": 30,
    "rss_1000_conns_mb": 100,
    "stream_hwm_growth_mb": 8,
    "added_p99_ms": 0.3,
}
# The fixed-rate latency runs: connections oha spreads the rate over.
RATE_CONNS = 16


def log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def seconds(d: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", d.strip())
    if not m:
        raise SystemExit(f"bad duration {d!r} (use e.g. 10s, 1m)")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "ms" else v * 60 if m.group(2) == "m" else v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes


class Procs:
    """Children we started: recorded in a pid file, stopped (TERM, then KILL) on exit."""

    def __init__(self, work: str):
        self.pidfile = os.path.join(work, "pids")
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], log_path: str) -> subprocess.Popen:
        out = open(log_path, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.items.append((name, p))
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid}\n")
        log(f"started {name} pid {p.pid}")
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def stop_all(self) -> None:
        for name, p in reversed(self.items):
            if p.poll() is None:
                log(f"stopping {name} pid {p.pid}")
            self.stop(p)
        self.items.clear()


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def proc_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for c in f.read().split():
                    out += proc_tree(int(c))
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User+system CPU of pid and its descendants (nginx master + worker)."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """VmRSS / VmHWM (kB) summed over pid and its descendants."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


# ---------------------------------------------------------------- configs


NGINX_COMMON = """worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65535;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{body}
}}
"""

UPSTREAM_BODY = """  types {{ application/fhir+json json; application/octet-stream bin; }}
  default_type application/fhir+json;
  # Observation search: _count picks the canned Bundle (any other query gets the 50-entry one).
  map $arg__count $obs_file {{
    "1000"  /bundle-1mb.json;
    "10000" /bundle-10mb.json;
    default /bundle-50.json;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {data};
    location = /Patient/A   {{ try_files /patient.json =404; }}
    location = /Observation {{ try_files $obs_file =404; }}
    location = /Binary/big  {{ try_files /binary-100mb.bin =404; }}
    location = /jwks {{
      types {{ }}
      default_type application/json;
      try_files /jwks.json =404;
    }}
    location = /introspect {{
      default_type application/json;
      return 200 '{introspect}';
    }}
    location / {{ return 404; }}
  }}"""

PROXY_BODY = """  upstream fhir {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://fhir;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_max_temp_file_size 0;   # stream large bodies instead of spooling them to disk
    }}
  }}"""

SMARTGATE_CONFIG = """listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
public_base_url: http://127.0.0.1:{port}/fhir
upstream:
  url: http://127.0.0.1:{upstream_port}
  timeout: 30s
auth:
  jwt:
    issuer: {issuer}
    jwks_uri: http://127.0.0.1:{upstream_port}/jwks
  introspection:
    endpoint: http://127.0.0.1:{upstream_port}/introspect
    client_id: smartgate
    client_secret: bench
audit:
  output: /dev/null
shutdown:
  grace: 1s
"""


def write_nginx(work: str, name: str, body: str, workers: str) -> tuple[str, str]:
    prefix = os.path.join(work, name)
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(prefix=prefix, body=body, workers=workers))
    return prefix, conf


def start_nginx(procs: Procs, work: str, name: str, body: str, port: int, workers: str) -> subprocess.Popen:
    prefix, conf = write_nginx(work, name, body, workers)
    test = subprocess.run(["nginx", "-t", "-p", prefix, "-e", f"{prefix}/error.log", "-c", conf], capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        raise RuntimeError(f"nginx -t failed for {name}: {test.stderr}")
    p = procs.start(name, ["nginx", "-p", prefix, "-e", f"{prefix}/error.log", "-c", conf], os.path.join(prefix, "stdout.log"))
    wait_port(port, p)
    return p


def start_smartgate(procs: Procs, work: str, name: str, binary: str, port: int, admin_port: int, upstream_port: int) -> subprocess.Popen:
    conf = os.path.join(work, f"{name}.yaml")
    with open(conf, "w") as f:
        f.write(SMARTGATE_CONFIG.format(port=port, admin_port=admin_port, upstream_port=upstream_port, issuer=ISSUER))
    logf = os.path.join(work, f"{name}.log")
    p = procs.start(name, [binary, "serve", "--config", conf], logf)
    end = time.time() + 30
    last = ""
    while time.time() < end:
        if p.poll() is not None:
            raise RuntimeError(f"{name} exited with {p.returncode}: {tail(logf)}")
        st, body, _ = http_get(f"http://127.0.0.1:{admin_port}/readyz", timeout=2)
        if st == 200:
            wait_port(port, p)
            return p
        last = f"{st} {body[:200]!r}"
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready after 30s (last /readyz: {last}); log: {tail(logf)}")


def start_passthrough(procs: Procs, work: str, binary: str, port: int, upstream_port: int) -> subprocess.Popen:
    p = procs.start("passthrough", [binary, f"127.0.0.1:{port}", f"http://127.0.0.1:{upstream_port}", "/fhir"],
                    os.path.join(work, "passthrough.log"))
    wait_port(port, p)
    return p


def tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- requests


def http_get(url: str, token: str | None = None, timeout: float = 30) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}
    except OSError as e:
        return 0, str(e).encode(), {}


def check(url: str, token: str | None) -> dict:
    st, body, headers = http_get(url, token)
    out = {"status": st, "bytes": len(body), "content_type": headers.get("content-type", "")}
    try:
        doc = json.loads(body)
        if doc.get("resourceType") == "Bundle":
            entries = doc.get("entry") or []
            out["entries"] = len(entries)
            out["modes"] = sorted({(e.get("search") or {}).get("mode", "-") for e in entries})
            out["bundle_links"] = [link.get("url") for link in doc.get("link") or []]
        else:
            out["resource"] = f"{doc.get('resourceType')}/{doc.get('id')}"
    except (ValueError, AttributeError):
        pass
    if st != 200:
        out["body_head"] = body[:800].decode(errors="replace")
    return out


def wrk(url: str, conns: int, duration: str, token: str | None) -> dict:
    threads = min(2, conns)
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}", "--latency", "--timeout", "5s", "-s", os.path.join(HERE, "report.lua")]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    argv += ["-H", "Accept: application/fhir+json", url]
    limit = int(seconds(duration) + 30)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"wrk did not finish within {limit}s"}
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    return {"error": f"wrk exit {r.returncode}: {(r.stderr or r.stdout)[-400:]}"}


def oha(url: str, rate: int, duration: str, token: str | None) -> dict:
    """An open-loop run: `rate` requests per second whatever the answers' latency, each latency measured from when
    the request was due (`--latency-correction`), so a stall counts for every request it delayed."""
    argv = ["oha", "-z", duration, "-q", str(rate), "--latency-correction", "-c", str(RATE_CONNS), "--no-tui",
            "--output-format", "json", "-H", "Accept: application/fhir+json"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    argv.append(url)
    limit = int(seconds(duration) + 30)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
        d = json.loads(r.stdout)
    except subprocess.TimeoutExpired:
        return {"error": f"oha did not finish within {limit}s"}
    except OSError as e:
        return {"error": f"oha could not run: {e}"}
    except ValueError:
        return {"error": f"oha exit {r.returncode}: {(r.stderr or r.stdout)[-400:]}"}
    p = d.get("latencyPercentiles") or {}
    us = lambda k: None if p.get(k) is None else p[k] * 1e6  # noqa: E731
    codes = d.get("statusCodeDistribution") or {}
    # Requests still in flight when the run ends are reported as "aborted due to deadline": not failures.
    errors = d.get("errorDistribution") or {}
    return {
        "rate": rate,
        "rps": (d.get("summary") or {}).get("requestsPerSec"),
        "p50_us": us("p50"),
        "p99_us": us("p99"),
        "p999_us": us("p99.9"),
        "non_200": sum(n for c, n in codes.items() if c != "200"),
        "errors": sum(n for e, n in errors.items() if "deadline" not in e),
        "error_kinds": errors,
    }


# ---------------------------------------------------------------- machine


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def run(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "os": run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "nginx": run(["nginx", "-v"]),
        "wrk": run(["wrk", "-v"]),
        "oha": run(["oha", "--version"]),
        "smartgate_commit": run(["git", "-C", REPO, "describe", "--always", "--dirty", "--abbrev=12"]),
    }


# ---------------------------------------------------------------- memory


def sample_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(status_kb(pid, "VmRSS"))
        stop.wait(0.1)


def reset_hwm(pid: int) -> bool:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        for p in proc_tree(pid):
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        return True
    except OSError:
        return False


def conns_1000(pid: int, url: str, token: str | None) -> dict:
    samples: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=sample_rss, args=(pid, stop, samples), daemon=True)
    before = status_kb(pid, "VmRSS")
    t.start()
    res = wrk(url, 1000, "5s", token)
    stop.set()
    t.join(timeout=5)
    time.sleep(1)
    return {
        "rss_before_kb": before,
        "rss_peak_kb": max(samples or [0]),
        "rss_after_kb": status_kb(pid, "VmRSS"),
        "samples": len(samples),
        "wrk": res,
    }


def memory_tests(procs: Procs, work: str, binary: str | None, ports: dict, tokens: dict, nginx_pid: int) -> dict:
    out: dict = {}
    log("memory: nginx proxy at 1,000 connections")
    out["nginx_idle_rss_kb"] = status_kb(nginx_pid, "VmRSS")
    out["nginx_1000"] = conns_1000(nginx_pid, f"http://127.0.0.1:{ports['nginx']}/{READ}", None)
    if not binary:
        return out
    # Same ports as the throughput instance (stopped by now): the tokens' aud is that public base URL.
    port, admin = ports["smartgate"], ports["admin"]
    try:
        p = start_smartgate(procs, work, "smartgate-mem", binary, port, admin, ports["upstream"])
    except RuntimeError as e:
        out["error"] = str(e)
        return out
    base = f"http://127.0.0.1:{port}/fhir"
    time.sleep(1)
    out["idle_rss_kb_cold"] = status_kb(p.pid, "VmRSS")
    for path in (READ, SEARCH):
        http_get(f"{base}/{path}", tokens["jwt"])
        http_get(f"{base}/{path}", tokens["opaque"])
    time.sleep(1)
    out["idle_rss_kb_warm"] = status_kb(p.pid, "VmRSS")

    log("memory: 100 MB streamed body through smartgate")
    stream: dict = {"hwm_reset": reset_hwm(p.pid)}
    stream["hwm_before_kb"] = status_kb(p.pid, "VmHWM")
    stream["rss_before_kb"] = status_kb(p.pid, "VmRSS")
    samples: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=sample_rss, args=(p.pid, stop, samples), daemon=True)
    t.start()
    try:
        r = subprocess.run(
            ["curl", "-sS", "--max-time", "120", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
             "-H", f"Authorization: Bearer {tokens['jwt_binary']}", f"{base}/Binary/big"],
            capture_output=True, text=True, timeout=150)
        code, size, secs = (r.stdout.split() + ["0", "0", "0"])[:3]
        stream.update(status=int(code), bytes=int(size), seconds=float(secs))
        if stream["status"] != 200:
            st, body, _ = http_get(f"{base}/Binary/big", tokens["jwt_binary"], timeout=120)
            stream["body_head"] = body[:800].decode(errors="replace")
    except (subprocess.TimeoutExpired, ValueError) as e:
        stream["error"] = str(e)
    stop.set()
    t.join(timeout=5)
    stream["hwm_after_kb"] = status_kb(p.pid, "VmHWM")
    stream["rss_peak_sampled_kb"] = max(samples or [0])
    stream["hwm_growth_kb"] = stream["hwm_after_kb"] - stream["hwm_before_kb"]
    out["stream_100mb"] = stream

    log("memory: smartgate at 1,000 connections")
    out["smartgate_1000"] = conns_1000(p.pid, f"{base}/{READ}", tokens["jwt"])
    procs.stop(p)
    return out


# ---------------------------------------------------------------- report


def ms(us) -> str:
    return "–" if us is None else f"{us / 1000:.2f}"


def mb(kb) -> str:
    return "–" if kb is None else f"{kb / 1024:.1f}"


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def render(res: dict) -> str:
    runs = res["runs"]
    by = {(r["scenario"], r["conns"], r["variant"]): r for r in runs}
    keys = []
    for r in runs:
        k = (r["scenario"], r["conns"])
        if k not in keys:
            keys.append(k)
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    m = res["machine"]
    lines = [
        f"# smartgate load benchmark — {res['date']}",
        "",
        *([f"**Interrupted ({res['interrupted']}): partial results.**", ""] if res.get("interrupted") else []),
        f"Command: `{res['command']}`  ",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, {m['os']}; "
        f"load average {' '.join(m['loadavg_start'])} at start, {' '.join(res.get('loadavg_end', []))} at end.  ",
        f"Tools: {m['nginx']}; {m['wrk']}; smartgate {m['smartgate_commit']}.  ",
        f"Each run: wrk `-t2` (`-t1` at 1 connection), `{res['duration']}`, keep-alive, `--latency`; variants run back "
        "to back for every scenario. The machine is shared and noisy: compare ratios inside this run, not absolute "
        "numbers across runs.",
        "",
        "Body sizes: " + ", ".join(f"{k} {v:,} B" for k, v in res["sizes"].items()) + ".",
        "",
        "| scenario | conns | variant | req/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU µs/req | vs nginx | vs direct |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc, c in keys:
        base_n = by.get((sc, c, "nginx"), {}).get("rps")
        base_d = by.get((sc, c, "direct"), {}).get("rps")
        for v in variants:
            r = by.get((sc, c, v))
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {sc} | {c} | {v} | error: {r['error'][:120]} | | | | | | | |")
                continue
            errs = sum(r["errors"].values())
            cpu = f"{r['cpu_us_per_req']:.0f}" if r.get("cpu_us_per_req") is not None else "–"
            rn = ratio(r["rps"], base_n) if v != "nginx" else None
            rd = ratio(r["rps"], base_d) if v != "direct" else None
            lines.append(
                f"| {sc} | {c} | {v} | {r['rps']:,.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p999_us'])} | "
                f"{errs} | {cpu} | {'' if rn is None else f'{rn:.2f}'} | {'' if rd is None else f'{rd:.2f}'} |"
            )
    lines += ["", "## Ratios (throughput)", "", "| scenario | conns | (c)/(b) sg-jwt/nginx | (c)/(a) sg-jwt/direct | (d)/(b) sg-opaque/nginx | (e)/(b) hyper/nginx | CPU/req sg-jwt ÷ nginx | CPU/req hyper ÷ nginx |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for sc, c in keys:
        g = lambda v: by.get((sc, c, v), {}).get("rps")  # noqa: E731
        cpu = lambda v: by.get((sc, c, v), {}).get("cpu_us_per_req")  # noqa: E731
        cells = [ratio(g("sg-jwt"), g("nginx")), ratio(g("sg-jwt"), g("direct")), ratio(g("sg-opaque"), g("nginx")), ratio(g("hyper"), g("nginx")),
                 ratio(cpu("sg-jwt"), cpu("nginx")), ratio(cpu("hyper"), cpu("nginx"))]
        lines.append(f"| {sc} | {c} | " + " | ".join("–" if x is None else f"{x:.2f}" for x in cells) + " |")
    lines += ["", "Throughput ratios swing with the machine's load; the last column (proxy CPU per request, smartgate over "
              "nginx) does not depend on how much CPU the proxy got, so it is the steadier measure of the overhead. (e) is the "
              "floor of smartgate's own HTTP stack (hyper server, hyper-util pooled client, the same runtime layout and allocator) "
              "with no checks at all: what is left between (e) and (c) is smartgate's work per request."]

    half = res.get("half_rate") or {}
    if half:
        lines += ["", "## Latency at half of nginx's saturation (open loop)", "",
                  f"oha `-q {half.get('rate')} --latency-correction -c {RATE_CONNS} -z {res['duration']}` on `read`: "
                  f"{half.get('rate'):,} req/s is half of what the nginx proxy reached in the `read` sweep above "
                  f"({half.get('nginx_saturation_rps', 0):,.0f} req/s). Latencies count from when each request was due.", ""]
        if half.get("error"):
            lines.append(f"error: {half['error']}")
        else:
            lines += ["| variant | achieved req/s | p50 ms | p99 ms | p99.9 ms | non-200 / errors | p99 added over nginx | p99 added over direct |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            runs = half.get("runs") or {}
            for v, r in runs.items():
                if "error" in r:
                    lines.append(f"| {v} | error: {r['error'][:120]} | | | | | | |")
                    continue
                add = lambda base: ("" if v == base or base not in runs or runs[base].get("p99_us") is None  # noqa: E731
                                    else f"{(r['p99_us'] - runs[base]['p99_us']) / 1000:+.2f} ms")
                lines.append(f"| {v} | {r['rps'] or 0:,.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p999_us'])} | "
                             f"{r['non_200']} / {r['errors']} | {add('nginx')} | {add('direct')} |")

    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    for t in res.get("targets", []):
        lines.append(f"| {t['name']} | {t['measured']} | {t['verdict']} |")

    mem = res.get("memory") or {}
    if mem:
        lines += ["", "## Memory", ""]
        if "idle_rss_kb_cold" in mem:
            lines.append(f"- smartgate RSS idle: {mb(mem['idle_rss_kb_cold'])} MB just started, {mb(mem.get('idle_rss_kb_warm'))} MB after a few requests.")
        if "smartgate_1000" in mem:
            s = mem["smartgate_1000"]
            lines.append(f"- smartgate at 1,000 connections (wrk -c1000 -t2 -d5s, RSS sampled every 100 ms): peak {mb(s['rss_peak_kb'])} MB, "
                         f"{mb(s['rss_after_kb'])} MB 1 s after; {s['wrk'].get('rps', 0):,.0f} req/s, errors {s['wrk'].get('errors', s['wrk'].get('error'))}.")
        if "nginx_1000" in mem:
            s = mem["nginx_1000"]
            lines.append(f"- nginx proxy (master+worker) idle {mb(mem.get('nginx_idle_rss_kb'))} MB; at 1,000 connections peak {mb(s['rss_peak_kb'])} MB; "
                         f"{s['wrk'].get('rps', 0):,.0f} req/s.")
        if "stream_100mb" in mem:
            s = mem["stream_100mb"]
            lines.append(f"- 100 MB Binary streamed through smartgate (`user/Binary.r`, curl -o /dev/null): status {s.get('status')}, "
                         f"{s.get('bytes', 0):,} B in {s.get('seconds', 0):.2f} s; VmHWM {mb(s['hwm_before_kb'])} → {mb(s['hwm_after_kb'])} MB "
                         f"(growth {mb(s['hwm_growth_kb'])} MB; peak reset via clear_refs: {s.get('hwm_reset')}).")
            if s.get("body_head"):
                lines.append(f"  - body: `{s['body_head'][:300]}`")
        if "error" in mem:
            lines.append(f"- error: {mem['error'][:500]}")

    bad = [c for c in res.get("checks", []) if c["status"] != 200]
    lines += ["", "## Response checks (one request per scenario × variant before the load)", ""]
    for c in res.get("checks", []):
        extra = f", {c['entries']} entries {c.get('modes')}" if "entries" in c else f", {c.get('resource', '')}"
        lines.append(f"- {c['scenario']} / {c['variant']}: {c['status']} {c['content_type']} {c['bytes']:,} B{extra}")
    for c in bad:
        lines.append(f"  - **{c['scenario']} / {c['variant']} answered {c['status']}**: `{c.get('body_head', '')[:400]}`")
    return "\n".join(lines + [""])


def targets(res: dict) -> list[dict]:
    by = {(r["scenario"], r["conns"], r["variant"]): r for r in res["runs"]}
    out = []

    def rr(sc, c):
        a, b = by.get((sc, c, "sg-jwt"), {}).get("rps"), by.get((sc, c, "nginx"), {}).get("rps")
        return ratio(a, b)

    for name, sc, c, key in (("read Patient/A ≥ 0.9 × nginx (16 conns)", "read", 16, "read_vs_nginx"),
                             ("search Observation ≥ 0.75 × nginx (16 conns)", "search-50", 16, "search_vs_nginx")):
        x = rr(sc, c)
        out.append({"name": name, "measured": "–" if x is None else f"{x:.2f}", "verdict": "–" if x is None else ("PASS" if x >= TARGETS[key] else "FAIL")})
    runs = (res.get("half_rate") or {}).get("runs") or {}
    sg, ng = (runs.get("sg-jwt") or {}).get("p99_us"), (runs.get("nginx") or {}).get("p99_us")
    added = None if sg is None or ng is None else (sg - ng) / 1000
    out.append({"name": f"added p99 ≤ {TARGETS['added_p99_ms']} ms over nginx at half of nginx's saturation (open loop)",
                "measured": "–" if added is None else f"{added:+.2f} ms ({ms(sg)} vs {ms(ng)} ms)",
                "verdict": "–" if added is None else ("PASS" if added <= TARGETS["added_p99_ms"] else "FAIL")})
    mem = res.get("memory") or {}
    for name, kb, lim in (("RSS idle ≤ 30 MB", mem.get("idle_rss_kb_warm"), TARGETS["rss_idle_mb"]),
                          ("RSS at 1,000 connections ≤ 100 MB", (mem.get("smartgate_1000") or {}).get("rss_peak_kb"), TARGETS["rss_1000_conns_mb"]),
                          ("100 MB stream: VmHWM growth ≤ 8 MB", (mem.get("stream_100mb") or {}).get("hwm_growth_kb"), TARGETS["stream_hwm_growth_mb"])):
        ok = kb is not None and kb / 1024 <= lim
        if name.startswith("100 MB") and (mem.get("stream_100mb") or {}).get("status") != 200:
            ok = False
        out.append({"name": name, "measured": "–" if kb is None else f"{mb(kb)} MB", "verdict": "–" if kb is None else ("PASS" if ok else "FAIL")})
    return out


# ---------------------------------------------------------------- main


def selected_scenarios(spec: str) -> list[tuple[str, str, int]]:
    """The SCENARIOS rows matching `name` or `name:conns` items of `spec` (all when empty)."""
    want = [w.strip() for w in spec.split(",") if w.strip()]
    if not want:
        return SCENARIOS
    rows = [s for s in SCENARIOS if any(w in (s[0], f"{s[0]}:{s[2]}") for w in want)]
    if not rows:
        raise SystemExit(f"no scenario matches {spec!r} (known: {', '.join(f'{s[0]}:{s[2]}' for s in SCENARIOS)})")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"))
    ap.add_argument("--smartgate")
    ap.add_argument("--passthrough", help="the passthrough example binary (benches/load/passthrough.rs), for the `hyper` variant")
    ap.add_argument("--duration", default=os.environ.get("BENCH_DURATION", "10s"))
    ap.add_argument("--variants", default=os.environ.get("BENCH_VARIANTS", ",".join(VARIANTS)))
    ap.add_argument("--scenarios", default=os.environ.get("BENCH_SCENARIOS", ""),
                    help="comma-separated scenario[:conns] filter, e.g. read:16,search-50 (default: all)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-rate", action="store_true", help="skip the fixed-rate latency runs (oha)")
    ap.add_argument("--command", default="benches/load/run.sh")
    ap.add_argument("--render")
    a = ap.parse_args()
    if a.render:
        with open(a.render) as f:
            res = json.load(f)
        md = a.render[:-5] + ".md" if a.render.endswith(".json") else a.render + ".md"
        with open(md, "w") as f:
            f.write(render(res))
        print(md)
        return 0
    if not a.work:
        raise SystemExit("--work DIR is required")
    seconds(a.duration)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v} (known: {', '.join(VARIANTS)})")
    scenarios = selected_scenarios(a.scenarios)
    if any(v.startswith("sg-") for v in variants) and not a.smartgate:
        raise SystemExit("smartgate variants need --smartgate BIN")
    if "hyper" in variants and not a.passthrough:
        raise SystemExit("the hyper variant needs --passthrough BIN")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    procs = Procs(a.work)

    def on_signal(signum, _frame):
        res["interrupted"] = f"signal {signum}"
        raise SystemExit(128 + signum)

    ports = {"upstream": free_port(), "nginx": free_port(), "hyper": free_port(), "smartgate": free_port(), "admin": free_port()}
    started = dt.datetime.now()
    res: dict = {
        "date": started.strftime("%Y-%m-%d %H:%M"),
        "command": a.command,
        "duration": a.duration,
        "machine": machine(),
        "variants": {v: VARIANTS[v] for v in variants},
        "runs": [],
        "checks": [],
    }
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        log("generating data, key, tokens")
        upstream_base = f"http://127.0.0.1:{ports['upstream']}"
        public = f"http://127.0.0.1:{ports['smartgate']}/fhir"
        g = subprocess.run([sys.executable, os.path.join(HERE, "gen.py"), a.work, "--upstream-base", upstream_base, "--public-base", public, "--issuer", ISSUER],
                           capture_output=True, text=True, timeout=300, check=True)
        res["sizes"] = json.loads(g.stdout)["sizes"]
        with open(os.path.join(a.work, "tokens.json")) as f:
            tokens = json.load(f)
        with open(os.path.join(a.work, "data", "introspect.json")) as f:
            introspect = f.read().strip()

        start_nginx(procs, a.work, "nginx-upstream", UPSTREAM_BODY.format(port=ports["upstream"], data=os.path.join(a.work, "data"), introspect=introspect), ports["upstream"], "1")
        nginx = start_nginx(procs, a.work, "nginx-proxy", PROXY_BODY.format(port=ports["nginx"], upstream_port=ports["upstream"]), ports["nginx"], "auto")
        pids = {"nginx": nginx.pid}
        if "hyper" in variants:
            pids["hyper"] = start_passthrough(procs, a.work, a.passthrough, ports["hyper"], ports["upstream"]).pid
        sg = None
        if any(v.startswith("sg-") for v in variants):
            try:
                sg = start_smartgate(procs, a.work, "smartgate", a.smartgate, ports["smartgate"], ports["admin"], ports["upstream"])
                pids["sg-jwt"] = pids["sg-opaque"] = sg.pid
            except RuntimeError as e:
                log(f"smartgate did not start: {e}")
                res["smartgate_error"] = str(e)
                variants = [v for v in variants if not v.startswith("sg-")]

        def target(v: str, path: str) -> tuple[str, str | None]:
            if v == "direct":
                return f"{upstream_base}/{path}", None
            if v == "nginx":
                return f"http://127.0.0.1:{ports['nginx']}/{path}", None
            if v == "hyper":
                return f"http://127.0.0.1:{ports['hyper']}/fhir/{path}", None
            return f"{public}/{path}", tokens["jwt" if v == "sg-jwt" else "opaque"]

        seen = set()
        for sc, path, _ in scenarios:
            if sc in seen:
                continue
            seen.add(sc)
            for v in variants:
                url, tok = target(v, path)
                c = {"scenario": sc, "variant": v, **check(url, tok)}
                res["checks"].append(c)
                if c["status"] != 200:
                    log(f"CHECK {sc}/{v}: {c['status']} {c.get('body_head', '')[:300]}")

        log("warm-up (2 s per variant)")
        for v in variants:
            url, tok = target(v, READ)
            wrk(url, 16, "2s", tok)

        for sc, path, conns in scenarios:
            for v in variants:
                url, tok = target(v, path)
                pid = pids.get(v)
                cpu0 = cpu_seconds(pid) if pid else None
                r = wrk(url, conns, a.duration, tok)
                row = {"scenario": sc, "path": path, "conns": conns, "variant": v, **r}
                if pid and "requests" in r and r["requests"]:
                    row["cpu_s"] = round(cpu_seconds(pid) - cpu0, 2)
                    row["cpu_us_per_req"] = row["cpu_s"] * 1e6 / r["requests"]
                res["runs"].append(row)
                if "error" in r:
                    log(f"{sc} c={conns} {v}: {r['error']}")
                else:
                    log(f"{sc} c={conns} {v}: {r['rps']:,.0f} req/s p50 {ms(r['p50_us'])} p99 {ms(r['p99_us'])} ms errors {sum(r['errors'].values())}")
        sweep = [r["rps"] for r in res["runs"] if r["scenario"] == "read" and r["variant"] == "nginx" and r.get("rps")]
        if not a.no_rate and sweep:
            rate = int(max(sweep) / 2)
            half: dict = {"rate": rate, "nginx_saturation_rps": max(sweep), "runs": {}}
            res["half_rate"] = half
            for v in (v for v in ("direct", "nginx", "hyper", "sg-jwt") if v in variants):
                url, tok = target(v, READ)
                r = oha(url, rate, a.duration, tok)
                half["runs"][v] = r
                if "error" in r:
                    log(f"half-rate {v}: {r['error']}")
                else:
                    log(f"half-rate {v} at {rate:,} req/s: p50 {ms(r['p50_us'])} p99 {ms(r['p99_us'])} ms non-200 {r['non_200']} errors {r['errors']}")
        if sg:
            res["smartgate_rss_after_load_kb"] = status_kb(sg.pid, "VmRSS")
            procs.stop(sg)
            res["smartgate_log_tail"] = tail(os.path.join(a.work, "smartgate.log"), 1500)
        if not a.no_memory:
            res["memory"] = memory_tests(procs, a.work, a.smartgate if any(v.startswith("sg-") for v in VARIANTS if v in a.variants) and "smartgate_error" not in res else None,
                                         ports, tokens, nginx.pid)
    finally:
        procs.stop_all()
        res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        res["targets"] = targets(res)
        os.makedirs(a.out, exist_ok=True)
        stamp = started.strftime("%Y%m%d-%H%M%S")
        jpath = os.path.join(a.out, f"load-{stamp}.json")
        with open(jpath, "w") as f:
            json.dump(res, f, indent=1)
        with open(jpath[:-5] + ".md", "w") as f:
            f.write(render(res))
        log(f"wrote {jpath} and {jpath[:-5]}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
