"""Regenerate the pictures in docs/visualise.md and docs/serve.md from a demo run (needs the plots and serve
extras; the page's screenshot needs Playwright and Debian's chromium).

    alexnet demo                                   # writes runs/train-N
    python docs/images/make.py runs/train-N [alexnet-demo]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from alexnet_cli.config.settings import PredictConfig
from alexnet_cli.inference.predict import predict
from alexnet_cli.observer import SilentObserver
from alexnet_cli.reporting.plots import plot_run


def main() -> None:
    run = Path(sys.argv[1])
    demo = Path(sys.argv[2] if len(sys.argv) > 2 else "alexnet-demo")
    here = Path(__file__).resolve().parent
    for picture in plot_run(run):
        shutil.copy(picture, here / picture.name)
    samples = [str(sorted((demo / "val" / name).iterdir())[3]) for name in ("checks", "dots", "rings", "stripes")]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PredictConfig(inputs=tuple(samples), weights=run / "best.pt", explain=Path(tmp))
        results = predict(cfg, SilentObserver())
        tiles = [Image.open(r["explanation"]).resize((201, 201), Image.NEAREST) for r in results]
        strip = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), 201), "white")
        x = 0
        for tile in tiles:
            strip.paste(tile, (x, 0))
            x += tile.width + 8
        strip.save(here / "gradcam.png", optimize=True)
    serve_page(run / "best.pt", samples[2], here / "serve-page.png")
    print("wrote", ", ".join(p.name for p in sorted(here.glob("*.png"))))


def serve_page(weights: Path, image: str, target: Path) -> None:
    """The page of `alexnet serve` after an upload, in headless Chromium."""
    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([sys.executable, "-m", "alexnet_cli", "serve", str(weights), "--port", "0"],
                              stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "listening on " not in line:
            line = server.stderr.readline()
            if not line and server.poll() is not None:
                raise SystemExit("alexnet serve did not start")
        url = line.split("listening on ")[1].split()[0]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 900, "height": 560})
            page.goto(url)
            page.set_input_files("#file", image)
            page.wait_for_function("document.getElementById('label').textContent.length > 0")
            page.wait_for_function("document.getElementById('overlay').complete")
            page.screenshot(path=str(target), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
