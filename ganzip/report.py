"""The demo's Markdown report: what was compressed, how close the student stays to its teacher, what it costs.

Kept apart from the pipeline so the numbers in the report come only from the summary dict that `--json` prints.
The order is the order of trust: the student's distance to its teacher on held-out images comes first; FIDs
against a target set of a few dozen images come later, each with its image count and KID beside it, because
with that few images FID is biased upward and noisy and says little on its own.
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
    faster = p["speedup"] >= 1
    lines.append(f"At {p['size']}x{p['size']} px, batch {p['batch']}, {p['threads']} thread(s), "
                 f"{p['runs']} alternating runs each on {p['device']}. The student is "
                 f"{p['speedup']:.2f}x {'faster' if faster else 'slower'} than the teacher in PyTorch, "
                 f"{p['speedup'] / p['macs_ratio']:.0%} of what its MACs ratio promises"
                 + ("" if p["size"] >= 128 else "; at this tiny size per-layer overheads dominate, so MACs say more "
                                                "than latency") + ".")
    return lines


def _rgb(cast: list[float]) -> str:
    return ", ".join(f"{name} {v:+.1f}" for name, v in zip("RGB", cast))


def _kid(r: dict) -> str:
    spread = f" ± {r['kid_std'] * 1e3:.1f}" if r.get("kid_std", 0) > 1e-9 else ""  # 0 when subsets = the set
    return f"{r['kid'] * 1e3:.1f}{spread}"


_DETAIL_ROWS = (("PSNR to the teacher (dB, higher is closer)", "psnr_db", "{:.2f}"),
                ("colour drift (8-bit levels, lower is closer)", "colour_drift_8bit", "{:.1f}"),
                ("finest band's error, 2-4 px detail (relative, 0 = the teacher's)", "band_error_L1", "{:.3f}"),
                ("second band's error, 4-8 px (relative)", "band_error_L2", "{:.3f}"),
                ("spectral HF ratio (1 = the teacher's fine detail, below: lost)", "spectral_hf_ratio", "{:.3f}"))


def _detail_table(student: dict, baseline: dict | None, n: int) -> list[str]:
    """What a user sees, image by image against the teacher; beside it doing nothing (the input) where that is a
    candidate output (photos), for scale."""
    head = f"| on {n} held-out inputs | student |" + (" do nothing (the input) |" if baseline else "")
    lines = [head, "|---|---:|" + ("---:|" if baseline else "")]
    for label, key, fmt in _DETAIL_ROWS:
        cells = [student.get(key)] + ([baseline.get(key)] if baseline else [])
        lines.append(f"| {label} | " + " | ".join("-" if v is None else fmt.format(v) for v in cells) + " |")
    return lines + [""]


def quality_section(q: dict, kind: str) -> list[str]:
    st = q["student_vs_teacher"]
    n = q["held_out"]
    lines = [f"On {n} held-out inputs the student is **{st['psnr_db']:.1f} dB PSNR** from its teacher's outputs "
             f"(mean |diff| {st['l1']:.3f} on [-1, 1] images), and its colours drift **{st['colour_drift_8bit']:.1f} "
             f"levels** (of 255) from the teacher's: the mean |difference of per-image channel means|. Averaged "
             f"over the images, the student's cast against the teacher is "
             f"{_rgb(st['colour_cast_rgb_8bit'])} levels.", ""]
    if "input_vs_teacher" in q:  # photos: the input itself is a baseline any student must beat
        base = q["input_vs_teacher"]
        better = st["psnr_db"] > base["psnr_db"] and st["colour_drift_8bit"] < base["colour_drift_8bit"]
        lines[-2] += (f" For scale, the input photos themselves are {base['psnr_db']:.1f} dB and "
                      f"{base['colour_drift_8bit']:.1f} levels of drift from the teacher's outputs: the student is "
                      + ("closer to the teacher than doing nothing on both." if better else
                         "**not closer to the teacher than doing nothing on both**; train longer."))
    lines += _detail_table(st, q.get("input_vs_teacher"), n)
    b = q["bands_vs_teacher"]
    lines.append(f"Relative to the teacher's outputs, the student's low wavelet band (colour and layout) holds "
                 f"{_f(b['low_band'], 3)}x the energy and its detail bands {_f(b['detail'], 3)}x (1 = the same; "
                 f"Haar, 3 levels, over the whole set).")
    lines.append("")
    if "fid_skipped" in q:
        return lines + [f"FID skipped: {q['fid_skipped']}"]
    target_set = ("the teacher's outputs on other photos (there is no real vintage set)" if kind == "photos"
                  else "the real held-out aerial photos")
    vt = q["vs_targets"]
    lines += ["| comparison | images | FID | KID x1000 |", "|---|---|---:|---:|",
              f"| student vs teacher, same inputs | {st['n'][0]} vs {st['n'][1]} | {_f(st['fid'])} | {_kid(st)} |"]
    for name in ("teacher", "student"):
        r = vt[name]
        lines.append(f"| {name} vs target set | {r['n'][0]} vs {r['n'][1]} | {_f(r['fid'])} | {_kid(r)} |")
    lines += ["", f"The target set is {target_set}. FID on {n} images is biased upward and noisy: compare the rows "
                  f"with each other, not with published numbers. KID is unbiased; with this few images every KID "
                  f"subset is the whole set, so it has no spread to show."]
    gap = vt["student"]["fid"] - vt["teacher"]["fid"]
    lines.append(f"Against the target set the student's FID is {abs(gap):.1f} {'above' if gap > 0 else 'below'} "
                 f"the teacher's.")
    return lines


def markdown(summary: dict) -> str:
    """The report text; every number comes from `summary`."""
    kind = summary["kind"]
    t, pr, d, q = summary["teacher"], summary["prune"], summary["distill"], summary["quality"]
    data = summary["data"]
    size = summary["size"]
    recipe = d["recipe"]
    anchor = recipe.get("anchor")
    if kind == "photos":
        intro = (f"Teacher: **{t['architecture']}**, {t['source']}. Data: horse photos bundled with ganzip "
                 f"(`ganzip data-path photos`, downscaled from horse2zebra): {data['inputs']} inputs, "
                 f"{data['targets']} other photos whose teacher outputs are the target set, {data['held_out']} held "
                 f"out. {size}x{size} px.")
        columns = "Columns: input photo | teacher | student (held-out photos)."
        teacher_step = f"1. **Teacher**: the pretrained generator, unchanged ({t['architecture']})."
    else:
        intro = (f"Teacher: a pix2pix U-Net fitted here on the bundled maps (`ganzip data-path`): {data['inputs']} "
                 f"training pairs, {data['held_out']} held out, {summary['direction']} (map -> aerial photo), "
                 f"{size}x{size} px.")
        columns = "Columns: input map | teacher | student | real aerial photo (held-out pairs)."
        teacher_step = (f"1. **Teacher**: {t['architecture']}, fitted with L1 for {t['steps']} steps "
                        f"({t['seconds']:.0f} s; final training L1 {t['final_loss']:.3f}).")
    v = d["summary"].get("final", {})
    val = (f" Validation on the held-out images at the last step, resized to the {recipe.get('size', size)} px of "
           f"the training crops: {v['val_psnr']:.1f} dB to the teacher"
           + (f", FID to the teacher {v['val_fid']:.1f}" if "val_fid" in v else "") + ".") if "val_psnr" in v else ""
    lines = [
        "# ganzip demo report",
        "",
        intro + f" Seed {summary['seed']}" + (", `--quick` settings (too short to train well: a smoke test)."
                                               if summary["quick"] else "."),
        "",
        "## How close the student stays to its teacher",
        "",
        *quality_section(q, kind),
        "",
        "## What it costs",
        "",
        *profile_table(summary["profile"]),
        "",
        "## Images",
        "",
        columns,
        "",
        f"![grid]({Path(summary['files']['grid']).name})",
        "",
        "## Pipeline",
        "",
        teacher_step,
        f"2. **Prune**: {pr['ratio']:g}x fewer MACs, `{pr['method']}` widths -> {pr['achieved']:.2f}x "
        f"({pr['seconds']:.0f} s).",
        f"3. **Distill**: {d['steps']} steps ({d['seconds']:.0f} s, {recipe.get('precision', 'fp32')}): {recipe['kd']} "
        f"KD on the high bands" + (f" + {anchor} anchor (weight {recipe.get('lambda_anchor')})"
                                   if anchor and anchor != "none" else "")
        + f", lr {recipe['lr']} constant then linear to 0 from {recipe['decay_from']:.0%} of the steps, random "
          f"{recipe.get('size', size)} px crops from {recipe['load_size']} px." + val,
        f"4. **Export**: `{Path(summary['onnx']['path']).name}`, {summary['onnx']['bytes'] / 1e6:.2f} MB, opset "
        f"{summary['onnx']['opset']}; onnxruntime vs PyTorch max |diff| "
        f"{max(summary['onnx']['verify']['max_abs_diff'].values()):.2e} "
        f"({'ok' if summary['onnx']['verify']['ok'] else 'ABOVE TOLERANCE'}).",
        "",
        f"Total time {summary['seconds']:.0f} s. Reproduce: `ganzip demo{' --paired' if kind == 'maps' else ''}"
        f"{' --quick' if summary['quick'] else ''} --seed {summary['seed']}` gives the same widths "
        f"({'uniform' if pr['method'] == 'uniform' else 'searched in MACs'}, which no timing changes) "
        f"and, with the same CPU and torch, the same student; the timings vary with the machine and its load.",
        "",
    ]
    return "\n".join(lines)
