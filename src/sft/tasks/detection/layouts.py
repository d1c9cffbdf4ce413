"""Where a detection dataset's files are, in the layouts people bring: COCO JSON, a YOLO folder (`images/` +
`labels/`, as sft and Roboflow split it), the Ultralytics tree (`images/<split>` + `labels/<split>`) and its
`data.yaml`, and Pascal VOC (`Annotations/*.xml` + `JPEGImages/` + `ImageSets/Main/<split>.txt`).

A data.yaml, a VOC root or a dataset root holding several split folders is one source with several splits: the
recipe's `data.train` pointing at it fills `data.val` and `data.test` (those given explicitly win) with the same path
and a `split`. Ultralytics' own rules are followed where they exist (ultralytics/data/utils.py `check_det_dataset`,
`img2label_paths`): the label of an image is its path with the last `/images/` replaced by `/labels/` and the suffix
by .txt; an image folder is searched recursively; a `../` entry that is not found is retried without it (Roboflow's
exports). Two deliberate differences: a relative `path:` is relative to the yaml's folder (Ultralytics tries its own
datasets folder, which sft does not have), and a relative line of a .txt image list that does not start with `./`
is relative to the dataset root (Ultralytics leaves it to the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from sft.data.images import IMAGE_EXTS
from sft.errors import UserError

SPLITS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
LAYOUTS = ("a COCO instances .json (or a folder holding one); a YOLO/Roboflow split folder with images/ and labels/; "
           "the Ultralytics tree images/<split> + labels/<split> (give images/train, or the root); an Ultralytics "
           "data.yaml (path, train, val, test, names); Pascal VOC: Annotations/*.xml + JPEGImages/ (+ "
           "ImageSets/Main/<split>.txt)")


def detect_format(path: Path, format: str) -> tuple[str, Path]:
    """(kind, where): ("coco", instances file), ("yolo", folder or .txt image list), ("ultralytics", data.yaml) or
    ("voc", root folder or ImageSets .txt)."""
    if not path.exists():
        raise UserError(f"{path}: detection data not found; sft reads {LAYOUTS}")
    suffix = path.suffix.lower()
    if path.is_file():
        if format in ("auto", "ultralytics") and suffix in (".yaml", ".yml"):
            return "ultralytics", path
        if format in ("auto", "voc") and suffix == ".txt" and path.parent.parent.name == "ImageSets":
            return "voc", path
        if format in ("auto", "yolo") and suffix == ".txt":
            return "yolo", path
        if format in ("auto", "coco"):
            return "coco", path
        raise UserError(f"{path}: a file, which format {format} does not read; sft reads {LAYOUTS}")
    jsons = sorted(path.glob("*.json"))
    yamls = [p for p in sorted(path.iterdir()) if p.suffix.lower() in (".yaml", ".yml") and p.is_file()]
    if format == "voc" or (format == "auto" and (path / "Annotations").is_dir()):
        if not (path / "Annotations").is_dir():
            raise UserError(f"{path}: a VOC folder needs Annotations/ (*.xml) and JPEGImages/")
        return "voc", path
    if format == "yolo" or (format == "auto" and ((path / "labels").is_dir() or labels_folder(path).is_dir()
                                                  or split_folders(path))):
        return "yolo", path
    if format in ("auto", "coco") and len(jsons) == 1:
        return "coco", jsons[0]
    if format in ("auto", "ultralytics") and yamls:
        chosen = [p for p in yamls if p.stem == "data"] or yamls
        if len(chosen) == 1:
            return "ultralytics", chosen[0]
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in sorted(path.iterdir())[:8]) or "nothing"
    raise UserError(f"{path}: matches no detection layout (format {format}); found {found}. sft reads {LAYOUTS}; "
                    f"give the file or folder itself, or set data.*.format")


def dataset_splits(path: Path, format: str) -> list[str]:
    """The splits (train, val, test) that one source holds, e.g. a data.yaml's keys; [] for a single split."""
    if not path.exists() or format not in ("auto", "yolo", "ultralytics", "voc"):
        return []
    kind, where = detect_format(path, format)
    if kind == "ultralytics":
        data = load_yaml(where)
        return [s for s in SPLITS if data.get(s)]
    if kind == "voc" and where.is_dir():
        return [s for s in SPLITS if (where / "ImageSets" / "Main" / f"{s}.txt").is_file()]
    if kind == "yolo" and where.is_dir():
        return list(split_folders(where))
    return []


def split_folders(root: Path) -> dict[str, Path]:
    """{split: its images folder} of a dataset root holding images/<split> (Ultralytics) or <split>/images
    (Roboflow); {} when the root's images/ holds pictures itself."""
    if (root / "images").is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in (root / "images").iterdir()):
        return {}
    found = {}
    for split, names in SPLITS.items():
        for name in names:
            for folder in (root / "images" / name, root / name / "images", root / name):
                if folder.is_dir() and labels_folder(folder).is_dir():
                    found.setdefault(split, folder)
    return found


def yolo_images(path: Path, split: str | None) -> tuple[list[str], Path | None]:
    """A YOLO source's image files and the folder to check for label files without an image (None for a list)."""
    if path.is_file():
        return list_file(path, path.parent, str(path)), None
    folders = split_folders(path)
    if split or folders:
        split = split or "train"
        if split not in folders:
            raise UserError(f"{path}: no {split} split (looked for images/{split} and {split}/images, each with its "
                            f"labels folder)")
        path = folders[split]
    folder = path / "images" if (path / "images").is_dir() else path
    if not labels_folder(folder).is_dir():
        raise UserError(f"{path}: expected the subfolders images/ and labels/ (no {labels_folder(folder)}/)")
    return image_files(folder), folder


def label_file(image: str) -> str:
    """Ultralytics' rule: the last /images/ of the path becomes /labels/, the suffix .txt."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return os.path.splitext(b.join(image.rsplit(a, 1)))[0] + ".txt"


def labels_folder(images: Path) -> Path:
    parts = list(images.parts)
    if "images" not in parts:
        return images / "__no_labels__"
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:])


def image_files(folder: Path) -> list[str]:
    """Every image under `folder` (recursive, as Ultralytics), sorted, as absolute paths."""
    return sorted(os.path.abspath(p) for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file())


def list_file(path: Path, root: Path, where: str) -> list[str]:
    """The images a .txt lists, one a line: `./x` is relative to the list's folder, another relative line to
    `root`."""
    files = []
    for line, text in enumerate(path.read_text().splitlines(), 1):
        name = text.strip()
        if not name or name.startswith("#"):
            continue
        file = path.parent / name[2:] if name.startswith("./") else root / name
        if not file.is_file():
            raise UserError(f"{where} line {line}: image not found: {file}")
        if file.suffix.lower() not in IMAGE_EXTS:
            raise UserError(f"{where} line {line}: {file.name} is not an image ({', '.join(sorted(IMAGE_EXTS))})")
        files.append(os.path.abspath(file))
    return files


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the data.yaml ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: an Ultralytics data.yaml is a mapping (path, train, val, test, names)")
    return data


def yaml_names(data: dict, path: Path) -> list[str]:
    """`names` as a list or {index: name} (indices 0..n-1), else `nc` class_0..; they must agree with `nc`."""
    names, nc = data.get("names"), data.get("nc")
    if names is None:
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise UserError(f"{path}: names: missing; give `names:` (a list, or {{index: name}}) or `nc:`")
        names = [f"class_{i}" for i in range(nc)]
    if isinstance(names, dict):
        try:
            keyed = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            keyed = {}
        if sorted(keyed) != list(range(len(names))):
            raise UserError(f"{path}: names: the keys of {{index: name}} must be 0..{len(names) - 1}, got "
                            f"{list(names)[:8]}")
        names = [keyed[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int, float)) for n in names):
        raise UserError(f"{path}: names: expected a list of class names or {{index: name}}, got {names!r:.80}")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: names: a class is named twice ({names})")
    if nc is not None and nc != len(names):
        raise UserError(f"{path}: nc: {nc} but names has {len(names)} classes")
    return names


def yaml_split(path: Path, split: str) -> list[str]:
    """The image files of one split of an Ultralytics data.yaml: a folder, a .txt list or a list of them."""
    data = load_yaml(path)
    given = data.get("path")
    root = Path(given) if given else path.parent
    root = root if root.is_absolute() else path.parent / root
    if not root.is_dir():
        raise UserError(f"{path}: path: {given!r} is not a folder ({root})")
    entries = data.get(split)
    if not entries:
        raise UserError(f"{path}: {split}: missing; the yaml has no {split} split")
    files = []
    for entry in entries if isinstance(entries, list) else [entries]:
        if not isinstance(entry, str):
            raise UserError(f"{path}: {split}: expected a folder, a .txt list or a list of them, got {entry!r:.60}")
        where = root / entry
        if not where.exists() and entry.startswith("../"):
            where = root / entry[3:]
        if where.is_dir():
            files += image_files(where)
        elif where.is_file() and where.suffix.lower() == ".txt":
            files += list_file(where, root, str(where))
        elif where.is_file() and where.suffix.lower() in IMAGE_EXTS:
            files.append(os.path.abspath(where))
        else:
            raise UserError(f"{path}: {split}: {entry!r} not found (looked for {where})")
    return files


def voc_ids(where: Path, split: str | None) -> tuple[Path, list[tuple[str, str]]]:
    """(VOC root, [(image id, where it was listed)]): an ImageSets/Main .txt, the root's `split` list, or every
    annotation of the root."""
    if where.is_file():
        root, listing = where.parents[2], where
    else:
        root, listing = where, where / "ImageSets" / "Main" / f"{split}.txt" if split else None
        if listing is not None and not listing.is_file():
            raise UserError(f"{root}: no {split} split ({listing} not found)")
    if listing is None:
        return root, [(p.stem, str(p)) for p in sorted((root / "Annotations").glob("*.xml"))]
    ids = []
    for line, text in enumerate(listing.read_text().splitlines(), 1):
        if text.split():
            ids.append((text.split()[0], f"{listing} line {line}"))
    return root, ids
