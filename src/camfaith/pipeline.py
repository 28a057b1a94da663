"""One function per pipeline stage, on paths and config subtrees. Rule scripts call exactly one.

These are the seams later work plugs into: a new dataset source is a registry entry
(:mod:`camfaith.data.registry`), a new attribution method an explainer registry entry
(:mod:`camfaith.explainers`), a new metric a runner (:mod:`camfaith.scoring`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from camfaith.io import atomic_path, package_versions, sha256_file
from camfaith.store import read_parquet, read_table_metadata, write_table

# Stage modules are imported inside each function: a job pays only for what its stage uses (torch,
# torchvision and scikit-learn together take ~4.5 s to import, the bulk of a light job's wall time).
log = logging.getLogger(__name__)


DEFAULT_DOWNLOAD_CACHE = Path("resources") / "downloads"


def download(dataset: dict, out_dir: str | Path) -> None:
    """Materialise the raw dataset in ``out_dir``. ``synthetic`` is generated from its seed; ``folder``
    and ``table`` (your own images) get only a ``manifest.json`` naming the folder they are read from in
    place and its fingerprint (:func:`camfaith.data.own.write_manifest`); any other source is a
    registry entry (:mod:`camfaith.data.registry`) whose archives are fetched, verified and unpacked,
    and converted to images where the format needs it."""
    from camfaith.data import own

    out_dir = Path(out_dir)
    if dataset.get("source") == "synthetic":
        _generate_synthetic(dataset, out_dir)
    elif dataset.get("source") in own.OWN_SOURCES:
        own.write_manifest(dataset, out_dir)
    else:
        _fetch_registered(dataset, out_dir)


def _generate_synthetic(dataset: dict, out_dir: Path) -> None:
    from camfaith.data import synthetic

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    spec = synthetic.SyntheticSpec.from_config(dataset.get("synthetic", {}))
    synthetic.generate(spec, staging)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)  # the folder appears whole or not at all
    log.info("generated synthetic dataset %s in %s", spec, out_dir)


def _fetch_registered(dataset: dict, out_dir: Path) -> None:
    import json

    from camfaith.data import adapters, archives, fetch, registry

    entry = registry.entry(dataset["source"])
    name = dataset.get("name", entry.name)
    cache = Path(dataset.get("cache_dir") or DEFAULT_DOWNLOAD_CACHE)
    local_path = Path(dataset["local_path"]) if dataset.get("local_path") else None
    # Kept across attempts: archives already unpacked here (marker files) are not unpacked again;
    # unless it holds another source's archives (the dataset was re-pointed), which would mix in.
    staging = out_dir.with_name(out_dir.name + ".partial")
    expected = {archives.marker_path(staging / r.extract_to, Path(r.name)) for r in entry.files}
    if any(marker not in expected for marker in staging.rglob(f"{archives.MARKER_PREFIX}*")):
        shutil.rmtree(staging)
    files = []
    for remote in entry.files:
        pinned = (dataset.get("checksums") or {}).get(remote.name)
        fetched = fetch.fetch(remote, name, cache, known_hash=pinned, mirror=dataset.get("mirror"), local_path=local_path,
                              retries=int(dataset.get("retries", 3)))
        archive, sha256 = fetched.path, fetched.sha256
        if not (pinned or remote.known_hash):
            log.warning("%s has no published checksum; its SHA-256 is %s. Pin it with datasets.%s.checksums: {%s: 'sha256:%s'}",
                        remote.name, sha256, name, remote.name, sha256)
        archives.extract(archive, staging / remote.extract_to, sha256)
        files.append({"name": remote.name, "source": remote.page, "sha256": sha256, "bytes": archive.stat().st_size,
                      "checked_against": pinned or remote.known_hash})
    if entry.prepare and not (staging / "metadata.csv").is_file():
        log.info("converting %s to images (%s)", entry.name, entry.prepare)
        adapters.CONVERTERS[entry.prepare](staging)
    (staging / "manifest.json").write_text(json.dumps({"source": entry.name, "title": entry.title, "files": files}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    log.info("%s ready in %s (%d archive(s))", entry.title, out_dir, len(files))


def index(raw_dir: str | Path, params: dict, index_path: str | Path, quarantine_path: str | Path) -> None:
    """Index ``raw_dir`` into Parquet; unreadable images go to the quarantine table (also Parquet). The
    images are read under :func:`camfaith.data.own.data_root` (``local_path`` for your own images),
    with the adapter's options from ``params["adapter_options"]``."""
    from camfaith.data import index as index_stage
    from camfaith.data.own import data_root

    declared = params.get("classes")
    table, quarantine = index_stage.build_index(data_root(raw_dir), params["adapter"], params["max_quarantine_fraction"], declared,
                                                params.get("ground_truth", "none"), params.get("ground_truth_scope", "all"),
                                                params.get("adapter_options"))
    write_table(quarantine, quarantine_path, {"raw_dir": str(raw_dir)})
    write_table(table, index_path, {"classes": index_stage.class_names(table, declared)})


def split(index_path: str | Path, params: dict, split_path: str | Path) -> None:
    """Grouped, stratified, deterministic split of the index (``train/val/test`` per image)."""
    from camfaith.data import split as split_stage

    table = read_parquet(index_path)
    frame = split_stage.assign_splits(table, params["fractions"], params["seed"], params.get("honour_official", True))
    log.info("split sizes per class:\n%s", split_stage.split_summary(frame))
    for name, classes in split_stage.missing_classes(frame).items():
        log.warning("class(es) %s have no image in the %s split%s", classes, name,
                    ": their recall is undefined (NaN in the classification table)" if name == "test" else "")
    write_table(frame, split_path)


def train_model(raw_dir: str | Path, index_path: str | Path, split_path: str | Path, params: dict,
                model_path: str | Path, history_path: str | Path, resume_path: str | Path) -> None:
    """Train one model; ``params`` holds ``model``, ``training``, ``preprocessing`` and ``device``. A
    model with ``head: published`` is saved as published (weights and classifier), untrained, with an
    empty history."""
    import torch

    from camfaith.data import index as index_stage
    from camfaith.data.images import ImageTable, Preprocessing, select_split
    from camfaith.models import ModelSpec, build_model, pick_device, save_checkpoint
    from camfaith.training import TrainConfig, fingerprint, train

    table, splits = read_parquet(index_path), read_parquet(split_path)
    classes = read_table_metadata(index_path).get("classes") or index_stage.class_names(table)
    preprocessing = Preprocessing.from_config(params["preprocessing"])
    spec = ModelSpec.from_config(params["model"], len(classes), preprocessing.image_size)
    config = TrainConfig.from_config(params["training"])
    device = pick_device(params.get("device", "auto"))
    torch.manual_seed(config.seed)  # fresh layers are initialised from this seed
    model = build_model(spec)
    if spec.head == "published":
        # the network as published, its classifier included: nothing to train (ImageNet's validation set is all test)
        log.info("%s with %s as published: not trained (%d classes)", spec.arch, spec.weights, len(classes))
        key = fingerprint(spec, config, params["preprocessing"], sha256_file(index_path), sha256_file(split_path), "published")
        save_checkpoint(model_path, model, spec, classes, params["preprocessing"], {"fingerprint": key})
        write_table(pd.DataFrame({"epoch": pd.Series(dtype="int64"), **{c: pd.Series(dtype="float64") for c in
                                  ("train_loss", "val_loss", "val_balanced_accuracy", "lr", "seconds")}, "improved": pd.Series(dtype="bool")}),
                    history_path)
        return
    from camfaith.data.own import data_root

    tables = {name: ImageTable(data_root(raw_dir), select_split(table, splits, name), preprocessing) for name in ("train", "val")}
    # The device type is part of the run: a CPU checkpoint has no AMP scaler state for a CUDA resume.
    key = fingerprint(spec, config, params["preprocessing"], sha256_file(index_path), sha256_file(split_path), device.type)
    log.info("training %s on %s (%d train / %d val images, %d classes)", spec.arch, device, len(tables["train"]), len(tables["val"]), len(classes))
    best, history = train(model, tables["train"], tables["val"], config, resume_path, device, key, len(classes))
    model.load_state_dict(best)
    save_checkpoint(model_path, model.cpu(), spec, classes, params["preprocessing"], {"fingerprint": key})
    write_table(history, history_path)
    Path(resume_path).unlink(missing_ok=True)


def import_model(raw_dir, index_path, params: dict, record_path, identity: dict) -> None:
    """The import stage of a model brought from elsewhere (``params``: its ``model`` config, its
    ``methods``, the dataset's ``preprocessing``): built from its source, matched to the index's
    classes by name and checked (:func:`camfaith.models.own.import_model`) into ``record_path``."""
    from camfaith.data import index as index_stage
    from camfaith.models.own import import_model as import_own

    table = read_parquet(index_path)
    classes = read_table_metadata(index_path).get("classes") or index_stage.class_names(table)
    where = f"models.{identity['dataset']}.{identity['model']}"
    def locate(labels: set[str]) -> dict[str, list[str]]:
        from camfaith.data.own import label_locations

        return label_locations(raw_dir, labels)

    import_own(params, list(classes), record_path, where, locate)


def _test_table(raw_dir, index_path, split_path, preprocessing, image_ids: list[str] | None = None):
    """The test split as an :class:`~camfaith.data.images.ImageTable`, in ``image_id`` order, its
    images read under :func:`camfaith.data.own.data_root` of ``raw_dir``; with ``image_ids`` (a maps
    file's: explain may map a part of the test split, ``explain.images``) only those, which must all
    be test images (an error naming the maps file's stale ids otherwise)."""
    from camfaith.data.images import ImageTable, select_split
    from camfaith.data.own import data_root

    rows = select_split(read_parquet(index_path), read_parquet(split_path), "test")
    if image_ids is not None:
        unknown = sorted(set(image_ids) - set(rows["image_id"].astype(str)))
        if unknown:
            raise ValueError(f"{len(unknown)} image(s) of the maps are not in the test split of {split_path} (e.g. {unknown[:3]}); re-run explain")
        rows = rows[rows["image_id"].astype(str).isin(set(image_ids))].reset_index(drop=True)
    return ImageTable(data_root(raw_dir), rows, preprocessing)


def explained_images(rows: pd.DataFrame, which) -> pd.DataFrame:
    """The test rows explain maps (``explain.images``): ``all``; ``ground_truth``, the images with a mask
    or a box (a test set where few have one: ChestX-ray14 boxes 880 of 25,596); or ``{per_class: N,
    seed: s}``, N images of each true class (all of a class with fewer), the N whose BLAKE2b hash of
    (s, image id) is smallest: the same images whatever else the split holds. In ``image_id`` order."""
    from camfaith.data.index import has_ground_truth
    from camfaith.io import derive_seed

    if which in (None, "all"):
        return rows
    if which == "ground_truth":
        chosen = rows[[has_ground_truth(row) for _, row in rows.iterrows()]]
        if chosen.empty:
            raise ValueError("explain.images: ground_truth, but no test image has a mask or a box")
        return chosen
    if isinstance(which, dict) and "per_class" in which:
        order = rows.assign(_rank=[derive_seed(int(which.get("seed", 0)), str(i), "explain.images") for i in rows["image_id"]])
        picked = order.sort_values("_rank", kind="stable").groupby("label_index", sort=False).head(int(which["per_class"]))
        return rows.loc[sorted(picked.index)]  # rows come in image_id order
    raise ValueError(f"explain.images must be all, ground_truth or {{per_class: N, seed: s}}, got {which!r}")


def evaluate(raw_dir, index_path, split_path, model_path, params: dict, scores_path) -> None:
    """Balanced accuracy, mean AUC, recalls and confusion matrix on the test split."""
    from torch.utils.data import DataLoader

    from camfaith.data.images import Preprocessing
    from camfaith.evaluation import classification_scores
    from camfaith.models import pick_device
    from camfaith.models.own import load_model
    from camfaith.training import predict

    device = pick_device(params.get("device", "auto"))
    loaded = load_model(model_path, device)
    model, classes, prep = loaded.model, loaded.classes, loaded.preprocessing
    test = _test_table(raw_dir, index_path, split_path, Preprocessing.from_config(prep))
    loader = DataLoader(test, batch_size=params["batch_size"], num_workers=params.get("workers", 0), pin_memory=device.type == "cuda")
    logits, labels, _ = predict(model, loader, device, params.get("amp", True))
    frame = classification_scores(logits, labels, classes)
    log.info("test scores:\n%s", frame[frame["class_pred"].isna()].to_string(index=False))
    write_table(frame, scores_path, {"model": str(model_path), "images": len(labels)})


def explain(raw_dir, index_path, split_path, model_path, method: str, params: dict, maps_path, identity: dict) -> None:
    """Raw maps of ``method`` (an explainer of :mod:`camfaith.explainers`) for every test image, with
    what the metrics need, into HDF5 (maps format 2). ``params`` holds the method's own ``settings``,
    ``target``, ``batch_size``, ``device`` and, for stochastic methods, ``seed``."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from camfaith import explainers
    from camfaith.data.images import Preprocessing
    from camfaith.explainers.runtime import image_seeds, layer_for
    from camfaith.models import autocast, memory_format, pick_device, weights_sha256
    from camfaith.models.own import load_model
    from camfaith.store import MapSet, finite_maps, write_maps

    explainer = explainers.get(method)
    settings = explainer.make_settings(params.get("settings"))
    device = pick_device(params.get("device", "auto"))
    loaded = load_model(model_path, device)
    model, classes, prep = loaded.model, loaded.classes, loaded.preprocessing
    layout = memory_format(params.get("memory_format"))
    model = model.to(memory_format=layout)
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # explainers differentiate inputs or activations, never weights
    layer_name, layer = layer_for(explainer, model, loaded.target_layer)
    test = _test_table(raw_dir, index_path, split_path, Preprocessing.from_config(prep))
    chosen, test_total = explained_images(test.rows, params.get("images", "all")), len(test)
    if len(chosen) < len(test):
        log.info("explain.images %s: %d of the %d test images are mapped", params.get("images"), len(chosen), len(test))
        test = _test_table(raw_dir, index_path, split_path, Preprocessing.from_config(prep), list(chosen["image_id"].astype(str)))
    loader = DataLoader(test, batch_size=params["batch_size"], num_workers=params.get("workers", 0), pin_memory=device.type == "cuda")
    target_mode = params.get("target", "label")
    if target_mode not in ("label", "predicted"):
        raise ValueError(f"explain.target must be 'label' or 'predicted', got {target_mode!r}")
    amp = params.get("amp", True) and explainer.amp and device.type == "cuda"
    seed = params.get("seed", 0)
    parts: dict[str, list] = {"maps": [], "logits": [], "targets": [], "labels": []}
    for images, labels, positions in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
        with torch.no_grad(), autocast(device, amp):
            logits = model(images).float()
        targets = labels.to(device) if target_mode == "label" else logits.argmax(dim=1)
        seeds = image_seeds(seed, [test.image_ids[p] for p in positions.tolist()])
        with autocast(device, amp):
            maps = explainer.explain(model, layer, images, targets, settings, seeds)
        parts["maps"].append(maps.float().cpu())
        parts["logits"].append(logits.cpu())
        parts["targets"].append(targets.cpu())
        parts["labels"].append(labels)
    logits = torch.cat(parts["logits"])
    all_maps = torch.cat(parts["maps"]).numpy()
    map_shape = list(all_maps.shape[1:])
    nonfinite = [test.image_ids[i] for i in np.flatnonzero(~finite_maps(all_maps))]
    if nonfinite:
        log.warning("%d of %d %s maps are not finite (NaN or inf); they are written as they are and flagged "
                    "(attribute nonfinite_images), and every metric scores them NaN: %s", len(nonfinite), len(all_maps), method, nonfinite[:10])
    attrs = {**identity, "method": method, "resolution": explainer.resolution, "settings": settings.as_dict(),
             "map_shape": map_shape, "target_mode": target_mode, "classes": classes, "weights_sha256": weights_sha256(model),
             "input_size": loaded.input_size, "source": loaded.source, "package_versions": package_versions(), "device": str(device),
             "nonfinite_images": nonfinite, "images": params.get("images", "all"), "test_images": test_total}
    if layer_name is not None:
        attrs["layer"] = layer_name
        if getattr(layer, "camfaith_token_grid", None) is not None:
            attrs["token_grid"] = list(layer.camfaith_token_grid)  # (prefix tokens, h, w): a transformer layer, where HiResCAM is not faithful
    if explainer.stochastic:
        attrs["seed"] = seed
    maps = MapSet(
        maps=all_maps, image_ids=test.image_ids,
        labels=torch.cat(parts["labels"]).numpy(), predictions=logits.argmax(1).numpy(),
        targets=torch.cat(parts["targets"]).numpy(), logits=logits.numpy(), probabilities=logits.softmax(1).numpy(), attrs=attrs,
    )
    write_maps(maps_path, maps)
    log.info("%s maps %s (%s resolution) for %d images%s, settings %s", method, map_shape, explainer.resolution, len(maps.image_ids),
             f" at layer {layer_name}" if layer_name else "", settings.as_dict())


def score(raw_dir, index_path, split_path, model_path, maps_path, metric: str, params: dict, scores_path, identity: dict) -> None:
    """One metric on one method's maps → long Parquet (docs/formats.md). ``params`` holds the metric's
    config subtree (``settings``, with ``batch_size`` forwards at a time and ``images_per_block``
    images loaded at a time), ``protocol``, ``seed`` and ``device``."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from camfaith import explainers, memory, scoring
    from camfaith.data.images import Preprocessing
    from camfaith.explainers.runtime import image_seeds, layer_for
    from camfaith.metrics import common, resolve
    from camfaith.metrics import get as get_metric
    from camfaith.models import memory_format, pick_device
    from camfaith.models.own import load_model
    from camfaith.store import finite_maps, map_settings, read_maps

    settings = resolve(metric, params["settings"], params["protocol"], params.get("overrides"))
    device = pick_device(params.get("device", "auto"))
    loaded = load_model(model_path, device)
    model, prep = loaded.model, loaded.preprocessing
    layout = memory_format(settings.get("memory_format"))
    model = model.to(memory_format=layout)
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # scoring never needs parameter gradients
    preprocessing = Preprocessing.from_config(prep)
    maps = read_maps(maps_path)
    test = _test_table(raw_dir, index_path, split_path, preprocessing, maps.image_ids)
    if test.image_ids != maps.image_ids:
        raise ValueError(f"{maps_path}: its image ids do not match the test split of {split_path}; re-run explain")
    chosen = common.select(maps.labels, maps.predictions, settings["images"])
    finite = finite_maps(maps.maps)
    selected, undefined = chosen[finite[chosen]], chosen[~finite[chosen]]
    if len(undefined):
        log.warning("%d of %d selected images have a non-finite %s map (NaN or inf in %s): their %s is NaN, not scored: %s",
                    len(undefined), len(chosen), maps.attrs["method"], maps_path, metric, [maps.image_ids[p] for p in undefined[:10]])
    explainer = explainers.get(str(maps.attrs["method"]))
    explainer_settings = explainer.make_settings(map_settings(maps), f"the settings recorded in {maps_path}")
    layer = None
    if get_metric(metric).reexplains:
        layer = layer_for(explainer, model, str(maps.attrs["layer"]) if "layer" in maps.attrs else None)[1]
    seeds = image_seeds(int(maps.attrs.get("seed", 0)), maps.image_ids)
    plan = memory.Plan(settings["batch_size"], settings["images_per_block"], None, float("nan"))
    if len(selected):
        sample = test[int(selected[0])][0].unsqueeze(0).to(device).contiguous(memory_format=layout)
        need = memory.footprint(metric, model, sample, layer, explainer, explainer_settings)
        plan = memory.fit(need, settings["batch_size"], settings["images_per_block"], settings.get("memory_mb"))
    effective = {**settings, "batch_size": plan.batch_size, "images_per_block": plan.images_per_block}
    context = scoring.Context(model=model, maps=maps, settings=effective, preprocessing=preprocessing, device=device,
                              seed=params["seed"], amp=settings.get("amp", True) and device.type == "cuda", explainer=explainer,
                              explainer_settings=explainer_settings, layer=layer)
    log.info("%s of %s maps on %d of %d images (%s protocol), settings %s", metric, context.method, len(chosen),
             len(maps.image_ids), params["protocol"], settings)
    log.info("memory plan: %s", plan.as_dict())
    loader = DataLoader(Subset(test, selected.tolist()), batch_size=plan.images_per_block, pin_memory=device.type == "cuda")

    def blocks():
        for images, _, positions in loader:
            positions = positions.numpy()
            yield scoring.Block(
                images=images.to(device, non_blocking=True).contiguous(memory_format=layout), raw=torch.from_numpy(maps.maps[positions]).to(device),
                targets=torch.from_numpy(maps.targets[positions]).to(device),
                image_ids=[maps.image_ids[p] for p in positions], positions=positions, seeds=[seeds[p] for p in positions],
            )

    rows = scoring.run(metric, context, blocks(), selected, undefined)
    undefined_values = scoring.undefined_counts(rows, metric)
    degenerate = scoring.degenerate_counts(rows)
    left_out = len(maps.image_ids) - len(chosen)
    log.info("%s of %s: %d of %d test images scored (%d left out: %s), %d with a non-finite map (NaN values), "
             "degenerate maps among the scored: %s", metric, context.method, len(selected), len(maps.image_ids), left_out,
             "misclassified, images: correct" if left_out else "none", len(undefined), degenerate or "none")
    if undefined_values:
        log.warning("%s undefined (NaN) per parameter value: %s (non-finite maps: %d; the rest: a zero reference map with "
                    "normalise, or a non-finite re-explanation)", metric, undefined_values, len(undefined))
    frame = common.score_frame(rows, {**identity, "method": context.method, "metric": metric, "protocol": params["protocol"]})
    metadata = {"format": common.SCORES_FORMAT, "settings": settings, "protocol": params["protocol"], "seed": params["seed"], "images_selected": len(chosen),
                "images_nonfinite_map": [maps.image_ids[p] for p in undefined], "values_undefined": undefined_values,
                "images_left_out": left_out, "maps_degenerate": degenerate,
                "images_total": len(maps.image_ids), "weights_sha256": str(maps.attrs["weights_sha256"]),
                "layer": str(maps.attrs["layer"]) if "layer" in maps.attrs else None, "resolution": str(maps.attrs["resolution"]),
                "token_grid": json.loads(str(maps.attrs["token_grid"])) if "token_grid" in maps.attrs else None,
                "explainer_settings": explainer_settings.as_dict(), "device": str(device), "memory_plan": plan.as_dict(),
                "package_versions": package_versions()}
    write_table(frame, scores_path, metadata)


# Images per block of a ground-truth metric: maps at input resolution, 4 bytes a pixel (256 x 224 x 224: 51 MB)
GROUND_TRUTH_BLOCK = 256


def score_ground_truth(raw_dir, index_path, split_path, maps_paths: dict[str, str], metric: str, params: dict, scores_path,
                       identity: dict) -> None:
    """One localisation metric on every method of one model (``maps_paths``: method → its maps file)
    against the dataset's ground truth → one long Parquet (docs/formats.md §8). No model is loaded:
    the maps, the masks and boxes (at the maps' input resolution, :meth:`ImageTable.load_ground_truth`)
    and the stored logits are all it reads. ``params`` holds the metric's ``settings``, ``protocol``,
    ``ground_truth`` (the dataset's kind: mask or box), ``ground_truth_scope`` (``all``, or ``some``:
    only the images with ground truth are scored, the others counted), ``seed`` and, where the
    dataset has them, ``overrides``."""
    import numpy as np
    import torch

    from camfaith import scoring
    from camfaith.data.images import Preprocessing
    from camfaith.metrics import common, resolve
    from camfaith.store import finite_maps, read_maps

    settings = resolve(metric, params["settings"], params["protocol"], params.get("overrides"))
    kind = params["ground_truth"]
    maps_of = {method: read_maps(path) for method, path in maps_paths.items()}
    first = next(iter(maps_of.values()))
    size = int(first.attrs["input_size"])
    test = _test_table(raw_dir, index_path, split_path, Preprocessing(size), first.image_ids)
    # scope all: every image must have its ground truth (load_ground_truth names one that has not);
    # some: the images without (ChestX-ray14's unboxed ones) are not scored, and counted
    scope = params.get("ground_truth_scope", "all")
    has_truth = np.array([scope == "all" or test.has_ground_truth(position) for position in range(len(test))], dtype=bool)
    nothing = (torch.zeros(size, size, dtype=torch.bool), torch.full((4,), float("nan")))
    loaded = [test.load_ground_truth(position, kind) if has_truth[position] else nothing for position in range(len(test))]
    masks = torch.stack([mask for mask, _ in loaded]) if loaded else torch.zeros(0, size, size, dtype=torch.bool)
    boxes = torch.stack([box for _, box in loaded]) if loaded else torch.zeros(0, 4)
    without = int((~has_truth).sum())
    if without:
        log.info("%d of %d test images have no ground truth (ground_truth_scope: some): not scored by %s", without, len(test), metric)
    empty = [test.image_ids[i] for i in np.flatnonzero(has_truth & ~masks.flatten(1).any(dim=1).numpy())]
    if empty:
        log.warning("%d of %d test images have an empty ground truth at %d px (their %s is undefined, NaN): %s", len(empty), len(test),
                    size, metric, empty[:10])
    frames, per_method = [], {}
    for method, maps in maps_of.items():
        if test.image_ids != maps.image_ids:
            raise ValueError(f"{maps_paths[method]}: its image ids do not match the test split of {split_path}; re-run explain")
        chosen = common.select(maps.labels, maps.predictions, settings["images"])
        chosen = chosen[has_truth[chosen]]
        finite = finite_maps(maps.maps)
        selected, undefined = chosen[finite[chosen]], chosen[~finite[chosen]]
        if len(undefined):
            log.warning("%d of %d selected images have a non-finite %s map: their %s is NaN, not scored", len(undefined), len(chosen), method, metric)
        context = scoring.Context(model=None, maps=maps, settings=settings, preprocessing=test.preprocessing, device=torch.device("cpu"),
                                  seed=params["seed"], amp=False)
        def blocks(maps=maps, selected=selected, block_size=GROUND_TRUTH_BLOCK):
            for start in range(0, len(selected), block_size):
                positions = selected[start:start + block_size]
                yield scoring.Block(images=None, raw=torch.from_numpy(maps.maps[positions]), targets=torch.from_numpy(maps.targets[positions]),
                                    image_ids=[maps.image_ids[p] for p in positions], positions=positions, seeds=[0] * len(positions),
                                    masks=masks[positions], boxes=boxes[positions])

        rows = scoring.run(metric, context, blocks(), selected, undefined)
        frames.append(common.score_frame(rows, {**identity, "method": method, "metric": metric, "protocol": params["protocol"]}))
        per_method[method] = {"images_selected": len(chosen), "images_left_out": len(maps.image_ids) - without - len(chosen),
                              "images_nonfinite_map": [maps.image_ids[p] for p in undefined],
                              "values_undefined": scoring.undefined_counts(rows, metric), "maps_degenerate": scoring.degenerate_counts(rows),
                              "weights_sha256": str(maps.attrs["weights_sha256"]), "resolution": str(maps.attrs["resolution"])}
        log.info("%s of %s: %d of %d test images scored, undefined per setting: %s, degenerate maps: %s", metric, method, len(selected),
                 len(maps.image_ids), per_method[method]["values_undefined"] or "none", per_method[method]["maps_degenerate"] or "none")
    frame = pd.concat(frames, ignore_index=True)
    metadata = {"format": common.SCORES_FORMAT, "settings": settings, "protocol": params["protocol"], "seed": params["seed"],
                "ground_truth": kind, "ground_truth_scope": scope, "images_without_ground_truth": without,
                "images_empty_ground_truth": empty, "images_total": len(test), "input_size": size,
                "methods": per_method, "package_versions": package_versions()}
    write_table(frame, scores_path, metadata)


# Under a model whose layer methods read a transformer block (docs/models.md, "Vision transformers")
TOKEN_NOTE = ("The layer methods read {layer}, a transformer block: its tokens are laid on their patch grid, the class token dropped. "
              "HiResCAM's identity (its map sums to the score, less the bias) does not hold there, so HiResCAM is not faithful by "
              "construction on this model; `camfaith layers` measures the residual.")

# How the Markdown tables mark a winner (docs/statistics.md)
BOLD_RULE = ("In bold: the best mean of a column, where that method is better than every other method of the column by the "
             "Holm-corrected paired test (paired_tests.csv); no bold means the methods cannot be told apart.")
IMAGES_RULE = ("Column images: the test images a row's values rest on (scored), those the metric's `images` setting left out "
               "(misclassified, with `images: correct`), values left out as undefined (most of any setting), maps that are "
               "degenerate (all zero after ReLU, constant or non-finite; scored, and counted here), and for AOPC the share of "
               "regions tied in each region size (ordered by the seeded tie-break).")


def aggregate_tables(score_paths: list, eval_paths: list, eval_identities: list[dict], params: dict, out: dict,
                     skipped: list[dict] | None = None, index_paths: dict[str, str] | None = None, protocol: str = "default",
                     replicates: dict[str, dict[str, dict]] | None = None) -> None:
    """The study's tables: classification, AOPC per region size, Max-Sensitivity per radius, HAAS
    (Markdown, a section per model, a row per method, the best in bold, "not run" rows for the
    methods a metric left out) plus the long ``summary.csv`` and ``paired_tests.csv`` behind them,
    and the verdict, titled by ``protocol`` (the protocol the scores were computed under), and the
    differences across training seeds of the models in ``replicates`` (``Plan.replicates``).
    ``index_paths`` (dataset → index) give each image's group, which the paired intervals resample."""
    from camfaith import aggregate as agg

    scores = agg.read_scores(score_paths)
    classification = agg.classification_table(eval_paths, eval_identities)
    empty = pd.DataFrame(columns=agg.CELL + ["method", "n", "n_undefined", "mean", "ci_low", "ci_high", "best_mean", "best"])
    groups = agg.image_groups({dataset: read_parquet(path) for dataset, path in (index_paths or {}).items()})
    classes = {dataset: list(read_table_metadata(path).get("classes") or []) for dataset, path in (index_paths or {}).items()}
    paired = agg.paired_tests(scores, params.get("seed", 0), groups) if not scores.empty else pd.DataFrame()
    summary = agg.summary_table(scores, params.get("seed", 0), paired, groups) if not scores.empty else empty
    summary["grid"] = pd.Series(dtype="string")
    if not summary.empty:
        labels = agg.grid_label(scores)
        summary["grid"] = [labels.get((d, m, v), "") if metric == "aopc" else "" for d, m, metric, v in
                           zip(summary["dataset"], summary["model"], summary["metric"], summary["parameter_value"])]
    from camfaith import ranking
    from camfaith import verdict as verdicts
    from camfaith.metrics import REGISTRY

    texts = {"classification_md": "# Classification (test split)\n\n" + agg.markdown_table(classification)}
    model_notes = {key: TOKEN_NOTE.format(layer=layer) for key, layer in scores.attrs.get("token_layers", {}).items()} if not scores.empty else {}
    for name, metric in REGISTRY.items():
        columns = f"Columns: {metric.column}; cells: mean [95% bootstrap CI] over the scored images. " if metric.parameter else ""
        ground_truth = ("Ground truth: each dataset's masks, or its boxes where it has none (docs/metrics.md §9); a dataset without "
                        "ground truth has rows that say so. " if metric.ground_truth else "")
        texts[f"{name}_md"] = (f"# {metric.heading}\n\n{metric.note + ' ' if metric.note else ''}{columns}{ground_truth}{BOLD_RULE} {IMAGES_RULE}"
                               f"\n\n" + agg.markdown_by_model(summary, name, "method", skipped, notes=model_notes))
        per_class = agg.per_class_markdown(scores, name, classes) if metric.ground_truth and not scores.empty else ""
        if per_class:
            texts[f"{name}_md"] += ("\n## Per class\n\nThe mean per true class (columns: the class and its images with a value), "
                                    "then over all of them; no intervals.\n\n" + per_class)
    # HAAS is a dataset-level ratio, with no per-image values to rank
    ranked = {m: d for m, d in agg.DIRECTION.items() if REGISTRY[m].dataset_quantity is None}
    friedman = ranking.friedman_table(scores, agg.CELL, ranked, groups=groups) if not scores.empty else pd.DataFrame()
    wins = verdicts.win_counts(paired)
    seeds = agg.seeds_table(paired, replicates or {})
    result = verdicts.build(summary, paired, classification, params.get("compare"), friedman, seeds)
    texts["seeds_md"] = agg.seeds_markdown(seeds)
    study = {metric: agg.study_table(summary, metric) for metric in REGISTRY}
    titles = {name: metric.heading for name, metric in REGISTRY.items()}
    texts["verdict_md"] = result.markdown(f"Verdict: {protocol} protocol")
    texts["verdict_rst"] = result.rst(f"Verdict: {protocol} protocol")
    texts["study_md"] = "# The study's layout: a row per dataset / model, a column per setting and method (means)\n\n" + "".join(
        f"## {titles[metric]}\n\n*: {BOLD_RULE[len('In bold: '):]}\n\n{agg.study_markdown(table)}\n" for metric, table in study.items())
    texts["study_tex"] = "% booktabs tables laid out like the study's; needs \\usepackage{booktabs}\n" + "\n".join(
        agg.study_latex(table, f"{titles[metric]}: mean per dataset / model (bold: better than every other method of the setting, "
                        "Holm-corrected paired tests).", f"tab:camfaith-{metric}") for metric, table in study.items())
    texts["study_html"] = study_html(study, titles, classification)
    write_csv(classification, out["classification_csv"])
    write_csv(summary, out["summary_csv"])
    write_csv(paired, out["paired_csv"])
    write_csv(friedman, out["friedman_csv"])
    write_csv(wins, out["win_counts_csv"])
    write_csv(seeds, out["seeds_csv"])
    for key, text in texts.items():
        with atomic_path(out[key]) as tmp:
            tmp.write_text(text)


def verdict_page(verdicts_md: dict[str, str], verdicts_rst: dict[str, str], paired_csvs: dict[str, str], out: dict) -> None:
    """The report's first page and ``verdict.md``: every protocol's verdict (protocol → its file, in
    the config's order), then, with two protocols, where their paired tests disagree; and the
    protocol comparison table itself (``protocols_csv``, ``protocols_md``)."""
    from camfaith import verdict as verdicts

    protocols = list(verdicts_md)
    table = verdicts.protocol_table({p: read_csv_or_empty(path) for p, path in paired_csvs.items()})
    comparison_md = verdicts.protocol_markdown(table, protocols)
    markdown = "\n".join(Path(verdicts_md[p]).read_text() for p in protocols)
    rst = "\n".join(Path(verdicts_rst[p]).read_text() for p in protocols)
    if len(protocols) > 1:
        markdown += "\n" + comparison_md
        rst += "\n" + verdicts.protocol_rst(table, protocols)
    compared = table["agree"].dropna().astype(bool)
    log.info("verdict of %s; %d of the %d method pairs every protocol tested disagree", ", ".join(protocols), int((~compared).sum()), len(compared))
    write_csv(table, out["protocols_csv"])
    for key, text in (("protocols_md", comparison_md), ("verdict_md", markdown), ("verdict_rst", rst)):
        with atomic_path(out[key]) as tmp:
            tmp.write_text(text)


def study_html(study: dict[str, pd.DataFrame], titles: dict[str, str], classification: pd.DataFrame) -> str:
    """The study-layout tables as one standalone HTML page (the report shows it inline)."""
    import html

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>camfaith tables</title><style>"
             "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin-bottom:2em} "
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#f4f4f4}</style></head><body>",
             "<h1>Tables</h1><p>" + html.escape(BOLD_RULE) + " Here a * marks those cells.</p>",
             "<h2>Classification (test split)</h2>", classification.to_html(index=False, float_format=lambda v: f"{v:.3f}")]
    for metric, table in study.items():
        parts.append(f"<h2>{html.escape(titles[metric])}</h2>")
        parts.append(table.to_html() if not table.empty else "<p>not run</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_csv(frame: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def aggregate_figures(score_paths: list, summary_csv, classification_csv, out: dict, friedman_csv=None) -> None:
    """MoRF curves, the running AOPC, Max-Sensitivity against radius, balanced accuracy against AOPC and against
    Max-Sensitivity, critical-difference diagrams (from ``friedman_csv``); PNG and PDF each."""
    from camfaith import aggregate as agg
    from camfaith import plots

    scores = agg.read_scores(score_paths)
    summary = pd.read_csv(summary_csv)
    classification = pd.read_csv(classification_csv)
    plots.save(plots.morf_curves(scores), out["morf_png"], out["morf_pdf"])
    if "running_aopc_png" in out:
        plots.save(plots.running_aopc(scores), out["running_aopc_png"], out["running_aopc_pdf"])
    plots.save(plots.sensitivity_vs_radius(summary), out["sensitivity_png"], out["sensitivity_pdf"])
    plots.save(plots.accuracy_vs_aopc(summary, classification), out["accuracy_png"], out["accuracy_pdf"])
    if "accuracy_sensitivity_png" in out:
        plots.save(plots.accuracy_vs_metric(summary, classification, "max_sensitivity"), out["accuracy_sensitivity_png"],
                   out["accuracy_sensitivity_pdf"])
    if friedman_csv is not None:
        from camfaith.metrics import registry

        friedman = read_csv_or_empty(friedman_csv)
        if not friedman.empty:  # the faithfulness cells: with the localisation ones the figure would hold every setting of every metric
            friedman = friedman[friedman["metric"].isin(registry.names(family="faithfulness"))]
        plots.save(plots.critical_difference(friedman), out["critical_difference_png"], out["critical_difference_pdf"])
    if "localisation_png" in out:
        plots.save(plots.localisation(summary), out["localisation_png"], out["localisation_pdf"])


def read_csv_or_empty(path) -> pd.DataFrame:
    """A CSV written by :func:`write_csv`; an empty frame for a file of an empty table (no header)."""
    from pandas.errors import EmptyDataError

    try:
        return pd.read_csv(path)
    except EmptyDataError:
        return pd.DataFrame()


def overlay_figures(maps_paths: dict[str, str], score_paths: list, index_path, raw_dir, params: dict, out: dict) -> None:
    """Example test images with every method's map, its scores and the ground-truth outline
    (``png``, ``pdf``), and the images on which ``params["compare"]`` disagree most by AOPC
    (``disagreement_png``, ``disagreement_pdf``)."""
    from camfaith import aggregate as agg
    from camfaith import plots
    from camfaith.data.own import data_root

    table = read_parquet(index_path)
    raw_dir = data_root(raw_dir)  # where the index's paths point: local_path for your own images
    scores = agg.read_scores(score_paths) if score_paths else pd.DataFrame()
    plots.save(plots.overlays(maps_paths, table, raw_dir, params["examples"], params["image_size"], scores), out["png"], out["pdf"])
    figure = plots.disagreement(maps_paths, scores, table, raw_dir, params["examples"], params["image_size"], params.get("compare"))
    plots.save(figure, out["disagreement_png"], out["disagreement_pdf"])


def sweep_table(summary_csv, classification_csv, params: dict, csv_path, md_path) -> None:
    """Highest- and lowest-HAAS member of every model grid, with hyperparameters and test scores."""
    from camfaith import aggregate as agg
    from camfaith import sweep

    table = sweep.extremes(pd.read_csv(summary_csv), pd.read_csv(classification_csv), params["members"], params["method"])
    write_csv(table, csv_path)
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"# HAAS over each hyperparameter grid ({params['method']}): highest and lowest\n\n" + agg.markdown_table(table))
