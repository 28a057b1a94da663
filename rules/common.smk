# Helpers only: the config check, target lists and the config subtree each job receives. The plan
# (methods of each model, metrics, skips, grid members) is PLAN, which the Snakefile assigns from
# prepare_config(); camfaith.configuration holds the logic.
import copy
import functools
from pathlib import Path

from camfaith import configuration, explainers, metrics, sweep
from camfaith.io import software_fingerprint
from camfaith.data import own, registry
from camfaith.models import sources as model_sources


def adopt_study_sections(study):
    if study is not None:
        config.update(study)


def prepare_config():
    """Validate the merged config before any job (the error names the key) and plan the study. The
    model check (torch on the meta device) runs in the main process only: jobs re-read the Snakefile."""
    cache = configuration.model_check_cache() if workflow.is_main_process else None
    return configuration.prepare(config, workflow.source_path("../config/schema.yaml"), cache)


def method_pattern():
    """The explain and score rules' ``method`` wildcard: a name of the explainer registry."""
    return "|".join(explainers.names())


def metric_pattern():
    """The ``metric`` wildcard: a name of the metric registry."""
    return "|".join(metrics.METRICS)


def forward_metric_pattern():
    """The score rule's metrics: those that run the model, scored per method."""
    return "|".join(metrics.registry.names(forward=True))


def ground_truth_metric_pattern():
    """The score_ground_truth rule's metrics: those without forwards, scored per model over every method."""
    return "|".join(metrics.registry.names(forward=False))


def protocol_pattern():
    return "|".join(metrics.PROTOCOLS)


def protocols():
    """The protocols this run scores and aggregates, in config order (``protocol: [default, thesis]``)."""
    return list(PLAN.protocols)


def dataset_models():
    """Every (dataset, model) pair of the config, in config order."""
    return [(dataset, model) for dataset, models in config["models"].items() for model in models]


def enabled_metrics():
    return list(PLAN.metrics)


def model_methods(dataset, model):
    return list(PLAN.methods[(dataset, model)])


def index_files():
    """The index of every dataset, in config order (the aggregation reads each image's group from it)."""
    return expand("results/index/{dataset}/index.parquet", dataset=list(config["datasets"]))


def test_scores():
    return [f for dataset, model in dataset_models() for f in expand("results/evaluate/{dataset}/{model}/test_scores.parquet", dataset=dataset, model=model)]


def model_score_files(protocol, dataset, model):
    """The score files of one model under one protocol: each metric with forwards on each of its methods,
    but the skipped ones, and each metric without forwards once, over every method it scores."""
    files = []
    for metric in enabled_metrics():
        scored = PLAN.scored(dataset, model, metric, protocol)
        if metrics.get(metric).forward:
            files += expand("results/score/{protocol}/{dataset}/{model}/{method}/{metric}.parquet", protocol=protocol, dataset=dataset,
                            model=model, method=scored, metric=metric)
        elif scored:
            files += expand("results/score/{protocol}/{dataset}/{model}/{metric}.parquet", protocol=protocol, dataset=dataset, model=model,
                            metric=metric)
    return files


def score_files(protocol):
    """Every score file of one protocol, model by model in config order."""
    return [f for dataset, model in dataset_models() for f in model_score_files(protocol, dataset, model)]


def protocol_score_files(wildcards):
    return score_files(wildcards.protocol)


def skipped_scores(wildcards):
    """The (dataset, model, method, metric) combinations a metric or the protocol leaves out, with the reason (for the tables)."""
    return [skip.as_dict() for skip in PLAN.protocol_skips(wildcards.protocol)]


def table_in_report(path, label):
    """A table of one protocol, as the report lists it (Tables, a subcategory per protocol)."""
    return report(path, category="Tables", subcategory="{protocol} protocol", labels={"table": label})


def figure_in_report(path, caption, label):
    """A figure of one protocol with its caption (``report/captions/<caption>.rst``), as the report lists it."""
    return report(path, caption=f"../report/captions/{caption}.rst", category="Figures", subcategory="{protocol} protocol", labels={"figure": label})


def overlay_in_report(path, caption, label):
    """An overlay figure of one protocol, dataset and model, as the report lists it (Overlays)."""
    return report(path, caption=f"../report/captions/{caption}.rst", category="Overlays", subcategory="{protocol} protocol",
                  labels={"dataset": "{dataset}", "model": "{model}", "figure": label})


def metric_tables():
    """The tables rule's Markdown table of every metric of the registry: ``<metric>_md``."""
    return {f"{name}_md": f"results/aggregate/{{protocol}}/tables/{name}.md" for name in metrics.METRICS}


def per_protocol(paths):
    """``paths`` (patterns with a ``{protocol}`` field, e.g. a rule's output) for every protocol of the run."""
    return [f for path in paths for f in expand(path, protocol=protocols())]


def overlay_figures():
    """The example and disagreement overlays of every model, for every protocol, PNG and PDF."""
    return [f for dataset, model in dataset_models() for f in expand(list(rules.overlays.output), protocol=protocols(), dataset=dataset, model=model)]


def sweep_outputs():
    """The min/max HAAS table of every protocol, when a model grid is configured and HAAS is enabled."""
    return per_protocol(rules.sweep_table.output) if PLAN.grid_members and "haas" in enabled_metrics() else []


def final_outputs():
    return per_protocol(rules.tables.output) + per_protocol(rules.figures.output) + overlay_figures() + list(rules.verdict.output) + sweep_outputs()


def torch_threads():
    """Threads of a torch job: 4 where a GPU does the work (data loading and host-side steps), 1 on a
    CPU-only machine, where running several single-threaded jobs side by side uses the cores better
    than one multi-threaded job does (small models scale poorly over threads, and each job's 3-4 s of
    imports then overlap): measured 111 s instead of 178 s for the tiny test config on 2 cores.
    ``--set-threads <rule>=N`` overrides it."""
    return 4 if USES_GPU else 1


def gpu_slots():
    """The ``gpu`` resource a torch job takes: 1 with a GPU (profiles/default offers one, so GPU jobs
    run one at a time), 0 on a CPU-only machine (the cores alone limit how many run)."""
    return 1 if USES_GPU else 0


# Versions of everything camfaith computes with, as a param of the heavy rules: upgrading torch (or
# any of its dependencies) re-runs training, maps and scores, also in a container, where no file
# Snakemake watches changes. Computed once per invocation (about 0.2 s).
SOFTWARE = software_fingerprint()


# Config subtrees passed as params: a job sees only what defines its output, so editing one setting
# re-runs only the jobs that depend on it (Snakemake's params rerun trigger).
DOWNLOAD_KEYS = ("source", "synthetic", "local_path", "table", "columns", "mirror", "cache_dir", "checksums", "retries")


@functools.cache
def own_images_fingerprint(local_path, table):
    """The fingerprint of a folder of your own images (camfaith.data.own.fingerprint), once per snakemake invocation."""
    return own.fingerprint(local_path, table)


def dataset_source(wildcards):
    """The download rule's params. For your own images (source folder/table) also the fingerprint of
    every file under local_path and of the table, so a changed folder re-runs download, index and all
    after them; computed in the main process only (each job re-reads this file, and walking a large
    folder in every job would cost), where Snakemake decides what to re-run."""
    dataset = config["datasets"][wildcards.dataset]
    params = {"name": wildcards.dataset, **{key: dataset[key] for key in DOWNLOAD_KEYS if key in dataset}}
    if dataset["source"] in registry.OWN_SOURCES and workflow.is_main_process:
        table = own.table_file(dataset)
        params["fingerprint"] = own_images_fingerprint(dataset["local_path"], str(table) if table else None)
    return params


def dataset_adapter(dataset):
    """The configured adapter, else its source's (registry.default_adapter)."""
    return dataset.get("adapter") or registry.default_adapter(dataset["source"])


def index_params(wildcards):
    """The index rule's params; ``adapter_options`` (source table: the table file and its columns)
    only where the adapter has options, so the other datasets' params stay as they were."""
    dataset = config["datasets"][wildcards.dataset]
    params = {"adapter": dataset_adapter(dataset), "classes": registry.declared_classes(dataset), "ground_truth": registry.ground_truth(dataset),
              "ground_truth_scope": registry.ground_truth_scope(dataset), **dataset["index"]}
    options = own.adapter_options(dataset)
    if options:
        params["adapter_options"] = options
    return params


def split_params(wildcards):
    return config["datasets"][wildcards.dataset]["split"]


def train_params(wildcards):
    entry = config["models"][wildcards.dataset][wildcards.model]
    return {"model": entry["model"], "training": entry.get("training", {}), "preprocessing": config["datasets"][wildcards.dataset]["preprocessing"], "device": config["device"]}


def trained_here(dataset, model):
    """Whether camfaith builds and trains the model (source torchvision), or it is brought from elsewhere."""
    return model_sources.source_of(config["models"][dataset][model]["model"]).trained_here


def model_file(wildcards):
    """The model every stage after training loads: the train stage's checkpoint, or the import record
    of a model brought from elsewhere (camfaith.models.own.load_model reads both)."""
    if trained_here(wildcards.dataset, wildcards.model):
        return f"results/train/{wildcards.dataset}/{wildcards.model}/model.pt"
    return f"results/import/{wildcards.dataset}/{wildcards.model}/model.json"


def import_inputs(wildcards):
    """The user's checkpoint file as an input of its import, so replacing the file re-imports the model."""
    # (not named checkpoint: a Snakemake keyword)
    weights = config["models"][wildcards.dataset][wildcards.model]["model"].get("checkpoint")
    return {"weights": weights} if weights else {}


def import_params(wildcards):
    """What the import of a model needs: its model config, its methods (Guided Backpropagation is
    checked against its activations) and the dataset's preprocessing (the defaults of the model's)."""
    entry = config["models"][wildcards.dataset][wildcards.model]
    return {"model": entry["model"], "methods": model_methods(wildcards.dataset, wildcards.model),
            "preprocessing": config["datasets"][wildcards.dataset]["preprocessing"]}


def evaluate_params(wildcards):
    return {**config["evaluate"], "device": config["device"]}


def explain_params(wildcards):
    """The explain settings shared by every method, plus this method's own settings (with defaults
    filled in) and, for a stochastic method, the seed: the method list and the other methods'
    settings are left out, so adding or retuning one method re-runs only its maps and scores."""
    shared = {key: value for key, value in config["explain"].items() if key != "methods"}
    settings = PLAN.methods[(wildcards.dataset, wildcards.model)][wildcards.method]
    params = {**shared, "settings": settings.as_dict(), "device": config["device"]}
    if "thesis" in PLAN.protocols and USES_GPU:
        # The study computed in float32: no autocast on CUDA, whatever explain.amp says. The maps are
        # shared by the protocols of a run, so with both protocols the default one scores float32 maps
        # too. Without CUDA autocast never applies (the maps are the same), so the param stays as
        # configured there and adding the thesis protocol on a CPU machine adds only score jobs.
        params["amp"] = False
    if explainers.get(wildcards.method).stochastic:
        params["seed"] = config["seed"]
    return params


def score_params(wildcards):
    """The metric's config subtree, and this dataset's own settings of it (``datasets.<d>.metrics.<metric>``)
    as ``overrides``, which ``camfaith.metrics.resolve`` applies last, after the thesis protocol's;
    the key is left out where a dataset has none, so other datasets' params (and jobs) stay as they were."""
    # enabled and skip_methods decide which jobs exist, not what one computes
    settings = {key: value for key, value in config["metrics"][wildcards.metric].items() if key not in ("enabled", "skip_methods")}
    params = {"settings": copy.deepcopy(settings), "protocol": wildcards.protocol, "seed": config["seed"], "device": config["device"]}
    overrides = (config["datasets"][wildcards.dataset].get("metrics") or {}).get(wildcards.metric)
    if overrides:
        params["overrides"] = copy.deepcopy(overrides)
    return params


def ground_truth_params(wildcards):
    """A ground-truth metric's params (:func:`score_params`), the dataset's kind of ground truth (mask or box) and its scope."""
    dataset = config["datasets"][wildcards.dataset]
    return {**score_params(wildcards), "ground_truth": registry.ground_truth(dataset), "ground_truth_scope": registry.ground_truth_scope(dataset)}


def ground_truth_maps(wildcards):
    """Named inputs of a ground-truth metric: ``maps_<method>`` for every method it scores on the model."""
    methods = PLAN.scored(wildcards.dataset, wildcards.model, wildcards.metric, wildcards.protocol)
    return {f"maps_{method}": f"results/explain/{wildcards.dataset}/{wildcards.model}/{method}.h5" for method in methods}


# Resident memory a torch job needs beyond its tensors: the interpreter, torch and its kernels.
TORCH_JOB_OVERHEAD_MB = 1500


def score_mem_mb(wildcards):
    """What the scheduler reserves for a score job: its metric's tensor budget plus the interpreter,
    or a generous default when no budget is set."""
    budget = config["metrics"][wildcards.metric].get("memory_mb")
    return 8000 if budget is None else int(budget) + TORCH_JOB_OVERHEAD_MB


# The metrics whose per-image scores the overlay panels show (those with a panel label in the metric
# registry, as camfaith.plots.PANEL_SCORES): a HAAS edit redraws no overlay.
OVERLAY_METRICS = tuple(name for name, metric in metrics.REGISTRY.items() if metric.panel)


def overlay_params(wildcards):
    """The overlay figures' settings: examples per figure, input size, the model's methods and the pair
    whose per-image disagreement the second figure shows (``aggregate.compare``)."""
    return {"examples": config["aggregate"]["examples"], "image_size": config["datasets"][wildcards.dataset]["preprocessing"]["image_size"],
            "methods": model_methods(wildcards.dataset, wildcards.model), "compare": config["aggregate"].get("compare")}


def overlay_inputs(wildcards):
    """Named inputs of the overlay figures: ``maps_<method>`` for every method of the model, its score
    files under this protocol (each panel shows the image's scores), images and index."""
    methods = model_methods(wildcards.dataset, wildcards.model)
    maps = expand("results/explain/{dataset}/{model}/{method}.h5", dataset=wildcards.dataset, model=wildcards.model, method=methods)
    named = {f"maps_{method}": path for method, path in zip(methods, maps)}
    scores = [f for f in model_score_files(wildcards.protocol, wildcards.dataset, wildcards.model) if Path(f).stem in OVERLAY_METRICS]
    return {**named, "scores": scores, "raw": f"results/download/{wildcards.dataset}", "index": f"results/index/{wildcards.dataset}/index.parquet"}


def sweep_params():
    """What the min/max table needs: each grid member's values, and the method HAAS is read for."""
    return {"members": PLAN.grid_members, "method": sweep.haas_method(list(PLAN.methods.values()))}


def identities():
    return [{"dataset": dataset, "model": model} for dataset, model in dataset_models()]
