"""fastai's `vision.learner` building blocks over the Rust core: `create_body`, `create_head`,
`model_meta` and the splits, following fastai 2.8.12 rule for rule."""
import re

from torch import nn

from . import _core, models
from ._engine import RustModule, build
from .exceptions import ArgumentError, ArgumentTypeError, StructureError, UnknownArchError
from .layers import Sequential

__all__ = ['model_meta', 'has_pool_type', 'cut_model', 'create_body', 'create_head', 'default_split', 'params',
           'arch_name']

imagenet_stats = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def params(m):
    "Return all parameters of `m`"
    return [p for p in m.parameters()]


def _is_pool_type(l): return re.search(r'Pool[123]d$', l.__class__.__name__)


def has_pool_type(m):
    "Return `True` if `m` is a pooling layer or has one in its children"
    if _is_pool_type(m): return True
    return any(has_pool_type(l) for l in m.children())


def default_split(m):
    "Default split of a model between body and head"
    return [params(m[0]), params(m[1:])]


def _path(m, path):
    for i in path: m = m[i]
    return m


def _make_split(path, at):
    def split(m):
        body = _path(m, path)
        return [params(body[:at]), params(body[at:]), params(m[1:])]
    return split


def _meta(row):
    meta = {'cut': row['cut'], 'split': _make_split(row['split_path'], row['split_at']),
            'stats': tuple(list(s) for s in row['stats'])}
    meta['split'].__name__ = f"_{row['family']}_split"
    if row['tv_weights']: meta['weights'] = 'DEFAULT'
    return meta


def _reference_fns(name):
    "The torchvision / fastai arch functions fastai keys `model_meta` by, when importable"
    try:
        import torchvision.models as tvm
    except ImportError: return []
    fns = [getattr(tvm, name, None)]
    if name.startswith('xresnet'):
        try:
            from fastai.vision.models import xresnet
            fns = [getattr(xresnet, name, None)]
        except ImportError: fns = []
    return [f for f in fns if f is not None]


class _ModelMeta(dict):
    """fastai's `model_meta`: keyed by our arch functions and by torchvision's / fastai's. Those are
    added on first use (a user holding torchvision's function has imported it already), so that
    `import siamese_rs` does not import torchvision and fastai."""
    _complete = False

    def _complete_keys(self):
        if self._complete: return
        self._complete = True
        for name, meta in _META_BY_NAME.items():
            for f in _reference_fns(name): self[f] = meta

    def __missing__(self, key):
        if self._complete: raise KeyError(key)
        self._complete_keys()
        return self[key]

    def __contains__(self, key): return dict.__contains__(self, key) or (self._complete_keys() or dict.__contains__(self, key))
    def get(self, key, default=None): return self[key] if key in self else default
    def __iter__(self): self._complete_keys(); return dict.__iter__(self)
    def __len__(self): self._complete_keys(); return dict.__len__(self)
    def keys(self): self._complete_keys(); return dict.keys(self)
    def values(self): self._complete_keys(); return dict.values(self)
    def items(self): self._complete_keys(); return dict.items(self)


def _build_model_meta():
    meta, by_name = _ModelMeta(), {}
    for name, row in models.ARCHS.items(): meta[getattr(models, name)] = by_name[name] = _meta(row)
    return meta, by_name


model_meta, _META_BY_NAME = _build_model_meta()


def arch_name(arch):
    "The arch-table name of `arch` (our function, torchvision's or fastai's), or None"
    name = getattr(arch, '__name__', None)
    return name if name in models.ARCHS and arch in model_meta else None


def _get_first_layer(m):
    "Access first layer of a model"
    c, p, n = m, None, None
    for n in next(m.named_parameters())[0].split('.')[:-1]:
        p, c = c, getattr(c, n)
    return c, p, n


def _update_first_layer(model, n_in, pretrained):
    "Change first layer based on number of input channels"
    if n_in == 3: return
    if not isinstance(n_in, int) or isinstance(n_in, bool) or n_in < 1:
        raise ArgumentError(f'create_body: n_in must be a positive int (input channels), got {n_in!r}')
    first, parent, name = _get_first_layer(model)
    if not isinstance(first, nn.Conv2d):
        raise StructureError(f'create_body: changing n_in needs a Conv2d first layer, found {type(first).__name__}')
    if first.in_channels != 3:
        raise ArgumentError(f'create_body: the first conv takes {first.in_channels} channels, expected 3 to adapt to n_in')
    k, s, p = first.kernel_size, first.stride, first.padding
    if k[0] != k[1] or s[0] != s[1] or isinstance(p, str) or p[0] != p[1] or first.groups != 1:
        raise StructureError(f'create_body: n_in != 3 needs a square, ungrouped first conv, found {first}')
    w = first.weight.data if pretrained else None
    setattr(parent, name, build(_core.first_conv(first.out_channels, k[0], s[0], p[0], first.bias is not None, n_in, w)))


def cut_model(model, cut):
    "Cut an instantiated model"
    if isinstance(cut, int) and not isinstance(cut, bool): return Sequential(*list(model.children())[:cut])
    if callable(cut): return cut(model)
    raise ArgumentTypeError(f'create_body: cut must be None, an int or a function, got {type(cut).__name__} {cut!r}')


def _as_model(model, pretrained):
    "`model` as our module tree: an arch function is called, a reference model converted"
    if isinstance(model, RustModule): return model
    if isinstance(model, nn.Module): return models.from_torch(model)
    if callable(model):
        name = arch_name(model)
        if name is None:
            known = ', '.join(models.ARCHS)
            raise UnknownArchError(f'create_body: unknown architecture {getattr(model, "__name__", model)!r}; '
                                   f'expected a model or one of {known}')
        return getattr(models, name)(pretrained=pretrained)
    raise ArgumentTypeError(f'create_body: model must be an nn.Module or an arch function, got {type(model).__name__}')


# Families of the arch table by the class of their full model: a torchvision / fastai instance given to
# `create_body` is one of these archs, found by `export_model` by comparing module trees.
_FAMILY_OF_CLASS = {'ResNet': 'resnet', 'XResNet': 'xresnet', 'VGG': 'vgg', 'AlexNet': 'alexnet', 'DenseNet': 'densenet',
                    'SqueezeNet': 'squeezenet'}


def _body_record(model, arch, n_in, cut):
    "What `export_model` needs to build this body again: `create_body`'s arguments (or why it cannot)"
    if callable(cut) and not isinstance(cut, int):
        return {'reason': f'it was cut by a function ({getattr(cut, "__qualname__", type(cut).__name__)}); export needs '
                          'create_body(arch, cut=<int or None>)'}
    family = None if arch is not None else _FAMILY_OF_CLASS.get(type(model).__name__)
    if arch is None and family is None:
        return {'reason': f'create_body was given a {type(model).__qualname__}, which is not one of the architectures '
                          f'of sr.model_meta'}
    return {'arch': arch, 'family': family, 'n_in': int(n_in), 'cut': cut}


def create_body(model, n_in=3, pretrained=True, cut=None):
    "Cut off the body of a typically pretrained `arch` as determined by `cut`"
    arch = arch_name(model) if callable(model) and not isinstance(model, nn.Module) else None
    model = _as_model(model, pretrained)
    if arch is None: arch = model.__dict__.get('_sr_arch')
    _update_first_layer(model, n_in, pretrained)
    record = _body_record(model, arch, n_in, cut)
    if cut is None:
        ll = list(enumerate(model.children()))
        cut = next((i for i, o in reversed(ll) if has_pool_type(o)), None)
        if cut is None: raise ArgumentError('create_body: cut=None needs a child with a pooling layer; pass cut')
    body = cut_model(model, cut)
    # A plain attribute: no state_dict key, no repr change; kept by deepcopy, pickling and `learn.export`.
    if isinstance(body, nn.Module): body.__dict__['_sr_body'] = record
    return body


def _floats(name, v, what):
    "`v` as a list of floats, or `ArgumentTypeError` naming `name` and the expected `what`"
    if isinstance(v, (int, float)) and not isinstance(v, bool): return [float(v)]
    if not isinstance(v, (str, bytes)):
        try: return [float(p) for p in v]
        except (TypeError, ValueError): pass
    raise ArgumentTypeError(f'create_head: {name} must be {what}, got {type(v).__name__} {v!r}')


def _ps_list(ps): return _floats('ps', ps, 'a float or a list of floats')


def _int_arg(name, v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ArgumentTypeError(f'create_head: {name} must be an int, got {type(v).__name__} {v!r}')
    return v


def create_head(nf, n_out, lin_ftrs=None, ps=0.5, pool=True, concat_pool=True, first_bn=True, bn_final=False,
                lin_first=False, y_range=None):
    "Model head that takes `nf` features, runs through `lin_ftrs`, and out `n_out` classes."
    if lin_ftrs is not None and (isinstance(lin_ftrs, (str, bytes)) or not hasattr(lin_ftrs, '__iter__')):
        raise ArgumentTypeError(f'create_head: lin_ftrs must be a list of ints, got {type(lin_ftrs).__name__} {lin_ftrs!r}')
    lin_ftrs = None if lin_ftrs is None else [_int_arg('lin_ftrs', f) for f in lin_ftrs]
    if y_range is not None:
        low_high = _floats('y_range', y_range, '(low, high)')
        if isinstance(y_range, (int, float)) or len(low_high) != 2:
            raise ArgumentError(f'create_head: y_range must be (low, high), got {y_range!r}')
    tree = _core.create_head(_int_arg('nf', nf), _int_arg('n_out', n_out), lin_ftrs, _ps_list(ps), bool(pool),
                             bool(concat_pool), bool(first_bn), bool(bn_final), bool(lin_first),
                             None if y_range is None else tuple(low_high))
    head = build(tree)
    relus = [i for i, m in enumerate(head) if type(m).__name__ == 'ReLU']
    for i in relus[1:]: head[i] = head[relus[0]]  # fastai repeats one ReLU instance: `[nn.ReLU()] * n`
    if y_range is not None: head[-1].low, head[-1].high = y_range  # keep the user's numbers, as fastai does
    head.__dict__['_sr_head'] = {
        'nf': nf, 'n_out': n_out, 'lin_ftrs': lin_ftrs, 'ps': _ps_list(ps), 'pool': bool(pool),
        'concat_pool': bool(concat_pool), 'first_bn': bool(first_bn), 'bn_final': bool(bn_final),
        'lin_first': bool(lin_first), 'y_range': None if y_range is None else [_json_number(v) for v in y_range]}
    return head


def _json_number(v):
    "`v` as JSON keeps it: an int or float as it is (so a rebuilt `SigmoidRange` holds the same number), else float"
    return v if type(v) in (int, float) else float(v)
