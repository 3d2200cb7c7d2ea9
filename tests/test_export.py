"""The tools that turn a model into a graph (jit trace/script, torch.compile, torch.export, ONNX) see the same
standard ops as for fastai's model: same outputs at batch sizes other than the captured one, and files that run
without siamese-rs."""
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from fastai.vision import learner as fl
from torchvision import models as tvm

import siamese_rs as sr
from conftest import RefSiamese
from pairdata import tiny_model

SIZES = (1, 3, 4)


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def tiny_pair(seed=0):
    "Our small Siamese model (resnet18's stem and first stage) and fastai's with the same weights"
    ours = tiny_model(seed)
    ref = RefSiamese(fl.create_body(tvm.resnet18(), cut=5), fl.create_head(128, 2, lin_ftrs=[16], ps=0.))
    ref.load_state_dict(ours.state_dict())
    return ours.eval(), ref.eval()


def xs(b, seed=0):
    g = torch.Generator().manual_seed(seed + b)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randn(b, 3, 16, 16, generator=g)


def assert_matches_reference(run, ref):
    "`run(x1, x2)` gives fastai's outputs at every batch size"
    for b in SIZES:
        x1, x2 = xs(b)
        with torch.no_grad(): want = ref(x1, x2)
        out = run(x1, x2)
        out = torch.as_tensor(out)
        assert out.shape == want.shape, (b, out.shape)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def run_without_siamese_rs(code):
    "Run `code` in a fresh interpreter in which `import siamese_rs` fails"
    prog = 'import sys\nsys.modules["siamese_rs"] = None\nimport torch\n' + textwrap.dedent(code)
    out = subprocess.run([sys.executable, '-c', prog], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def check_file_outside(path, ref):
    "The saved TorchScript file gives fastai's outputs in a process without siamese-rs"
    torch.save({b: xs(b) for b in SIZES}, path.with_suffix('.inputs'))
    run_without_siamese_rs(f'''
        m = torch.jit.load({str(path)!r})
        inputs = torch.load({str(path.with_suffix('.inputs'))!r})
        torch.save({{b: m(*x) for b, x in inputs.items()}}, {str(path.with_suffix('.outputs'))!r})
    ''')
    outs = torch.load(path.with_suffix('.outputs'))
    for b in SIZES:
        with torch.no_grad(): torch.testing.assert_close(outs[b], ref(*xs(b)), atol=1e-5, rtol=1e-5)


def test_jit_trace_with_defaults(tmp_path):
    ours, ref = tiny_pair()
    traced = torch.jit.trace(ours, xs(2))  # check_trace=True re-traces and compares the graphs
    assert_matches_reference(lambda a, b: traced(a, b), ref)
    traced.save(str(tmp_path / 'traced.pt'))
    check_file_outside(tmp_path / 'traced.pt', ref)


@pytest.mark.parametrize('part', ['model', 'body', 'head'])
def test_jit_script(part, tmp_path):
    ours, ref = tiny_pair()
    if part == 'model':
        scripted = torch.jit.script(ours)
        assert_matches_reference(lambda a, b: scripted(a, b), ref)
        scripted.save(str(tmp_path / 'scripted.pt'))
        check_file_outside(tmp_path / 'scripted.pt', ref)
        assert type(ours.encoder[4][0]) is sr.BasicBlock  # scripting does not change our tree
        return
    m, r = (ours.encoder, ref.encoder) if part == 'body' else (ours.head, ref.head)
    scripted = torch.jit.script(m)
    x = torch.randn(3, 3, 16, 16) if part == 'body' else torch.randn(3, 128, 4, 4)
    with torch.no_grad(): torch.testing.assert_close(scripted(x), r(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('arch', ['resnet50', 'xresnet18', 'vgg11_bn', 'alexnet', 'densenet121', 'squeezenet1_1'])
def test_jit_script_every_family(arch):
    torch.manual_seed(0)
    body = sr.create_body(getattr(sr, arch), pretrained=False).eval()
    scripted = torch.jit.script(body)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(scripted(x), body(x), atol=1e-5, rtol=1e-5)


def compiled_graphs(model, backend, dynamic, train=False):
    "Outputs at each batch size through `torch.compile(fullgraph=True)`, and how many graphs it compiled"
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    cm = torch.compile(model, backend=backend, fullgraph=True, dynamic=dynamic)
    outs = {}
    for b in (2, 3, 4) if train else SIZES:  # training BatchNorm needs two values per channel
        if train:
            model.zero_grad()
            out = cm(*xs(b))
            out.square().sum().backward()
            outs[b] = (out.detach(), [p.grad.clone() for p in model.parameters()])
        else:
            with torch.no_grad(): outs[b] = cm(*xs(b))
    return outs, counters['stats']['unique_graphs']


@pytest.mark.parametrize('backend', ['eager', 'aot_eager', 'inductor'])
def test_torch_compile_fullgraph(backend):
    ours, ref = tiny_pair()
    dynamic = True if backend == 'inductor' else None  # inductor: one compile, batch dynamic from the start
    outs, graphs = compiled_graphs(ours, backend, dynamic)
    ref_outs, ref_graphs = compiled_graphs(ref, backend, dynamic)
    assert graphs == ref_graphs  # no recompile that fastai's model does not also need (batch 1 is specialised)
    for b in SIZES: torch.testing.assert_close(outs[b], ref_outs[b], atol=1e-5, rtol=1e-5)
    explanation = torch._dynamo.explain(ours)(*xs(2))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_training_through_torch_compile():
    ours, ref = tiny_pair()
    ours.train(), ref.train()
    outs, _ = compiled_graphs(ours, 'aot_eager', None, train=True)
    ref_outs, _ = compiled_graphs(ref, 'aot_eager', None, train=True)
    for b in outs:
        torch.testing.assert_close(outs[b][0], ref_outs[b][0], atol=1e-5, rtol=1e-5)
        for g, rg in zip(outs[b][1], ref_outs[b][1]): torch.testing.assert_close(g, rg, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('strict', [False, True])
def test_torch_export_with_a_dynamic_batch(strict):
    ours, ref = tiny_pair()
    batch = torch.export.Dim('batch')
    ep = torch.export.export(ours, xs(2), dynamic_shapes=({0: batch}, {0: batch}), strict=strict)
    assert not any('siamese' in str(n.target).lower() for n in ep.graph.nodes)
    exported = ep.module()
    assert_matches_reference(lambda a, b: exported(a, b), ref)


def onnx_runner(path):
    import onnxruntime as ort
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    return lambda a, b: torch.from_numpy(session.run(None, {names[0]: a.numpy(), names[1]: b.numpy()})[0])


def test_onnx_legacy_export_with_dynamic_axes(tmp_path):
    ours, ref = tiny_pair()
    path = tmp_path / 'model.onnx'
    torch.onnx.export(ours, xs(2), str(path), input_names=['x1', 'x2'], output_names=['logits'], dynamo=False,
                      dynamic_axes={'x1': {0: 'batch'}, 'x2': {0: 'batch'}, 'logits': {0: 'batch'}})
    assert_matches_reference(onnx_runner(path), ref)


def test_onnx_dynamo_export_with_dynamic_shapes(tmp_path):
    ours, ref = tiny_pair()
    batch = torch.export.Dim('batch')
    program = torch.onnx.export(ours, xs(2), dynamo=True, dynamic_shapes=({0: batch}, {0: batch}), verbose=False)
    program.save(str(tmp_path / 'model.onnx'))
    assert_matches_reference(onnx_runner(tmp_path / 'model.onnx'), ref)


def test_outside_capture_the_core_still_runs_the_whole_model():
    "Capture support changes nothing outside capture: the whole model is one call into the core"
    from siamese_rs import _engine
    ours, _ = tiny_pair()
    assert not _engine.pure_torch() and _engine._plan(ours) is not None
    seen = []
    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, '__name__', str(func)))
            return func(*args, **(kwargs or {}))
    with Spy(): ours(*xs(2))
    assert 'conv2d' in seen and 'batch_norm' in seen  # under a mode the ops run in PyTorch, where the mode sees them
