"""Pretrained and saved weights: torch's hub cache, `.pth` state dicts (read with
`weights_only=True`, so no pickled code runs) and `.safetensors` files."""
import os
import re
from pathlib import Path

import torch

from .exceptions import ArgumentTypeError, WeightsError, WeightsNotFoundError

__all__ = ['load_pretrained', 'load_weights', 'read_state_dict', 'hub_checkpoints']

# torchvision renames densenet's legacy keys ('denselayer1.norm.1') on load; so do we.
_DENSENET_KEY = re.compile(r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$')


def hub_checkpoints():
    "The folder torch's hub keeps downloaded weights in (`$TORCH_HOME/hub/checkpoints`)"
    return Path(torch.hub.get_dir()) / 'checkpoints'


def read_state_dict(path):
    "A state dict from a `.pth`/`.pt` (weights only) or `.safetensors` file"
    path = Path(path)
    if not path.is_file(): raise WeightsNotFoundError(f'weights file {str(path)!r} does not exist')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise WeightsError(f'cannot read weights file {str(path)!r}: {str(e).splitlines()[0]}') from None
    if isinstance(sd, dict) and 'model' in sd and isinstance(sd['model'], dict): sd = sd['model']
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f'weights file {str(path)!r} does not hold a state dict of tensors')
    return {_DENSENET_KEY.sub(lambda m: m.group(1) + m.group(2), k): v for k, v in sd.items()}


def _check_values(own, sd):
    "Raise `WeightsError` naming the first value that is not a tensor PyTorch could copy into the model"
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f'weights: {k!r} must be a tensor, got {type(v).__name__}')
        if k not in own: continue
        if v.device.type == 'meta':
            raise WeightsError(f'weights: {k!r} is on the meta device (it has no values); load real tensors')
        if v.is_complex() and not own[k].is_complex():
            raise WeightsError(f'weights: {k!r} is {v.dtype}, which cannot be copied into the model\'s {own[k].dtype}')


def _check_fit(model, sd, strict=True):
    "Raise `WeightsError` listing missing, unexpected and mis-shaped keys"
    own = model.state_dict()
    _check_values(own, sd)
    # Files saved before BatchNorm counted batches (torchvision's densenets) lack the counter;
    # PyTorch's BatchNorm fills it in on load.
    missing = [k for k in own if k not in sd and not k.endswith('.num_batches_tracked')] if strict else []
    unexpected = [k for k in sd if k not in own] if strict else []
    shapes = [f'{k}: model {tuple(own[k].shape)}, file {tuple(v.shape)}' for k, v in sd.items()
              if k in own and own[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f'{n} ({len(v)}): {", ".join(v[:8])}{" ..." if len(v) > 8 else ""}'
                 for n, v in (('missing keys', missing), ('unexpected keys', unexpected), ('mis-shaped keys', shapes))
                 if v]
        raise WeightsError(f'weights do not fit {type(model).__name__}: ' + '; '.join(parts))


def load_weights(model, source, strict=True):
    "Load a state dict or a weights file (`.pth`, `.safetensors`) into `model`; unchanged on error"
    if isinstance(source, (str, os.PathLike)): sd = read_state_dict(source)
    elif isinstance(source, dict): sd = source
    else: raise ArgumentTypeError(f'weights: expected a path or a state dict, got {type(source).__name__}')
    _check_fit(model, sd, strict)
    # Everything checkable is checked above; a copy that still fails must not leave half a model.
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try: model.load_state_dict(sd, strict=strict)
    except Exception as e:
        model.load_state_dict(backup)
        raise WeightsError(f'weights: could not load into {type(model).__name__} ({" ".join(str(e).split())}); '
                           'the model is unchanged') from e
    return model


def load_pretrained(model, arch, weights=None, progress=True):
    "Load fastai's ImageNet weights for `arch` from the hub cache (downloading them if there is a network)"
    from .models import ARCHS
    if weights is not None and not (isinstance(weights, str) and weights.isupper()):
        return load_weights(model, weights)  # a path or a state dict, not a name like 'DEFAULT'
    meta = ARCHS[arch]
    if meta['weights_file'] is None:
        raise WeightsNotFoundError(f'{arch} has no pretrained ImageNet weights; use pretrained=False')
    file, url = meta['weights_file'], meta['weights_url']
    path = hub_checkpoints() / file
    if not path.is_file(): _download(arch, url, path, progress)
    return load_weights(model, path, strict=meta['family'] != 'xresnet')


def _download(arch, url, path, progress):
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=progress)
    except Exception as e:
        raise WeightsNotFoundError(
            f'pretrained weights for {arch} are not in the hub cache and could not be downloaded '
            f'({type(e).__name__}). Place the file {path.name} in {path.parent} '
            f'(from {url}, or copy it from a machine with torchvision: it is the file '
            f'torchvision downloads), or use pretrained=False.') from None
