"""Load test of ``pgn serve``: N concurrent clients against the server, next to the offline forward.

Starts ``pgn serve`` as a separate process on loopback, then, for each number of concurrent clients,
sends single-image requests as fast as the clients can and records throughput, p50/p99 latency,
errors, the server's memory (RSS) before and after, and whether a fixed image gets the same answer
under load as alone. In the same run, this process times the same model's offline batched forward
(batch 16, the server's precision) for the ratio the serving target is stated in.

    python benchmarks/serve_load.py                      # embedded backbone, 112 px, 1 and 16 clients
    python benchmarks/serve_load.py --clients 1 4 16 --requests 12 --out docs/serving

Writes OUT.json (raw) and OUT.md (table and command).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png(seed: int, size: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def offline_forward(args, precision_bf16: bool) -> float:
    """Images/s of the served model's own forward on (16, 3, S, S), median of 5 timed rounds after 2 warm-ups."""
    from pgn.backbones import create_backbone
    from pgn.server.models import served_model

    model = served_model(create_backbone(args.backbone, args.weights))
    x = torch.randn(args.offline_batch, 3, args.img_size, args.img_size)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_bf16):
        for i in range(7):
            t0 = time.perf_counter()
            model.embed(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    del model
    return args.offline_batch / statistics.median(times)


def load(url: str, clients: int, requests: int, images: list[bytes]) -> dict:
    latencies, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            barrier.wait()
            for r in range(requests):
                body = images[(c * requests + r) % len(images)]
                t0 = time.perf_counter()
                try:
                    resp = http.post("/embed", files={"file": ("x.png", body, "image/png")})
                    ok = resp.status_code == 200
                except httpx.HTTPError as e:
                    ok, resp = False, e
                dt = time.perf_counter() - t0
                with lock:
                    (latencies if ok else errors).append(dt if ok else str(resp))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    cpu0 = time.process_time()  # this process is the clients: the CPU they take from the server's cores
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    lat = sorted(latencies)
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"clients": clients, "requests": clients * requests, "errors": len(errors),
            "requests_per_s": round(len(lat) / wall, 2), "p50_ms": round(pick(0.50), 1),
            "p99_ms": round(pick(0.99), 1), "wall_s": round(wall, 2),
            "client_cpu_share": round(client_cpu / (wall * (os.cpu_count() or 1)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="dinov2-s14-imgfocus")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--forward-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--offline-batch", type=int, default=16)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--out", default="docs/serving")
    args = ap.parse_args()
    from pgn.precision import resolve

    bf16 = resolve(args.precision, "cpu") == "bf16"
    port = free_port()
    cmd = [sys.executable, "-m", "pgn", "serve", "--backbone", args.backbone, "--port", str(port), "--device", "cpu",
           "--forward-batch", str(args.forward_batch), "--max-wait-ms", str(args.max_wait_ms)]
    cmd += ["--weights", args.weights] if args.weights else []
    cmd += ["--precision", "bf16" if bf16 else "fp32"]  # the server runs what the offline forward runs
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            sys.exit("server did not start: " + server.stdout.read().decode()[-2000:])
        info = httpx.get(url + "/info").json()
        images = [png(seed, args.img_size) for seed in range(32)]
        fixed = images[0]
        alone = np.array(httpx.post(url + "/embed", files={"file": ("x.png", fixed, "image/png")}).json()["embeddings"][0])
        load(url, 2, 2, images)  # warm-up
        rss_before = rss_mb(server.pid)
        rows, diffs = [], []
        for n in args.clients:
            probe: dict = {}

            def under_load():
                time.sleep(0.2)  # while the load is running
                probe["emb"] = httpx.post(url + "/embed", files={"file": ("x.png", fixed, "image/png")},
                                          timeout=300).json()["embeddings"][0]

            t = threading.Thread(target=under_load)
            before = httpx.get(url + "/info").json()
            t.start()
            rows.append(load(url, n, args.requests, images))
            t.join()
            after = httpx.get(url + "/info").json()
            forwards = after["forwards"] - before["forwards"]
            rows[-1]["mean_forward_batch"] = round((after["images_served"] - before["images_served"]) / max(forwards, 1), 2)
            diffs.append(float(np.abs(np.array(probe["emb"]) - alone).max()))
            print(json.dumps(rows[-1]), flush=True)
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    offline = offline_forward(args, bf16)
    for r in rows:
        r["ratio_to_offline"] = round(r["requests_per_s"] / offline, 3)
    meta = {"command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "backbone": info["backbone"], "img_size": args.img_size, "precision": info["precision"],
            "forward_batch": args.forward_batch, "max_wait_ms": args.max_wait_ms,
            "offline_images_per_s": round(offline, 2), "offline_batch": args.offline_batch,
            "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_after, 1),
            "fixed_image_max_abs_diff_under_load": max(diffs)}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    lines = ["## Under load", "",
             f"Command: `{meta['command']}` on {meta['machine']}. Server: `pgn serve` ({meta['backbone']}, "
             f"{meta['precision']}, up to {meta['forward_batch']} images per forward, {meta['max_wait_ms']} ms "
             f"gathering window) in its own process on loopback; clients: threads of the benchmark process, each "
             f"sending single {args.img_size}x{args.img_size} PNG images to /embed one after another. The offline "
             f"forward is the same model's batch-{args.offline_batch} forward in the same precision, timed in the "
             f"benchmark process after the server stopped: {meta['offline_images_per_s']} images/s.", "",
             "| concurrent clients | requests | errors | requests/s | ratio to offline batch forward | p50 ms | p99 ms "
             "| mean images per forward | clients' share of the CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['requests_per_s']} | "
                     f"{r['ratio_to_offline']:.2f} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_forward_batch']} | "
                     f"{100 * r['client_cpu_share']:.0f} % |")
    lines += ["", f"Server memory (RSS): {meta['server_rss_mb_before']} MB before the load, "
                  f"{meta['server_rss_mb_after']} MB after. A fixed image sent during the load got the answer it "
                  f"gets alone to within {meta['fixed_image_max_abs_diff_under_load']:.2g} (max abs difference of "
                  "the embedding; batched and single forwards sum in a different order)."]
    write_section(out.with_suffix(".md"), "\n".join(lines))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


BEGIN, END = "<!-- serve_load.py: begin -->", "<!-- serve_load.py: end -->"


def write_section(path: Path, text: str) -> None:
    """Replace the section between the markers in ``path`` (the rest of the page is written by hand)."""
    page = path.read_text() if path.is_file() else "# Serving\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in page or END not in page:
        page = page.rstrip() + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = page.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(head + BEGIN + "\n" + text + "\n" + END + tail)
    tmp.replace(path)


if __name__ == "__main__":
    main()
