"""GPU throughput of camfaith's hot stages against the forward floor (the GPU part of ``make gpu-check``).

benchmarks/bench.py measures on the CPU, against pytorch-grad-cam and Quantus, and has no device
option; this measures camfaith alone on CUDA, on the study's two models at 224 px with random
weights (the ``resnet50 flatten 224`` and ``vgg19 flatten 224`` cases of bench.py), in the layout the
default config uses (channels_last), in float16 autocast (what the pipeline uses on CUDA) and float32:

- floors: a plain forward of a batch of 64 (also in the contiguous layout, for comparison), and a
  forward with a backward that stops at the target layer (what the Grad-CAM family and its
  re-explanations cannot avoid);
- the five Grad-CAM-family maps of 64 images (``cam_family.compute``), against the forward floor;
- AOPC: ``aopc.morf_curves`` on one block (16 images, 28 px regions: 8 x 8 regions, 65 steps each);
- Max-Sensitivity: 8 images x 8 samples re-explained with HiResCAM, against the head floor;
- HAAS: the forwards over 64 originals and their 64 HA images.

Each call is timed between ``torch.cuda.synchronize()`` calls, repeated for at least MIN_SECONDS,
three times; the median is reported as images/s, work units/s (forwards, or forward + head
backward passes) and the time per unit over the floor's (1.00 = at the floor). The Markdown table is
rewritten after every row, so a run cut short keeps what it measured.

    python ci/gpu_bench.py --out results/gpu-check/gpu_bench.md      # on a GPU machine (PYTHONPATH=src)
    python ci/gpu_bench.py --device cpu --quick --out /tmp/bench.md   # a smoke run of this code on a CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from camfaith import postprocess
from camfaith.data.images import Preprocessing
from camfaith.explainers import cam_family
from camfaith.metrics import aopc, common, haas, max_sensitivity
from camfaith.models import ModelSpec, autocast, build_model, resolve_layer

CASES = {  # as benchmarks/bench.py's study cases
    "resnet50 flatten 224": ModelSpec("resnet50", 4, 224, plain_last_block=True),
    "vgg19 flatten 224": ModelSpec("vgg19", 4, 224),
}
MAX_CALLS = 200


@dataclass(frozen=True)
class Workload:
    batch: int  # forward batch of the floors and of every stage
    aopc_images: int
    aopc_region: int  # px
    sensitivity_images: int
    sensitivity_samples: int
    haas_images: int
    min_seconds: float  # timed per repetition
    repeats: int


FULL = Workload(batch=64, aopc_images=16, aopc_region=28, sensitivity_images=8, sensitivity_samples=8, haas_images=64, min_seconds=0.5, repeats=3)
QUICK = Workload(batch=4, aopc_images=2, aopc_region=112, sensitivity_images=2, sensitivity_samples=2, haas_images=4, min_seconds=0.05, repeats=1)


@dataclass
class Stage:
    name: str
    work: str  # what one call does, in words
    images: int  # images per call
    units: int  # forwards (or forward + head backward passes) per call
    floor: str | None  # the floor stage it is compared with; None: it is a floor
    fn: Callable[[], object]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, workload: Workload) -> float:
    """Median over ``repeats`` of the mean seconds per call, each repetition at least ``min_seconds``."""
    fn()  # warm-up: cuDNN's algorithm choice, the allocator's first blocks
    synchronize(device)
    results = []
    for _ in range(workload.repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            synchronize(device)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= workload.min_seconds or calls >= MAX_CALLS:
                break
        results.append(elapsed / calls)
    return statistics.median(results)


def stages(model: torch.nn.Module, layer: torch.nn.Module, size: int, device: torch.device, amp: bool, w: Workload,
           x: torch.Tensor, targets: torch.Tensor) -> list[Stage]:
    xb, tb = x[: w.batch], targets[: w.batch]
    x_nchw = xb.contiguous()

    def forward(images: torch.Tensor = xb) -> None:
        with torch.no_grad(), autocast(device, amp):
            model(images)

    def head() -> None:
        with autocast(device, amp):
            cam_family.activations_and_gradients(model, layer, xb, tb)

    def family() -> None:
        with autocast(device, amp):
            cam_family.compute(model, layer, xb, tb, cam_family.METHODS)

    def hirescam(images: torch.Tensor, chosen: torch.Tensor, _seeds=None) -> torch.Tensor:
        with autocast(device, amp):
            return cam_family.compute(model, layer, images, chosen, ["hirescam"])["hirescam"]

    xa, ta = x[: w.aopc_images], targets[: w.aopc_images]
    ids_a = [f"image{i}" for i in range(len(xa))]
    saliency = aopc.saliency_for(hirescam(xa, ta), postprocess.PostProcess(), (size, size))
    rows, cols = aopc.grid_shape(size, size, w.aopc_region)

    def aopc_block() -> None:
        aopc.morf_curves(model, xa, saliency, ta, ids_a, w.aopc_region, False, "per_step", 0, w.batch, amp)

    xs, ts = x[: w.sensitivity_images], targets[: w.sensitivity_images]
    ids_s = [f"image{i}" for i in range(len(xs))]
    raw_s = hirescam(xs, ts)
    post_s = postprocess.PostProcess(relu=True, minmax=False, upsample="bilinear")

    def sensitivity() -> None:
        max_sensitivity.max_sensitivity(hirescam, xs, raw_s, ts, ids_s, list(range(len(xs))), radius=0.1, samples=w.sensitivity_samples,
                                        post=post_s, normalise=True, seed=0, batch_size=w.batch)

    xh, th = x[: w.haas_images], targets[: w.haas_images]
    raw_h = hirescam(xh, th)
    preprocessing, post_h = Preprocessing(size), postprocess.PostProcess()

    def haas_block() -> None:
        common.predict_classes(model, xh, w.batch, amp)
        common.predict_classes(model, haas.ha_images(xh, raw_h, preprocessing, post_h), w.batch, amp)

    forwards = len(xa) * (rows * cols + 1)
    return [
        Stage("forward (floor)", f"{len(xb)} images, no grad", len(xb), len(xb), None, forward),
        Stage("forward + head backward (floor)", f"{len(xb)} images, backward to the target layer", len(xb), len(xb), None, head),
        Stage("forward, contiguous layout", f"{len(xb)} images, NCHW input", len(xb), len(xb), "forward (floor)", lambda: forward(x_nchw)),
        Stage("Grad-CAM family (5 maps)", f"{len(xb)} images", len(xb), len(xb), "forward (floor)", family),
        Stage("AOPC (morf_curves, 1 block)", f"{len(xa)} images x {rows}x{cols} regions of {w.aopc_region} px = {forwards} forwards",
              len(xa), forwards, "forward (floor)", aopc_block),
        Stage("Max-Sensitivity (HiResCAM)", f"{len(xs)} images x {w.sensitivity_samples} samples", len(xs), len(xs) * w.sensitivity_samples,
              "forward + head backward (floor)", sensitivity),
        Stage("HAAS forwards", f"{len(xh)} originals + {len(xh)} HA images", len(xh), 2 * len(xh), "forward (floor)", haas_block),
    ]


def header(device: torch.device, workload: Workload) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}; "
                 f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        where = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads; torch {torch.__version__}"
    return (f"# GPU throughput (ci/gpu_bench.py)\n\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {where}; Python {platform.python_version()}.\n"
            f"Random weights, channels_last unless said, forward batch {workload.batch}; TF32: cuDNN "
            f"{torch.backends.cudnn.allow_tf32}, cuBLAS matmul {torch.backends.cuda.matmul.allow_tf32} (PyTorch's defaults, as the pipeline runs). "
            f"amp = float16 autocast (the pipeline's CUDA path; off on a CPU). Median of {workload.repeats} repetitions of at least "
            f"{workload.min_seconds} s each, synchronised. ÷ floor: time per unit over the floor's time per unit (1.00 = at the floor).\n\n")


def table(rows: list[dict]) -> str:
    lines = ["| model | precision | stage | one call | images/s | units/s | floor | ÷ floor | peak GPU MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['precision']} | {r['stage']} | {r['work']} | **{r['error']}** | | | | |")
            continue
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "–"
        lines.append(f"| {r['case']} | {r['precision']} | {r['stage']} | {r['work']} | {r['images_per_s']:.1f} | {r['units_per_s']:.1f} | "
                     f"{r['floor'] or '(floor)'} | {ratio} | {r['peak_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/gpu-check/gpu_bench.md"))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run of this code)")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--quick", action="store_true", help="tiny workloads and timings (a smoke run)")
    parser.add_argument("--budget-s", type=float, default=140.0, help="start no stage after this many seconds (rows say so)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    workload = QUICK if args.quick else FULL
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = args.out.with_suffix(".jsonl")
    jsonl.write_text("")
    started = time.perf_counter()
    rows: list[dict] = []
    failed = False

    def record(row: dict) -> None:
        rows.append(row)
        with jsonl.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        args.out.write_text(header(device, workload) + table(rows))
        print(json.dumps(row), flush=True)

    for case, spec in CASES.items():
        if args.only and args.only not in case:
            continue
        torch.manual_seed(0)
        model = build_model(spec).to(device).to(memory_format=torch.channels_last)
        for parameter in model.parameters():
            parameter.requires_grad_(False)  # as in explain and score jobs
        _, layer = resolve_layer(model, spec.target_layer)
        size = spec.input_size
        n = max(workload.batch, workload.aopc_images, workload.sensitivity_images, workload.haas_images)
        x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device).contiguous(memory_format=torch.channels_last)
        targets = (torch.arange(n) % spec.num_classes).to(device)
        for precision, amp in (("amp", True), ("fp32", False)):
            per_unit: dict[str, float] = {}
            for stage in stages(model, layer, size, device, amp, workload, x, targets):
                base = {"case": case, "precision": precision, "stage": stage.name, "work": stage.work}
                if time.perf_counter() - started > args.budget_s:
                    record({**base, "error": f"not run: past the {args.budget_s:.0f} s budget"})
                    continue
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    seconds = seconds_per_call(stage.fn, device, workload)
                except Exception as error:  # an out-of-memory or a CUDA error: record it, measure the rest
                    failed = True
                    record({**base, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                per_unit[stage.name] = seconds / stage.units
                floor = per_unit.get(stage.floor) if stage.floor else None
                record({**base, "images_per_s": stage.images / seconds, "units_per_s": stage.units / seconds, "floor": stage.floor,
                        "ratio": (seconds / stage.units) / floor if floor else None, "seconds_per_call": seconds,
                        "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")})
        del model, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"gpu_bench: {len(rows)} rows in {time.perf_counter() - started:.1f} s -> {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
