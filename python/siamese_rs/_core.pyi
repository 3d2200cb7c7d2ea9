"""Type stubs of the native module built from src/bindings/ (checked by `make lint` with mypy's stubtest)."""
from typing import Any, TypeAlias, final

import torch

__all__ = ['kinds', 'archs', 'build_arch', 'create_head', 'first_conv', 'Graph', 'TORCH_VERSION']

TORCH_VERSION: str

_Tree: TypeAlias = tuple[str, dict[str, Any], list[tuple[str, '_Tree']], list[tuple[str, torch.Tensor]]]

def kinds() -> dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...] | None]]: ...
def archs() -> list[dict[str, Any]]: ...
def build_arch(name: str) -> _Tree: ...
def create_head(nf: int, n_out: int, lin_ftrs: list[int] | None, ps: list[float], pool: bool,
                concat_pool: bool, first_bn: bool, bn_final: bool, lin_first: bool,
                y_range: tuple[float, float] | None) -> _Tree: ...
def first_conv(cout: int, k: int, stride: int, padding: int, bias: bool, n_in: int,
               pretrained: torch.Tensor | None) -> _Tree: ...

@final
class Graph:
    def __new__(cls, modules: list[tuple[str, tuple[Any, ...], int, bool, list[bool]]]) -> Graph: ...
    def forward(self, tensors: list[torch.Tensor | None], inputs: list[torch.Tensor],
                fast: bool = False) -> torch.Tensor: ...
