"""Regenerate the pictures in docs/visualise.md from a demo run (needs the plots extra).

    alexnet demo                                   # writes runs/train-N
    python docs/images/make.py runs/train-N [alexnet-demo]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from alexnet_cli.config import PredictConfig
from alexnet_cli.observer import SilentObserver
from alexnet_cli.prediction import predict
from alexnet_cli.plots import plot_run


def main() -> None:
    run = Path(sys.argv[1])
    demo = Path(sys.argv[2] if len(sys.argv) > 2 else "alexnet-demo")
    here = Path(__file__).resolve().parent
    for picture in plot_run(run):
        shutil.copy(picture, here / picture.name)
    samples = [str(sorted((demo / "val" / name).iterdir())[3]) for name in ("checks", "dots", "rings", "stripes")]
    with tempfile.TemporaryDirectory() as tmp:
        results = predict(PredictConfig(inputs=tuple(samples), weights=run / "best.pt", explain=Path(tmp)), SilentObserver())
        tiles = [Image.open(r["explanation"]).resize((201, 201), Image.NEAREST) for r in results]
        strip = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), 201), "white")
        x = 0
        for tile in tiles:
            strip.paste(tile, (x, 0))
            x += tile.width + 8
        strip.save(here / "gradcam.png", optimize=True)
    print("wrote", ", ".join(p.name for p in sorted(here.glob("*.png"))))


if __name__ == "__main__":
    main()
