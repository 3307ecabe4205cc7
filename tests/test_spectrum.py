import json
import math

import band_reference
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ganzip import archs, checkpoint, images, spectrum
from ganzip.cli import app


def _brute_force_radial(img: np.ndarray) -> np.ndarray:
    """The radial spectrum from the DFT definition, one frequency and one pixel at a time."""
    h, w = img.shape
    scale = min(h, w)
    n_bins = scale // 2 + 1
    sums, counts = np.zeros(n_bins), np.zeros(n_bins)
    for u in range(h):
        for v in range(w):
            acc = 0j
            for y in range(h):
                for x in range(w):
                    acc += img[y, x] * complex(math.cos(-2 * math.pi * (u * y / h + v * x / w)),
                                               math.sin(-2 * math.pi * (u * y / h + v * x / w)))
            power = abs(acc) ** 2 / (h * w)
            fu = u if u <= h // 2 else u - h  # signed frequency index (the upper half is negative)
            fv = v if v <= w // 2 else v - w
            r = round(math.hypot(fu * scale / h, fv * scale / w))
            if r < n_bins:
                sums[r] += power
                counts[r] += 1
    return sums / np.maximum(counts, 1)


@pytest.mark.parametrize("shape", [(8, 8), (6, 10)])
def test_radial_spectrum_matches_brute_force_dft(shape):
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(1, 1, *shape, generator=g) * 2 - 1
    freqs, spec = spectrum.radial_power_spectrum(gray)
    expected = _brute_force_radial(gray[0, 0].double().numpy())
    np.testing.assert_allclose(spec, expected, rtol=1e-9, atol=1e-12)
    assert freqs[1] == pytest.approx(1 / min(shape))


def test_sinusoid_puts_its_power_at_its_frequency():
    n, k = 32, 5
    xs = torch.arange(n, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * k * xs / n).expand(n, n)  # k cycles across the image, horizontally
    rgb = wave.expand(1, 3, n, n)  # equal channels: the luminance is the wave itself
    freqs, spec = spectrum.radial_power_spectrum(rgb)
    assert int(np.argmax(spec)) == k
    assert freqs[k] == pytest.approx(k / n)
    # All the power sits at +-k on one axis: 2 of the bin's frequencies carry (n*n/4) each, orthonormal scaling.
    counts = np.bincount(
        np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n))).astype(int).ravel())
    assert spec[k] == pytest.approx(2 * (n * n / 4) / counts[k])
    assert spec[np.arange(len(spec)) != k].max() < 1e-20


@pytest.mark.parametrize("along", ["width", "height"])
def test_a_non_square_image_keeps_its_frequency_in_cycles_per_pixel(along):
    """16 x 64 and 64 x 16 are binned on the shorter side's step: 8 cycles over 64 px is 1/8 cycle/pixel either
    way, so a student at one aspect ratio compares with a teacher at another on the same frequency axis."""
    h, w = (16, 64) if along == "width" else (64, 16)
    n = max(h, w)
    wave = torch.cos(2 * math.pi * 8 * torch.arange(n, dtype=torch.float64) / n)
    img = wave.view(1, n).expand(h, w) if along == "width" else wave.view(n, 1).expand(h, w)
    freqs, spec = spectrum.radial_power_spectrum(img.expand(1, 3, h, w))
    assert freqs[int(np.argmax(spec))] == pytest.approx(8 / 64)
    assert spec[np.arange(len(spec)) != int(np.argmax(spec))].max() < 1e-20


def test_high_frequency_share_of_a_low_and_a_high_sinusoid():
    n = 32
    xs = torch.arange(n, dtype=torch.float64)
    low = torch.cos(2 * math.pi * 2 * xs / n).expand(1, 1, n, n)
    high = torch.cos(2 * math.pi * 12 * xs / n).expand(1, 1, n, n)
    assert spectrum.high_frequency_share(*spectrum.radial_power_spectrum(low)) == pytest.approx(0.0)
    assert spectrum.high_frequency_share(*spectrum.radial_power_spectrum(high)) == pytest.approx(1.0)


def _textured(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1


def test_analyse_shows_a_blurred_batch_has_lost_high_frequencies():
    sharp = _textured()
    blurred = torch.nn.functional.avg_pool2d(sharp, 4)
    blurred = torch.nn.functional.interpolate(blurred, scale_factor=4, mode="nearest")
    result = spectrum.analyse({"real": sharp, "copy": sharp.clone(), "blurred": blurred}, "real", levels=2)
    series = result["series"]
    assert series["copy"]["hf_ratio"] == pytest.approx(1.0)
    assert series["copy"]["spectral_hf_ratio"] == pytest.approx(1.0)
    assert series["blurred"]["hf_ratio"] < 0.5
    assert series["blurred"]["spectral_hf_ratio"] < 0.5
    assert "LL" in series["real"]["bands"] and len(series["real"]["bands"]) == 1 + 3 * 2
    assert sum(series["blurred"]["band_fractions"].values()) == pytest.approx(1.0)
    # 4x4 blocks are constant, so the finest two levels of Haar detail are exactly zero.
    assert all(v == pytest.approx(0.0, abs=1e-9) for k, v in series["blurred"]["bands"].items() if k != "LL")
    json.dumps(result)  # plain JSON types only


def test_hf_ratio_compares_detail_energy_and_is_missing_without_detail_to_compare():
    sharp = _textured()
    shifted = (sharp * 0.5 + 0.4).clamp(-1, 1)  # darker contrast, brighter colour: half the detail amplitude
    result = spectrum.analyse({"real": sharp, "shifted": shifted}, "real", levels=2)
    s = result["series"]["shifted"]
    # independent: detail energy = mean square of every Haar band but LL; halving the amplitude quarters it
    assert s["hf_ratio"] == pytest.approx(s["hf_energy"] / result["series"]["real"]["hf_energy"])
    assert s["hf_ratio"] == pytest.approx(0.25, rel=1e-3)
    # a near-constant reference (8-bit noise only) has no detail to compare against: no ratio rather than any
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)) - 0.5  # half an 8-bit step
    flat = 0.2 + noise / 127.5
    series = spectrum.analyse({"flat": flat, "textured": sharp}, "flat", levels=2)["series"]
    assert series["textured"]["hf_ratio"] is None and series["textured"]["spectral_hf_ratio"] is None
    assert all(v is None for k, v in series["textured"]["band_ratios"].items() if k != "LL")


def _tiny_generator(path, seed):
    torch.manual_seed(seed)
    module = archs.build(archs.default_spec("resnet", ngf=4, n_blocks=1))
    checkpoint.save_generator(module, path)
    return module


def test_spectrum_command_writes_json_and_plot(tmp_path):
    data, real = tmp_path / "data", tmp_path / "real"
    data.mkdir(), real.mkdir()
    x = _textured(3, 32)
    for i in range(3):
        images.save_png(x[i], data / f"{i}.png")
        images.save_png(x[i].flip(-1), real / f"{i}.png")
    _tiny_generator(tmp_path / "a.pth", 0)
    _tiny_generator(tmp_path / "b.pth", 1)
    out = tmp_path / "plot.png"
    result = CliRunner().invoke(app, ["spectrum", str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--data",
                                      str(data), "--real", str(real), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["series"]) == {"real", "a.pth", "b.pth"}
    assert report["reference"] == "real" and report["size"] == 32
    assert len(report["frequencies"]) == 17
    # real is the data mirrored: a mirror keeps every power at the same radius, so it equals the data's spectrum
    np.testing.assert_allclose(report["series"]["real"]["spectrum"],
                               spectrum.radial_power_spectrum(images.load_batch(sorted(data.iterdir())))[1], rtol=1e-6)
    # the two generators translated the same photos: b is scored against a image by image, as computed here
    x_in = images.load_batch(sorted(data.iterdir()))
    with torch.no_grad():
        a, b = (checkpoint.load_module(tmp_path / n)(x_in) for n in ("a.pth", "b.pth"))
    paired = report["paired"]
    assert (paired["reference"], paired["n_images"], list(paired["rows"])) == ("a.pth", 3, ["b.pth"])
    row = paired["rows"]["b.pth"]
    assert row["band_error_L1"] == pytest.approx(band_reference.finest_band_error(b, a), rel=1e-4)
    assert row["colour_drift_8bit"] == pytest.approx(band_reference.colour_drift(b, a), rel=1e-4)
    assert row["psnr_db"] == pytest.approx(band_reference.psnr(b, a), abs=1e-3)
    shown = CliRunner().invoke(app, ["spectrum", str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--data", str(data)])
    assert shown.exit_code == 0 and "image by image against a.pth's outputs (3 images)" in shown.output
    assert f"{row['band_error_L1']:.3f}" in shown.output and f"{row['psnr_db']:.2f} dB" in shown.output
    pytest.importorskip("matplotlib")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spectrum_command_reports_an_empty_real_folder_in_one_line(tmp_path):
    data, real = tmp_path / "data", tmp_path / "real"
    data.mkdir(), real.mkdir()
    images.save_png(_textured(1, 30)[0], data / "0.png")
    _tiny_generator(tmp_path / "a.pth", 0)
    result = CliRunner().invoke(app, ["spectrum", str(tmp_path / "a.pth"), "--data", str(data), "--real", str(real)])
    assert result.exit_code == 2
    assert "contains no images" in result.output and "Traceback" not in result.output


def test_spectrum_resolves_a_dataset_root_like_fid(tmp_path):
    root = tmp_path / "h2z"
    x = _textured(4, 32)
    for sub, batch in (("testA", x[:2]), ("testB", x[2:])):
        (root / sub).mkdir(parents=True)
        for i, t in enumerate(batch):
            images.save_png(t, root / sub / f"{i}.png")
    _tiny_generator(tmp_path / "g.pth", 0)
    report = spectrum.spectrum([tmp_path / "g.pth"], root)
    assert report["sources"]["real"] == str(root / "testB")
    expected = spectrum.radial_power_spectrum(images.load_batch(sorted((root / "testB").iterdir())))[1]
    np.testing.assert_allclose(report["series"]["real"]["spectrum"], expected, rtol=1e-6)


def test_spectrum_refuses_more_levels_than_the_images_have(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    images.save_png(_textured(1, 64)[0], data / "0.png")
    _tiny_generator(tmp_path / "a.pth", 0)
    result = CliRunner().invoke(app, ["spectrum", str(tmp_path / "a.pth"), "--data", str(data), "--levels", "99"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == ("error: --levels 99 is more than a 64 px image has for haar (at most 6: each "
                                     "level halves the image and the filter needs 2 px); use --levels 6 or less")
