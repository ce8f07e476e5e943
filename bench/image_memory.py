"""Peak resident memory of kdcli's image path (read an image folder as evaluate does, then run every
batch through `collect`, as evaluate and pseudo-label do) for 2k vs 20k synthetic images, one process
each: images decode per batch, so the peak should not grow with the folder (promise: within 10%).
The forward is a per-channel mean, so the figure is the data path's, not a model's activations.

python -m bench.image_memory [--counts 2000 20000] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from bench.common import emit

CHILD = """
import json, resource, sys
from kdcli.profile import load_profile
import torch
from kdcli.data.splits import load_split
from kdcli.metrics import collect
from kdcli.commands.checkpoints import load_teacher
profile = load_profile(sys.argv[1])
split = load_split(profile, "eval", load_teacher(profile))
collect(lambda batch: batch["pixel_values"].mean((2, 3)), split, 64, torch.device("cpu"))
peak = lambda who: resource.getrusage(who).ru_maxrss / 1024
# DataLoader workers are child processes: their peak counts too
print(json.dumps({"peak_rss_mb": peak(resource.RUSAGE_SELF), "workers_peak_rss_mb": peak(resource.RUSAGE_CHILDREN)}))
"""


def image_folder(root: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"c{i % 2}" / f"{i:06d}.png", compress_level=1)
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    import timm
    from safetensors.torch import save_file
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher = work / "teacher.safetensors"
        save_file(timm.create_model("resnet10t", num_classes=2).state_dict(), str(teacher))
        for count in args.counts:
            folder = image_folder(work / f"images-{count}", count, args.size)
            spec = {"name": "img-mem", "task": "image-classification",
                    "teacher": {"source": "timm", "path": str(teacher), "arch": "resnet10t", "num_classes": 2},
                    "student": {"path": str(work / "unused")},
                    "data": {"train": str(folder), "eval": str(folder), "image_size": args.size},
                    "train": {"batch_size": 64, "threads": 2}, "output": str(work / f"run-{count}")}
            profile = work / f"img-{count}.yaml"
            profile.write_text(yaml.safe_dump(spec, sort_keys=False))
            out = subprocess.run([sys.executable, "-c", CHILD, str(profile)], capture_output=True, text=True,
                                 check=True)
            rows.append({"images": count, **json.loads(out.stdout.strip().splitlines()[-1])})
    eager_mb = {r["images"]: round(r["images"] * 3 * args.size ** 2 * 4 / 2**20, 1) for r in rows}
    emit({"bench": "image_memory", "path": "load_split (every file checked) + collect over DataLoader workers",
          "image_size": args.size, "rows": rows,
          "decoded_float32_mb_if_held": eager_mb,  # what the pre-lazy reader held for the pixels alone
          "ratio_largest_to_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)})


if __name__ == "__main__":
    main()
