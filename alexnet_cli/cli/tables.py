"""The tables and small pictures the commands draw: a summary's layers, a data set's counts, an evaluation,
predictions (and their CSV), a check's findings, the LR range test's curve."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from alexnet_cli.cli.console import console, info, warn


def _count(n: int) -> str:
    return f"{n:,}"


def _si(n: int) -> str:
    if not n:
        return ""
    return f"{n / 1e6:,.1f}M" if n >= 100_000 else f"{n / 1e3:,.1f}K"


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


_SHORT_TYPES = {"Conv2d": "conv", "MaxPool2d": "maxpool", "LocalResponseNorm": "LRN", "Linear": "fc",
                "Flatten": "flatten", "AdaptiveAvgPool2d": "avgpool"}


def _short_type(kind: str) -> str:
    """`Conv2d(groups=2)` -> `conv/g2`: the JSON keeps the long names, an 80-column table needs the room."""
    base, _, groups = kind.partition("(groups=")
    return _SHORT_TYPES.get(base, base) + (f"/g{groups.rstrip(')')}" if groups else "")


def summary(data: dict[str, Any], class_names: Sequence[str] | None = None) -> None:
    title = f"{data['arch']}: {data['num_classes']} classes, input 3x{data['image_size']}x{data['image_size']}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("layer", "type", "output", "params", "MACs", "size arithmetic"):
        right = column in ("output", "params", "MACs")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "size arithmetic")
    folded: dict[str, list[str]] = {}
    for layer in data["layers"]:
        kind, *after = layer["type"].split("+")
        for name in after:
            folded.setdefault(name, []).append(layer["name"])
        table.add_row(
            layer["name"], _short_type(kind), _shape(layer["output_shape"]), _count(layer["params"]),
            _si(layer["macs"]), layer["arithmetic"],
        )
    console.print(table)
    for name, layers in folded.items():
        console.print(f"{name} after {', '.join(layers)}", soft_wrap=True)
    mib = data["param_bytes"] / 2**20
    console.print(
        f"parameters: {_count(data['total_params'])} ({_count(data['trainable_params'])} trainable, "
        f"{_count(data['frozen_params'])} frozen), {mib:,.1f} MiB as float32",
        soft_wrap=True,
    )
    console.print(
        f"compute: {data['macs'] / 1e9:.3f} G multiply-adds = {data['flops'] / 1e9:.3f} GFLOPs per image (forward)",
        soft_wrap=True,
    )
    console.print(
        f"activations (\"neurons\": outputs of the conv and FC layers): {_count(data['activations'])}", soft_wrap=True
    )
    if class_names:
        shown = ", ".join(class_names[:10]) + (f", ... ({len(class_names)} in all)" if len(class_names) > 10 else "")
        console.print(f"classes: {escape(shown)}", soft_wrap=True)


def data_table(classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int] | None,
               val_source: str) -> None:
    if len(classes) > FULL_TABLES_UP_TO:  # a line per class would push the run off the screen
        parts = [f"images: {len(classes):,} classes"]
        for split, counts in (("train", train_counts), ("val", val_counts)):
            if counts is not None:
                ordered = sorted(counts)
                parts.append(f"{split} {_count(sum(counts))} ({_count(ordered[0])} to {_count(ordered[-1])} a class, "
                             f"median {_count(ordered[len(ordered) // 2])})")
        smallest = sorted(range(len(classes)), key=lambda i: (train_counts[i], i))[:3]
        parts.append("fewest: " + ", ".join(f"{classes[i]} {_count(train_counts[i])}" for i in smallest))
        console.print(escape("; ".join(parts)), soft_wrap=True)
        console.print(f"validation: {escape(val_source)}", soft_wrap=True)
        return
    table = Table(title="images per class", title_justify="left")
    table.add_column("class")
    table.add_column("train", justify="right")
    if val_counts is not None:
        table.add_column("val", justify="right")
    for i, name in enumerate(classes):
        row = [escape(name), _count(train_counts[i])]
        if val_counts is not None:
            row.append(_count(val_counts[i]))
        table.add_row(*row)
    total = ["total", _count(sum(train_counts))]
    if val_counts is not None:
        total.append(_count(sum(val_counts)))
    table.add_row(*total, style="bold")
    console.print(table)
    console.print(f"validation: {escape(val_source)}", soft_wrap=True)


# Up to this many classes, evaluate shows every class and the whole confusion matrix; above it, a screenful:
# the worst classes and the most-confused pairs (the whole of both stays in --json).
FULL_TABLES_UP_TO = 20
NAME_WIDTH = 28  # a long class name is cut with an ellipsis rather than wrapped onto more lines


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def evaluation(report: dict[str, Any], source: str) -> None:
    k_key = next((key for key in report if key.startswith("top") and key.endswith("_accuracy")), None)
    line = (f"{source}: {report['images']:,} images, loss {report['loss']:.4f}, accuracy {report['accuracy']:.2%} "
            f"(top-1 error {report['top1_error']:.2%})")
    if k_key and report[k_key] is not None:
        k = k_key.removesuffix("_accuracy").removeprefix("top")
        line += f", top-{k} {report[k_key]:.2%} (top-{k} error {report[f'top{k}_error']:.2%})"
    classes = len(report["class_names"])
    console.print(escape(line + f", macro F1 {report['macro_f1']:.3f}"), soft_wrap=True)
    if classes <= FULL_TABLES_UP_TO:
        per_class = Table(title="per class", title_justify="left")
        for column in ("class", "precision", "recall", "F1", "support"):
            per_class.add_column(column, justify="left" if column == "class" else "right")
        for row in report["per_class"]:
            per_class.add_row(escape(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                              f"{row['f1']:.3f}", _count(row["support"]))
        console.print(per_class)
        confusion(report["class_names"], report["confusion_matrix"])
        return
    # Two name columns share what the numbers leave of the terminal's width (borders and padding: 16 or 13).
    fit = max(8, min(NAME_WIDTH, (console.width - 37) // 2))
    number = dict(no_wrap=True, justify="right")
    worst = Table(title=f"the {len(report['worst_classes'])} classes recognised least (lowest recall)",
                  title_justify="left")
    for column in ("class", "recall", "precision", "images", "most often taken for"):
        worst.add_column(column, **(dict(no_wrap=True) if column in ("class", "most often taken for") else
                                    dict(number, min_width=len(column))))
    for row in report["worst_classes"]:
        worst.add_row(escape(_cut(row["class"], fit)), f"{row['recall']:.3f}", f"{row['precision']:.3f}",
                      _count(row["support"]), escape(_cut(row["mistaken_for"] or "-", fit)))
    console.print(worst)
    pairs = Table(title=f"the {len(report['most_confused'])} most-confused pairs", title_justify="left")
    for column in ("true class", "predicted as", "images", "of the class"):
        pairs.add_column(column, **(dict(no_wrap=True) if column in ("true class", "predicted as") else
                                    dict(number, min_width=len(column))))
    for pair in report["most_confused"]:
        pairs.add_row(escape(_cut(pair["true"], fit)), escape(_cut(pair["predicted"], fit)), _count(pair["count"]),
                      f"{pair['share']:.1%}")
    console.print(pairs)
    console.print(f"{classes:,} classes: every class's precision, recall and F1, and the whole confusion matrix, "
                  "are in --json", soft_wrap=True)


def confusion(class_names: Sequence[str], matrix: Sequence[Sequence[int]]) -> None:
    table = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    table.add_column("true \\ predicted")
    for name in class_names:
        table.add_column(escape(name), justify="right")
    for i, name in enumerate(class_names):
        cells = [
            f"[bold green]{v}[/]" if i == j and v else (f"[red]{v}[/]" if v else "[dim]0[/]")
            for j, v in enumerate(matrix[i])
        ]
        table.add_row(escape(name), *cells)
    console.print(table)


def predictions(results: Sequence[dict[str, Any]], source: str) -> None:
    table = Table(title=f"predictions ({escape(source)})", title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    table.add_column("top-k")
    for result in results:
        ranked = ", ".join(f"{escape(r['label'])} {r['probability']:.1%}" for r in result["top_k"])
        table.add_row(escape(result["path"]), escape(result["label"]), f"{result['confidence']:.1%}", ranked)
    console.print(table)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], low: float = 0.0, high: float = 1.0) -> str:
    """One block character per value, from ▁ (low) to █ (high)."""
    span = max(1e-12, high - low)
    return "".join(SPARKS[min(len(SPARKS) - 1, max(0, int((v - low) / span * len(SPARKS))))] for v in values)


def accuracy_trend(history: Sequence[dict[str, Any]]) -> None:
    """The end-of-training summary's compact picture: validation (else training) accuracy per epoch."""
    key = "val_acc" if history and history[-1].get("val_acc") is not None else "train_acc"
    values = [float(row[key]) for row in history if row.get(key) is not None]
    if not values:
        return
    name = "val acc" if key == "val_acc" else "train acc"
    console.print(f"{name} per epoch  [cyan]{sparkline(values)}[/]  {values[0]:.1%} → {values[-1]:.1%} "
                  f"(best {max(values):.1%})", soft_wrap=True)


def demo_commands(steps: Sequence[tuple[str, str]]) -> None:
    """The commands behind each demo step, to copy for one's own data."""
    table = Table(title="do it yourself", title_justify="left", box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, command in steps:
        table.add_row(escape(name), escape(command))
    console.print(table)


def predictions_csv(results: Sequence[dict[str, Any]]) -> str:
    """path,label,confidence, then label_i/probability_i pairs for the top k."""

    k = max(len(r["top_k"]) for r in results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["path", "label", "confidence"]
    for i in range(1, k + 1):
        header += [f"label_{i}", f"probability_{i}"]
    writer.writerow(header)
    for r in results:
        row = [r["path"], r["label"], f"{r['confidence']:.6f}"]
        for item in r["top_k"]:
            row += [item["label"], f"{item['probability']:.6f}"]
        writer.writerow(row)
    return buffer.getvalue()


def check_report(report: dict[str, Any]) -> None:
    val_rows = {row["class"]: row for row in report.get("val_report", [])}
    table = Table(title=f"data check: {escape(report['data'])}" + (f" and {escape(report['val'])}" if report["val"]
                                                                   else ""), title_justify="left")
    for column in ("class", "train", "val", "skipped", "not RGB", "small", "elongated"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in report["train"]:
        val = val_rows.get(row["class"])
        rows = [row] + ([val] if val else [])
        non_rgb = sum(n for r in rows for mode, n in r["modes"].items() if mode != "RGB")
        table.add_row(
            escape(row["class"]), _count(row["images"]), _count(val["images"]) if val else "-",
            _count(sum(len(r["skipped"]) for r in rows)), _count(non_rgb),
            _count(sum(len(r["small"]) for r in rows)), _count(sum(len(r["elongated"]) for r in rows)),
        )
    console.print(table)
    every = report["train"] + report.get("val_report", [])
    for row in every:
        for reason in row["skipped"]:
            warn(f"would skip {reason}")
    modes: dict[str, int] = {}
    for row in every:
        for mode, n in row["modes"].items():
            modes[mode] = modes.get(mode, 0) + n
    if set(modes) - {"RGB"}:
        info("image modes (all become RGB when loaded): " + ", ".join(f"{m} {n}" for m, n in sorted(modes.items())))
    for key, label in (("small", "small (short side < 75 px)"), ("elongated", "elongated (more than 3:1)")):
        odd = [item for row in every for item in row[key]]
        if odd:
            info(f"{len(odd)} {label}: " + ", ".join(odd[:5]) + (" ..." if len(odd) > 5 else ""))
    if report["val_classes_differ"]:
        warn(f"validation classes differ: train {report['val_classes_differ']['train']}, "
             f"val {report['val_classes_differ']['val']}")
    for pair in report["duplicates_train_val"]:
        warn(f"the same image in train and val: {', '.join(pair['train'])} = {', '.join(pair['val'])}")
    for empty in report["empty_classes"]:
        warn(f"class {empty} has no images: alexnet train refuses it")
    if report["single_image_classes"]:
        warn(f"one image only in {', '.join(report['single_image_classes'])}: none can be held out for validation")
    loose = report["loose_images"]
    if loose:
        warn(f"{len(loose)} images in no class folder, not used: " + ", ".join(loose[:5]) + (" ..." if len(loose) > 5
                                                                                             else ""))
    if report["duplicates_within_train"]:
        info(f"{len(report['duplicates_within_train'])} groups of identical files within train")
    info(f"{report['problems']} problems found" if report["problems"] else "no problems found")


def lr_curve(lrs, losses, suggestion: float, rows: int = 12) -> None:
    """The LR range test's curve as a table: about `rows` evenly spaced steps, the suggestion marked."""
    from rich.table import Table

    table = Table(title="LR range test (smoothed loss)")
    table.add_column("learning rate", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("")
    if not lrs:
        return
    stride = max(1, len(lrs) // rows)
    nearest = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / suggestion)))
    for i in sorted(set(range(0, len(lrs), stride)) | {len(lrs) - 1, nearest}):
        table.add_row(f"{lrs[i]:.2e}", f"{losses[i]:.4f}", "<- suggested" if i == nearest else "")
    console.print(table)


def benchmark(result) -> None:
    """alexnet benchmark's table: a row per way to run the model, with where it came from or why it did not run."""
    table = Table(title=f"{escape(result.machine)}\ntop-1 on {result.images:,} images: {escape(result.data)}; "
                        f"{result.image_size} px", title_justify="left")
    for column in ("way to run", "device", "size MB", "top-1", "ms at batch 1", "images/s at 32", "peak MB",
                   "note"):
        table.add_column(column, justify="left" if column in ("way to run", "device", "note") else "right",
                         no_wrap=column != "note",
                         ratio=1 if column == "note" else None, overflow="fold")
    for row in result.rows:
        note = escape(row.note) if row.ran else f"[yellow]not run:[/] {escape(row.note)}"
        if not row.ran:
            table.add_row(escape(row.name), row.device, "-", "-", "-", "-", "-", note)
            continue
        table.add_row(escape(row.name), row.device, f"{row.size_mb:,.1f}", f"{row.top1:.2%}",
                      f"{row.latency_ms:,.1f}", f"{row.images_per_second:,.1f}",
                      "-" if row.peak_mb is None else f"{row.peak_mb:,.0f}", note)
    console.print(table)
