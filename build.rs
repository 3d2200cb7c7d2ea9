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
    // libpython only for the `python` feature's test binaries (pyo3-tch turns on pyo3's
    // `extension-module`, which links none); the library and the CLI link libtorch alone, the
    // extension module (`extension-module`) none, as Python provides it.
    let feature = |f: &str| std::env::var_os(format!("CARGO_FEATURE_{f}")).is_some();
    let test_python = feature("PYTHON") && !feature("EXTENSION_MODULE");
    let python_lib = test_python.then(python_libdir).flatten();
    if test_python {
        if let Some(version) = python(&[
            "-c",
            "import sysconfig; print(sysconfig.get_config_var('LDVERSION'))",
        ]) {
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
            println!("cargo:rustc-link-lib=python{version}");
        }
    }
    if std::env::var_os("SIAMESE_RS_PORTABLE").is_none() {
        let libtorch = std::env::var("DEP_TCH_LIBTORCH_LIB").ok();
        for lib in libtorch.into_iter().chain(python_lib) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        }
    }
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    // Wheels link against an older glibc (`SIAMESE_RS_SYSROOT`, see packaging/). Its library folders
    // go first: the host compiler's own search path also lists the host's /usr/lib.
    println!("cargo:rerun-if-env-changed=SIAMESE_RS_SYSROOT");
    if let Ok(sysroot) = std::env::var("SIAMESE_RS_SYSROOT") {
        println!("cargo:rustc-link-arg-cdylib=--sysroot={sysroot}");
        for dir in ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"] {
            println!("cargo:rustc-link-arg-cdylib=-L{sysroot}/{dir}");
        }
        // The two glibc symbols newer than the sysroot's that the static libstdc++ and Rust's std
        // would otherwise need (see the file). Passed as objects: a weak reference pulls nothing
        // from an archive.
        println!("cargo:rerun-if-changed=packaging/glibc_compat.c");
        let objects = cc::Build::new()
            .file("packaging/glibc_compat.c")
            .flag(format!("--sysroot={sysroot}"))
            .compile_intermediates();
        for object in objects {
            println!("cargo:rustc-link-arg-cdylib={}", object.display());
        }
    }
    // A C++ standard library linked statically (`CXXSTDLIB_STATIC`, for wheels) stays private to the
    // extension: libtorch keeps using the system's libstdc++.so and its symbols.
    println!("cargo:rustc-link-arg-cdylib=-Wl,--exclude-libs,libstdc++.a");
    // The torch the C++ shim is compiled against; Python refuses to load it with another.
    let version = std::env::var("DEP_TCH_LIBTORCH_VERSION")
        .ok()
        .or_else(|| python(&["-c", "import torch; print(torch.__version__)"]))
        .map(|v| v.split('+').next().unwrap_or_default().to_string())
        .filter(|v| !v.is_empty())
        .expect("siamese-rs: cannot tell which torch release libtorch is (no version from torch-sys or PYO3_PYTHON)");
    println!("cargo:rustc-env=SIAMESE_RS_TORCH_VERSION={version}");
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
