"""A hostile TorchScript model made in the test process (torch.jit.script reads this file's source)."""

from __future__ import annotations

from pathlib import Path

import torch


class ReadFile(torch.nn.Module):
    """Returns the first ``n`` bytes of the file at ``path`` as floats: model code reading the instance's secrets."""

    def __init__(self, path: str, n: int) -> None:
        super().__init__()
        self.path = path
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_file(self.path, False, self.n, dtype=torch.uint8).to(torch.float32) + x.sum() * 0


def make_file_reader(out_dir: Path, target: Path, n: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.pt"
    torch.jit.script(ReadFile(str(target), n)).save(str(path))
    return path
