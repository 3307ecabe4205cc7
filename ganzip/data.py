"""Data sets: every layout recognised in one place (never assumed), and which files a command reads from it.

Every command that reads a data folder (distill, fid, compare, spectrum) asks `recognise` what it holds, so a
folder of square photos is never cut in halves as if it held A|B pairs: a pair is an image twice as wide as
high, and a folder is read as pairs only when every image is one. How training draws from those files is
ganzip.trainset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ganzip import images
from ganzip.errors import LayoutError, UserError, missing_folder, setting

_UNPAIRED = ("trainA", "trainB", "valA", "valB", "testA", "testB")
_SPLITS = ("train", "val", "test")
_HELD_OUT = ("val", "test")  # pix2pix keeps its held-out pairs in val/, some data sets in test/


@dataclass(frozen=True)
class Layout:
    """What a data folder holds, recognised from its subfolders and its images' shapes (never from its name).

    kind: "unpaired" (trainA/trainB, testA/testB: two domains), "pairs" (train/, val/, test/ holding A|B
    images twice as wide as high), "photos" (train/, val/, test/ holding single images of one domain: inputs
    with nothing to pair them with), "images" (the folder itself holds single images), "pair-images" (the
    folder itself holds A|B pairs).
    """

    root: Path
    kind: str
    splits: dict[str, Path]

    def describe(self) -> str:
        """What the folder looks like, in words, with each split's image count."""
        counts = ", ".join(f"{name}/ ({_count(path)})" for name, path in self.splits.items())
        return {"unpaired": f"unpaired images in {counts}",
                "pairs": f"A|B pairs in {counts}",
                "photos": f"single images of one domain (not A|B pairs) in {counts}",
                "images": f"{_plural(_count(self.root), 'single image')} (not A|B pairs)",
                "pair-images": f"{_plural(_count(self.root), 'A|B pair')}"}[self.kind]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in images.IMAGE_EXTENSIONS
               and not p.name.startswith("."))


def recognise(root: str | os.PathLike) -> Layout:
    """The layout of a data folder; one that looks like none of them is refused, saying what it holds."""
    root = Path(root)
    if (missing := missing_folder(root, "data folder")) is not None:
        raise UserError(missing)
    if not root.is_dir():
        raise UserError(f"data folder {root} is a file; give the folder that holds the images")
    if images.holds_images(root):
        return Layout(root, "pair-images" if _holds_pairs(root) else "images", {})
    unpaired = {n: root / n for n in _UNPAIRED if (root / n).is_dir()}
    if unpaired:
        return Layout(root, "unpaired", unpaired)
    splits = {n: root / n for n in _SPLITS if (root / n).is_dir()}
    if splits:
        kinds = {name: _holds_pairs(path) for name, path in splits.items()}
        if len(set(kinds.values())) > 1:
            raise LayoutError(f"data folder {root} mixes A|B pairs ({', '.join(n for n, k in kinds.items() if k)}/) "
                              f"with single images ({', '.join(n for n, k in kinds.items() if not k)}/); keep one "
                              f"kind per data set", "layout")
        others = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and p.name not in splits}
        return Layout(root, "pairs" if any(kinds.values()) else "photos", {**splits, **others})
    subfolders = [f"{p.name}/" for p in sorted(root.iterdir()) if p.is_dir()]
    holds = (f"it holds {', '.join(subfolders[:3])}{' ...' if len(subfolders) > 3 else ''}" if subfolders
             else "it holds no images and no subfolders")
    raise LayoutError(f"data folder {root} has no data set layout ({holds}): expected trainA/trainB (testA/testB), "
                      f"train/ val/ test/, or images", "layout")


def _holds_pairs(folder: Path) -> bool:
    """True when every image is an A|B pair (twice as wide as high), False when none is; a mixture is refused,
    because splitting a single photo in two halves trains on nonsense without a word."""
    shapes = {p: images.image_size(p) for p in images.list_images(folder)}
    pairs = [p for p, (w, h) in shapes.items() if images.is_pair_size(w, h)]
    if not pairs:
        return False
    if len(pairs) < len(shapes):
        odd, (w, h) = next((p, s) for p, s in shapes.items() if p not in set(pairs))
        raise LayoutError(f"{folder} mixes A|B pairs (twice as wide as high, e.g. {pairs[0].name}) with single "
                          f"images ({odd.name} is {w}x{h}); keep one kind per folder", "layout")
    return True


@dataclass
class Source:
    """Where the training images are and whether inputs and targets are pairs."""

    inputs: list[Path]
    targets: list[Path]
    paired: bool
    aligned: bool  # pairs stored side by side in one file (A|B)
    direction: str
    description: str


def resolve(data: str | os.PathLike | None = None, inputs: str | os.PathLike | None = None,
            targets: str | os.PathLike | None = None, direction: str = "AtoB", phase: str = "train",
            need_targets: bool = True) -> Source:
    """The training images: a data folder in a layout `recognise` knows, or explicit input and target folders.

    Without `need_targets` (the discriminator learns the teacher's outputs as real, or there is no discriminator)
    inputs alone are enough."""
    _check_direction(direction)
    if data is not None and (inputs is not None or targets is not None):
        raise UserError(f"both a data folder ({data}) and input/target folders were given, and one would be ignored; "
                        f"give the data folder or the input and target folders")
    if inputs is not None and targets is None and not need_targets:
        return Source(images.list_images(inputs, "input folder"), [], False, False, direction,
                      f"{inputs} (inputs only)")
    if inputs is not None or targets is not None:
        if inputs is None or targets is None:
            alone = f"{setting('disc_real', 'teacher')} or {setting('lambda_gan', 0)}"
            raise UserError(f"{setting('inputs')} and {setting('targets')} go together: the inputs to translate and "
                            f"real target-domain images (with {alone}, {setting('inputs')} alone is enough)")
        return Source(images.list_images(inputs, "input folder"), images.list_images(targets, "target folder"),
                      False, False, direction, f"{inputs} -> {targets}")
    if data is None:
        raise LayoutError("no training images given: a data folder, or a folder of inputs with one of target-domain "
                          "images", "data")
    layout = recognise(data)
    root = layout.root
    if layout.kind == "unpaired" or (layout.kind == "photos" and not need_targets):
        a, b = (f"{phase}A", f"{phase}B") if direction == "AtoB" else (f"{phase}B", f"{phase}A")
        src = root / phase if layout.kind == "photos" else root / a  # photos: one domain, inputs only
        if not src.is_dir():
            raise LayoutError(f"data folder {root} has no {src.name}/ of inputs ({layout.describe()})", "layout",
                              layout)
        if not need_targets:
            return Source(images.list_images(src, "input folder"), [], False, False, direction,
                          f"{src} (inputs only)")
        dst = root / b
        if not dst.is_dir():
            raise LayoutError(f"data folder {root} has {src.name}/ but no {dst.name}/ with target-domain images to "
                              f"train against", "targets", layout)
        return Source(images.list_images(src, "input folder"), images.list_images(dst, "target folder"),
                      False, False, direction, f"{src} -> {dst} (unpaired)")
    if layout.kind in ("pairs", "pair-images"):
        folder = root if layout.kind == "pair-images" else root / phase
        if not folder.is_dir():
            raise LayoutError(f"data folder {root} holds {layout.describe()} but no {phase}/", "layout", layout)
        pairs = images.list_images(folder, "paired-image folder")
        return Source(pairs, pairs, True, True, direction, f"{folder} (A|B pairs, {direction})")
    raise LayoutError(f"data folder {root} holds {layout.describe()}: no target-domain images to train against",
                      "targets", layout)


def held_out_folder(data: str | os.PathLike | None, direction: str, paired: bool) -> Path | None:
    """The data set's own held-out inputs for validation during training: testA (testB for BtoA) for unpaired
    data, else val/ before test/ (the split kept for choosing checkpoints, leaving test/ for the final score)."""
    if data is None:
        return None
    layout = recognise(data)
    if layout.kind == "unpaired":
        names: tuple[str, ...] = ("testA" if direction == "AtoB" else "testB",)
    else:
        names = _HELD_OUT if layout.kind in ("pairs", "photos") else ()
    return next((layout.root / n for n in names if (layout.root / n).is_dir()), None)


@dataclass(frozen=True)
class EvalSplit:
    """A data set's test inputs, the real target images to score against (None when it has none) and, for A|B
    pairs, the direction that says which half is the input."""

    inputs: Path
    reals: Path | None
    aligned: str | None
    layout: Layout


def eval_split(data: str | os.PathLike, direction: str = "AtoB", need_reals: bool = True) -> EvalSplit:
    """The test split every evaluating command reads: testA -> testB (AtoB) for unpaired data, test/ before val/
    for pairs (both halves from the same files) and for single photos (inputs only), or the folder itself.

    Without `need_reals` (the reals come from elsewhere, or the first model's outputs are the reference) a data
    set with no target images is fine; with it, it is refused, saying what the folder holds.
    """
    _check_direction(direction)
    layout = recognise(data)
    root = layout.root
    if layout.kind == "unpaired":
        src, dst = (root / "testA", root / "testB") if direction == "AtoB" else (root / "testB", root / "testA")
        if not src.is_dir():
            raise LayoutError(f"data folder {root} has no {src.name}/ of test inputs ({layout.describe()})", "layout",
                              layout)
        split = EvalSplit(src, dst if dst.is_dir() else None, None, layout)
    elif layout.kind in ("images", "pair-images"):
        split = EvalSplit(root, root if layout.kind == "pair-images" else None,
                          direction if layout.kind == "pair-images" else None, layout)
    else:
        name = next((n for n in ("test", "val") if n in layout.splits), None)
        if name is None:
            raise LayoutError(f"data folder {root} holds {layout.describe()} but no test/ or val/ split", "layout",
                              layout)
        pairs = layout.kind == "pairs"
        split = EvalSplit(root / name, root / name if pairs else None, direction if pairs else None, layout)
    if need_reals and split.reals is None:
        raise LayoutError(f"data folder {root} holds {layout.describe()}: no real target-domain images to score "
                          f"against", "reals", layout)
    return split


def direction_for(given: str | None, *provenances: dict | None) -> str:
    """The direction to read paired data in: the one given, else the first one the models' provenances record (a
    ganzip student of a BtoA teacher is BtoA), else AtoB. One rule for every command, so a student and the run that
    made it read the same side as input."""
    if given is not None:
        return given
    recorded = [p.get("direction") for p in provenances if isinstance(p, dict)]
    return next((d for d in recorded if d in ("AtoB", "BtoA")), "AtoB")


def _check_direction(direction: str) -> None:
    if direction not in ("AtoB", "BtoA"):
        raise UserError(f"{setting('direction')} must be AtoB or BtoA, not {direction!r}")
