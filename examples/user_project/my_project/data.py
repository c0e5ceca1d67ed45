"""The project's data: noisy 16x16 images of stripes in four orientations, pixels in [0, 1]."""

import torch
from torch.utils.data import Dataset

ORIENTATIONS = ("horizontal", "vertical", "diagonal", "antidiagonal")


class Stripes(Dataset):
    """`size` images (1, 16, 16) of stripes, labelled by orientation, drawn from `seed`."""

    classes = ORIENTATIONS

    def __init__(self, size: int = 800, noise: float = 0.3, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        phases = (rows, cols, rows + cols, rows - cols)
        self.labels = torch.randint(len(ORIENTATIONS), (size,), generator=generator)
        period = 2 + 4 * torch.rand(size, generator=generator)
        shift = 6.3 * torch.rand(size, generator=generator)
        clean = torch.stack([0.5 + 0.5 * torch.sin(2 * torch.pi * phases[int(k)] / p + s)
                             for k, p, s in zip(self.labels, period, shift, strict=True)])
        noisy = clean + noise * torch.randn(clean.shape, generator=generator)
        self.images = noisy.clamp(0, 1).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]
