"""Commands that describe a generator: what it is (inspect) and what it costs (profile)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer
from rich.table import Table
from rich.text import Text

from ganzip.cli.common import (
    PAIRED_CELLS,
    command,
    console,
    device_option,
    emit_json,
    err_console,
    giga,
    inception_weights_option,
    json_option,
    mega,
    onnx_timing_option,
    paired_cell,
    progress_bar,
    status,
    teacher_mode_option,
    threads_option,
    threads_text,
    widths_text,
)
from ganzip.cli.inputs import checkpoint_argument, checkpoint_option, existing_folder
from ganzip.paths import refuse_input_as_output

# --- inspect -----------------------------------------------------------------------------------------------

@command("inspect")
def inspect_cmd(
    checkpoint: Path = checkpoint_argument("Generator checkpoint (upstream latest_net_G*.pth or ganzip), or an .onnx "
                                           "file (what its metadata records)."),
    size: int = typer.Option(256, help="Input size (pixels, square) for the MAC count."),
    as_json: bool = json_option(),
) -> None:
    """Recognise a checkpoint's architecture and show its widths, parameters and MACs."""
    from ganzip import runner

    info = runner.onnx_info(checkpoint, size) if runner.is_onnx(checkpoint) else _checkpoint_info(checkpoint, size)
    if as_json:
        emit_json(info)
        return
    spec = info["spec"]
    table = Table(title=Text(str(checkpoint)), show_header=False)
    table.add_row("architecture", Text(info["architecture"]))
    table.add_row("format", {"upstream": "upstream state dict", "ganzip": "ganzip checkpoint",
                             "mapped": "other code base (keys mapped by layer order)",
                             "onnx": "ONNX model, run in onnxruntime"}[info["source"]]
                  + (" (GAN Compression layout)" if spec and spec["arch"] == "mobile_resnet" else ""))
    table.add_row("file format", {"pytorch": "PyTorch (torch.save)", "safetensors": "safetensors",
                                  "onnx": f"ONNX ({info.get('precision')})"}[info["file_format"]])
    if "input_shape" in info:
        table.add_row("input shape", " x ".join(map(str, info["input_shape"])))
    for key in ("input_nc", "output_nc", "n_blocks", "num_downs", "n_layers", "dropout"):
        if spec and key in spec:
            table.add_row(key, str(spec[key]))
    for key, text in widths_text(spec) if spec else []:
        table.add_row(Text(f"widths.{key}"), text)
    table.add_row("parameters", f"{info['params']:,}")
    table.add_row(f"MACs @{size}px (paper/thop)", giga(info["macs"]))
    table.add_row(f"MACs @{size}px (exact)", giga(info["macs_exact"]))
    for key, value in info["provenance"].items():
        if key == "kept" and isinstance(value, dict):  # hundreds of channel indices: --json lists them
            value = f"the teacher channels of {len(value)} groups (--json lists them)"
        table.add_row(Text(f"provenance.{key}"), Text(str(value)))  # text from the file, never markup
    console.print(table)
    for note in info["notes"]:
        console.print(Text(f"note: {note}", style="dim"))
    renamed = [(m["checkpoint"], m["ganzip"]) for m in info.get("mapping", []) if m["checkpoint"] != m["ganzip"]]
    if "mapping" in info:
        console.print(f"[dim]key mapping ({len(renamed)} renamed, first shown):[/]")
        for a, b in renamed[:8]:
            console.print(Text(f"  {a} -> {b}", style="dim"))


def _checkpoint_info(path: Path, size: int) -> dict:
    from ganzip import archs, profile
    from ganzip import checkpoint as ckpt

    loaded = ckpt.load(path)
    archs.check_size(loaded.spec, size)
    stats = profile.static_profile(ckpt.instantiate(loaded), size)
    info = {"path": str(path), "source": loaded.source,
            "architecture": archs.describe(loaded.spec, loaded.provenance),
            "spec": loaded.spec, "params": stats.params, "macs": stats.macs, "macs_exact": stats.macs_exact,
            "size": size, "notes": loaded.notes, "provenance": loaded.provenance, "file_format": loaded.file_format}
    if loaded.mapping:
        info["mapping"] = [{"checkpoint": a, "ganzip": b} for a, b in loaded.mapping]
    return info


# --- profile -----------------------------------------------------------------------------------------------

@command("profile")
def profile_cmd(
    checkpoint: Path = checkpoint_argument("Generator to profile (usually the student): a checkpoint, or an .onnx "
                                           "file (fp32 or int8), timed in onnxruntime."),
    teacher: Optional[Path] = checkpoint_option("--teacher", help="Teacher checkpoint or .onnx: adds compression, "
                                                                  "speedup and efficiency."),
    size: int = typer.Option(256, help="Input size in pixels (square)."),
    batch_size: int = typer.Option(1, "--batch-size", "--batch", help="Images per timed forward pass (--batch "
                                   "is the old spelling)."),
    runs: int = typer.Option(20, help="Timed runs per model (after warm-up)."),
    threads: Optional[int] = threads_option("the timings (intra-op)"),
    onnx: bool = onnx_timing_option(),
    device: str = device_option(),
    teacher_mode: str = teacher_mode_option(),
    as_json: bool = json_option(),
) -> None:
    """Parameters, MACs (paper convention and exact) and latency; with --teacher, compression, speedup and
    efficiency (speedup / MACs ratio)."""
    from ganzip import api

    with status("timing"):
        result = api.profile(checkpoint, teacher=teacher, size=size, batch_size=batch_size, runs=runs, threads=threads,
                             onnx=onnx, device=device, teacher_mode=teacher_mode).info
    device = result["device"]  # "auto" resolved
    if as_json:
        emit_json(result)
        return
    table = Table(title=f"profile @ {batch_size}x{size}x{size}, {threads_text(result['threads'])}, {device}")
    table.add_column("")
    table.add_column("student", justify="right")
    if teacher is not None:
        table.add_column("teacher", justify="right")
        table.add_column("ratio", justify="right")
    t = result.get("teacher")

    def row(label: str, key: str, fmt: Callable, ratio: str | None = None) -> None:
        cells = [label, fmt(result[key])]
        if t is not None:
            cells += [fmt(t[key]), ratio or ""]
        table.add_row(*cells)

    def ratio_text(key: str) -> str | None:
        return f"{result[key]:.2f}x" if t is not None and key in result else None

    row("parameters", "params", lambda v: f"{v:,}", ratio_text("compression"))
    row("MACs (paper/thop convention)", "macs", giga, ratio_text("macs_ratio"))
    row("MACs (exact)", "macs_exact", giga, ratio_text("macs_exact_ratio"))
    if t is not None and t["runtime"] != result["runtime"]:
        row("runtime", "runtime", str)
    lat = result["latency"]
    spread = f"{lat['median_ms']:.1f} ms ({lat['p10_ms']:.1f}-{lat['p90_ms']:.1f})"
    cells = [f"latency {result['runtime']} (median, p10-p90)", spread]
    if t is not None:
        tl = t["latency"]
        cells += [f"{tl['median_ms']:.1f} ms ({tl['p10_ms']:.1f}-{tl['p90_ms']:.1f})", f"{result['speedup']:.2f}x"]
    table.add_row(*cells)
    if "onnx_latency_ms" in result:
        cells = ["latency onnxruntime (median)", f"{result['onnx_latency_ms']:.1f} ms"]
        if t is not None:
            cells += [f"{t['onnx_latency_ms']:.1f} ms", f"{result.get('onnx_speedup', float('nan')):.2f}x"]
        table.add_row(*cells)
    console.print(table)
    if "efficiency" in result:
        line = (f"efficiency (speedup / MACs ratio): [bold]{result['efficiency']:.2f}[/] "
                f"({result['speedup']:.2f}x of {result['macs_ratio']:.2f}x)")
        if "onnx_efficiency" in result:
            line += f"; onnxruntime {result['onnx_efficiency']:.2f}"
        console.print(line)
    unstable_warnings(result["unstable"], result["threads"])


def unstable_warnings(reasons: list[str], threads: int) -> None:
    """One warning line per reason the timings should not be quoted, with the remedy that applies."""
    remedy = "rerun on a quieter machine" + (" or with fewer --threads" if threads > 1 else "")
    for reason in reasons:
        err_console.print(Text.assemble(("warning:", "yellow"), f" timings unstable: {reason}; {remedy}"),
                          highlight=False, soft_wrap=True)


# --- compare -----------------------------------------------------------------------------------------------

@command("compare")
def compare_cmd(
    checkpoints: list[Path] = checkpoint_argument("Generators to compare (checkpoints or .onnx files, run in "
                                                  "onnxruntime); the first (usually the teacher) is the reference."),
    data: Path = typer.Option(..., "--data", help="Data set folder: testA/testB (unaligned), test/ or val/ with "
                                                  "A|B pairs (aligned) or with single photos, or a folder of inputs.",
                              callback=existing_folder("data folder")),
    real: Optional[Path] = typer.Option(None, "--real", help="Real target images for FID (default: from --data; "
                                                             "without any, FID is against the first model only).",
                                        callback=existing_folder("real target folder")),
    direction: Optional[str] = typer.Option(None, help="AtoB or BtoA: which side of paired data is the input "
                                            "(default: the one a model records, else AtoB)."),
    size: Optional[int] = typer.Option(None, help="Resize inputs to this square size (default: keep sizes; latency "
                                                  "and MACs at the first input's size)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N test images (and real targets)."),
    onnx: bool = onnx_timing_option(),
    runs: int = typer.Option(20, help="Timed runs per model (after warm-up), in alternation."),
    threads: Optional[int] = threads_option("the timings in torch (and onnxruntime)"),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per generator forward pass."),
    grid_rows: int = typer.Option(4, "--grid-rows", help="Inputs shown in the grid image (one row each)."),
    output: Path = typer.Option(Path("compare.png"), "-o", "--output", help="Grid image: one row per input, one "
                                                                            "column per model."),
    inception_weights: Optional[Path] = inception_weights_option(),
    device: str = device_option(),
    teacher_mode: str = teacher_mode_option(),
    as_json: bool = json_option(),
) -> None:
    """Teacher and students side by side: params, MACs, latency, FID vs real and vs the first model; a grid image."""
    refuse_input_as_output(output, *checkpoints, data, real)  # the library's own check, before torch is imported
    from ganzip.compare import compare
    from ganzip.devices import resolve_device

    with progress_bar() as update:
        result = compare(checkpoints, data, real=real, size=size, direction=direction, limit=limit, onnx=onnx,
                         runs=runs, threads=threads, device=resolve_device(device), weights=inception_weights,
                         batch_size=batch_size, grid=output, grid_rows=grid_rows, progress=update,
                         teacher_mode=teacher_mode)
    if as_json:
        emit_json(result)
        return
    px = result["latency_size"]
    table = Table(title=f"{result['n_images']} images from {result['inputs']} ({result['n_real']} real); cost and "
                        f"latency @{px}px, {threads_text(result['threads'])}, {result['device']}")
    table.add_column("")
    models = result["models"]
    for m in models:
        table.add_column(m["name"], justify="right")

    def row(label: str, cell: Callable[[dict], str]) -> None:
        table.add_row(label, *[cell(m) for m in models])

    runtimes = {m["runtime"] for m in models}
    row("architecture", lambda m: m["architecture"])
    if runtimes != {"torch"}:
        row("runtime", lambda m: m["runtime"])
    row("parameters", lambda m: f"{mega(m['params'])} ({m['params_ratio']:.2f}x)")
    row("MACs (paper/thop convention)", lambda m: _with_ratio(giga(m["macs"]), m["macs_ratio"]))
    row("MACs (exact)", lambda m: _with_ratio(giga(m["macs_exact"]), m["macs_exact_ratio"]))
    row("latency PyTorch (median)" if runtimes == {"torch"} else "latency (median)",
        lambda m: f"{m['latency_ms']:.1f} ms ({m['speedup']:.2f}x)")
    row("  p10-p90", lambda m: f"{m['latency']['p10_ms']:.1f}-{m['latency']['p90_ms']:.1f} ms")
    if onnx:
        row("latency onnxruntime (median)", lambda m: f"{m['onnx_latency_ms']:.1f} ms ({m['onnx_speedup']:.2f}x)")
    if result["real_dir"] is not None:
        row("FID vs real", lambda m: f"{m['fid']:.2f}")
    row(f"FID vs {result['reference']}",
        lambda m: "reference" if m["fid_vs_first"] is None else f"{m['fid_vs_first']:.2f}")
    for label, key, fmt in PAIRED_CELLS:  # image by image against the first model's outputs on the same inputs
        row(f"{label} vs {result['reference']}",
            lambda m, key=key, fmt=fmt: "reference" if m["paired_vs_first"] is None else paired_cell(
                m["paired_vs_first"], key, fmt))
    console.print(table)
    if len(runtimes) > 1:
        console.print(Text("latency in each model's own runtime: a speedup across runtimes is partly the runtime's"
                           + ("" if onnx else "; --onnx times the checkpoints in onnxruntime too"), style="dim"),
                      soft_wrap=True)
    unknown = [m["name"] for m in models if m["macs"] is None]
    if unknown:
        console.print(Text(f"MACs -: {', '.join(unknown)} records no network (an .onnx file ganzip did not export); "
                           f"its parameters count every float tensor stored in it", style="dim"), soft_wrap=True)
    against = (f"against {result['real_dir']} and {result['reference']}'s outputs" if result["real_dir"] is not None
               else f"against {result['reference']}'s outputs (no real target images in --data; --real DIR adds them)")
    console.print(Text(f"(x): ratio or speedup relative to {result['reference']}; FID with the standard TF-Inception "
                       f"weights {against}", style="dim"), soft_wrap=True, highlight=False)
    unstable_warnings(result["unstable"], result["threads"])
    console.print(f"grid (input, then {', '.join(result['grid_columns'][1:])}): {result['grid']}", highlight=False)


def _with_ratio(cell: str, ratio: float | None) -> str:
    """A cost and its ratio to the first model; an .onnx file that records no network has neither."""
    return cell if ratio is None else f"{cell} ({ratio:.2f}x)"
