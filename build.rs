//! Where the linked libraries are found at run time. Every target gets an RPATH to the libtorch and
//! libpython it was built against, so `cargo test` runs without `LD_LIBRARY_PATH` (cargo has no
//! per-target link arguments for unit tests); the Python extension also gets one relative to an
//! installed torch (`site-packages/torch/lib`), as torchvision's libraries do, so an installed
//! package loads whether or not `import torch` came first. `SIAMESE_RS_PORTABLE=1` leaves out the
//! absolute paths, for builds that are shipped to other machines.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=SIAMESE_RS_PORTABLE");
    if std::env::var_os("SIAMESE_RS_PORTABLE").is_none() {
        let libtorch = std::env::var("DEP_TCH_LIBTORCH_LIB").ok();
        for lib in libtorch.into_iter().chain(python_libdir()) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        }
    }
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    // The torch the C++ shim is compiled against; Python refuses to load it with another.
    let version = python(&["-c", "import torch; print(torch.__version__.split('+')[0])"]);
    println!(
        "cargo:rustc-env=SIAMESE_RS_TORCH_VERSION={}",
        version.unwrap_or_else(|| "unknown".into())
    );
}

/// The folder of the libpython that pyo3 links test binaries against.
fn python_libdir() -> Option<String> {
    python(&[
        "-c",
        "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')",
    ])
}

/// What the interpreter being built for prints, if it runs.
fn python(args: &[&str]) -> Option<String> {
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
