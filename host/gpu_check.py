"""The torch backend's GPU check; run by `host/gpu-check.sh run`.

Starts the prepared glia binary, serves `nn-probe` with the TorchScript CNN
and digits models, and checks, against the same models in this machine's
Python torch:

1. glia's log names the CUDA device it runs `gpu` models on;
2. a `cnn@gpu` call runs on the GPU (`glia-nn-device: gpu`, GPU seconds in
   the ledger) and its outputs equal the CPU run's and Python torch's;
3. `digits@gpu` gives the digits' reference outputs;
4. latency: one `compute` inside the function (the host's time for it, from
   the ledger) against `model(x.cuda()).cpu()` in Python, after warm-up;
   the first call (model load and CUDA warm-up) is reported separately.
   Target: in-function / native <= 1.05.

Only the standard library and torch are used; nothing is downloaded.
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROUNDS = 7
COMPUTES = 100
TOLERANCE = 1e-3
TARGET_RATIO = 1.05


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Glia:
    def __init__(self, bundle, workdir):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "platform.toml"
        config.write_text(
            "[server]\ninstall_builtins = false\n"
            "[models]\nfallback = \"cpu\"\n"
        )
        self.log_path = workdir / "glia.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                str(bundle / "glia"), "serve", "--dev",
                "--listen", f"127.0.0.1:{self.port}",
                "--data-dir", str(workdir / "data"),
                "--config", str(config),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GLIA_LOG": "info"},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"glia exited at start:\n{self.log_path.read_text()}")
            try:
                self.request("GET", "/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("glia did not start within 60 s")

    def request(self, method, path, body=None, headers=None):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def ok(self, method, path, body=None, headers=None):
        status, hdrs, raw = self.request(method, path, body, headers)
        if status >= 300:
            raise SystemExit(f"{method} {path}: {status} {raw[:500]!r}")
        return hdrs, raw

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def image_values():
    return [((i * 37) % 101) / 100 for i in range(3 * 64 * 64)]


def probe_body(name, computes=1):
    return {
        "load": {"name": name},
        "inputs": [{"name": "image", "type": "fp32", "dims": [1, 3, 64, 64], "values": image_values()}],
        "computes": computes,
    }


def close(a, b, tolerance=TOLERANCE):
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b))


class Native:
    """Python torch on the same model and input, on the same device."""

    def __init__(self, bundle, cuda):
        import torch

        self.torch = torch
        torch.set_num_threads(1)
        self.device = torch.device("cuda:0" if cuda else "cpu")
        self.name = torch.cuda.get_device_name(0) if cuda else "cpu"
        started = time.perf_counter()
        self.model = torch.jit.load(str(bundle / "cnn.pt"), map_location=self.device).eval()
        self.x = torch.tensor(image_values(), dtype=torch.float32).reshape(1, 3, 64, 64)
        with torch.no_grad():
            self.outputs = self.call().flatten().tolist()
        self.first_call_ms = (time.perf_counter() - started) * 1e3
        for _ in range(50):
            self.call()

    def call(self):
        with self.torch.no_grad():
            return self.model(self.x.to(self.device)).cpu()

    def round_us(self):
        """Microseconds per call over COMPUTES calls."""
        started = time.perf_counter()
        for _ in range(COMPUTES):
            self.call()
        return (time.perf_counter() - started) / COMPUTES * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    allow_cpu = os.environ.get("GPU_CHECK_ALLOW_CPU") == "1"

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        raise SystemExit("torch sees no CUDA device (GPU_CHECK_ALLOW_CPU=1 for a dry run)")
    reference = json.loads((bundle / "reference.json").read_text())
    checks = []

    dry = allow_cpu and not cuda

    def check(name, passed, detail, on_device=False):
        """A device check without a device (a dry run) is skipped, not passed."""
        result = "skip" if on_device and dry else ("pass" if passed else "FAIL")
        checks.append({"check": name, "result": result, "detail": detail})
        print(f"{result.upper():4}  {name}: {detail}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        glia = Glia(bundle, workdir)
        try:
            started = time.perf_counter()
            for name in ("cnn", "digits"):
                glia.ok("PUT", f"/v1/models/{name}?encoding=pytorch", (bundle / f"{name}.pt").read_bytes())
            glia.ok(
                "PUT", "/v1/functions/probe?models=cnn,digits",
                (bundle / "nn-probe.wasm").read_bytes(),
                {"content-type": "application/wasm"},
            )
            setup_ms = (time.perf_counter() - started) * 1e3

            log = glia.log_path.read_text()
            says_cuda = "CUDA device cuda:0" in log
            check("log names the CUDA device", says_cuda,
                  next((l.strip() for l in log.splitlines() if "PyTorch models run on libtorch" in l), "no line"),
                  on_device=True)

            def call(name, computes=1):
                started = time.perf_counter()
                hdrs, raw = glia.ok("POST", "/fn/probe/", probe_body(name, computes), {"content-type": "application/json"})
                wall_ms = (time.perf_counter() - started) * 1e3
                body = json.loads(raw)
                if not body.get("ok"):
                    raise SystemExit(f"{name}: {body}")
                headers = {k.lower(): v for k, v in hdrs.items()}
                _, rec = glia.ok("GET", f"/v1/invocations/{headers['glia-invocation-id']}")
                return body, headers, json.loads(rec), wall_ms

            # The first gpu call loads the model onto the device and warms CUDA up.
            body, headers, record, first_wall_ms = call("cnn@gpu")
            gpu_out = body["outputs"][0]["first"]
            ran = headers.get("glia-nn-device")
            check("cnn@gpu runs on the GPU", ran == "gpu", f"glia-nn-device: {ran}", on_device=True)
            check("the ledger bills GPU time", record["usage"]["gpu_inference_us"] > 0,
                  f"gpu_inference_us {record['usage']['gpu_inference_us']}, cpu_inference_us {record['usage']['cpu_inference_us']}",
                  on_device=True)
            first = {
                "wall_ms": first_wall_ms,
                "model_load_us": record["usage"].get("model_load_us"),
                "inference_us": record["usage"]["gpu_inference_us"] + record["usage"]["cpu_inference_us"],
            }

            cpu_body, _, _, _ = call("cnn@cpu")
            cpu_out = cpu_body["outputs"][0]["first"]
            want = reference["cnn"]["outputs"]["logits"]
            check("gpu outputs equal the cpu's", close(gpu_out, cpu_out), f"gpu {gpu_out[:3]}..., cpu {cpu_out[:3]}...")
            check("gpu outputs equal Python torch's reference", close(gpu_out, want), f"reference {want[:3]}...")

            digits = reference["digits"]
            pixels = digits["inputs"]["pixels"][:64]
            _, raw = glia.ok("POST", "/fn/probe/", {
                "load": {"name": "digits@gpu"},
                "inputs": [{"name": "pixels", "type": "fp32", "dims": [1, 64], "values": pixels}],
            }, {"content-type": "application/json"})
            got = json.loads(raw)["outputs"][0]["first"]
            check("digits@gpu equals the reference", close(got, digits["outputs"]["probabilities"][:8], 1e-4), f"{got[:3]}...")

            # Latency, side by side: after warm-up, rounds alternate between
            # one glia call of COMPUTES computes and COMPUTES native calls.
            native = Native(bundle, cuda)
            call("cnn@gpu", COMPUTES)
            rounds, native_rounds = [], []
            for _ in range(ROUNDS):
                _, headers, record, _ = call("cnn@gpu", COMPUTES)
                us = record["usage"]["gpu_inference_us"] or record["usage"]["cpu_inference_us"]
                rounds.append(us / COMPUTES)
                native_rounds.append(native.round_us())
            in_function = statistics.median(rounds)
            native_us = statistics.median(native_rounds)
        finally:
            glia.stop()
            (args.out / "glia.log").write_text(glia.log_path.read_text())

    check("Python torch agrees with the reference", close(native.outputs, want), f"{native.outputs[:3]}...")
    ratio = in_function / native_us
    check(f"in-function / native <= {TARGET_RATIO}", ratio <= TARGET_RATIO, f"{ratio:.3f}", on_device=True)

    report = {
        "device": native.name,
        "torch": native.torch.__version__,
        "cuda": cuda,
        "setup_ms": setup_ms,
        "first_call": first,
        "native_first_call_ms": native.first_call_ms,
        "in_function_us_per_compute": in_function,
        "in_function_rounds_us": rounds,
        "native_us_per_compute": native_us,
        "native_rounds_us": native_rounds,
        "ratio": ratio,
        "checks": checks,
    }
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# GPU check: {native.name} (torch {native.torch.__version__}, CUDA {'yes' if cuda else 'NO: dry run, device checks skipped'})",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
        *[f"| {c['check']} | {c['result']} | {c['detail']} |" for c in checks],
        "",
        "| latency (cnn, 1x3x64x64) | value |",
        "| --- | ---: |",
        f"| first cnn@gpu call, wall (load onto the device, warm-up) | {first['wall_ms']:.1f} ms |",
        f"| native load and first call (Python) | {native.first_call_ms:.1f} ms |",
        f"| in-function compute, median of {ROUNDS} rounds x {COMPUTES} | {in_function:.1f} µs |",
        f"| native `model(x.to(device)).cpu()`, median of {ROUNDS} rounds x {COMPUTES} | {native_us:.1f} µs |",
        f"| **ratio in-function / native** (target <= {TARGET_RATIO}) | **{ratio:.3f}** |",
    ]
    report_md = "\n".join(lines) + "\n"
    (args.out / "gpu-check.md").write_text(report_md)
    print()
    print(report_md)
    sys.exit(0 if all(c["result"] != "FAIL" for c in checks) else 1)


if __name__ == "__main__":
    main()
