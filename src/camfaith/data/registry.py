"""The datasets camfaith knows: where each comes from, how it is checked, laid out, grouped and split.

Every entry names the archives to fetch (direct URLs, or a Kaggle dataset/competition that needs the
user's API token), their checksums where the publisher gives one, the index adapter that reads the
extracted layout (:mod:`camfaith.data.adapters`), and the group key that keeps related images in one
split. ``docs/datasets.md`` is the human-readable version of this table; keep them in step.

Checksums: ``md5:``/``sha256:`` strings as pooch takes them. ``None`` means the publisher gives
none (Kaggle re-packs its archives); the download stage then records the SHA-256 it saw in the
dataset's ``manifest.json`` and a config ``checksums:`` entry can pin it from then on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RemoteFile:
    """One archive of a dataset.

    ``url``: a direct download; ``kaggle``: ``datasets/<owner>/<name>`` or ``competitions/<name>``
    (fetched with the user's token from Kaggle's API); ``manual``: the page where a registered user
    downloads it (ImageNet): never fetched from the publisher, only from ``local_path``, the cache or
    a ``mirror:`` (at ``url``'s path). ``extract_to``: sub-folder of the dataset folder the archive is
    unpacked into ("" = the folder itself). ``size``: bytes, when known.
    """

    name: str
    url: str | None = None
    kaggle: str | None = None
    known_hash: str | None = None
    size: int | None = None
    extract_to: str = ""
    manual: str | None = None

    @property
    def page(self) -> str:
        """Where a person downloads this file by hand."""
        if self.manual:
            return self.manual
        if self.kaggle:
            return f"https://www.kaggle.com/{self.kaggle}"
        return str(self.url)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    files: tuple[RemoteFile, ...]
    adapter: str
    classes: tuple[str, ...]
    group_key: str
    split_rule: str
    licence: str
    citation: str
    size_note: str
    prepare: str | None = None  # a converter run after extraction (binary formats → PNG + metadata.csv)
    notes: tuple[str, ...] = field(default_factory=tuple)
    ground_truth: str = "none"  # mask, box or none: what the localisation metrics compare maps with
    # all: every image has it (one without is quarantined); some: only some images do (ChestX-ray14's
    # boxed images), the localisation metrics score those and count the others
    ground_truth_scope: str = "all"


KAGGLE_API = "https://www.kaggle.com/api/v1"
IMAGENET_PAGE = "https://image-net.org/download-images.php"

DATASETS: dict[str, DatasetEntry] = {
    "crc": DatasetEntry(
        name="crc",
        title="NCT-CRC-HE-100K + CRC-VAL-HE-7K (colorectal cancer histology, 9 tissue classes)",
        files=(
            RemoteFile("NCT-CRC-HE-100K.zip", url="https://zenodo.org/records/1214456/files/NCT-CRC-HE-100K.zip",
                       known_hash="md5:6fd702d11df6292bc054397ae038a464", size=11_690_284_003),
            RemoteFile("CRC-VAL-HE-7K.zip", url="https://zenodo.org/records/1214456/files/CRC-VAL-HE-7K.zip",
                       known_hash="md5:2fd1651b4f94ebd818ebf90ad2b6ce06", size=800_276_929),
        ),
        adapter="crc_folders",
        classes=("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
        group_key="image (the patches carry no patient id)",
        split_rule="official: CRC-VAL-HE-7K is the test set; NCT-CRC-HE-100K is split into train/val",
        licence="CC BY 4.0",
        citation="Kather, Halama, Marx (2018), Zenodo record 1214456, doi:10.5281/zenodo.1214456",
        size_note="100,000 + 7,180 patches of 224×224 px (TIFF); 12.5 GB of archives",
    ),
    "covid_radiography": DatasetEntry(
        name="covid_radiography",
        title="COVID-19 Radiography Database (chest X-rays, 4 classes)",
        files=(RemoteFile("covid19-radiography-database.zip", kaggle="datasets/tawsifurrahman/covid19-radiography-database"),),
        adapter="covid_folders",
        classes=("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"),
        group_key="image (no patient id is published; the study's split was not patient-grouped either)",
        split_rule="grouped stratified split by the config's fractions",
        licence="see the Kaggle page (data from several public sources, each with its own terms)",
        citation="Chowdhury et al. (2020) IEEE Access; Rahman et al. (2021) Comput. Biol. Med.",
        size_note="21,165 PNG images of 299×299 px with lung masks; about 0.8 GB",
        notes=("lung masks are 256×256 px and are resized to the input size, as the images are; the localisation "
               "metrics compare maps with them",),
        ground_truth="mask",
    ),
    "chestxray14": DatasetEntry(
        name="chestxray14",
        title="NIH ChestX-ray14 (frontal chest X-rays, 14 findings; 984 hand-drawn boxes of 8 findings on 880 images)",
        files=(RemoteFile("nih-chest-xrays-data.zip", kaggle="datasets/nih-chest-xrays/data"),),
        adapter="chestxray14_csv",
        classes=("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
                 "Infiltration", "Mass", "No Finding", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"),
        group_key="Patient ID (Data_Entry_2017.csv), so all follow-up images of a patient stay in one split",
        split_rule="official: test_list.txt is the test set (patient-wise; it holds the boxed images); train_val_list.txt "
                   "is split into train/val",
        licence="no restriction on use (NIH Clinical Center); acknowledge the NIH Clinical Center and cite the paper",
        citation="Wang et al. (2017) ChestX-ray8, CVPR, doi:10.1109/CVPR.2017.369",
        size_note="112,120 PNG images of 1024×1024 px from 30,805 patients; about 45 GB",
        notes=("single-label index: an image with one finding (or No Finding) is labelled by it; an image with a box is "
               "labelled by its box's finding (the box belongs to its finding) and keeps its first box; an image with several "
               "findings and no box has no single true class and is left out; both counts are logged by the index stage",
               "boxes (BBox_List_2017.csv, x y w h in the 1024 px images) are widened to whole pixels; only the boxed images "
               "are scored by the localisation metrics (ground_truth_scope: some)"),
        ground_truth="box",
        ground_truth_scope="some",
    ),
    "ilsvrc2012_val": DatasetEntry(
        name="ilsvrc2012_val",
        title="ImageNet ILSVRC 2012 validation set with its bounding boxes (1,000 classes)",
        files=(
            RemoteFile("ILSVRC2012_img_val.tar", url="https://image-net.org/data/ILSVRC/2012/ILSVRC2012_img_val.tar",
                       manual=IMAGENET_PAGE, known_hash="md5:29b22e2961454d5413ddabcf34fc5622",
                       extract_to="images"),
            RemoteFile("ILSVRC2012_bbox_val_v3.tgz", url="https://image-net.org/data/ILSVRC/2012/ILSVRC2012_bbox_val_v3.tgz",
                       manual=IMAGENET_PAGE, extract_to="boxes"),
        ),
        adapter="metadata_csv",
        prepare="ilsvrc_val_boxes",
        classes=(),  # the 1,000 WordNet ids the box files name, sorted: torchvision's class order
        group_key="image",
        split_rule="every image is test: the validation set scores published models, nothing is trained on it",
        licence="ImageNet terms of access (non-commercial research and education; registration required)",
        citation="Russakovsky et al. (2015) ImageNet Large Scale Visual Recognition Challenge, IJCV 115",
        size_note="50,000 JPEG images of varying size, 50 per class, with one or more boxes each; 6.3 GB + 2 MB",
        notes=("ImageNet needs a registration: download the two archives by hand and set local_path",
               "labels come from the box files (every box of a validation image names its class); the union of an "
               "image's boxes is its mask (pointing game, relevance mass, pixels inside, relevance rank), its largest "
               "box its box (localisation error; the ILSVRC rule accepts any of them)"),
        ground_truth="mask",
    ),
    "ham10000": DatasetEntry(
        name="ham10000",
        title="HAM10000 (dermatoscopic images, 7 classes)",
        files=(RemoteFile("skin-cancer-mnist-ham10000.zip", kaggle="datasets/kmader/skin-cancer-mnist-ham10000"),),
        adapter="ham10000_csv",
        classes=("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
        group_key="lesion_id (several images of one lesion stay together)",
        split_rule="grouped stratified split by the config's fractions",
        licence="CC BY-NC 4.0 (Harvard Dataverse doi:10.7910/DVN/DBW86T)",
        citation="Tschandl, Rosendahl, Kittler (2018) Sci. Data 5:180161",
        size_note="10,015 JPEG images of 600×450 px, 7,470 lesions; about 2.7 GB",
    ),
    "breakhis": DatasetEntry(
        name="breakhis",
        title="BreakHis v1 (breast tumour histology, benign/malignant, 4 magnifications)",
        files=(RemoteFile("breakhis.zip", kaggle="datasets/ambarish/breakhis"),),
        adapter="breakhis_folders",
        classes=("benign", "malignant"),
        group_key="patient, parsed from the file name (SOB_B_A-14-22549AB-40-001.png → 14-22549), so all "
                  "slides and magnifications of a patient stay in one split",
        split_rule="grouped stratified split by the config's fractions",
        licence="research use (see the UFPR page, https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/)",
        citation="Spanhol et al. (2016) IEEE Trans. Biomed. Eng. 63(7)",
        size_note="7,909 PNG images of 700×460 px from 82 patients; about 4 GB",
        notes=("the study's hand-made split put slides of one patient (14-22549AB and 14-22549CD) into different "
               "splits; grouping by patient rules that out",),
    ),
    "aptos2019": DatasetEntry(
        name="aptos2019",
        title="APTOS 2019 Blindness Detection (fundus photographs, 5 retinopathy grades)",
        files=(RemoteFile("aptos2019-blindness-detection.zip", kaggle="competitions/aptos2019-blindness-detection"),),
        adapter="aptos_csv",
        classes=("0", "1", "2", "3", "4"),
        group_key="image (no patient id is published)",
        split_rule="only train.csv is labelled; it is split by the config's fractions",
        licence="Kaggle competition rules (accept them on the competition page before downloading)",
        citation="Asia Pacific Tele-Ophthalmology Society, Kaggle 2019",
        size_note="3,662 labelled PNG images of varying size; about 10 GB with the unlabelled test images",
    ),
    "cifar10": DatasetEntry(
        name="cifar10",
        title="CIFAR-10 (32×32 natural images, 10 classes)",
        files=(RemoteFile("cifar-10-python.tar.gz", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          known_hash="md5:c58f30108f718f92721af3b95e74349a", size=170_498_071),),
        adapter="metadata_csv",
        prepare="cifar10_batches",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        group_key="image",
        split_rule="official: test_batch is the test set; the five training batches are split into train/val",
        licence="no licence stated by the authors; cite the tech report",
        citation="Krizhevsky (2009) Learning Multiple Layers of Features from Tiny Images",
        size_note="60,000 images; 163 MB archive, written out as PNG",
    ),
    "stl10": DatasetEntry(
        name="stl10",
        title="STL-10 (96×96 natural images, 10 classes)",
        files=(RemoteFile("stl10_binary.tar.gz", url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                          known_hash="md5:91f7769df0f17e558f3565bffb0c7dfb"),),
        adapter="metadata_csv",
        prepare="stl10_binary",
        classes=("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
        group_key="image",
        split_rule="official: the test set is the test set; the 5,000 training images are split into train/val "
                   "(the 100,000 unlabelled images are not used)",
        licence="no licence stated by the authors; cite the paper",
        citation="Coates, Lee, Ng (2011) AISTATS",
        size_note="13,000 labelled images; about 2.5 GB archive (mostly the unlabelled part), written out as PNG",
    ),
    "imagenette": DatasetEntry(
        name="imagenette",
        title="Imagenette 2 (10 easy ImageNet classes, full size)",
        files=(RemoteFile("imagenette2.tgz", url="https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
                          known_hash="md5:fe2fc210e6bb7c5664d602c3cd71e612"),),
        adapter="imagenette_folders",
        classes=("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042", "n03425413",
                 "n03445777", "n03888605"),
        group_key="image",
        split_rule="official: imagenette2/val is the test set; imagenette2/train is split into train/val",
        licence="Apache 2.0 (fast.ai); images from ImageNet, under its terms",
        citation="Howard (2019) github.com/fastai/imagenette",
        size_note="13,394 JPEG images; 1.5 GB archive",
    ),
}


def entry(source: str) -> DatasetEntry:
    """The registry entry of ``source``; a clear error naming the known ones otherwise."""
    if source not in DATASETS:
        raise ValueError(f"unknown dataset source {source!r}; known: {sorted(DATASETS)} (or 'synthetic', 'folder', 'table')")
    return DATASETS[source]


# A researcher's own images, read in place (camfaith.data.own): source folder (<local_path>/<class>/<image>)
# and source table (a CSV or Parquet file of path, label, ...); each is read by the adapter of its name.
OWN_SOURCES = ("folder", "table")


@dataclass(frozen=True)
class SourceKeys:
    """What one kind of source reads from its dataset config: ``keys``, the source-specific keys it
    reads (the others of :data:`SOURCE_SPECIFIC_KEYS` are refused), ``required`` among them,
    ``adapters`` it accepts (None: any adapter of the published layouts), and ``does``, what it does,
    in words, for the message that refuses a key it would ignore."""

    keys: frozenset[str]
    required: tuple[str, ...]
    adapters: tuple[str, ...] | None
    does: str


# The one table of which source reads which dataset key; every key not listed here (preprocessing,
# index, split, classes, ground_truth, ground_truth_scope, metrics, adapter) applies to every source.
# Refusing the others matters: a key a source ignores (a local_path under source synthetic) would
# otherwise pass validation and silently do nothing.
SOURCE_KEYS: dict[str, SourceKeys] = {
    "synthetic": SourceKeys(frozenset({"synthetic"}), (), ("metadata_csv",), "generates its images and reads no folder"),
    "folder": SourceKeys(frozenset({"local_path"}), ("local_path",), ("folder",),
                         "reads your images in place from the tree <local_path>/<class>/<image> and downloads nothing"),
    "table": SourceKeys(frozenset({"local_path", "table", "columns"}), ("local_path",), ("table",),
                        "reads your images in place from local_path, as its table: lists them, and downloads nothing"),
    "registry": SourceKeys(frozenset({"local_path", "mirror", "cache_dir", "checksums", "retries"}), (), None,
                           "downloads its registry entry's archives and reads them in the publisher's layout"),
}

# What each source-specific key is for: the second half of the message refusing it under a source that ignores it.
SOURCE_SPECIFIC_KEYS: dict[str, str] = {
    "synthetic": "synthetic: holds the generator's settings, read by source: synthetic only",
    "local_path": "for your own images use source: folder (<local_path>/<class>/<image>) or source: table (a CSV or Parquet "
                  "file of path, label; docs/datasets.md, 'Your own images')",
    "mirror": "mirror, cache_dir, checksums and retries are settings of a registry source's download",
    "cache_dir": "mirror, cache_dir, checksums and retries are settings of a registry source's download",
    "checksums": "mirror, cache_dir, checksums and retries are settings of a registry source's download",
    "retries": "mirror, cache_dir, checksums and retries are settings of a registry source's download",
    "table": "table: and columns: name the file source: table reads and its columns; no other source reads them",
    "columns": "table: and columns: name the file source: table reads and its columns; no other source reads them",
}


def source_kind(source: str) -> str:
    """``synthetic``, ``folder``, ``table`` or ``registry``: the row of :data:`SOURCE_KEYS` a source follows."""
    return source if source in SOURCE_KEYS else "registry"


def default_adapter(source: str) -> str:
    """The adapter a source is read with when its config names none: ``metadata_csv`` for the synthetic
    set, ``folder``/``table`` for the own-image sources, else the registry entry's."""
    if source == "synthetic":
        return "metadata_csv"
    if source in OWN_SOURCES:
        return source
    return entry(source).adapter


def check_source_keys(name: str, dataset: dict) -> None:
    """Refuse, as a ``ValueError`` naming ``datasets.<name>.<key>``, a source-specific key the dataset's
    source ignores (saying what that source does and what the key is for), an adapter it cannot be
    read with, and a required key it lacks (:data:`SOURCE_KEYS`)."""
    source = dataset["source"]
    kind = SOURCE_KEYS[source_kind(source)]
    for key in SOURCE_SPECIFIC_KEYS:
        if dataset.get(key) is not None and key not in kind.keys:  # a null key is harmless: it asks for nothing
            raise ValueError(f"datasets.{name}.{key}: source {source} {kind.does}; {SOURCE_SPECIFIC_KEYS[key]}")
    for key in kind.required:
        if not dataset.get(key):
            raise ValueError(f"datasets.{name}.{key}: source {source} needs {key}: the folder that holds your images "
                             f"(relative paths are read from the working directory)")
    adapter = dataset.get("adapter")
    if adapter is None:
        return
    if kind.adapters is not None and adapter not in kind.adapters:
        raise ValueError(f"datasets.{name}.adapter: source {source} is read with adapter {kind.adapters[0]}, not {adapter}; "
                         f"remove adapter: (it defaults to {kind.adapters[0]})")
    if kind.adapters is None and adapter in OWN_SOURCES:
        raise ValueError(f"datasets.{name}.adapter: adapter {adapter} reads your own images (source: {adapter}, with local_path), "
                         f"not a download of source {source}")


GROUND_TRUTH_KINDS = ("mask", "box", "none")


GROUND_TRUTH_SCOPES = ("all", "some")


def ground_truth_scope(dataset: dict) -> str:
    """Whether every image of a dataset config has its ground truth (``all``: one without is
    quarantined) or only some (``some``: the localisation metrics score those and count the rest):
    its ``ground_truth_scope:``, else its registry entry's, else ``all``."""
    if dataset.get("ground_truth_scope"):
        return str(dataset["ground_truth_scope"])
    if dataset.get("source") in DATASETS:
        return DATASETS[dataset["source"]].ground_truth_scope
    return "all"


def ground_truth(dataset: dict) -> str:
    """What ground truth a dataset config has: its ``ground_truth:`` (``mask``, ``box`` or ``none``),
    else ``mask`` for the synthetic set (every image has its object's mask and box), else for your own
    images what their files hold (:func:`camfaith.data.own.detected_ground_truth`: a ``masks/`` folder
    or mask column, else boxes), else its registry entry's, else (a ``metadata_csv`` folder of the
    user's) ``none``."""
    if dataset.get("ground_truth"):
        return str(dataset["ground_truth"])
    if dataset.get("source") == "synthetic":
        return "mask"
    if dataset.get("source") in OWN_SOURCES:
        from camfaith.data.own import detected_ground_truth

        return detected_ground_truth(dataset)
    if dataset.get("source") in DATASETS:
        return DATASETS[dataset["source"]].ground_truth
    return "none"


def declared_classes(dataset: dict) -> list[str] | None:
    """The class names a dataset config declares: its ``classes:``, else its registry entry's, else
    (``synthetic``) its generator's; None for a ``metadata_csv`` dataset that declares none, whose
    classes are then the labels found."""
    if dataset.get("classes"):
        return list(dataset["classes"])
    if dataset.get("source") == "synthetic":
        from camfaith.data.synthetic import SyntheticSpec

        return list(SyntheticSpec.from_config(dataset.get("synthetic", {})).classes)
    if dataset.get("source") in DATASETS:
        # an entry without a class list (ImageNet's 1,000) takes the labels its files give
        return list(DATASETS[dataset["source"]].classes) or None
    return None
