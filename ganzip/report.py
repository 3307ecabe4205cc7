"""The demo's Markdown report: what was built, what it costs, how it looks, in one file a newcomer can open.

Kept apart from the pipeline so the numbers in the report come only from the summary dict that `--json` prints.
"""

from __future__ import annotations

from pathlib import Path


def _g(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.3f} G"


def _m(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3f} M"


def _x(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def profile_table(p: dict) -> list[str]:
    t, s = p["teacher"], p
    lines = ["| | teacher | student | ratio |", "|---|---:|---:|---:|",
             f"| parameters | {_m(t['params'])} | {_m(s['params'])} | {_x(p['compression'])} |",
             f"| MACs (paper/thop convention) | {_g(t['macs'])} | {_g(s['macs'])} | {_x(p['macs_ratio'])} |",
             f"| MACs (exact) | {_g(t['macs_exact'])} | {_g(s['macs_exact'])} | {_x(p['macs_exact_ratio'])} |",
             f"| latency PyTorch, median | {_f(t['latency_ms'])} ms | {_f(s['latency_ms'])} ms | {_x(p['speedup'])} |"]
    if s.get("onnx_latency_ms") and t.get("onnx_latency_ms"):
        lines.append(f"| latency onnxruntime, median | {_f(t['onnx_latency_ms'])} ms | {_f(s['onnx_latency_ms'])} ms "
                     f"| {_x(p.get('onnx_speedup'))} |")
    lines.append("")
    lines.append(f"At {p['size']}x{p['size']} px, batch {p['batch']}, {p['threads']} thread(s), {p['runs']} alternating "
                 f"runs each on {p['device']}. Latency ratios on a tiny network are dominated by per-layer overheads; "
                 "MACs are the hardware-independent measure.")
    return lines


def fid_table(fid: dict) -> list[str]:
    if "skipped" in fid:
        return [f"FID skipped: {fid['skipped']}"]
    lines = ["| generator | FID (lower is better) |", "|---|---:|"]
    for name in ("teacher", "student"):
        lines.append(f"| {name} | {_f(fid[name]['fid'])} |")
    lines.append("")
    lines.append(f"Against the {fid['n_real']} real held-out target images, standard Inception weights. With this "
                 "few images FID is biased upward and noisy: compare the two rows, not with published numbers.")
    return lines


def spectrum_table(spec: dict) -> list[str]:
    lines = ["| | HF wavelet energy share | HF ratio to real | spectral HF ratio to real |", "|---|---:|---:|---:|"]
    for name, s in spec["series"].items():
        lines.append(f"| {name} | {s['hf_share']:.4f} | {_f(s['hf_ratio'], 3)} | {_f(s['spectral_hf_ratio'], 3)} |")
    lines.append("")
    lines.append("HF = energy outside the wavelet LL band (Haar, 3 levels); spectral = power above half the Nyquist "
                 "frequency. A ratio below 1 means detail lost relative to the real images.")
    series = spec["series"]
    if "teacher" in series and "student" in series and (series["student"]["hf_ratio"] or 0) > (series["teacher"]["hf_ratio"] or 0):
        lines.append("Here the student keeps more detail than its teacher: the demo's teacher was fitted with L1 "
                     "alone, which blurs, while distillation adds a GAN loss and L1 to the real targets.")
    return lines


def markdown(summary: dict) -> str:
    """The report text; every number comes from `summary`."""
    t, pr, d = summary["teacher"], summary["prune"], summary["distill"]
    q = summary["similarity"]
    lines = [
        "# ganzip demo report",
        "",
        f"Data: the bundled pix2pix *maps* subset ({summary['data']['train']} training pairs, "
        f"{summary['data']['val']} held-out pairs), {summary['direction']} (map -> aerial photo), "
        f"{summary['size']}x{summary['size']} px. Seed {summary['seed']}" + (", `--quick` settings." if summary["quick"]
                                                                               else "."),
        "",
        "## Pipeline",
        "",
        f"1. **Teacher**: {t['architecture']}, fitted with L1 for {t['steps']} steps "
        f"({t['seconds']:.0f} s; final training L1 {t['final_loss']:.3f}).",
        f"2. **Prune**: ratio {pr['ratio']:g} by MACs, `{pr['method']}` widths -> achieved {pr['achieved']:.2f}x "
        f"({pr['seconds']:.0f} s).",
        f"3. **Distill**: {d['kd']} KD, {d['steps']} steps ({d['seconds']:.0f} s).",
        f"4. **Export**: `{Path(summary['onnx']['path']).name}`, {summary['onnx']['bytes'] / 1e6:.2f} MB, opset "
        f"{summary['onnx']['opset']}; onnxruntime vs PyTorch max |diff| "
        f"{max(summary['onnx']['verify']['max_abs_diff'].values()):.2e} "
        f"({'ok' if summary['onnx']['verify']['ok'] else 'ABOVE TOLERANCE'}).",
        "",
        "## Cost",
        "",
        *profile_table(summary["profile"]),
        "",
        "## Quality",
        "",
        *fid_table(summary["fid"]),
        "",
        f"Student vs teacher on the held-out inputs: mean |diff| {q['l1']:.4f} (images in [-1, 1]), "
        f"PSNR {q['psnr_db']:.1f} dB.",
        "",
        "### Frequency content",
        "",
        *spectrum_table(summary["spectrum"]),
        "",
        "## Images",
        "",
        "Columns: input map | teacher | student | real aerial photo.",
        "",
        f"![grid]({Path(summary['files']['grid']).name})",
        "",
        f"Total time {summary['seconds']:.0f} s. Reproduce: `ganzip demo{' --quick' if summary['quick'] else ''} "
        f"--seed {summary['seed']}`.",
        "",
    ]
    return "\n".join(lines)
