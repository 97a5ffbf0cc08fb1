"""The yardstick: a small CNN that reads what a shapes image shows.

It reads the shape, color, size and position of the one object and the background
color, and its penultimate layer gives the features of the Fréchet distance. It is
trained on rendered single-object images with light noise, blur and color jitter, so
that it reads generated images (softer, noisier) as it reads rendered ones. Weights
live as safetensors next to a ``config.json`` naming the label sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from shapes import dataset

#: What the classifier reads, and the labels of each head.
HEADS: dict[str, tuple[str, ...]] = {
    "shape": dataset.SHAPES,
    "color": dataset.COLOR_NAMES,
    "size": dataset.SIZES,
    "position": dataset.POSITIONS,
    "background": dataset.COLOR_NAMES,
}
FEATURES = 128
#: Data-set seeds of the classifier's training and held-out images.
TRAIN_SEED, HELD_OUT_SEED = 10, 11
WEIGHTS, CONFIG = "model.safetensors", "config.json"


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        # 64 -> 32 -> 16 -> 8 -> 4; flattened rather than pooled, so position survives.
        self.body = nn.Sequential(
            block(3, 32, 1), block(32, 32, 2), block(32, 64, 2), block(64, 64, 2), block(64, 64, 2)
        )
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURES), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, len(labels)) for name, labels in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: ``FEATURES`` values per image in [0, 1]-scaled (n, 3, 64, 64) input."""
        return self.neck(self.body(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(x)
        return {name: head(feats) for name, head in self.heads.items()}


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 64, 64, 3) -> float (n, 3, 64, 64) in [0, 1]."""
    if images.ndim != 4 or images.shape[1:] != (dataset.SIZE, dataset.SIZE, 3):
        raise ValueError(f"the yardstick reads (n, 64, 64, 3) RGB images, got an array of shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def labels(scenes: list[dataset.Scene]) -> dict[str, torch.Tensor]:
    """Label indices of each head for one-object scenes."""
    objs = [s.objects[0] for s in scenes]
    values = {
        "shape": [o.shape for o in objs],
        "color": [o.color for o in objs],
        "size": [o.size for o in objs],
        "position": [o.position for o in objs],
        "background": [s.background for s in scenes],
    }
    return {name: torch.tensor([HEADS[name].index(v) for v in values[name]]) for name in HEADS}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light noise, blur and per-channel gain: generated images are softer and noisier than rendered ones."""
    n = x.shape[0]
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    blur = (torch.rand(n, 1, 1, 1, generator=gen) < 0.3).float()
    x = blur * blurred + (1 - blur) * x
    x = x * (1 + 0.06 * (torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1))
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.05
    return x.clamp(0, 1)


def _scenes(seed: int, start: int, count: int) -> list[dataset.Scene]:
    return [dataset.scene(i, seed, two_object_share=0.0) for i in range(start, start + count)]


@torch.no_grad()
def accuracy(classifier: Classifier, scenes: list[dataset.Scene]) -> dict[str, float]:
    """Share of ``scenes`` (rendered) each head reads right, and all heads at once (``"all"``)."""
    classifier.eval()
    predicted = read(classifier, np.stack([dataset.render(s) for s in scenes]))
    truth = labels(scenes)
    right = {name: np.array(predicted[name]) == np.array([HEADS[name][i] for i in truth[name]]) for name in HEADS}
    result = {name: float(r.mean()) for name, r in right.items()}
    result["all"] = float(np.logical_and.reduce(list(right.values())).mean())
    return result


def train(
    *, steps: int, batch: int, lr: float, seed: int, device: torch.device, held_out: int = 2000
) -> tuple[Classifier, dict[str, float]]:
    """Train on fresh single-object images each step; return the model and its held-out accuracy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        scenes = _scenes(TRAIN_SEED, step * batch, batch)
        x = _augment(to_input(np.stack([dataset.render(s) for s in scenes])), gen).to(device)
        target = labels(scenes)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(x)
        loss = sum(F.cross_entropy(logits[name].float(), target[name].to(device)) for name in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            print(f"yardstick {step + 1}/{steps} loss={loss.item():.4f}", flush=True)
    model = model.cpu().eval()
    return model, accuracy(model, _scenes(HELD_OUT_SEED, 0, held_out))


@torch.no_grad()
def read(classifier: Classifier, images: np.ndarray, batch: int = 256) -> dict[str, list[str]]:
    """The label each head reads in each uint8 (n, 64, 64, 3) image."""
    out: dict[str, list[str]] = {name: [] for name in HEADS}
    for i in range(0, len(images), batch):
        logits = classifier(to_input(images[i : i + batch]))
        for name, labels_ in HEADS.items():
            out[name] += [labels_[int(k)] for k in logits[name].argmax(1)]
    return out


@torch.no_grad()
def features(classifier: Classifier, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Penultimate-layer features, (n, FEATURES) float64."""
    return np.concatenate(
        [classifier.features(to_input(images[i : i + batch])).double().numpy() for i in range(0, len(images), batch)]
    )


def save(classifier: Classifier, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, directory / WEIGHTS)
    (directory / CONFIG).write_text(json.dumps({"heads": HEADS, "features": FEATURES}, indent=2) + "\n")


def load(directory: str | Path) -> Classifier:
    """The classifier saved in ``directory``, in eval mode; a clear error if it is not one."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise FileNotFoundError(f"no yardstick classifier in {directory} (expected {WEIGHTS}); train one with "
                                "'python -m shapes.train yardstick'")
    config = json.loads((directory / CONFIG).read_text())
    if {k: tuple(v) for k, v in config["heads"].items()} != HEADS:
        raise ValueError(f"the yardstick in {directory} reads other labels than this data set; retrain it")
    model = Classifier()
    model.load_state_dict(load_file(directory / WEIGHTS))
    return model.eval()
