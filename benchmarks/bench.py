"""camfaith against its floor and against pytorch-grad-cam, Quantus and Captum, side by side in one run.

Every figure is a ratio measured in this process: our time over the floor (the unavoidable work —
forward passes, or forward and backward passes — at the best throughput found here over batch sizes
and memory formats), the alternative's time over the same floor, and the speed-up (alternative /
ours). The machines are shared and noisy, so the contestants of a stage are timed in turns (floor,
ours, alternative, floor, ours, alternative, …); each turn gives one ratio per contestant against
the floor of the same turn, and the table reports the median with the range over the turns. A
median ratio below 0.95 means the floor was mis-measured (no implementation can beat the work it
must do), and is reported as a failed measurement, not a win.

    python benchmarks/bench.py              # the study's models at 224 px and the default config's models
    python benchmarks/bench.py --quick      # fewer images, regions and turns (a smoke run)
    python benchmarks/bench.py --only vgg11 --stages scorecam,occlusion
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from camfaith import explainers, postprocess
from camfaith.data.images import Preprocessing
from camfaith.explainers import cam_family
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
    explain_images: int = 2  # images for Score-CAM and the Captum methods
    scorecam_images: int = 2
    methods: dict[str, dict] = field(default_factory=dict)  # settings of the methods measured (the default config's)


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


def cases(quick: bool) -> list[Case]:
    """The study's two models at 224 px (2 images per metric, to keep the run short) and the default
    config's two flatten models with that config's own workload: one block of images per metric, its
    region sizes, samples per radius, forward batch sizes and method settings, as a score or explain
    job of ``make run`` sees it."""
    import yaml

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    metrics = config["metrics"]
    aopc_cfg, sens_cfg = metrics["aopc"], metrics["max_sensitivity"]
    size = config["datasets"]["synthetic"]["preprocessing"]["image_size"]
    models = config["models"]["synthetic"]
    methods = explainers.parse_methods(config["explain"]["methods"])

    def default_spec(name: str) -> ModelSpec:
        return ModelSpec.from_config({k: v for k, v in models[name]["model"].items() if v is not None}, 3, size)

    study_regions = [56, 28] if quick else [56, 28, 16]
    default_workload = dict(
        aopc_images=2 if quick else aopc_cfg["images_per_block"],
        sensitivity_images=2 if quick else sens_cfg["images_per_block"],
        sensitivity_samples=4 if quick else sens_cfg["radii"][0]["samples"],
        metric_batch={"aopc": aopc_cfg["batch_size"], "max_sensitivity": sens_cfg["batch_size"]},
        explain_images=2 if quick else 8, scorecam_images=1 if quick else 4, methods=methods,
    )
    # At 224 px: the registry's defaults, with an occlusion window and stride that scale with the image
    study_methods = {"integrated_gradients": {}, "gradient_shap": {}, "occlusion": {"window": 56, "stride": 28}}
    return [
        # Score-CAM at 224 px costs 512 (VGG19) to 2048 (ResNet50) forwards per image and contestant,
        # minutes each on a 2-core CPU: it is measured on the default models, where it is affordable
        Case("resnet50 flatten 224", ModelSpec("resnet50", 4, 224, plain_last_block=True), study_regions, 8,
             explain_images=1 if quick else 2, scorecam_images=0, methods=study_methods),
        Case("vgg19 flatten 224", ModelSpec("vgg19", 4, 224), study_regions, 4, explain_images=1 if quick else 2,
             scorecam_images=0, methods=study_methods),
        Case("default resnet18 64", default_spec("resnet18"), aopc_cfg["region_px"], 32, **default_workload),
        Case("default vgg11 64", default_spec("vgg11"), aopc_cfg["region_px"], 32, **default_workload),
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
                f"t1 = time.perf_counter(); m.load_checkpoint({str(checkpoint)!r}); print(t1 - t, time.perf_counter() - t1)")
        runs = [tuple(map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()))
                for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


MIN_TIMED_SECONDS = 0.5  # a short call is repeated until this much was timed: one 20 ms call is noise
MAX_CALLS = 50
FAILED_BELOW = 0.95  # a median ratio under this means the floor was mis-measured


def timed(fn: Callable[[], object]) -> float:
    """Seconds per call of ``fn``, calling it until ``MIN_TIMED_SECONDS`` have been timed (at most ``MAX_CALLS``)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_TIMED_SECONDS or calls >= MAX_CALLS:
            return elapsed / calls


@dataclass
class Contestant:
    """One implementation of a stage (or its floor), and the units of work one call does
    (forwards, or forward + backward passes, that the stage cannot avoid)."""

    name: str
    fn: Callable[[], object]
    units: float


LONG_CALL_SECONDS = 5.0  # a first call this long is timed as the first turn instead of being a warm-up


def turns(contestants: list[Contestant], count: int) -> dict[str, list[float]]:
    """Seconds per unit of work of each contestant, timed in turns (A, B, C, A, B, C, …), so a slow
    phase of the machine hits every contestant of a turn alike. The first turn's calls double as
    warm-ups: a short one is discarded and timed again, a long one (≥ 5 s, where a warm-up makes no
    difference and would cost minutes) counts."""
    per_unit: dict[str, list[float]] = {c.name: [] for c in contestants}
    for turn in range(count):
        for contestant in contestants:
            if turn == 0:
                start = time.perf_counter()
                contestant.fn()
                first = time.perf_counter() - start
                seconds = first if first >= LONG_CALL_SECONDS else timed(contestant.fn)
            else:
                seconds = timed(contestant.fn)
            per_unit[contestant.name].append(seconds / contestant.units)
    return per_unit


def ratios(per_unit: dict[str, list[float]], name: str, to: str = "floor") -> list[float]:
    return [a / b for a, b in zip(per_unit[name], per_unit[to], strict=True)]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def stage_row(stage: str, case: Case, floor: str, per_unit: dict[str, list[float]], alternative: str, ours_units: float, peak_mb: float) -> dict:
    row = dict(stage=stage, case=case.name, floor=floor, ours=summary(ratios(per_unit, "ours")), alternative=alternative,
               seconds=statistics.median(per_unit["ours"]) * ours_units, peak_mb=peak_mb, turns=len(per_unit["ours"]))
    if "theirs" in per_unit:
        row["theirs"] = summary(ratios(per_unit, "theirs"))
        row["speedup"] = summary(ratios(per_unit, "theirs", to="ours"))
    return row


def best_batch(model: torch.nn.Module, size: int, batch_sizes: list[int]) -> tuple[int, torch.memory_format, str]:
    """The (batch size, memory format) of the fastest plain inference per image: the floor's throughput."""
    candidates = [(batch, layout, name) for name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last))
                  for batch in batch_sizes]
    seconds = {candidate: float("inf") for candidate in candidates}
    # three rounds over all candidates, the best of each kept: one slow moment cannot pick the batch
    for _ in range(3):
        for batch, layout, name in candidates:
            model.to(memory_format=layout)
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
            with torch.no_grad():
                model(x)
                seconds[(batch, layout, name)] = min(seconds[(batch, layout, name)], timed(lambda x=x: model(x)) / batch)
    model.to(memory_format=torch.contiguous_format)
    return min(candidates, key=seconds.__getitem__)


def pgc_maps(model, layer, x, targets, classes, batch_size: int | None = None) -> list[np.ndarray]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    outputs = []
    for cls in classes:
        with cls(model=model, target_layers=[layer]) as cam:
            if batch_size is not None:
                cam.batch_size = batch_size
            outputs.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    return outputs


def _freeze(model: torch.nn.Module, frozen: bool) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(not frozen)


def run_case(case: Case, quick: bool, count: int, stages: set[str] | None) -> list[dict]:
    import quantus
    from captum.attr import GradientShap, IntegratedGradients, Occlusion
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM

    torch.manual_seed(0)
    model = build_model(case.spec)
    _, layer = resolve_layer(model, case.spec.target_layer)
    size = case.spec.input_size
    floor_batch, layout, layout_name = best_batch(model, size, [1, 4, 16] if size > 100 else [8, 16, 32, 64, 128])
    # Everything below runs in the layout the floor found best, ours and the alternatives alike (they
    # get the same model object); ours also uses the floor's batch size, as a tuned config would.
    model.to(memory_format=layout)
    batch = max(floor_batch, 2)
    aopc_batch = case.metric_batch["aopc"] if case.metric_batch else batch
    sensitivity_batch = case.metric_batch["max_sensitivity"] if case.metric_batch else batch
    wanted = (lambda name: stages is None or name in stages)
    n_all = max(case.batch, case.aopc_images, case.sensitivity_images, case.explain_images, case.scorecam_images, 1)
    x = torch.randn(n_all, 3, size, size).contiguous(memory_format=layout)
    targets = torch.randint(0, case.spec.num_classes, (n_all,))
    x_floor, t_floor = x[:1].expand(floor_batch, -1, -1, -1).contiguous(memory_format=layout), targets[:1].expand(floor_batch).contiguous()

    def forward_floor():
        with torch.no_grad():
            model(x_floor)

    def backward_floor():  # a forward and a backward to the input: the unit of the gradient methods
        inputs = x_floor.detach().requires_grad_(True)
        torch.autograd.grad(model(inputs).gather(1, t_floor.view(-1, 1)).sum(), inputs)

    def head_backward_floor():  # a forward and a backward that stops at the target layer
        cam_family.activations_and_gradients(model, layer, x_floor, t_floor)

    floors = {"forward": Contestant("floor", forward_floor, floor_batch), "backward": Contestant("floor", backward_floor, floor_batch),
              "head": Contestant("floor", head_backward_floor, floor_batch)}
    rows = []

    def measure(stage: str, floor_kind: str, floor_text: str, ours: Callable, units: float, theirs: Callable | None = None,
                alternative: str = "", their_units: float | None = None, frozen_for_theirs: bool = True) -> None:
        reset_peak_rss()
        contestants = [floors[floor_kind], Contestant("ours", ours, units)]
        if theirs is not None:
            def their_call():
                _freeze(model, frozen_for_theirs)
                try:
                    theirs()
                finally:
                    _freeze(model, True)
            contestants.append(Contestant("theirs", their_call, their_units or units))
        heavy = units * (1 if floor_kind == "forward" else 3) > 2000 and size > 100
        per_unit = turns(contestants, 2 if heavy or quick else count)
        rows.append(stage_row(stage, case, floor_text, per_unit, alternative, units, peak_rss_mb()))
        rows[-1]["floor_batch"] = f"{floor_batch} {layout_name}"
        print(json.dumps(rows[-1]), flush=True)  # streamed: a case cut short by its time limit keeps its finished stages

    _freeze(model, True)  # as in explain and score jobs

    # --- the Grad-CAM family: five maps for one batch, against one forward per image
    if wanted("family"):
        x_cam, t_cam = x[: case.batch], targets[: case.batch]
        family = (GradCAM, HiResCAM, GradCAMPlusPlus, XGradCAM, LayerCAM)
        measure(f"attributions ({len(family)} CAM-family methods)", "forward", "1 forward per image", lambda: cam_family.compute(
            model, layer, x_cam, t_cam, cam_family.METHODS), len(x_cam), lambda: pgc_maps(model, layer, x_cam, t_cam, family),
            "pytorch-grad-cam", frozen_for_theirs=False)  # pytorch-grad-cam back-propagates through the parameters' graph

    def registry_method(name: str, images: torch.Tensor, chosen_targets: torch.Tensor) -> Callable:
        explainer = explainers.get(name)
        chosen = explainer.make_settings(case.methods.get(name, {}))
        seeds = list(range(len(images)))
        return lambda: explainer.explain(model, layer, images, chosen_targets, chosen, seeds), chosen

    # --- Score-CAM: one forward per channel of the target layer
    if wanted("scorecam") and case.scorecam_images:
        xs, ts = x[: case.scorecam_images], targets[: case.scorecam_images]
        ours, chosen = registry_method("scorecam", xs, ts)
        channels = int(cam_family.activations_and_gradients(model, layer, xs[:1], ts[:1])[0].shape[1])
        # pytorch-grad-cam's own cam.py sets batch_size 32 for Score-CAM
        measure(f"Score-CAM ({len(xs)}×{channels} masked forwards)", "forward", "1 forward per channel and image", ours, len(xs) * channels,
                lambda: pgc_maps(model, layer, xs, ts, (ScoreCAM,), batch_size=32), "pytorch-grad-cam ScoreCAM (batch_size 32)")

    xe, te = x[: case.explain_images], targets[: case.explain_images]
    if wanted("integrated_gradients") and "integrated_gradients" in case.methods:
        ours, chosen = registry_method("integrated_gradients", xe, te)
        # Captum's documented call: the whole path in one batch (no internal_batch_size)
        theirs = lambda: IntegratedGradients(model).attribute(xe.clone().requires_grad_(True), baselines=torch.zeros_like(xe), target=te,  # noqa: E731
                                                                n_steps=chosen.steps)
        measure(f"Integrated Gradients ({len(xe)}×{chosen.steps} steps)", "backward", "forward + backward to the input per step",
                ours, len(xe) * chosen.steps, theirs, "Captum IntegratedGradients")
    if wanted("gradient_shap") and "gradient_shap" in case.methods:
        ours, chosen = registry_method("gradient_shap", xe, te)
        theirs = lambda: GradientShap(model).attribute(xe.clone().requires_grad_(True), baselines=torch.zeros_like(xe[:1]), target=te,  # noqa: E731
                                                         n_samples=chosen.samples, stdevs=chosen.stdevs)
        measure(f"GradientSHAP ({len(xe)}×{chosen.samples} samples)", "backward", "forward + backward to the input per sample",
                ours, len(xe) * chosen.samples, theirs, "Captum GradientShap (all images in one call)")
    if wanted("occlusion") and "occlusion" in case.methods:
        ours, chosen = registry_method("occlusion", xe, te)
        windows = ((size - chosen.window) // chosen.stride + 1) ** 2
        # Captum's documented call leaves perturbations_per_eval at 1 (one occluded copy of each image per forward)
        theirs = lambda: Occlusion(model).attribute(xe, sliding_window_shapes=(3, chosen.window, chosen.window),  # noqa: E731
                                                    strides=(3, chosen.stride, chosen.stride), baselines=0, target=te)
        measure(f"occlusion ({len(xe)}×{windows} windows)", "forward", "1 forward per window", ours, len(xe) * windows, theirs,
                "Captum Occlusion (as documented: perturbations_per_eval 1)")

    # --- AOPC (MoRF): the same grids, number of regions and uniform noise
    if wanted("aopc"):
        n_images = 1 if quick else case.aopc_images
        x_aopc, t_aopc = x[:n_images], targets[:n_images]
        saliency = postprocess.apply(cam_family.compute(model, layer, x_aopc, t_aopc, ["hirescam"])["hirescam"], postprocess.PostProcess(), (size, size))
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

        measure(f"AOPC ({forwards} forwards)", "forward", "forwards at best throughput", ours_aopc, forwards, quantus_aopc,
                "Quantus RegionPerturbation")

    # --- Max-Sensitivity: one forward + head-only backward per sample (the Grad-CAM family)
    if wanted("max_sensitivity"):
        samples = 4 if quick else case.sensitivity_samples
        n_images = 1 if quick else case.sensitivity_images
        x_sens, t_sens = x[:n_images], targets[:n_images]
        ids = [f"img{i}" for i in range(n_images)]
        raw = cam_family.compute(model, layer, x_sens, t_sens, ["hirescam"])["hirescam"]
        post = postprocess.PostProcess(relu=True, minmax=True, upsample="bilinear")
        explain = lambda noisy, t, _seeds: cam_family.compute(model, layer, noisy, t, ["hirescam"])["hirescam"]  # noqa: E731

        def ours_sensitivity():
            max_sensitivity.max_sensitivity(explain, x_sens, raw, t_sens, ids, list(range(n_images)), radius=0.1, samples=samples, post=post,
                                            normalise=False, seed=0, batch_size=sensitivity_batch)

        def pgc_explain(model, inputs, targets, **_):
            inputs = torch.as_tensor(inputs, dtype=torch.float32)
            return pgc_maps(model, layer, inputs, targets, (HiResCAM,))[0][:, None]

        _freeze(model, False)
        a_batch = pgc_explain(model, x_sens.numpy(), t_sens.numpy())
        _freeze(model, True)
        metric = quantus.MaxSensitivity(nr_samples=samples, lower_bound=0.1,  # default perturbation: uniform noise
                                        similarity_func=quantus.similarity_func.difference, disable_warnings=True)
        theirs = lambda: metric(model=model, x_batch=x_sens.numpy(), y_batch=t_sens.numpy(), a_batch=a_batch,  # noqa: E731
                                explain_func=pgc_explain, device="cpu", batch_size=n_images)
        measure(f"Max-Sensitivity ({n_images}×{samples} samples)", "head", "forward + head backward per sample", ours_sensitivity,
                n_images * samples, theirs, "Quantus MaxSensitivity + pytorch-grad-cam", frozen_for_theirs=False)

    # --- HAAS: forwards over the originals and the HA images
    if wanted("haas"):
        preprocessing = Preprocessing(size)
        maps = cam_family.compute(model, layer, x, targets, ["hirescam"])["hirescam"]
        post = postprocess.PostProcess(relu=True, minmax=True, upsample="bilinear")

        def ours_haas():
            common.predict_classes(model, x, batch, False)
            common.predict_classes(model, haas.ha_images(x, maps, preprocessing, post), batch, False)

        measure("HAAS", "forward", "forwards over originals + HA images", ours_haas, 2 * len(x))
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
    _, layer = resolve_layer(model, case.spec.target_layer)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    size = case.spec.input_size
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    sample = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    plan = memory.fit(memory.footprint(metric, model, sample, layer, explainers.get("hirescam")), 128, 16, budget_mb)
    x = torch.randn(plan.images_per_block, 3, size, size).contiguous(memory_format=torch.channels_last)
    targets = torch.zeros(len(x), dtype=torch.long)
    ids = [f"img{i}" for i in range(len(x))]
    raw = cam_family.compute(model, layer, x, targets, ["hirescam"])["hirescam"]  # a score job reads these from the maps file
    before = float(next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    reset_peak_rss()
    if metric == "aopc":
        saliency = postprocess.apply(raw, postprocess.PostProcess(), (size, size))
        aopc.morf_curves(model, x, saliency, targets, ids, case.regions[0], False, "per_step", 0, plan.batch_size)
    else:
        explain = lambda noisy, t, _seeds: cam_family.compute(model, layer, noisy, t, ["hirescam"])["hirescam"]  # noqa: E731
        max_sensitivity.max_sensitivity(explain, x, raw, targets, ids, list(range(len(x))), radius=0.1, samples=2,
                                        post=postprocess.PostProcess(), normalise=True, seed=0, batch_size=plan.batch_size)
    # the model and the loaded block were resident before the stage; the budget counts them, so add them back
    used = peak_rss_mb() - before + model_mb + x.numel() * x.element_size() / 2**20
    return dict(case=case_name, metric=metric, budget=budget_mb, batch=plan.batch_size, block=plan.images_per_block,
                estimated=plan.estimated_mb, used=used)


CASE_TIME_LIMIT_S = 1500


def case_rows(case_name: str, quick: bool, stages: str | None) -> list[dict]:
    """``run_case`` in a fresh interpreter: the allocator and caches left by a 224 px model would
    otherwise slow the small models measured after it, and its memory would count in their peaks.
    Each finished stage arrives as one JSON line; a case that runs past its time limit keeps those
    and says which stages it did not finish."""
    import subprocess
    import sys

    command = [sys.executable, __file__, "--case", case_name] + (["--quick"] if quick else []) + (["--stages", stages] if stages else [])
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=CASE_TIME_LIMIT_S).stdout
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        print(f"  {case_name}: stopped after {CASE_TIME_LIMIT_S} s; the stages it finished are kept", flush=True)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def memory_rows() -> list[dict]:
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
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return (f"machine: {cpu}, {torch.get_num_threads()} torch threads, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")


def _ratio(value: dict | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    text = f"{value['median']:.{digits}f} ({value['low']:.{digits}f}–{value['high']:.{digits}f})"
    return f"**failed measurement** {text}" if value["median"] < FAILED_BELOW else text


def table(rows: list[dict]) -> str:
    """Ratios as ``median (lowest–highest)`` over the turns; a median under 0.95 is flagged as a failed measurement."""
    lines = ["| stage | model | floor | ours / floor | alternative | alternative / floor | speed-up | ours (s) | peak RSS (MB) | turns | floor batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = r.get("speedup")
        speed_text = f"{speed['median']:.1f}× ({speed['low']:.1f}–{speed['high']:.1f})" if speed else "–"
        lines.append(f"| {r['stage']} | {r['case']} | {r['floor']} | {_ratio(r['ours'])} | {r['alternative'] or '–'} | {_ratio(r.get('theirs'))} | "
                     f"{speed_text} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['turns']} | {r['floor_batch']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, regions and samples")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--stages", default=None, help="comma-separated stages: family, scorecam, integrated_gradients, gradient_shap, "
                                                       "occlusion, aopc, max_sensitivity, haas (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/latest.md"))
    parser.add_argument("--memory-out", type=Path, default=Path("benchmarks/memory.md"))
    parser.add_argument("--skip-timing", action="store_true", help="only the memory-budget check")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the memory-budget check")
    parser.add_argument("--memory-probe", nargs=3, metavar=("CASE", "METRIC", "BUDGET_MB"), help=argparse.SUPPRESS)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        case = next(c for c in cases(args.quick) if c.name == args.case)
        stages = set(args.stages.split(",")) if args.stages else None
        run_case(case, args.quick, count=2 if args.quick else 3, stages=stages)  # prints each row as it finishes
        return
    if args.memory_probe:
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
            rows.extend(case_rows(case.name, args.quick, args.stages))
        peak_mb = max(r["peak_mb"] for r in rows) if rows else float("nan")
        text = (f"{header()}\n\n{table(rows)}\n\nRatios: median (lowest–highest) over the turns; contestants timed in turns "
                f"(floor, ours, alternative, …), each turn's ratios against that turn's floor.\n\n"
                f"per-job overhead: {imports:.2f} s to import the stage modules in a fresh interpreter, "
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
