//! A built module: kind, settings, named children and named tensors, in PyTorch's
//! registration order (so `state_dict` keys come out in the reference's order).
use super::kind::{Kind, Value};
use tch::Tensor;

/// A module tree made by an architecture builder, handed to Python to become `nn.Module`s.
#[derive(Debug)]
pub struct Node {
    pub kind: Kind,
    pub settings: Vec<Value>,
    pub children: Vec<(String, Node)>,
    pub tensors: Vec<(String, Tensor)>,
}

impl Node {
    /// A node without children or tensors.
    pub fn leaf(kind: Kind, settings: Vec<Value>) -> Node {
        debug_assert_eq!(kind.fields().len(), settings.len(), "{kind:?}");
        Node {
            kind,
            settings,
            children: vec![],
            tensors: vec![],
        }
    }

    /// A container with named children.
    pub fn with_children(kind: Kind, settings: Vec<Value>, children: Vec<(String, Node)>) -> Node {
        Node {
            children,
            ..Node::leaf(kind, settings)
        }
    }

    /// An `nn.Sequential` whose children are named "0", "1", ...
    pub fn seq(children: Vec<Node>) -> Node {
        Node::numbered(Kind::Sequential, children)
    }

    /// A container of `kind` (an `nn.Sequential` subclass) with children named "0", "1", ...
    pub fn numbered(kind: Kind, children: Vec<Node>) -> Node {
        let named = children
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), c))
            .collect();
        Node::with_children(kind, vec![], named)
    }

    /// The same tree sharing the same tensors (`shallow_clone`: a write through one is seen by both).
    pub fn share(&self) -> Node {
        Node {
            kind: self.kind,
            settings: self.settings.clone(),
            children: self
                .children
                .iter()
                .map(|(k, c)| (k.clone(), c.share()))
                .collect(),
            tensors: self
                .tensors
                .iter()
                .map(|(k, t)| (k.clone(), t.shallow_clone()))
                .collect(),
        }
    }

    /// Adds a tensor under `name` (builder style).
    pub fn tensor(mut self, name: &str, t: Tensor) -> Node {
        self.tensors.push((name.to_string(), t));
        self
    }

    /// The setting called `field`.
    pub fn setting(&self, field: &str) -> Option<&Value> {
        let i = self.kind.fields().iter().position(|f| *f == field)?;
        self.settings.get(i)
    }

    /// Every tensor name with its dotted path, in `state_dict` order.
    pub fn state_keys(&self) -> Vec<String> {
        let mut out = vec![];
        self.collect_keys("", &mut out);
        out
    }

    fn collect_keys(&self, prefix: &str, out: &mut Vec<String>) {
        out.extend(self.tensors.iter().map(|(n, _)| format!("{prefix}{n}")));
        for (name, c) in &self.children {
            c.collect_keys(&format!("{prefix}{name}."), out);
        }
    }
}
