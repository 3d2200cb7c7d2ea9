//! Containers: modules whose forward calls children. Each family declares its containers next to
//! its builder (`arch/<family>.rs`, `head.rs`, `siamese.rs`) as a [`Container`] row: the children
//! its forward calls **by name**, how its input is laid out, and a compiled [`Block`] that computes
//! the reference `forward`. The executor resolves the names once, when a graph is compiled.
use super::exec::{Exec, Run};
use super::kind::{Kind, Value};
use crate::bail;
use crate::error::Result;
use tch::Tensor;

/// A container's compiled forward. `children` are the module's children in the order it listed
/// them (a block holds their indices, resolved by name: see [`children!`](crate::children)), and
/// `training` the module's own flag.
pub trait Block: std::fmt::Debug + Send + Sync {
    fn forward(&self, children: &[Exec], x: Tensor, t: &Run, training: bool) -> Result<Tensor>;

    /// Whether the container's own computation (not its children's) uses random masks or batch
    /// statistics when `training` (torchvision's `_DenseLayer` applies dropout itself).
    fn batch_dependent(&self, _training: bool) -> bool {
        false
    }
}

/// How a container takes an input that arrives in oneDNN's blocked layout (`exec::layout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// As it is: every op of its forward computes the same on blocked tensors.
    Blocked,
    /// Converted to a strided tensor first.
    Dense,
    /// Converted to channels-last strides (DenseNet's concatenating blocks run faster so).
    ChannelsLast,
}

/// Compiles a container's block from its child names and settings.
pub type CompileBlock = fn(&Names<'_>, &[Value]) -> Result<Box<dyn Block>>;

/// One container kind: see the module docs.
#[derive(Debug)]
pub struct Container {
    pub kind: Kind,
    /// The children its forward calls, by attribute name, in call order (a trailing `?` marks
    /// one that may be absent); `None`: every child, in registration order (`nn.Sequential`).
    pub children: Option<&'static [&'static str]>,
    pub layout: Layout,
    /// Compiles the block from the module's child names and settings.
    pub compile: CompileBlock,
}

impl Container {
    /// A container whose forward calls every child in turn.
    pub const fn chain(kind: Kind, layout: Layout) -> Container {
        Container {
            kind,
            children: None,
            layout,
            compile: |_, _| Ok(Box::new(Chain)),
        }
    }

    /// A container whose children are the fields of the wiring `W`.
    pub const fn wired<W: Wiring + Block + 'static>(kind: Kind, layout: Layout) -> Container {
        Container {
            kind,
            children: Some(W::NAMES),
            layout,
            compile: compile_wired::<W>,
        }
    }
}

fn compile_wired<W: Wiring + Block + 'static>(
    names: &Names<'_>,
    _: &[Value],
) -> Result<Box<dyn Block>> {
    Ok(Box::new(W::resolve(names)?))
}

/// `nn.Sequential` and its subclasses: each child on the previous one's output.
#[derive(Debug)]
pub struct Chain;

impl Block for Chain {
    fn forward(&self, children: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        super::exec::chain(children, x, t)
    }
}

/// The containers that belong to no family.
pub const GENERIC: &[Container] = &[Container::chain(Kind::Sequential, Layout::Blocked)];

/// The row for container `kind`, from the families of the arch table, the head and the root.
pub fn find(kind: Kind) -> Option<&'static Container> {
    let families = crate::arch::ARCHS.iter().map(|a| a.containers);
    [GENERIC, crate::head::CONTAINERS, crate::siamese::CONTAINERS]
        .into_iter()
        .chain(families)
        .flat_map(|rows| rows.iter())
        .find(|c| c.kind == kind)
}

/// A struct of child indices resolved by name; written by [`children!`](crate::children).
pub trait Wiring: Sized {
    const NAMES: &'static [&'static str];
    fn resolve(names: &Names<'_>) -> Result<Self>;
}

/// The child names of one module being compiled.
pub struct Names<'a> {
    pub kind: Kind,
    pub names: &'a [String],
}

impl Names<'_> {
    /// The index of child `name`, which the forward needs.
    pub fn required(&self, name: &str) -> Result<usize> {
        match self.optional(name) {
            Some(i) => Ok(i),
            None => bail!(
                Value,
                "{} needs a child called {name:?}; it has {:?}",
                self.kind.name(),
                self.names
            ),
        }
    }

    /// The index of child `name`, if the module has it.
    pub fn optional(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Refuses children the forward would not call, and names given twice.
    pub fn check(&self, declared: &[&str]) -> Result<()> {
        for (i, n) in self.names.iter().enumerate() {
            if !declared.iter().any(|d| d.trim_end_matches('?') == n) {
                bail!(
                    Value,
                    "{} has no child called {n:?} in its forward; it calls {}",
                    self.kind.name(),
                    declared.join(", ")
                );
            }
            if self.names[..i].contains(n) {
                bail!(Value, "{}: child {n:?} listed twice", self.kind.name());
            }
        }
        Ok(())
    }
}

/// Declares a container's children: a struct with one index per child (`Option` for the ones
/// after `;`, which may be absent), resolved by name when a graph is compiled, and the names in
/// the order of the struct (the forward's call order), which Python reads.
#[macro_export]
macro_rules! children {
    ($(#[$doc:meta])* $name:ident { $($req:ident),* $(; $($opt:ident),*)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            $($req: usize,)*
            $($($opt: Option<usize>,)*)?
        }

        impl $crate::nn::container::Wiring for $name {
            const NAMES: &'static [&'static str] =
                &[$(stringify!($req),)* $($(concat!(stringify!($opt), "?"),)*)?];

            fn resolve(c: &$crate::nn::container::Names<'_>) -> $crate::error::Result<Self> {
                Ok($name {
                    $($req: c.required(stringify!($req))?,)*
                    $($($opt: c.optional(stringify!($opt)),)*)?
                })
            }
        }
    };
}
