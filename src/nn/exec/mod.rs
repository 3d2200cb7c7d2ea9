//! The stateless executor. A module tree (kinds, settings, child names, training flags) is compiled
//! once into a [`Graph`]; every call hands it the current parameter and buffer tensors, so it never
//! computes with stale tensors after `.to()`, `load_state_dict` or unpickling. What a container
//! computes lives with its family (`nn::container`); how tensors are laid out and batched for speed
//! lives in `layout`, apart from what is computed.
use super::container::{self, Block, Layout, Names};
use super::kind::{Kind, Value};
use super::ops::Op;
use crate::bail;
use crate::error::Result;
use std::cell::RefCell;
use tch::Tensor;

pub(crate) mod layout;

/// One module of a tree in pre-order, as Python (or `Graph::from_node`) describes it.
#[derive(Clone, Debug)]
pub struct FlatModule {
    pub kind: Kind,
    pub settings: Vec<Value>,
    /// The names of the children that follow it in the list (its subtrees, in this order).
    pub children: Vec<String>,
    pub training: bool,
    /// Which of `kind.tensors()` the module holds (the others are `None` in PyTorch's forward).
    pub present: Vec<bool>,
}

/// A compiled module tree; `forward` takes the tensor slots in the order the modules listed them.
#[derive(Debug)]
pub struct Graph {
    root: Exec,
    n_tensors: usize,
    /// The encoder and head of a `SiameseModel` root.
    pair: Option<crate::siamese::Siamese>,
}

/// A compiled module: a leaf op or a container's block, with its compiled children.
#[derive(Debug)]
pub struct Exec {
    pub(crate) kind: Kind,
    body: Body,
    pub(crate) children: Vec<Exec>,
    /// Index of this module's first tensor slot in the flat tensor list.
    first: usize,
    /// How many slots it has (`kind.tensors().len()`).
    slots: usize,
    pub(crate) training: bool,
}

#[derive(Debug)]
enum Body {
    Leaf(Op),
    Container(Layout, Box<dyn Block>),
}

impl Graph {
    /// Compiles a pre-order list of modules.
    pub fn compile(modules: &[FlatModule]) -> Result<Graph> {
        let (mut pos, mut n_tensors) = (0, 0);
        let root = compile_at(modules, &mut pos, &mut n_tensors)?;
        if pos != modules.len() {
            bail!(
                Value,
                "module list has {} entries but the tree uses {pos}",
                modules.len()
            );
        }
        let pair = match root.kind {
            Kind::SiameseModel => Some(crate::siamese::Siamese::of(&modules[0])?),
            _ => None,
        };
        Ok(Graph {
            root,
            n_tensors,
            pair,
        })
    }

    /// The root's kind.
    pub fn kind(&self) -> Kind {
        self.root.kind
    }

    /// How many tensor slots `forward` takes.
    pub fn n_tensors(&self) -> usize {
        self.n_tensors
    }

    /// Runs the tree on `inputs` (two for a SiameseModel, one otherwise). `fast` allows oneDNN's
    /// blocked layout for the convolutional part; the caller sets it only without autograd or
    /// autocast, where it gives the same values faster (bench/).
    pub fn forward(
        &self,
        tensors: &[Option<Tensor>],
        inputs: Vec<Tensor>,
        fast: bool,
    ) -> Result<Tensor> {
        if tensors.len() != self.n_tensors {
            bail!(
                Value,
                "expected {} parameter/buffer tensors, got {}",
                self.n_tensors,
                tensors.len()
            );
        }
        let want = if self.pair.is_some() { 2 } else { 1 };
        if inputs.len() != want {
            bail!(
                Type,
                "forward() takes {want} input tensor(s), got {}",
                inputs.len()
            );
        }
        let t = &Run {
            tensors,
            probes: RefCell::new(vec![]),
        };
        let mut inputs = inputs.into_iter();
        let (Some(x), x2) = (inputs.next(), inputs.next()) else {
            bail!(Type, "forward() takes {want} input tensor(s), got none")
        };
        // oneDNN's layouts hold no empty batch: libtorch's own ops answer one as PyTorch does.
        let fast = fast && x.numel() > 0;
        match (&self.pair, x2) {
            (Some(pair), Some(x2)) => pair.forward(&self.root, x, x2, t, fast),
            _ => {
                let n = x.size().first().copied().unwrap_or(1);
                layout::encode(&self.root, x, t, fast, n)
            }
        }
    }
}

fn compile_at(modules: &[FlatModule], pos: &mut usize, n_tensors: &mut usize) -> Result<Exec> {
    let Some(m) = modules.get(*pos) else {
        bail!(Value, "module list ends early at entry {pos}")
    };
    *pos += 1;
    let body = compile_body(m)?;
    let (first, slots) = (*n_tensors, m.present.len());
    *n_tensors += slots;
    let children = (0..m.children.len())
        .map(|_| compile_at(modules, pos, n_tensors))
        .collect::<Result<Vec<_>>>()?;
    Ok(Exec {
        kind: m.kind,
        body,
        children,
        first,
        slots,
        training: m.training,
    })
}

/// A leaf's op, or a container's block with its children resolved by name.
fn compile_body(m: &FlatModule) -> Result<Body> {
    let Some(row) = container::find(m.kind) else {
        if !m.children.is_empty() {
            bail!(
                Value,
                "{} is a layer and cannot run with children {:?}",
                m.kind.name(),
                m.children
            );
        }
        return Ok(Body::Leaf(Op::compile(m.kind, &m.settings, &m.present)?));
    };
    let names = Names {
        kind: m.kind,
        names: &m.children,
    };
    if let Some(declared) = row.children {
        names.check(declared)?;
    }
    Ok(Body::Container(
        row.layout,
        (row.compile)(&names, &m.settings)?,
    ))
}

impl Exec {
    /// This module's forward on `x`; an input in oneDNN's blocked layout is converted first
    /// unless the module computes the same on it.
    pub(crate) fn run(&self, x: Tensor, t: &Run) -> Result<Tensor> {
        let x = layout::arriving(self, x)?;
        match &self.body {
            Body::Container(_, block) => block.forward(&self.children, x, t, self.training),
            Body::Leaf(op) => {
                if x.is_mkldnn() && op.may_hide_nan() {
                    t.probe(&x)?;
                }
                let slots = &t.tensors[self.first..self.first + self.slots];
                op.forward_leaf(x, slots, self.training)
            }
        }
    }

    /// The leaf op, if this is a layer.
    pub(crate) fn op(&self) -> Option<&Op> {
        match &self.body {
            Body::Leaf(op) => Some(op),
            Body::Container(..) => None,
        }
    }

    /// How a container takes blocked inputs (`None` for a layer).
    pub(crate) fn container_layout(&self) -> Option<Layout> {
        match &self.body {
            Body::Container(layout, _) => Some(*layout),
            Body::Leaf(_) => None,
        }
    }

    /// True when no module in the subtree uses batch statistics or random masks.
    pub(crate) fn is_batch_independent(&self) -> bool {
        let own = match &self.body {
            Body::Leaf(Op::BatchNorm { running, .. }) => !self.training && *running,
            Body::Leaf(Op::Dropout { p, .. }) => !self.training || *p == 0.0,
            Body::Leaf(_) => true,
            Body::Container(_, block) => !block.batch_dependent(self.training),
        };
        own && self.children.iter().all(Exec::is_batch_independent)
    }

    /// This module's tensor slots.
    pub(crate) fn slot_tensors<'t>(&self, t: &'t Run) -> impl Iterator<Item = Option<&'t Tensor>> {
        t.tensors[self.first..self.first + self.slots]
            .iter()
            .map(Option::as_ref)
    }
}

/// The tensors of one forward call, and what the blocked layout has to check afterwards.
pub struct Run<'a> {
    tensors: &'a [Option<Tensor>],
    /// Per-channel means of the blocked inputs of ops that hide NaN (oneDNN's ReLU maps NaN
    /// to 0, its max pool skips it): a NaN or infinity anywhere in such an input makes its mean
    /// non-finite, where PyTorch's dense kernels would have carried it to the output.
    probes: RefCell<Vec<Tensor>>,
}

impl Run<'_> {
    fn probe(&self, x: &Tensor) -> Result<()> {
        let mean = layout::dense(x.f_adaptive_avg_pool2d([1, 1])?)?.f_flatten(0, -1)?;
        self.probes.borrow_mut().push(mean);
        Ok(())
    }

    /// Whether every probe since the last call is finite (and forgets them).
    fn all_finite(&self) -> Result<bool> {
        let probes = std::mem::take(&mut *self.probes.borrow_mut());
        if probes.is_empty() {
            return Ok(true);
        }
        let all = Tensor::f_cat(&probes, 0)?.f_isfinite()?.f_all()?;
        Ok(all.f_int64_value(&[])? != 0)
    }
}

/// Each child on the previous one's output (`nn.Sequential.forward`).
pub(crate) fn chain(children: &[Exec], x: Tensor, t: &Run) -> Result<Tensor> {
    children.iter().try_fold(x, |x, c| c.run(x, t))
}

/// The children at `order` in turn.
pub(crate) fn path(children: &[Exec], order: &[usize], x: Tensor, t: &Run) -> Result<Tensor> {
    order.iter().try_fold(x, |x, &i| children[i].run(x, t))
}

/// `act(out + skip(x))`, where `skip` is the identity when absent; torchvision adds in place,
/// fastai's `ResBlock` out of place (the same values; the reference's own op either way).
pub(crate) fn residual(
    children: &[Exec],
    out: Tensor,
    x: Tensor,
    skip: Option<usize>,
    act: usize,
    t: &Run,
    in_place: bool,
) -> Result<Tensor> {
    let identity = match skip {
        Some(i) => children[i].run(x, t)?,
        None => x,
    };
    let (out, identity) = layout::same_layout(out, identity)?;
    let sum = if in_place {
        out.shallow_clone().f_add_(&identity)?
    } else {
        out.f_add(&identity)?
    };
    children[act].run(sum, t)
}
