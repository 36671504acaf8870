#!/usr/bin/env python3
"""Time a first start as a new user meets it (issue 20): a clean clone, `make serve`, empty compile caches (Inductor's
and our kernels': `make install` builds those).

    python3 scripts/first_start.py [--clone /tmp/qbert-first-start] [--port 8123] [--json out.json]

Clones this checkout's HEAD, runs `make serve` in it (its package install included) and polls the service with
the standard library only. Prints, in seconds from `make serve`: the install finishing, the first correct answer
of each task, `/readyz` 200, every model serving (stand-ins included) and every model ready on its own artifact;
then the API process's resident memory, the worker restarts and the CPU flags that decide the kernels. Needs
../shared beside the clone (QBERT_CHECKPOINTS, QBERT_DATA).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = {
    "sst2": ("/predict/sst2", {"text": "a wonderful, moving film"}, lambda r: r["results"][0]["label"] == "positive"),
    "ner": (
        "/predict/ner",
        {"text": "John Smith lives in Paris."},
        lambda r: "PER" in {e["type"] for e in r["entities"]},
    ),
    "qa": (
        "/qa",
        {"question": "Where does John live?", "context": "John Smith lives in Paris and works at Acme."},
        lambda r: "paris" in r["answer"].lower(),
    ),
}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted({"amx_int8", "amx_bf16", "avx512_vnni", "avx512_bf16", "avx2"} & set(flags))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", type=Path, default=Path(tempfile.gettempdir()) / "qbert-first-start")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    shutil.rmtree(args.clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(args.clone)], check=True)
    shared = REPO.parent / "shared"
    cache = Path(tempfile.mkdtemp(prefix="inductor-cold-"))
    env = os.environ | {
        "QBERT_PORT": str(args.port),
        "QBERT_CHECKPOINTS": str(shared / "models"),
        "QBERT_DATA": str(shared / "data"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "QBERT_KERNEL_CACHE": str(cache / "qbert-kernels"),
        "QBERT_AOT_CACHE": str(cache / "qbert-aot"),
    }
    log = (args.clone / "serve.log").open("w")
    started = time.monotonic()
    serve = subprocess.Popen(
        ["make", "serve"], cwd=args.clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{args.port}"
    marks: dict[str, float] = {}
    result: dict = {"cpu_flags": cpu_flags(), "cores": os.cpu_count()}
    try:
        while time.monotonic() - started < args.timeout and serve.poll() is None:
            now = round(time.monotonic() - started, 1)
            if "install" not in marks and (args.clone / ".venv" / ".installed").exists():
                marks["install"] = now
            try:
                ready, _ = _get(url + "/readyz")
                models = json.loads(_get(url + "/models")[1])["models"]
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                time.sleep(0.5)
                continue
            for task, (route, body, correct) in QUESTIONS.items():
                if f"answer_{task}" not in marks:
                    status, answer = _post(url + route, body)
                    if status == 200:
                        assert correct(answer), (task, answer)
                        marks[f"answer_{task}"] = round(time.monotonic() - started, 1)
            if ready == 200:
                marks.setdefault("readyz", now)
            settled = models and all(m["state"] in ("ready", "refused", "failed") for m in models)
            if settled:
                marks.setdefault("all_serving", now)  # stand-ins answering for the QAT models included
            if settled and all(m.get("artifact") in (None, m["precision"]) for m in models):
                marks["all_ready"] = now  # every model on its own artifact: the stand-ins gave way
                result["states"] = {f"{m['task']}/{m['precision']}": m["state"] for m in models}
                break
            time.sleep(0.5)
        _, metrics = _get(url + "/metrics")
        rss = [line for line in metrics.splitlines() if line.startswith("process_resident_memory_bytes")]
        result["api_resident_mb"] = round(float(rss[0].split()[1]) / 1e6) if rss else None
        workers = [line for line in metrics.splitlines() if line.startswith("qbert_worker_resident_bytes")]
        result["worker_resident_mb"] = [round(float(line.split()[1]) / 1e6) for line in workers]
        result["worker_restarts"] = json.loads(_get(url + "/readyz")[1])["workers"]
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)
    install = marks.get("install", 0.0)
    result["seconds_from_make_serve"] = marks
    result["seconds_after_install"] = {k: round(v - install, 1) for k, v in marks.items() if k != "install"}
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if "all_ready" in marks else 1


if __name__ == "__main__":
    sys.exit(main())
