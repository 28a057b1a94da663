"""camfaith against its floor and against pytorch-grad-cam / Quantus, side by side in one run.

Every figure is a ratio measured in this process: our time over the floor (the unavoidable forward
passes at the best plain-inference throughput found here, over batch sizes and memory formats), the
alternative's time over the same floor, and the speed-up (alternative / ours). Absolute times are
printed only to show what was measured; these machines are shared and noisy, so each timing is the
minimum of a few repeats after a warm-up.

    python benchmarks/bench.py              # the study's models at 224 px and the default config's models
    python benchmarks/bench.py --quick      # fewer images and regions (a smoke run)
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from camfaith import cams, postprocess
from camfaith.data.images import Preprocessing
from camfaith.metrics import aopc, common, haas, max_sensitivity
from camfaith.models import ModelSpec, build_model, resolve_layer


@dataclass
class Case:
    name: str
    spec: ModelSpec
    regions: list[int]  # AOPC region sizes in px
    batch: int  # images per attribution batch
    aopc_images: int = 2
    sensitivity_images: int = 2
    sensitivity_samples: int = 10
    metric_batch: dict[str, int] | None = None  # forward batch per metric; None: the floor's batch (a tuned config)


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


def cases(quick: bool) -> list[Case]:
    """The study's two models at 224 px (2 images per metric, to keep the run short) and the default
    config's two models with that config's own workload: one block of images per metric, its region
    sizes, samples per radius and forward batch sizes, as a score job of ``make run`` sees it."""
    import yaml

    metrics = yaml.safe_load(DEFAULT_CONFIG.read_text())["metrics"]
    aopc_cfg, sens_cfg = metrics["aopc"], metrics["max_sensitivity"]
    study_regions = [56, 28] if quick else [56, 28, 16]
    default_workload = dict(
        aopc_images=2 if quick else aopc_cfg["images_per_block"],
        sensitivity_images=2 if quick else sens_cfg["images_per_block"],
        sensitivity_samples=4 if quick else sens_cfg["radii"][0]["samples"],
        metric_batch={"aopc": aopc_cfg["batch_size"], "max_sensitivity": sens_cfg["batch_size"]},
    )
    return [
        Case("resnet50 flatten 224", ModelSpec("resnet50", 4, 224, plain_last_block=True), study_regions, 8),
        Case("vgg19 flatten 224", ModelSpec("vgg19", 4, 224), study_regions, 4),
        Case("default resnet18 64", ModelSpec("resnet18", 3, 64, cut_after="layer2", plain_last_block=True), aopc_cfg["region_px"], 32,
             **default_workload),
        Case("default vgg11 64", ModelSpec("vgg11", 3, 64, cut_after="13"), aopc_cfg["region_px"], 32, **default_workload),
    ]


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset, in MB (VmHWM)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def job_overhead(repeats: int = 3) -> tuple[float, float]:
    """Seconds a pipeline job spends before working: a fresh interpreter importing the stage modules,
    and loading a checkpoint of the default resnet18. Each measured in a new process."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.pt"
        spec = ModelSpec("resnet18", 3, 64, cut_after="layer2", plain_last_block=True)
        from camfaith.models import save_checkpoint

        save_checkpoint(checkpoint, build_model(spec), spec, ["a", "b", "c"], {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3})
        code = ("import time; t = time.perf_counter(); import camfaith.pipeline, camfaith.scoring, camfaith.models as m; "
                "t1 = time.perf_counter(); m.load_checkpoint({path!r}); print(t1 - t, time.perf_counter() - t1)").format(path=str(checkpoint))
        runs = [tuple(map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()))
                for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


MIN_TIMED_SECONDS = 1.0  # short runs are repeated until this much was timed: a minimum over 2 runs of 20 ms is noise
MAX_REPEATS = 25


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``fn`` after one warm-up run, over at least ``repeats`` runs and, for short
    runs, as many more as fit in ``MIN_TIMED_SECONDS`` (at most ``MAX_REPEATS``). Every timing in
    this file goes through here, so the floor and each implementation get the same chance of a quiet
    moment on a shared machine."""
    fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < MIN_TIMED_SECONDS and len(times) < MAX_REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def forward_floor(model: torch.nn.Module, size: int, batch_sizes: list[int]) -> tuple[float, int, str]:
    """Seconds per image of plain inference at the best (batch size, memory format), and those."""
    best = (float("inf"), 0, "")
    for layout_name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model.to(memory_format=layout)
        for batch in batch_sizes:
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
            with torch.no_grad():
                seconds = best_time(lambda: model(x), 2) / batch
            best = min(best, (seconds, batch, layout_name))
    model.to(memory_format=torch.contiguous_format)
    return best


def pgc_maps(model, layer, x, targets, classes) -> list[np.ndarray]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    outputs = []
    for cls in classes:
        with cls(model=model, target_layers=[layer]) as cam:
            outputs.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    return outputs


def run_case(case: Case, quick: bool, repeats: int) -> list[dict]:
    import quantus
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM

    torch.manual_seed(0)
    model = build_model(case.spec)
    _, layer = resolve_layer(model, None)
    size = case.spec.input_size
    floor, floor_batch, floor_layout = forward_floor(model, size, [1, 4, 16] if size > 100 else [8, 16, 32, 64, 128])
    # Everything below runs in the layout the floor found best, ours and the alternatives alike (they
    # get the same model object); ours also uses the floor's batch size, as a tuned config would.
    layout = torch.channels_last if floor_layout == "channels_last" else torch.contiguous_format
    model.to(memory_format=layout)
    batch = max(floor_batch, 2)
    aopc_batch = case.metric_batch["aopc"] if case.metric_batch else batch
    sensitivity_batch = case.metric_batch["max_sensitivity"] if case.metric_batch else batch
    rows = []

    # --- attributions: four maps for one batch, against one plain forward of that batch
    reset_peak_rss()
    n_images = max(case.batch, case.aopc_images, case.sensitivity_images)
    x = torch.randn(n_images, 3, size, size).contiguous(memory_format=layout)
    targets = torch.randint(0, case.spec.num_classes, (n_images,))
    x_cam, t_cam = x[: case.batch], targets[: case.batch]
    with torch.no_grad():
        forward = best_time(lambda: model(x_cam), repeats)
    ours = best_time(lambda: cams.compute(model, layer, x_cam, t_cam, cams.METHODS), repeats)
    theirs = best_time(lambda: pgc_maps(model, layer, x_cam, t_cam, (GradCAM, HiResCAM, GradCAMPlusPlus, XGradCAM)), max(1, repeats - 1))
    rows.append(dict(stage="attributions (4 methods)", case=case.name, floor="1 forward of the batch", ours=ours / forward,
                     alternative="pytorch-grad-cam", theirs=theirs / forward, seconds=ours, peak_mb=peak_rss_mb()))
    reset_peak_rss()

    # --- AOPC (MoRF): the same grids, number of regions and uniform noise
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    n_images = 1 if quick else case.aopc_images
    x_aopc, t_aopc = x[:n_images], targets[:n_images]
    raw = cams.compute(model, layer, x_aopc, t_aopc, ["hirescam"])["hirescam"]
    saliency = postprocess.apply(raw, postprocess.PostProcess(), (size, size))
    ids = [f"img{i}" for i in range(n_images)]
    forwards = n_images * sum(aopc.grid_shape(size, size, s)[0] * aopc.grid_shape(size, size, s)[1] + 1 for s in case.regions)

    def ours_aopc():
        for region in case.regions:
            aopc.morf_curves(model, x_aopc, saliency, t_aopc, ids, region, False, "per_step", 0, aopc_batch)

    def quantus_aopc():
        for region in case.regions:
            rows_, cols_ = aopc.grid_shape(size, size, region)
            metric = quantus.RegionPerturbation(patch_size=region, regions_evaluation=rows_ * cols_, order="morf", normalise=False,
                                                abs=False, perturb_baseline="uniform", disable_warnings=True)
            metric(model=model, x_batch=x_aopc.numpy(), y_batch=t_aopc.numpy(), a_batch=saliency[:, None].numpy(),
                   device="cpu", batch_size=n_images, softmax=True)

    aopc_ours = best_time(ours_aopc, 1)
    aopc_peak = peak_rss_mb()
    aopc_theirs = best_time(quantus_aopc, 1)
    aopc_floor = forwards * floor
    rows.append(dict(stage=f"AOPC ({forwards} forwards)", case=case.name, floor="forwards at best throughput", ours=aopc_ours / aopc_floor,
                     alternative="Quantus RegionPerturbation", theirs=aopc_theirs / aopc_floor, seconds=aopc_ours, peak_mb=aopc_peak))
    reset_peak_rss()

    # --- Max-Sensitivity: one forward + head-only backward per sample
    samples = 4 if quick else case.sensitivity_samples
    n_images = 1 if quick else case.sensitivity_images
    x_sens, t_sens = x[:n_images], targets[:n_images]
    ids = [f"img{i}" for i in range(n_images)]
    raw = cams.compute(model, layer, x_sens, t_sens, ["hirescam"])["hirescam"]
    post = postprocess.PostProcess(relu=True, minmax=True, upsample="bilinear")
    # the floor's per-sample cost is taken at its best batch size, whatever batch the metric uses
    sample_batch = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
    sample_targets = torch.zeros(len(sample_batch), dtype=torch.long)
    per_sample = best_time(lambda: cams.activations_and_gradients(model, layer, sample_batch, sample_targets), repeats) / len(sample_batch)
    ms_floor = n_images * samples * per_sample
    ms_ours = best_time(lambda: max_sensitivity.max_sensitivity(model, layer, "hirescam", x_sens, raw, t_sens, ids, 0.1, samples, post,
                                                                False, None, 0, sensitivity_batch), 1)
    ms_peak = peak_rss_mb()
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # pytorch-grad-cam differentiates through the parameters' graph

    def pgc_explain(model, inputs, targets, **_):
        inputs = torch.as_tensor(inputs, dtype=torch.float32)
        return pgc_maps(model, layer, inputs, targets, (HiResCAM,))[0][:, None]

    a_batch = pgc_explain(model, x_sens.numpy(), t_sens.numpy())
    metric = quantus.MaxSensitivity(nr_samples=samples, lower_bound=0.1,  # default perturbation: uniform noise
                                    similarity_func=quantus.similarity_func.difference, disable_warnings=True)
    ms_theirs = best_time(lambda: metric(model=model, x_batch=x_sens.numpy(), y_batch=t_sens.numpy(), a_batch=a_batch,
                                         explain_func=pgc_explain, device="cpu", batch_size=n_images), 1)
    rows.append(dict(stage=f"Max-Sensitivity ({n_images}×{samples} samples)", case=case.name, floor="forward + head backward per sample",
                     ours=ms_ours / ms_floor, alternative="Quantus MaxSensitivity + pytorch-grad-cam", theirs=ms_theirs / ms_floor,
                     seconds=ms_ours, peak_mb=ms_peak))

    # --- HAAS: forwards over the originals and the HA images
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    preprocessing = Preprocessing(size)
    maps = cams.compute(model, layer, x, targets, ["hirescam"])["hirescam"]

    def ours_haas():
        common.predict_classes(model, x, batch, False)
        common.predict_classes(model, haas.ha_images(x, maps, preprocessing, post), batch, False)

    reset_peak_rss()
    haas_ours = best_time(ours_haas, repeats)
    rows.append(dict(stage="HAAS", case=case.name, floor="forwards over originals + HA images", ours=haas_ours / (2 * len(x) * floor),
                     alternative="", theirs=float("nan"), seconds=haas_ours, peak_mb=peak_rss_mb()))
    for row in rows:
        row["floor_batch"] = f"{floor_batch} {floor_layout}"
    return rows


MEMORY_CASES = [("resnet50 flatten 224", metric, budget) for metric in ("aopc", "max_sensitivity") for budget in (512, 1536)] + \
               [("vgg19 flatten 224", metric, budget) for metric in ("aopc", "max_sensitivity") for budget in (1024, 3072)]


def memory_probe(case_name: str, metric: str, budget_mb: float) -> dict:
    """Run one metric on one block under ``budget_mb`` (in a fresh interpreter, so the allocator
    holds nothing from earlier stages) and compare the peak resident memory it adds to the budget."""
    from camfaith import memory

    case = next(c for c in cases(False) if c.name == case_name)
    torch.manual_seed(0)
    model = build_model(case.spec).to(memory_format=torch.channels_last)
    _, layer = resolve_layer(model, None)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    size = case.spec.input_size
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    sample = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    plan = memory.fit(memory.footprint(metric, model, sample, layer), 128, 16, budget_mb)
    x = torch.randn(plan.images_per_block, 3, size, size).contiguous(memory_format=torch.channels_last)
    targets = torch.zeros(len(x), dtype=torch.long)
    ids = [f"img{i}" for i in range(len(x))]
    raw = cams.compute(model, layer, x, targets, ["hirescam"])["hirescam"]  # a score job reads these from the maps file
    before = float(next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    reset_peak_rss()
    if metric == "aopc":
        saliency = postprocess.apply(raw, postprocess.PostProcess(), (size, size))
        aopc.morf_curves(model, x, saliency, targets, ids, case.regions[0], False, "per_step", 0, plan.batch_size)
    else:
        max_sensitivity.max_sensitivity(model, layer, "hirescam", x, raw, targets, ids, 0.1, 2, postprocess.PostProcess(), True, None, 0,
                                        plan.batch_size)
    # the model and the loaded block were resident before the stage; the budget counts them, so add them back
    used = peak_rss_mb() - before + model_mb + x.numel() * x.element_size() / 2**20
    return dict(case=case_name, metric=metric, budget=budget_mb, batch=plan.batch_size, block=plan.images_per_block,
                estimated=plan.estimated_mb, used=used)


def case_rows(case_name: str, quick: bool) -> list[dict]:
    """``run_case`` in a fresh interpreter: the allocator and caches left by a 224 px model would
    otherwise slow the small models measured after it, and its memory would count in their peaks."""
    import json
    import subprocess
    import sys

    command = [sys.executable, __file__, "--case", case_name] + (["--quick"] if quick else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_rows() -> list[dict]:
    import json
    import subprocess
    import sys

    rows = []
    for case_name, metric, budget in MEMORY_CASES:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", case_name, metric, str(budget)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def memory_table(rows: list[dict]) -> str:
    lines = ["| model | metric | budget (MB) | batch × block chosen | estimate (MB) | used (MB) | used / budget |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['metric']} | {r['budget']:.0f} | {r['batch']} × {r['block']} | {r['estimated']:.0f} | {r['used']:.0f} | "
                     f"{r['used'] / r['budget']:.2f} |")
    return "\n".join(lines)


def header() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return (f"machine: {cpu}, {torch.get_num_threads()} torch threads, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")


def table(rows: list[dict]) -> str:
    lines = ["| stage | model | floor | ours / floor | alternative | alternative / floor | speed-up | ours (s) | peak RSS (MB) | floor batch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = r["theirs"] / r["ours"] if np.isfinite(r["theirs"]) else float("nan")
        theirs = f"{r['theirs']:.2f}" if np.isfinite(r["theirs"]) else "–"
        speed = f"{speedup:.1f}×" if np.isfinite(speedup) else "–"
        lines.append(f"| {r['stage']} | {r['case']} | {r['floor']} | {r['ours']:.2f} | {r['alternative'] or '–'} | {theirs} | {speed} | "
                     f"{r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['floor_batch']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, regions and samples")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/latest.md"))
    parser.add_argument("--memory-out", type=Path, default=Path("benchmarks/memory.md"))
    parser.add_argument("--skip-timing", action="store_true", help="only the memory-budget check")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the memory-budget check")
    parser.add_argument("--memory-probe", nargs=3, metavar=("CASE", "METRIC", "BUDGET_MB"), help=argparse.SUPPRESS)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        import json

        case = next(c for c in cases(args.quick) if c.name == args.case)
        print(json.dumps(run_case(case, args.quick, repeats=2 if args.quick else 3)))
        return
    if args.memory_probe:
        import json

        case_name, metric, budget = args.memory_probe
        print(json.dumps(memory_probe(case_name, metric, float(budget))))
        return
    if not args.skip_timing:
        rows = []
        started = time.perf_counter()
        imports, load = job_overhead()
        for case in cases(args.quick):
            if args.only and args.only not in case.name:
                continue
            print(f"… {case.name}", flush=True)
            rows.extend(case_rows(case.name, args.quick))
        peak_mb = max(r["peak_mb"] for r in rows) if rows else float("nan")
        text = (f"{header()}\n\n{table(rows)}\n\nper-job overhead: {imports:.2f} s to import the stage modules in a fresh interpreter, "
                f"{load:.2f} s to load a checkpoint. Each model runs in its own interpreter (one case cannot slow or swell the next); "
                f"peak RSS columns: that process's peak during our part of each stage (interpreter, torch, the model and the "
                f"alternatives' leftovers included), reset before each stage.\n"
                f"largest peak resident memory of a case: {peak_mb:.0f} MB; "
                f"total {time.perf_counter() - started:.0f} s{' (--quick)' if args.quick else ''}\n")
        print(text)
        args.out.write_text(text)
    if not args.skip_memory:
        print("… memory budgets", flush=True)
        text = (f"{header()}\n\nMemory budget (`memory_mb`), one block of up to 16 images per run, each run in a fresh interpreter; "
                "used = peak resident memory the stage adds + the model's parameters and the loaded block (the interpreter and "
                f"libraries are outside the budget).\n\n{memory_table(memory_rows())}\n")
        print(text)
        args.memory_out.write_text(text)


if __name__ == "__main__":
    main()
