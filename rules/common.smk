# Helpers only: config validation, target lists and the config subtree each job receives.
import copy

from snakemake.utils import validate

from camfaith import sweep
from camfaith.io import software_fingerprint
from camfaith.data import registry

METRIC_NAMES = ("aopc", "max_sensitivity", "haas")
GRID_MEMBERS = {}  # dataset -> expanded model name -> its grid values (filled by validate_config)


def study_sections(user_config):
    """The ``datasets`` and ``models`` a user config brings (None when it brings no datasets)."""
    if "datasets" not in user_config:
        return None
    return {key: copy.deepcopy(user_config.get(key, {})) for key in ("datasets", "models")}


def adopt_study_sections(study):
    if study is not None:
        config.update(study)


def validate_config():
    """Schema first (names the wrong key), then the cross-references a schema cannot express; then
    model grids are expanded into one model per combination (camfaith.sweep)."""
    global GRID_MEMBERS
    schema = workflow.source_path("../config/schema.yaml")
    validate(config, schema=schema)
    config["models"], GRID_MEMBERS = sweep.expand(config["models"])
    validate(config, schema=schema)  # the expanded members, with their grid values in place
    for dataset, models in config["models"].items():
        if dataset not in config["datasets"]:
            raise ValueError(f"config models.{dataset}: no dataset {dataset!r} under datasets ({sorted(config['datasets'])})")
    for dataset in config["datasets"]:
        if not config["models"].get(dataset):
            raise ValueError(f"config datasets.{dataset}: no model under models.{dataset}")
    if not enabled_metrics():
        raise ValueError("config metrics: enable at least one of " + ", ".join(METRIC_NAMES))


def dataset_models():
    """Every (dataset, model) pair of the config, in config order."""
    return [(dataset, model) for dataset, models in config["models"].items() for model in models]


def enabled_metrics():
    return [m for m in METRIC_NAMES if m in config["metrics"] and config["metrics"][m].get("enabled", True)]


def methods():
    return list(config["explain"]["methods"])


def test_scores():
    return [f for dataset, model in dataset_models() for f in expand("results/evaluate/{dataset}/{model}/test_scores.parquet", dataset=dataset, model=model)]


def score_files():
    return [
        f
        for dataset, model in dataset_models()
        for f in expand("results/score/{dataset}/{model}/{method}/{metric}.parquet", dataset=dataset, model=model, method=methods(), metric=enabled_metrics())
    ]


def overlay_figures(extension):
    return [f for dataset, model in dataset_models() for f in expand("results/aggregate/figures/overlays/{dataset}/{model}.{ext}", dataset=dataset, model=model, ext=extension)]


def sweep_outputs():
    """The min/max HAAS table, when a model grid is configured and HAAS is enabled."""
    return list(rules.sweep_table.output) if GRID_MEMBERS and "haas" in enabled_metrics() else []


def final_outputs():
    return rules.tables.output + rules.figures.output + overlay_figures(["png", "pdf"]) + sweep_outputs()


# Versions of everything camfaith computes with, as a param of the heavy rules: upgrading torch (or
# any of its dependencies) re-runs training, maps and scores, also in a container, where no file
# Snakemake watches changes. Computed once per invocation (about 0.2 s).
SOFTWARE = software_fingerprint()


# Config subtrees passed as params: a job sees only what defines its output, so editing one setting
# re-runs only the jobs that depend on it (Snakemake's params rerun trigger).
DOWNLOAD_KEYS = ("source", "synthetic", "local_path", "mirror", "cache_dir", "checksums", "retries")


def dataset_source(wildcards):
    dataset = config["datasets"][wildcards.dataset]
    return {"name": wildcards.dataset, **{key: dataset[key] for key in DOWNLOAD_KEYS if key in dataset}}


def dataset_adapter(dataset):
    """The configured adapter, else the registry's for that source."""
    if "adapter" in dataset:
        return dataset["adapter"]
    return "metadata_csv" if dataset["source"] == "synthetic" else registry.entry(dataset["source"]).adapter


def index_params(wildcards):
    dataset = config["datasets"][wildcards.dataset]
    return {"adapter": dataset_adapter(dataset), **dataset["index"]}


def split_params(wildcards):
    return config["datasets"][wildcards.dataset]["split"]


def train_params(wildcards):
    entry = config["models"][wildcards.dataset][wildcards.model]
    return {"model": entry["model"], "training": entry["training"], "preprocessing": config["datasets"][wildcards.dataset]["preprocessing"], "device": config["device"]}


def evaluate_params(wildcards):
    return {**config["evaluate"], "device": config["device"]}


def explain_params(wildcards):
    # The method list is left out on purpose: adding a method must not re-run the others.
    settings = {key: value for key, value in config["explain"].items() if key != "methods"}
    return {**settings, "device": config["device"]}


def score_params(wildcards):
    settings = {key: value for key, value in config["metrics"][wildcards.metric].items() if key != "enabled"}
    return {"settings": copy.deepcopy(settings), "protocol": config["protocol"], "seed": config["seed"], "device": config["device"]}


# Resident memory a torch job needs beyond its tensors: the interpreter, torch and its kernels.
TORCH_JOB_OVERHEAD_MB = 1500


def score_mem_mb(wildcards):
    """What the scheduler reserves for a score job: its metric's tensor budget plus the interpreter,
    or a generous default when no budget is set."""
    budget = config["metrics"][wildcards.metric].get("memory_mb")
    return 8000 if budget is None else int(budget) + TORCH_JOB_OVERHEAD_MB


def overlay_params(wildcards):
    return {"examples": config["aggregate"]["examples"], "image_size": config["datasets"][wildcards.dataset]["preprocessing"]["image_size"]}


def overlay_inputs(wildcards):
    """Named inputs of an overlay figure: ``maps_<method>`` for every method, plus images and index."""
    maps = expand("results/explain/{dataset}/{model}/{method}.h5", dataset=wildcards.dataset, model=wildcards.model, method=methods())
    named = {f"maps_{method}": path for method, path in zip(methods(), maps)}
    return {**named, "raw": f"results/download/{wildcards.dataset}", "index": f"results/index/{wildcards.dataset}/index.parquet"}


def sweep_params():
    """What the min/max table needs: each grid member's values, and the method HAAS is read for
    (HiResCAM, as in the study's sweep, when it is configured)."""
    return {"members": GRID_MEMBERS, "method": "hirescam" if "hirescam" in methods() else methods()[0]}


def identities():
    return [{"dataset": dataset, "model": model} for dataset, model in dataset_models()]
