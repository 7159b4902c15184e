"""Class and file names: as text every output can hold (names that are not UTF-8), as classes (Unicode NFC),
and as they are shown (display names from class_names.json or --class-names)."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alexnet_cli.errors import DataError


def printable(name: str) -> str:
    """A file or folder name as text that every output can hold: the bytes of a name that is not valid UTF-8
    (which Python reads as lone surrogates) written as \\xNN, so `caf\\xe9.jpg` for Latin-1's "café.jpg"."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def class_name(folder: str) -> str:
    """A class folder's name as a class: printable, and Unicode NFC, so that "café" written either way (macOS
    writes NFD) is one class, and matches a checkpoint's."""
    return unicodedata.normalize("NFC", printable(folder))


def class_names(root: Path, folders: Sequence[str]) -> list[str]:
    """The class names of `folders`; DataError when two folders are one name written two ways."""
    names = [class_name(folder) for folder in folders]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise DataError(f"{root} has two class folders named {twice[0]}, written two ways in Unicode (NFC and NFD): "
                        "merge them")
    return names


NAMES_FILE = "class_names.json"  # folder -> display name, as `alexnet data imagenet` writes it


@dataclass(frozen=True)
class DisplayNames:
    names: tuple[str, ...]  # one per class, or () where there are none
    source: str | None  # the file they came from
    missing: tuple[str, ...] = ()  # classes the file does not name: they show their folder's name
    passed_over: tuple[str, ...] = ()  # "file: why" for each class_names.json found beside the data and not used


def display_names(root: Path, classes: Sequence[str], names_file: Path | None = None) -> DisplayNames:
    """Each class's display name from `names_file` (--class-names), else from class_names.json in DATA or its
    parent (where `alexnet data imagenet` writes it beside train/ and val/): a JSON object from folder name to
    a name, or to a list of names of which the first is shown. A file given that cannot be read, or that names
    none of the classes, is a DataError; one found beside the data is passed over then, and named."""
    candidates = [Path(names_file)] if names_file else [Path(root) / NAMES_FILE, Path(root).parent / NAMES_FILE]
    passed_over: list[str] = []
    for path in candidates:
        if not path.is_file() and names_file is None:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object from each class folder to its name")
            mapping = {class_name(str(k)): v[0] if isinstance(v, list) else v for k, v in data.items()}
            if not all(isinstance(v, str) for v in mapping.values()):
                raise ValueError("each name is a string, or a list of strings")
        except (OSError, ValueError, AttributeError, IndexError) as exc:
            if names_file is None:
                passed_over.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
                continue
            raise DataError(f"cannot read --class-names {path}: {getattr(exc, 'strerror', None) or exc} (give a "
                            "JSON object from each class folder to its name)") from None
        if not any(name in mapping for name in classes):
            if names_file is None:
                passed_over.append(f"{path}: it names none of the classes")
                continue
            raise DataError(f"--class-names {path} names none of the classes of {root} ({', '.join(classes[:3])}"
                            f"{', ...' if len(classes) > 3 else ''})")
        shown = [unicodedata.normalize("NFC", mapping.get(name, name)) for name in classes]
        counts = Counter(shown)  # (ImageNet has 1,000 classes: a count per name, not a scan per name)
        shown = [f"{label} ({name})" if counts[label] > 1 else label for label, name in zip(shown, classes)]
        return DisplayNames(tuple(shown), str(path), tuple(name for name in classes if name not in mapping),
                            tuple(passed_over))
    return DisplayNames((), None, (), tuple(passed_over))
