"""Tiny copies of the published datasets in their real layouts and archive formats, and a real HTTP
server on 127.0.0.1 that serves them the way the hosts do (Range requests, ETags, Kaggle's Basic auth).

Each builder writes a handful of real images (PNG/JPEG/TIFF, or the binary batch formats) into the
folder structure the publisher ships and packs them into the publisher's archive type.
"""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from PIL import Image

from camfaith.data import registry
from camfaith.data.fetch import source_url

KAGGLE_USER, KAGGLE_KEY = "tester", "secret-key"


def image_bytes(seed: int, size: tuple[int, int] = (24, 24), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode).save(buffer, fmt)
    return buffer.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def tar_of(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- one builder per dataset: {archive name: archive bytes} -----------------------------------------------


def crc() -> dict[str, bytes]:
    train = {f"NCT-CRC-HE-100K/{c}/{c}-TRAIN{i:03d}.tif": image_bytes(10 * k + i, fmt="TIFF") for k, c in enumerate(("ADI", "TUM", "NORM")) for i in range(6)}
    test = {f"CRC-VAL-HE-7K/{c}/{c}-TEST{i:03d}.tif": image_bytes(100 + 10 * k + i, fmt="TIFF") for k, c in enumerate(("ADI", "TUM", "NORM")) for i in range(2)}
    return {"NCT-CRC-HE-100K.zip": zip_of(train), "CRC-VAL-HE-7K.zip": zip_of(test)}


COVID_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


def covid_radiography() -> dict[str, bytes]:
    files = {}
    for k, c in enumerate(COVID_CLASSES):
        for i in range(1, 6):
            files[f"COVID-19_Radiography_Dataset/{c}/images/{c}-{i}.png"] = image_bytes(10 * k + i, mode="L")
            files[f"COVID-19_Radiography_Dataset/{c}/masks/{c}-{i}.png"] = image_bytes(50 + 10 * k + i, (16, 16), mode="L")
    files["COVID-19_Radiography_Dataset/COVID.metadata.xlsx"] = b"not read"
    return {"covid19-radiography-database.zip": zip_of(files)}


HAM_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def ham10000() -> dict[str, bytes]:
    rows, files = [], {}
    for k, dx in enumerate(HAM_CLASSES):
        for lesion in range(5):
            for shot in range(2 if lesion % 2 == 0 else 1):  # some lesions have two images
                image_id = f"ISIC_{k:02d}{lesion:02d}{shot}"
                rows.append({"lesion_id": f"HAM_{k:02d}{lesion:02d}", "image_id": image_id, "dx": dx, "dx_type": "histo", "age": 50,
                             "sex": "male", "localization": "back"})
                part = 1 if lesion < 3 else 2
                data = image_bytes(100 * k + 10 * lesion + shot, fmt="JPEG")
                files[f"HAM10000_images_part_{part}/{image_id}.jpg"] = data
                files[f"ham10000_images_part_{part}/{image_id}.jpg"] = data  # Kaggle's copy ships every image twice
    files["HAM10000_metadata.csv"] = pd.DataFrame(rows).to_csv(index=False).encode()
    return {"skin-cancer-mnist-ham10000.zip": zip_of(files)}


# (kind, subtype folder, subtype code, slide folder id): 14-22549AB and 14-22549CD are one patient's two slides,
# the case the study's hand-made split sent to different splits.
BREAKHIS_SLIDES = [
    ("benign", "fibroadenoma", "F", "14-22549AB"), ("benign", "fibroadenoma", "F", "14-22549CD"),
    ("benign", "adenosis", "A", "14-22549G"), ("benign", "adenosis", "A", "14-21998AB"),
    ("benign", "tubular_adenoma", "TA", "14-16184"), ("benign", "phyllodes_tumor", "PT", "14-29960AB"),
    ("benign", "phyllodes_tumor", "PT", "14-29960CD"), ("benign", "adenosis", "A", "14-19854C"),
    ("malignant", "ductal_carcinoma", "DC", "14-13412"), ("malignant", "lobular_carcinoma", "LC", "14-15570"),
    ("malignant", "ductal_carcinoma", "DC", "14-23060AB"), ("malignant", "ductal_carcinoma", "DC", "14-23060CD"),
    ("malignant", "mucinous_carcinoma", "MC", "14-10147"), ("malignant", "papillary_carcinoma", "PC", "14-9146"),
    ("malignant", "ductal_carcinoma", "DC", "14-2523"), ("malignant", "lobular_carcinoma", "LC", "14-16196"),
]


def breakhis_name(kind: str, code: str, slide: str, magnification: int, number: int) -> str:
    return f"SOB_{'B' if kind == 'benign' else 'M'}_{code}-{slide}-{magnification}-{number:03d}.png"


def breakhis() -> dict[str, bytes]:
    files = {}
    for k, (kind, subtype, code, slide) in enumerate(BREAKHIS_SLIDES):
        for magnification in (40, 100, 200, 400):
            for number in (1, 2):
                name = breakhis_name(kind, code, slide, magnification, number)
                slide_folder = f"SOB_{'B' if kind == 'benign' else 'M'}_{code}_{slide}"
                path = f"BreaKHis_v1/BreaKHis_v1/histology_slides/breast/{kind}/SOB/{subtype}/{slide_folder}/{magnification}X/{name}"
                files[path] = image_bytes(1000 * k + 10 * magnification + number, (28, 18))
    files["Folds.csv"] = b"fold,mag,grp,filename\n"
    return {"breakhis.zip": zip_of(files)}


def aptos2019() -> dict[str, bytes]:
    rows, files = [], {}
    for grade in range(5):
        for i in range(6):
            code = f"{grade:x}{i:03x}abcd"
            rows.append({"id_code": code, "diagnosis": grade})
            files[f"train_images/{code}.png"] = image_bytes(10 * grade + i, (30, 26))
    files["train.csv"] = pd.DataFrame(rows).to_csv(index=False).encode()
    files["test.csv"] = b"id_code\nffff0000\n"
    files["test_images/ffff0000.png"] = image_bytes(999)
    return {"aptos2019-blindness-detection.zip": zip_of(files)}


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {"cifar-10-batches-py/batches.meta": pickle.dumps({"label_names": CIFAR_NAMES, "num_cases_per_batch": 4})}
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        files[f"cifar-10-batches-py/{batch}"] = pickle.dumps({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": labels})
    return {"cifar-10-python.tar.gz": tar_of(files)}


STL_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def stl10() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    files = {"stl10_binary/class_names.txt": "\n".join(STL_NAMES).encode() + b"\n"}
    for part, count in (("train", 40), ("test", 5)):
        files[f"stl10_binary/{part}_X.bin"] = rng.integers(0, 255, count * 3 * 96 * 96, dtype=np.uint8).tobytes()
        files[f"stl10_binary/{part}_y.bin"] = (np.arange(count) % 10 + 1).astype(np.uint8).tobytes()
    files["stl10_binary/unlabeled_X.bin"] = b""
    return {"stl10_binary.tar.gz": tar_of(files)}


IMAGENETTE_WNIDS = ["n01440764", "n02102040", "n02979186"]


def imagenette() -> dict[str, bytes]:
    files = {}
    for k, wnid in enumerate(IMAGENETTE_WNIDS):
        for split, count in (("train", 5), ("val", 2)):
            for i in range(count):
                files[f"imagenette2/{split}/{wnid}/{wnid}_{split}{i}.JPEG"] = image_bytes(100 * k + 10 * (split == "val") + i, fmt="JPEG")
    files["imagenette2/noisy_imagenette.csv"] = b"path,noisy_labels_0\n"
    return {"imagenette2.tgz": tar_of(files)}


# NIH ChestX-ray14 as Kaggle's nih-chest-xrays/data unpacks: the CSVs and lists at the top, the PNGs in
# images_0NN/images/. Patients 1-4 are train_val_list.txt, 5-7 test_list.txt (where NIH's boxes are).
# Images are 32 px (the real ones 1024 px); the boxes are x, y, w, h floats in those pixels.
CHESTXRAY14_FINDINGS = {
    "00000001_000.png": "No Finding", "00000001_001.png": "Atelectasis", "00000001_002.png": "Cardiomegaly|Effusion",
    "00000002_000.png": "No Finding", "00000002_001.png": "Effusion", "00000002_002.png": "Mass",
    "00000003_000.png": "Cardiomegaly", "00000003_001.png": "No Finding", "00000003_002.png": "Atelectasis",
    "00000004_000.png": "Effusion", "00000004_001.png": "No Finding", "00000004_002.png": "Mass",
    "00000005_000.png": "Cardiomegaly", "00000005_001.png": "Effusion|Infiltration", "00000005_002.png": "No Finding",
    "00000006_000.png": "Atelectasis", "00000006_001.png": "Mass", "00000006_002.png": "Effusion|Mass",
    "00000007_000.png": "No Finding", "00000007_001.png": "Effusion",
}
CHESTXRAY14_BOXES = [  # (image, finding as BBox_List_2017.csv spells it, x, y, w, h)
    ("00000005_000.png", "Cardiomegaly", 8.5, 10.25, 14.0, 12.5),
    ("00000005_001.png", "Infiltrate", 2.0, 3.0, 6.5, 9.75),
    ("00000006_000.png", "Atelectasis", 16.0, 16.0, 8.0, 8.0),
    ("00000006_000.png", "Atelectasis", 1.0, 1.0, 4.0, 4.0),  # a second box of one image: not kept
    ("00000006_001.png", "Mass", 20.2, 4.9, 5.3, 5.3),
    ("00000007_001.png", "Effusion", 0.0, 18.0, 32.0, 14.0),
]


def chestxray14_files(boxes: list[tuple] | None = None) -> dict[str, bytes]:
    """The unpacked files of the fixture (``boxes`` replaces :data:`CHESTXRAY14_BOXES`)."""
    files = {}
    entries = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    for k, (name, findings) in enumerate(CHESTXRAY14_FINDINGS.items()):
        patient = int(name[:8])
        files[f"images_{1 + k % 2:03d}/images/{name}"] = image_bytes(k, (32, 32), mode="L")
        entries.append(f"{name},{findings},{int(name[9:12])},{patient},{40 + patient},M,PA,2500,2048,0.168,0.168,")
    files["Data_Entry_2017.csv"] = ("\n".join(entries) + "\n").encode()
    rows = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
    rows += [f"{name},{finding},{x},{y},{w},{h},,," for name, finding, x, y, w, h in (CHESTXRAY14_BOXES if boxes is None else boxes)]
    files["BBox_List_2017.csv"] = ("\n".join(rows) + "\n").encode()
    names = list(CHESTXRAY14_FINDINGS)
    files["train_val_list.txt"] = ("\n".join(n for n in names if int(n[:8]) <= 4) + "\n").encode()
    files["test_list.txt"] = ("\n".join(n for n in names if int(n[:8]) > 4) + "\n").encode()
    files["README_CHESTXRAY.pdf"] = b"not read"
    return files


def chestxray14() -> dict[str, bytes]:
    return {"nih-chest-xrays-data.zip": zip_of(chestxray14_files())}


# ILSVRC 2012 validation: ILSVRC2012_img_val.tar holds the JPEGs flat; ILSVRC2012_bbox_val_v3.tgz holds
# val/<name>.xml (PASCAL VOC). Three classes, three images each; images 40 x 30 px (the real ones vary).
ILSVRC_WNIDS = ("n01440764", "n01443537", "n01484850")
ILSVRC_BOXES = {  # image number -> boxes (xmin, ymin, xmax, ymax)
    1: [(4, 3, 20, 18)], 2: [(0, 0, 40, 30)], 3: [(10, 5, 14, 9), (25, 10, 38, 28)],  # 3: two boxes, the second larger
    4: [(2, 2, 12, 12)], 5: [(20, 0, 40, 15)], 6: [(5, 5, 35, 25)],
    7: [(1, 1, 9, 9), (30, 20, 38, 28)], 8: [(15, 10, 25, 20)], 9: [(0, 15, 20, 30)],  # 7: two of equal area
}


def ilsvrc_annotation(name: str, wnids: list[str], boxes: list[tuple], size: tuple[int, int] = (40, 30)) -> bytes:
    objects = "".join(f"<object><name>{wnid}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
                      f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                      for wnid, (x0, y0, x1, y1) in zip(wnids, boxes))
    return (f"<annotation><folder>val</folder><filename>{name}</filename><source><database>ILSVRC_2012</database></source>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>"
            f"{objects}</annotation>").encode()


def ilsvrc2012_val(boxes: dict[int, list[tuple]] | None = None) -> dict[str, bytes]:
    boxes = ILSVRC_BOXES if boxes is None else boxes
    images, annotations = {}, {}
    for number in ILSVRC_BOXES:
        name = f"ILSVRC2012_val_{number:08d}"
        images[f"{name}.JPEG"] = image_bytes(300 + number, (40, 30), fmt="JPEG")
        if number in boxes:
            wnid = ILSVRC_WNIDS[(number - 1) // 3]
            annotations[f"val/{name}.xml"] = ilsvrc_annotation(name, [wnid] * len(boxes[number]), boxes[number])
    return {"ILSVRC2012_img_val.tar": tar_of(images, "w"), "ILSVRC2012_bbox_val_v3.tgz": tar_of(annotations)}


BUILDERS = {"crc": crc, "chestxray14": chestxray14, "ilsvrc2012_val": ilsvrc2012_val, "covid_radiography": covid_radiography,
            "ham10000": ham10000, "breakhis": breakhis, "aptos2019": aptos2019, "cifar10": cifar10, "stl10": stl10, "imagenette": imagenette}


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


# --- the server -------------------------------------------------------------------------------------------


@dataclass
class Served:
    """What the server holds and saw. ``cut_first``: path → bytes after which the first response for
    that path is cut off (an interrupted transfer)."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_first: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    bytes_sent: int = 0
    ranges: bool = True


class FixtureServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 serving :class:`Served` files; ``/api/v1/…`` (Kaggle)
    requires Basic auth with :data:`KAGGLE_USER`/:data:`KAGGLE_KEY`."""

    def __init__(self) -> None:
        self.served = Served()
        served = self.served

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                served.requests.append((path, dict(self.headers)))
                if path.startswith("/api/v1/"):
                    expected = "Basic " + base64.b64encode(f"{KAGGLE_USER}:{KAGGLE_KEY}".encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_response(401)
                        self.end_headers()
                        return
                data = served.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                start = 0
                wanted = self.headers.get("Range")
                if served.ranges and wanted and self.headers.get("If-Range", etag) == etag:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = served.cut_first.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    served.bytes_sent += cut
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)
                served.bytes_sent += len(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FixtureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def publish(self, dataset: str, archives: dict[str, bytes]) -> None:
        """Serve ``archives`` at the paths the registry's URLs have (their host replaced by ours)."""
        for remote in registry.entry(dataset).files:
            self.served.files[urlsplit(source_url(remote, self.url)).path] = archives[remote.name]

    def path_of(self, dataset: str, name: str) -> str:
        remote = next(r for r in registry.entry(dataset).files if r.name == name)
        return urlsplit(source_url(remote, self.url)).path
