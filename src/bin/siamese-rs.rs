//! `siamese-rs`: a model exported by `sr.export_model` scored without Python (libtorch only).
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use siamese_rs::deploy::images::batch;
use siamese_rs::deploy::{decode, names};
use siamese_rs::deploy::{Gallery, ModelFile, PairStage, Preprocess};
use siamese_rs::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::Tensor;

/// Score image pairs with a Siamese model exported by `sr.export_model` (no Python needed).
#[derive(Parser)]
#[command(name = "siamese-rs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// P(same) of two images.
    Score {
        /// The model file (`sr.export_model`).
        model: PathBuf,
        a: PathBuf,
        b: PathBuf,
        /// Print JSON instead of the probability alone.
        #[arg(long)]
        json: bool,
    },
    /// Check a model file and print its document, with the fingerprint of its weights.
    Info { model: PathBuf },
    /// Galleries of encoded images (`sr.PairIndex`'s file format).
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Every ordered pair of images in DIR with P(same) >= the threshold.
    Dedupe {
        model: PathBuf,
        dir: PathBuf,
        #[arg(long, default_value_t = 0.9)]
        threshold: f64,
        #[arg(long)]
        json: bool,
        /// Images per encoder call.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
    /// An image as the model's transforms receive it, before resizing: PIL's convert('RGB')
    /// (convert('L') with --gray), as a binary PPM (PGM) on stdout.
    Pixels {
        image: PathBuf,
        #[arg(long)]
        gray: bool,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Encode images (files or folders of them) into a gallery file.
    Build {
        model: PathBuf,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The gallery file to write.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
    /// The k gallery images most likely the same as each query.
    Search {
        model: PathBuf,
        gallery: PathBuf,
        #[arg(required = true)]
        queries: Vec<PathBuf>,
        #[arg(short, default_value_t = 5)]
        k: i64,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("siamese-rs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    let _guard = tch::no_grad_guard();
    match command {
        Command::Score { model, a, b, json } => score(&model, &a, &b, json),
        Command::Info { model } => {
            let file = ModelFile::load(&model)?;
            let doc = serde_json::json!({"model": model, "arch": file.info.arch, "n_in": file.info.n_in,
                "fingerprint": file.fingerprint, "labels": file.info.labels});
            println!("{doc}");
            Ok(())
        }
        Command::Index { command } => match command {
            IndexCommand::Build {
                model,
                inputs,
                output,
                batch_size,
            } => build(&model, &inputs, &output, batch_size),
            IndexCommand::Search {
                model,
                gallery,
                queries,
                k,
                json,
            } => search(&model, &gallery, &queries, k, json),
        },
        Command::Dedupe {
            model,
            dir,
            threshold,
            json,
            batch_size,
        } => dedupe(&model, &dir, threshold, json, batch_size),
        Command::Pixels { image, gray } => pixels(&image, gray),
    }
}

fn score(model: &Path, a: &Path, b: &Path, json: bool) -> Result<()> {
    let file = ModelFile::load(model)?;
    let pre = Preprocess::of(&file.info)?;
    let (x1, x2) = (pre.load(a)?.f_unsqueeze(0)?, pre.load(b)?.f_unsqueeze(0)?);
    let logits = file.model.forward_t(&x1, &x2, false)?;
    if logits.size() != [1, 2] {
        return Err(Error::Value(format!(
            "the model gives {:?} logits per pair; P(same) needs 2",
            logits.size()
        )));
    }
    let p = logits
        .f_softmax(-1, tch::Kind::Float)?
        .f_double_value(&[0, 1])?;
    if json {
        let label = label(&file.info.labels, p);
        println!(
            "{{\"a\":{},\"b\":{},\"p_same\":{},\"label\":{}}}",
            names::json(a),
            names::json(b),
            number(p),
            serde_json::Value::from(label)
        );
    } else {
        println!("{p:.6}");
    }
    Ok(())
}

/// `p` as a JSON number (`null` if it is not finite, as serde_json writes it).
fn number(p: f64) -> serde_json::Value {
    serde_json::Value::from(p)
}

/// Writes `parts` (text, and file names as their bytes) and a newline to stdout.
fn line(parts: &[&[u8]]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut write = || -> std::io::Result<()> {
        for p in parts {
            out.write_all(p)?;
        }
        out.write_all(b"\n")
    };
    write().map_err(|e| Error::Value(format!("cannot write to stdout: {e}")))
}

/// The label of the decision at P(same) `p` (class 1 is "same").
fn label(labels: &Option<Vec<String>>, p: f64) -> String {
    let i = usize::from(p >= 0.5);
    match labels {
        Some(l) if l.len() == 2 => l[i].clone(),
        _ => ["different", "same"][i].to_string(),
    }
}

/// Image files: the files named, and the images of each folder named (sorted, not recursive).
fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::Value(format!("cannot list {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && is_image(f))
                .collect();
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::Value(format!(
                "no such file or folder: {}",
                p.display()
            )));
        }
    }
    if out.is_empty() {
        return Err(Error::Value("no images found in the inputs given".into()));
    }
    Ok(out)
}

fn is_image(p: &Path) -> bool {
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(ext.as_str(), "png" | "jpg" | "jpeg" | "bmp")
}

fn progress(n: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(n as u64).with_message(what.to_string());
    let style = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed} < {eta}]")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// `(a, b)` of every file, encoded in batches, and one image's shape.
fn encode_files(
    file: &ModelFile,
    stage: &PairStage,
    files: &[PathBuf],
    bs: usize,
) -> Result<(Tensor, Tensor, Vec<i64>)> {
    let pre = Preprocess::of(&file.info)?;
    let bar = progress(files.len(), "encoding");
    let (mut a, mut b, mut shape) = (vec![], vec![], vec![]);
    for chunk in files.chunks(bs.max(1)) {
        let x = batch(&pre, chunk)?;
        if shape.is_empty() {
            shape = x.size()[1..].to_vec();
        } else if x.size()[1..] != shape[..] {
            return Err(Error::Value(format!(
                "images come out at {:?} and {:?}: the model was exported without a Resize, so images must share one size",
                shape,
                &x.size()[1..]
            )));
        }
        let (ca, cb) = stage.encode(&file.model.encode(&x)?)?;
        a.push(ca);
        b.push(cb);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((Tensor::f_cat(&a, 0)?, Tensor::f_cat(&b, 0)?, shape))
}

/// The fingerprint of the weights loaded (never the file's word for it).
fn fingerprint(file: &ModelFile) -> Result<String> {
    Ok(file.fingerprint.clone())
}

fn build(model: &Path, inputs: &[PathBuf], output: &Path, bs: usize) -> Result<()> {
    let files = image_files(inputs)?;
    let stored = files
        .iter()
        .map(|f| Ok(names::utf8(f, "the gallery file stores names as UTF-8 text")?.to_string()))
        .collect::<Result<Vec<_>>>()?;
    let file = ModelFile::load(model)?;
    let stage = PairStage::of(&file.model, &file.info)?;
    let (a, b, image) = encode_files(&file, &stage, &files, bs)?;
    let gallery = Gallery {
        files: stored,
        a,
        b,
        model: fingerprint(&file)?,
        image,
    };
    gallery.save(output)?;
    eprintln!("{} images -> {}", gallery.files.len(), output.display());
    Ok(())
}

fn search(model: &Path, gallery: &Path, queries: &[PathBuf], k: i64, json: bool) -> Result<()> {
    let file = ModelFile::load(model)?;
    let stage = PairStage::of(&file.model, &file.info)?;
    let g = Gallery::load(gallery, &fingerprint(&file)?)?;
    let n = g.files.len() as i64;
    if !(1..=n).contains(&k) {
        return Err(Error::Value(format!(
            "-k: expected 1 to the gallery's {n} images, got {k}"
        )));
    }
    let files = image_files(queries)?;
    let (a, _, shape) = encode_files(&file, &stage, &files, 64)?;
    if shape != g.image {
        return Err(Error::Value(format!(
            "queries come out at {shape:?}, the gallery's images at {:?}",
            g.image
        )));
    }
    let (vals, idx) = stage.score(&a, &g.b)?.f_topk(k, 1, true, true)?;
    for (qi, q) in files.iter().enumerate() {
        let hits: Vec<(String, f64)> = (0..k)
            .map(|j| {
                let i = idx.f_int64_value(&[qi as i64, j])? as usize;
                Ok((g.files[i].clone(), vals.f_double_value(&[qi as i64, j])?))
            })
            .collect::<Result<_>>()?;
        if json {
            let matches: Vec<_> = hits
                .iter()
                .map(|(f, p)| serde_json::json!({"file": f, "p_same": p}).to_string())
                .collect();
            let (query, matches) = (names::json(q), matches.join(","));
            println!("{{\"query\":{query},\"matches\":[{matches}]}}");
        } else {
            line(&[names::bytes(q)])?;
            for (f, p) in hits {
                line(&[format!("  {p:.6}  {f}").as_bytes()])?;
            }
        }
    }
    Ok(())
}

fn dedupe(model: &Path, dir: &Path, threshold: f64, json: bool, bs: usize) -> Result<()> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Error::Value(format!(
            "--threshold: expected a probability in [0, 1], got {threshold}"
        )));
    }
    let file = ModelFile::load(model)?;
    let stage = PairStage::of(&file.model, &file.info)?;
    let files = image_files(&[dir.to_path_buf()])?;
    let (a, b, _) = encode_files(&file, &stage, &files, bs)?;
    let n = files.len() as i64;
    let bar = progress(files.len(), "pairs");
    let mut found = 0;
    for i in 0..n {
        let p = stage.score(&a.f_narrow(0, i, 1)?, &b)?;
        let keep = p.f_ge(threshold)?.f_nonzero()?;
        for r in 0..keep.size()[0] {
            let j = keep.f_int64_value(&[r, 1])?;
            if j == i {
                continue;
            }
            let pij = p.f_double_value(&[0, j])?;
            let (fa, fb) = (&files[i as usize], &files[j as usize]);
            if json {
                let (a, b, p) = (names::json(fa), names::json(fb), number(pij));
                println!("{{\"a\":{a},\"b\":{b},\"p_same\":{p}}}");
            } else {
                let p = format!("{pij:.6}  ");
                line(&[p.as_bytes(), names::bytes(fa), b"  ", names::bytes(fb)])?;
            }
            found += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("{found} pairs with P(same) >= {threshold} among {n} images");
    Ok(())
}

fn pixels(image: &Path, gray: bool) -> Result<()> {
    let img = decode::read(image)?;
    let (magic, data) = if gray {
        ("P5", img.to_l())
    } else {
        ("P6", img.to_rgb())
    };
    let header = format!("{magic}\n{} {}\n255\n", img.width, img.height);
    let mut out = std::io::stdout().lock();
    out.write_all(header.as_bytes())
        .and_then(|_| out.write_all(&data))
        .map_err(|e| Error::Value(format!("cannot write to stdout: {e}")))
}
