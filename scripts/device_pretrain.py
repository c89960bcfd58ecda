"""Pretrain the shipped backbones on one GPU within a fixed wall-clock budget, as one prepared script.

What it does, in order (every step's output goes to stdout and to $OUT):
1. builds the uint8 resolution cache of `--data` once (the runs share it),
2. calibrates: every variant runs `--calib-steps` steps at the same time (the real contention) and
   reports its seconds per step,
3. trains every variant at the same time with `python -m engine pretrain` (the real CLI path), each
   with `--max-steps` sized so that it ends inside the budget (the cosine schedule spans exactly the
   steps run); a run still going at the deadline is stopped with SIGINT, which saves its state,
4. runs `bench/pretrain_throughput.py --device cuda` in what time is left,
5. writes each backbone as fp16 safetensors split into <= 15 MiB parts (the device tool's file limit)
   plus its json, and the logs, into $OUT.

    python scripts/device_pretrain.py --pack ../shared/data/cxr_pool .gpu/pool   # the 224 px copy that travels
    python scripts/device_pretrain.py --data .gpu/pool --out-dir "$OUT" --deadline 540
    python scripts/device_pretrain.py --data .gpu/pool --methods moco_v2 --continue --deadline 540   # a later window

Windows add up (issue 20): with `--continue`, a variant whose backbone is committed in checkpoints/shipped
is warm-started from it (`pretrain --init NAME`: backbone continues, heads/optimizer/queue afresh, a new
cosine schedule) and its json records the lineage and the epochs summed over every window
(`warm_start`, `epochs_total`); variants without committed weights start from random. Each variant uses
its method's `long` preset where one exists, else `paper`. The data path is the fast one: all images on
the GPU, losses read every 20 steps, fused optimizer (engine/ssl/loop.py).

Transfer budget (the device tool carries at most 64 MiB of working tree): the pool at 224 px JPEG q70 is
~52 MiB and each committed fp16 ResNet-18 ~22 MiB, so a window that continues a backbone needs a smaller
pool copy (`--pack-quality`, e.g. 50) or the other committed weights left out of the tree for that call.

Rebuild the parts here with `python scripts/device_pretrain.py --join DIR NAME` (checks the
sha256 of the whole file the device wrote).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The one path hack left (issue 15): this script runs on a bare device machine, in a copy of the tree
# where scripts/setup.sh (the editable install) never ran; its children get PYTHONPATH instead.
sys.path.insert(0, str(ROOT))
T0 = time.time()
PART = 15 * 2**20

VARIANTS: dict[str, tuple[str, list[str]]] = {}  # shipped name -> (method, extra CLI args); set by --methods
SIZE, BATCH, DEVICE = 224, 256, "cuda"  # --size / --batch / --device change them (a CPU smoke test of this script)
SHIPPED = ROOT / "checkpoints" / "shipped"


def preset_for(method: str) -> str:
    """The method's `long` preset (the shipped recipe) where it has one, else its published `paper` recipe."""
    from engine.ssl.presets import preset_overrides

    try:
        preset_overrides(method, "long")
        return "long"
    except ValueError:
        return "paper"


def variants(methods: list[str], cont: bool) -> dict[str, tuple[str, list[str]]]:
    """{shipped name: (method, extra args)}; with `cont`, committed weights are warm-started from."""
    out = {}
    for m in methods:
        name = f"cxr-{m}-resnet18-224"
        warm = cont and (SHIPPED / f"{name}.safetensors").exists()
        out[name] = (m, ["--preset", preset_for(m), *(["--init", name] if warm else [])])
    return out


def run_name(name: str) -> str:
    """The CLI's --out for a variant: a warm start cannot reuse a shipped (reserved) name; package() maps it back."""
    return f"{name}-next"


def common() -> list[str]:
    return ["--arch", "resnet18", "--image-size", str(SIZE), "--batch-size", str(BATCH),
            "--epochs", "100000", "--device", DEVICE, "--monitor-every", "250", "--save-every", "1000"]


def _pack_one(args: tuple[str, str, int]) -> None:
    from PIL import Image

    src, dst, quality = args
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(src).convert("L")
    im.thumbnail((224, 224), Image.BICUBIC)
    im.save(dst, "JPEG", quality=quality, optimize=True)


def pack(src: Path, dst: Path, quality: int = 70) -> int:
    """Copy the pool (`src`/SOURCES.csv lists it) as 8-bit JPEG (q70: 52 MiB instead of 132) with the longer
    side 224 px, under the device tool's 64 MiB transfer limit. Deterministic for a Pillow version."""
    import csv
    from concurrent.futures import ProcessPoolExecutor

    rows = list(csv.DictReader(open(src / "SOURCES.csv")))
    jobs = [(str(src / r["path"]), str(dst / r["path"]), quality) for r in rows]
    with ProcessPoolExecutor(os.cpu_count() or 1) as ex:
        list(ex.map(_pack_one, jobs, chunksize=64))
    return len(jobs)


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def calibrate(method: str, data: str, steps: int) -> None:
    """Child process: time `steps` steps of the long recipe after a 10-step warmup; print s/step as JSON."""
    from engine.data.cache import ImageCache
    from engine.ssl.presets import build_config
    from engine.ssl.pretrain import pretrain_images, resolve_image_paths

    cfg = build_config(method, preset_for(method), arch="resnet18", image_size=SIZE, batch_size=BATCH, epochs=100000,
                       max_steps=steps, monitor_every_steps=0, save_every_steps=10**6)
    cache = ImageCache.build(resolve_image_paths(data), SIZE)
    t: dict[int, float] = {}

    def on_event(e) -> None:
        if e.kind == "progress" and "loss" in e.metrics:
            t[e.step] = time.perf_counter()
            if e.step % 10 == 0:
                print(f"calib {method} step {e.step} loss {e.metrics['loss']:.4f}", flush=True)

    pretrain_images(cache.array, cfg, f"calib-{method}", DEVICE, Path(f"/tmp/calib/{method}"), on_event=on_event,
                    checkpoint_dir=Path("/tmp/calib"))
    print("CALIB " + json.dumps({"method": method, "s_per_step": (t[steps] - t[10]) / (steps - 10)}), flush=True)


def fp16_parts(src: Path, out_dir: Path, name: str) -> tuple[list[str], str]:
    """Write `src` as fp16 safetensors split into <= PART-byte files in `out_dir`: (part names, sha256 of the whole)."""
    from safetensors.torch import load_file, save_file

    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}
    tmp = Path(f"/tmp/{name}.fp16.safetensors")
    save_file(sd, str(tmp))
    data = tmp.read_bytes()
    parts = []
    for i in range(0, len(data), PART):
        p = out_dir / f"{name}.part{i // PART}"
        p.write_bytes(data[i : i + PART])
        parts.append(p.name)
    return parts, hashlib.sha256(data).hexdigest()


def join(d: Path, name: str, dest: Path) -> Path:
    """Reassemble `<name>.part*` from `d` into `dest`/<name>.safetensors, checking the sha256 in the json."""
    parts = sorted(d.glob(f"{name}.part*"), key=lambda p: int(p.suffix[5:]))
    data = b"".join(p.read_bytes() for p in parts)
    info = json.loads((d / f"{name}.json").read_text())
    want = info["device_run"]["fp16_sha256"]
    if hashlib.sha256(data).hexdigest() != want:
        raise SystemExit(f"{name}: parts do not match the sha256 {want} the device recorded")
    out = dest / f"{name}.safetensors"
    out.write_bytes(data)
    return out


def backbone_from_state(state_path: Path, ckpt_dir: Path, name: str, method: str) -> None:
    """Fallback when a run was stopped before its export: the backbone of its last saved state."""
    import torch
    from safetensors.torch import save_file

    st = torch.load(state_path, map_location="cpu", weights_only=True)
    sd = {k[len("backbone."):]: v.contiguous() for k, v in st["model"].items() if k.startswith("backbone.")}
    save_file(sd, str(ckpt_dir / f"{name}.safetensors"))
    (ckpt_dir / f"{name}.json").write_text(json.dumps({"name": name, "method": method, "arch": "resnet18",
                                                       "steps": int(st["step"]), "total_steps": int(st["total"]),
                                                       "config": st["config"], "stopped_early": True,
                                                       "collapse": {"history": st["collapse"]},
                                                       "data_fingerprint": st["data_fingerprint"],
                                                       "n_images": st["n_images"], "image_size": SIZE}))


def calibrate_all(data: str, calib_steps: int, env: dict[str, str]) -> dict[str, float]:
    """Step 2: every variant's calibration at the same time (the real contention); {variant: s/step}."""
    procs = {n: subprocess.Popen([sys.executable, __file__, "--data", data, "--calibrate", m,
                                  "--calib-steps", str(calib_steps), "--size", str(SIZE), "--batch", str(BATCH),
                                  "--device", DEVICE], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, cwd=ROOT)
             for n, (m, _) in VARIANTS.items()}
    sps: dict[str, float] = {}
    for n, p in procs.items():
        text, _ = p.communicate(timeout=240)
        for line in text.splitlines():
            if line.startswith("CALIB "):
                sps[n] = json.loads(line[6:])["s_per_step"]
            elif "calib" in line or "Error" in line or "error" in line:
                print(f"  {n}: {line}")
        if n not in sps:
            print(text[-3000:])
    log(f"calibration s/step (concurrent): {sps}")
    return sps


def train_all(data: str, deadline: float, bench_s: float, sps: dict[str, float], n_images: int,
              env: dict[str, str]) -> dict[str, tuple]:
    """Step 3: the real CLI runs, all at once, each with the steps its calibration allows before the
    deadline; a run still going then gets SIGINT (saves its state). {variant: (process, log, method, steps)}."""
    budget = deadline - (time.time() - T0) - bench_s - 25  # 25 s: start-up, first monitor, export
    runs = {}
    for n, (m, extra) in VARIANTS.items():
        if n not in sps:
            continue
        steps = max(50, int(budget / sps[n] * 0.95))
        cmd = [sys.executable, "-m", "engine", "pretrain", "--method", m, "--data", data, "--out", run_name(n),
               "--max-steps", str(steps), "--run-dir", f"/tmp/runs/{n}", *common(), *extra]
        log(f"start {n}: {steps} steps ({steps * BATCH / n_images:.1f} epochs): {' '.join(cmd[1:])}")
        f = open(f"/tmp/{n}.log", "w")
        runs[n] = (subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT), f, m, steps)
    stop_at = T0 + deadline - bench_s
    while any(p.poll() is None for p, *_ in runs.values()):
        if time.time() > stop_at:
            for n, (p, *_rest) in runs.items():
                if p.poll() is None:
                    log(f"{n} still running at the deadline: SIGINT (saves state)")
                    p.send_signal(signal.SIGINT)
            for p, *_rest in runs.values():
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            break
        time.sleep(5)
    return runs


def collect(runs: dict[str, tuple], ck: Path) -> None:
    """Each run's exit and log lines; a run stopped before its export gets its backbone from its state."""
    for n, (p, f, m, steps) in runs.items():
        f.close()
        log(f"{n} exit {p.returncode}")
        tail = Path(f"/tmp/{n}.log").read_text().replace("\r", "\n").splitlines()
        keep = ("step ", "warning", "Traceback", "  File")
        print("\n".join(l for l in tail if l.startswith(keep) or "Error" in l or " resnet18: " in l)[-2500:])
        if not (ck / f"{run_name(n)}.safetensors").exists() and Path(f"/tmp/runs/{n}/state.pt").exists():
            backbone_from_state(Path(f"/tmp/runs/{n}/state.pt"), ck, run_name(n), m)
            log(f"{n}: backbone taken from its last saved state")


def throughput_bench(deadline: float, env: dict[str, str], methods: str) -> None:
    """Step 4: bench/pretrain_throughput.py in the time left."""
    left = deadline + 20 - (time.time() - T0)
    if left > 20:
        log(f"throughput bench ({left:.0f} s)")
        subprocess.run(["timeout", str(int(left)), sys.executable, "bench/pretrain_throughput.py", "--device", DEVICE,
                        "--image-size", str(SIZE), "--batch", str(BATCH), "--steps", "60", "--presets", "long,paper",
                        "--feeds", "device,host", "--methods", methods], env=env, cwd=ROOT)


def package(runs: dict[str, tuple], ck: Path, out: Path, sps: dict[str, float]) -> None:
    """Step 5: each exported backbone as fp16 parts + its JSON in `out`, and every run's log."""
    for n in runs:
        st = ck / f"{run_name(n)}.safetensors"
        if not st.exists():
            continue
        parts, sha = fp16_parts(st, out, n)
        info = json.loads((ck / f"{run_name(n)}.json").read_text())
        info["name"] = n  # the shipped name it will be committed under (--join)
        info["device_run"] = {"fp16_sha256": sha, "parts": parts, "calib_s_per_step": sps.get(n),
                              "driver": "scripts/device_pretrain.py", "trained_as": run_name(n)}
        (out / f"{n}.json").write_text(json.dumps(info, indent=1))
        log(f"{n}: {parts}")
    with open(out / "logs.txt", "w") as f:
        for n in runs:
            f.write(f"==== {n}\n" + Path(f"/tmp/{n}.log").read_text().replace("\r", "\n")[-200000:])


def main() -> None:
    global SIZE, BATCH, DEVICE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=".gpu/pool")
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--deadline", type=float, default=540, help="seconds from start by which training must end")
    ap.add_argument("--calib-steps", type=int, default=40)
    ap.add_argument("--bench-s", type=float, default=50, help="seconds kept for the throughput bench")
    ap.add_argument("--calibrate", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--join", nargs=2, metavar=("DIR", "NAME"), default=None)
    ap.add_argument("--dest", default="checkpoints/shipped")
    ap.add_argument("--pack", nargs=2, metavar=("POOL", "DEST"), default=None,
                    help="write the 224 px JPEG q70 copy of a pool folder (with SOURCES.csv) and exit")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods", default="moco_v2,barlow_twins,spark",
                    help="the variants of this window, trained side by side (cxr-<method>-resnet18-224)")
    ap.add_argument("--continue", dest="cont", action="store_true",
                    help="warm-start each variant from its committed backbone in checkpoints/shipped when present")
    ap.add_argument("--pack-quality", type=int, default=70, help="JPEG quality of --pack's copy")
    args = ap.parse_args()
    SIZE, BATCH, DEVICE = args.size, args.batch, args.device
    VARIANTS.update(variants(args.methods.split(","), args.cont))
    if args.calibrate:
        return calibrate(args.calibrate, args.data, args.calib_steps)
    if args.pack:
        print(f"{pack(Path(args.pack[0]), Path(args.pack[1]), args.pack_quality)} images written to {args.pack[1]}")
        return
    if args.join:
        print(join(Path(args.join[0]), args.join[1], Path(args.dest)))
        return

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ws, ck = Path("/tmp/ws"), Path("/tmp/ckpt")
    ck.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCARCE_CXR_WORKSPACE": str(ws), "SCARCE_CXR_CHECKPOINTS": str(ck), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    os.environ.update(env)
    if DEVICE.startswith("cuda"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"])
    import torch

    log(f"torch {torch.__version__} cuda {torch.version.cuda} "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; cpus {os.cpu_count()}")
    from engine.data.cache import ImageCache
    from engine.ssl.pretrain import resolve_image_paths

    cache = ImageCache.build(resolve_image_paths(args.data), SIZE)
    log(f"cache: {cache.array.shape} uint8")

    sps = calibrate_all(args.data, args.calib_steps, env)
    runs = train_all(args.data, args.deadline, args.bench_s, sps, len(cache.array), env)
    collect(runs, ck)
    throughput_bench(args.deadline, env, args.methods)
    package(runs, ck, out, sps)
    log("done")


if __name__ == "__main__":
    main()
