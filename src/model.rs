//! Models run from Rust alone: a module tree with its tensors ([`Model`]), and fastai's
//! `SiameseModel(encoder, head)` ([`SiameseModel`]), loaded from the `state_dict` a Python
//! model saves with `safetensors.torch.save_file(model.state_dict(), path)`.
use crate::bail;
use crate::error::{Error, Result};
use crate::nn::exec::FlatModule;
use crate::nn::{Graph, Kind, Node};
use std::path::Path;
use std::sync::OnceLock;
use tch::{Device, Tensor};

/// A module tree (from an architecture builder, [`create_body`](crate::create_body) or
/// [`create_head`](crate::create_head)) compiled for the executor on first use.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let model = siamese_rs::Model::new(siamese_rs::arch::resnet18(10)?);
/// let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
/// assert_eq!(model.forward_t(&x, false)?.size(), [2, 10]);
/// # Ok::<(), siamese_rs::Error>(())
/// ```
#[derive(Debug)]
pub struct Model {
    node: Node,
    /// The graph in eval (0) and training (1) mode.
    graphs: [OnceLock<Graph>; 2],
}

impl Model {
    pub fn new(node: Node) -> Model {
        Model {
            node,
            graphs: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The module tree, with its tensors.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The module tree, to edit and compile again with `Model::new`.
    pub fn into_node(self) -> Node {
        self.node
    }

    /// The forward on `x`, in training mode (batch statistics, dropout, running-stat updates) or
    /// in eval mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(vec![x.shallow_clone()], train)
    }

    fn run(&self, inputs: Vec<Tensor>, train: bool) -> Result<Tensor> {
        let graph = self.graph(train)?;
        let tensors = slots(&self.node);
        // oneDNN's blocked layout gives the same values, but has no autograd.
        let fast = !train
            && tch::utils::has_mkldnn()
            && !inputs.iter().any(Tensor::requires_grad)
            && !tensors.iter().flatten().any(Tensor::requires_grad);
        graph.forward(&tensors, inputs, fast)
    }

    fn graph(&self, train: bool) -> Result<&Graph> {
        let cell = &self.graphs[train as usize];
        if let Some(g) = cell.get() {
            return Ok(g);
        }
        let g = Graph::compile(&flatten(&self.node, train))?;
        Ok(cell.get_or_init(|| g))
    }

    /// Every tensor under its `state_dict` key, in `state_dict` order.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        named_tensors(&self.node, "", &mut |k, t| {
            out.push((k, t.shallow_clone()));
        });
        out
    }

    /// Copies a `state_dict` into the model's tensors (strict, as `load_state_dict`): an error
    /// names the missing, unexpected and mis-shaped keys, and leaves the model unchanged.
    pub fn load_state_dict(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.copy_state_dict(state)
    }

    /// `load_state_dict` through a shared reference: the tensors are written in place, as
    /// PyTorch's `load_state_dict` does (for callers that share the model, e.g. Python's).
    pub fn copy_state_dict(&self, state: &[(String, Tensor)]) -> Result<()> {
        let own = self.state_dict();
        check_keys(&own, state)?;
        let _guard = tch::no_grad_guard();
        for (key, dst) in own {
            if let Some((_, src)) = state.iter().find(|(k, _)| *k == key) {
                dst.shallow_clone().f_copy_(src)?;
            }
        }
        Ok(())
    }

    /// Loads a `.safetensors` file of `state_dict` keys (no pickled code is read).
    pub fn load_safetensors(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let state = Tensor::read_safetensors(path).map_err(|e| {
            Error::Weights(format!(
                "cannot read {}: {}",
                path.display(),
                Error::from(e)
            ))
        })?;
        self.load_state_dict(&state)
    }

    /// Writes the `state_dict` to a `.safetensors` file.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let state = self.state_dict();
        let named: Vec<(&str, &Tensor)> = state.iter().map(|(k, t)| (k.as_str(), t)).collect();
        Ok(Tensor::write_safetensors(&named, path.as_ref())?)
    }

    /// Moves every tensor to `device` (`Device::Cuda(i)` where libtorch has CUDA).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        fn walk(n: &mut Node, device: Device) -> Result<()> {
            for (_, t) in &mut n.tensors {
                *t = t.f_to_device(device)?;
            }
            n.children.iter_mut().try_for_each(|(_, c)| walk(c, device))
        }
        walk(&mut self.node, device)
    }
}

/// fastai's `SiameseModel(encoder, head)`: `head(cat([encoder(x1), encoder(x2)], dim=1))`, with
/// the `state_dict` keys of the Python model (`encoder.*`, `head.*`).
///
/// ```
/// use siamese_rs::{create_body, create_head, HeadConfig, SiameseModel};
/// use tch::{Device, Kind, Tensor};
/// let body = create_body("resnet18", 3, None)?;
/// let head = create_head(&HeadConfig::new(1024, 2))?; // 512 features per image, concat-pooled
/// let mut model = SiameseModel::new(body, head);
/// let path = std::env::temp_dir().join("siamese_rs_doctest.safetensors");
/// model.save_safetensors(&path)?;
/// model.load_safetensors(&path)?; // a Python model's `state_dict` loads the same way
/// model.to_device(Device::Cpu)?;
/// let x1 = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
/// let x2 = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
/// let logits = model.forward_t(&x1, &x2, false)?;
/// assert_eq!(logits.size(), [4, 2]);
/// let feats = model.encode(&x1)?; // the encoder's output: resnet18's last feature map
/// assert_eq!(feats.size(), [4, 512, 2, 2]);
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), siamese_rs::Error>(())
/// ```
#[derive(Debug)]
pub struct SiameseModel {
    model: Model,
    /// The encoder alone, in eval mode (for `encode`).
    encoder: OnceLock<Graph>,
}

impl SiameseModel {
    pub fn new(encoder: Node, head: Node) -> SiameseModel {
        let children = vec![("encoder".to_string(), encoder), ("head".to_string(), head)];
        let root = Node::with_children(Kind::SiameseModel, vec![], children);
        SiameseModel {
            model: Model::new(root),
            encoder: OnceLock::new(),
        }
    }

    /// The `state_dict` keys, dtypes and shapes of `SiameseModel::new(create_body(arch, n_in, cut),
    /// create_head(head))`, found without allocating the tensors or drawing from the generator:
    /// what a file's header is compared with before a model of untrusted sizes is built.
    pub fn state_shapes(
        arch: &str,
        n_in: i64,
        cut: Option<i64>,
        head: &crate::HeadConfig,
    ) -> Result<Vec<(String, tch::Kind, Vec<i64>)>> {
        let model = crate::nn::init::shapes_only(|| {
            let body = crate::create_body(arch, n_in, cut)?;
            Ok(SiameseModel::new(body, crate::create_head(head)?))
        })?;
        let state = model.state_dict();
        Ok(state
            .into_iter()
            .map(|(k, t)| (k, t.kind(), t.size()))
            .collect())
    }

    /// The logits for the pairs `(x1[i], x2[i])`, in training or eval mode.
    pub fn forward_t(&self, x1: &Tensor, x2: &Tensor, train: bool) -> Result<Tensor> {
        self.model
            .run(vec![x1.shallow_clone(), x2.shallow_clone()], train)
    }

    /// The encoder's output for a batch of images, in eval mode.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let encoder = &self.model.node.children[0].1;
        let graph = match self.encoder.get() {
            Some(g) => g,
            None => {
                let g = Graph::compile(&flatten(encoder, false))?;
                self.encoder.get_or_init(|| g)
            }
        };
        let tensors = slots(encoder);
        let fast = tch::utils::has_mkldnn()
            && !x.requires_grad()
            && !tensors.iter().flatten().any(Tensor::requires_grad);
        graph.forward(&tensors, vec![x.shallow_clone()], fast)
    }

    /// The module tree: the root `SiameseModel` with children `encoder` and `head`.
    pub fn node(&self) -> &Node {
        self.model.node()
    }

    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.model.state_dict()
    }

    pub fn load_state_dict(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.model.load_state_dict(state)
    }

    /// `load_state_dict` through a shared reference (see [`Model::copy_state_dict`]).
    pub fn copy_state_dict(&self, state: &[(String, Tensor)]) -> Result<()> {
        self.model.copy_state_dict(state)
    }

    pub fn load_safetensors(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.model.load_safetensors(path)
    }

    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        self.model.save_safetensors(path)
    }

    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.model.to_device(device)
    }
}

/// The tree in pre-order, every module with the same training flag.
fn flatten(node: &Node, training: bool) -> Vec<FlatModule> {
    fn walk(n: &Node, training: bool, out: &mut Vec<FlatModule>) {
        let present = n
            .kind
            .tensors()
            .iter()
            .map(|name| n.tensors.iter().any(|(k, _)| k == name))
            .collect();
        out.push(FlatModule {
            kind: n.kind,
            settings: n.settings.clone(),
            children: n.children.iter().map(|(k, _)| k.clone()).collect(),
            training,
            present,
        });
        for (_, c) in &n.children {
            walk(c, training, out);
        }
    }
    let mut out = vec![];
    walk(node, training, &mut out);
    out
}

/// The tensor slots of `flatten`'s modules, in its order.
fn slots(node: &Node) -> Vec<Option<Tensor>> {
    fn walk(n: &Node, out: &mut Vec<Option<Tensor>>) {
        for name in n.kind.tensors() {
            let t = n.tensors.iter().find(|(k, _)| k == name);
            out.push(t.map(|(_, t)| t.shallow_clone()));
        }
        for (_, c) in &n.children {
            walk(c, out);
        }
    }
    let mut out = vec![];
    walk(node, &mut out);
    out
}

fn named_tensors(n: &Node, prefix: &str, f: &mut impl FnMut(String, &Tensor)) {
    for (k, t) in &n.tensors {
        f(format!("{prefix}{k}"), t);
    }
    for (k, c) in &n.children {
        named_tensors(c, &format!("{prefix}{k}."), f);
    }
}

/// `load_state_dict(strict=True)`'s checks, all reported at once.
fn check_keys(own: &[(String, Tensor)], state: &[(String, Tensor)]) -> Result<()> {
    let find = |k: &str, list: &[(String, Tensor)]| list.iter().any(|(n, _)| n == k);
    let missing: Vec<&str> = own
        .iter()
        .filter(|(k, _)| !find(k, state))
        .map(|(k, _)| k.as_str())
        .collect();
    let unexpected: Vec<&str> = state
        .iter()
        .filter(|(k, _)| !find(k, own))
        .map(|(k, _)| k.as_str())
        .collect();
    let shapes: Vec<String> = own
        .iter()
        .filter_map(|(k, t)| {
            let (_, s) = state.iter().find(|(n, _)| n == k)?;
            (s.size() != t.size())
                .then(|| format!("{k}: the file has {:?}, the model {:?}", s.size(), t.size()))
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && shapes.is_empty() {
        return Ok(());
    }
    let mut parts = vec![];
    if !missing.is_empty() {
        parts.push(format!("missing keys: {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected keys: {}", unexpected.join(", ")));
    }
    if !shapes.is_empty() {
        parts.push(format!("mis-shaped keys: {}", shapes.join("; ")));
    }
    bail!(
        Weights,
        "the weights do not fit the model: {}",
        parts.join("; ")
    )
}
