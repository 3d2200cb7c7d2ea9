//! The fingerprint `sr.PairIndex` records of a model (Python's `siamese_rs.index.fingerprint`):
//! sha256 of the model's `repr` followed by, per `state_dict` entry, `"{name}:{dtype}:{shape};"`
//! and the tensor's bytes. Galleries carry it, so the command line computes it from the model it
//! loaded (a file's recorded one is only compared with it). `repr` is PyTorch's `Module.__repr__`
//! of the modules our kinds name, with each class's `extra_repr`.
use crate::error::Result;
use crate::nn::{Kind, Node, Value};
use crate::SiameseModel;
use sha2::{Digest, Sha256};

/// The fingerprint of `model`, as Python's `fingerprint(model)` computes it.
pub fn fingerprint(model: &SiameseModel) -> Result<String> {
    let mut h = Sha256::new();
    h.update(repr(model.node()).as_bytes());
    for (name, t) in model.state_dict() {
        let t = t.f_contiguous()?;
        let dtype = match t.kind() {
            tch::Kind::Int64 => "torch.int64",
            _ => "torch.float32",
        };
        h.update(format!("{name}:{dtype}:{};", tuple(&t.size())).as_bytes());
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// PyTorch's `repr(module)` of the tree `node`.
pub fn repr(node: &Node) -> String {
    let extra = extra_repr(node);
    let mut lines: Vec<String> = if extra.is_empty() {
        vec![]
    } else {
        vec![extra]
    };
    let has_children = !node.children.is_empty();
    for (key, child) in &node.children {
        lines.push(format!("({key}): {}", indent(&repr(child))));
    }
    let name = node.kind.name();
    match lines.len() {
        0 => format!("{name}()"),
        1 if !has_children => format!("{name}({})", lines[0]),
        _ => format!("{name}(\n  {}\n)", lines.join("\n  ")),
    }
}

/// torch's `_addindent(s, 2)`: every line but the first indented, blank lines left empty.
fn indent(s: &str) -> String {
    let mut lines = s.split('\n');
    let first = lines.next().unwrap_or("").to_string();
    lines.fold(first, |acc, l| {
        let l = if l.trim().is_empty() {
            String::new()
        } else {
            format!("  {l}")
        };
        acc + "\n" + &l
    })
}

/// Each kind's `extra_repr` (those of PyTorch's classes and of fastai's `Flatten`, `SigmoidRange`).
fn extra_repr(n: &Node) -> String {
    let s = |field: &str| n.setting(field).map_or("None".to_string(), py);
    let pair = |field: &str, default: i64| match n.setting(field) {
        Some(v) => v.ints(2, &[default; 2]).unwrap_or_default(),
        None => vec![default; 2],
    };
    match n.kind {
        Kind::Conv2d => {
            let mut out = format!(
                "{}, {}, kernel_size={}, stride={}",
                s("in_channels"),
                s("out_channels"),
                tuple(&pair("kernel_size", 1)),
                tuple(&pair("stride", 1))
            );
            let padding = pair("padding", 0);
            if padding.iter().any(|p| *p != 0) {
                out += &format!(", padding={}", tuple(&padding));
            }
            let dilation = pair("dilation", 1);
            if dilation.iter().any(|d| *d != 1) {
                out += &format!(", dilation={}", tuple(&dilation));
            }
            if n.setting("groups").and_then(Value::int) != Some(1) {
                out += &format!(", groups={}", s("groups"));
            }
            if n.setting("bias").and_then(Value::bool) != Some(true) {
                out += ", bias=False";
            }
            out
        }
        Kind::BatchNorm1d | Kind::BatchNorm2d => format!(
            "{}, eps={}, momentum={}, affine={}, bias={}, track_running_stats={}",
            s("num_features"),
            s("eps"),
            s("momentum"),
            s("affine"),
            s("affine"),
            s("track_running_stats")
        ),
        Kind::Linear => format!(
            "in_features={}, out_features={}, bias={}",
            s("in_features"),
            s("out_features"),
            s("bias")
        ),
        Kind::ReLU if n.setting("inplace").and_then(Value::bool) == Some(true) => {
            "inplace=True".into()
        }
        Kind::MaxPool2d => format!(
            "kernel_size={}, stride={}, padding={}, dilation={}, ceil_mode={}",
            s("kernel_size"),
            s("stride"),
            s("padding"),
            s("dilation"),
            s("ceil_mode")
        ),
        Kind::AvgPool2d => format!(
            "kernel_size={}, stride={}, padding={}",
            s("kernel_size"),
            s("stride"),
            s("padding")
        ),
        Kind::AdaptiveAvgPool2d | Kind::AdaptiveMaxPool2d => {
            format!("output_size={}", s("output_size"))
        }
        Kind::Dropout => format!("p={}, inplace={}", s("p"), s("inplace")),
        Kind::Flatten => format!("full={}", s("full")),
        Kind::SigmoidRange => format!("low={}, high={}", s("low"), s("high")),
        _ => String::new(),
    }
}

/// A setting as Python's `str` shows it.
fn py(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => py_float(*f),
        Value::Ints(v) => tuple(v),
        Value::Sizes(v) => {
            let items: Vec<String> = v
                .iter()
                .map(|x| x.map_or("None".into(), |i| i.to_string()))
                .collect();
            tuple_of(&items)
        }
    }
}

/// Python's tuple repr: `(3, 3)`, `(5,)`, `()`.
fn tuple(v: &[i64]) -> String {
    tuple_of(&v.iter().map(i64::to_string).collect::<Vec<_>>())
}

fn tuple_of(items: &[String]) -> String {
    match items.len() {
        1 => format!("({},)", items[0]),
        _ => format!("({})", items.join(", ")),
    }
}

/// Python's `repr(float)`: the shortest digits that read back, in scientific notation when the
/// exponent is below -4 or at least 16 (`1e-05`, `0.1`, `1.0`, `1e+16`).
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the same shortest digits: `d.ddde±x`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exp) {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let e = if exp < 0 { "-" } else { "+" };
        return format!("{sign}{m}e{e}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_does() {
        let cases = [
            (1e-5, "1e-05"),
            (0.1, "0.1"),
            (1.0, "1.0"),
            (0.25, "0.25"),
            (1e16, "1e+16"),
            (123456.5, "123456.5"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
            (0.0, "0.0"),
            (1.5e300, "1.5e+300"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn tuples_print_as_python_does() {
        assert_eq!(tuple(&[3, 3]), "(3, 3)");
        assert_eq!(tuple(&[5]), "(5,)");
        assert_eq!(tuple(&[]), "()");
    }
}
