//! Head and body configurations libtorch cannot build are errors of the Rust API, never panics:
//! zero, negative and huge sizes, dropout probabilities outside [0, 1], non-finite ranges.
use siamese_rs::{create_body, create_head, HeadConfig, SiameseModel};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `f()` returned an error (a panic fails the test with the case's name).
fn refused<T>(case: &str, f: impl FnOnce() -> siamese_rs::Result<T>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("{case}: built, expected an error"),
        Err(_) => panic!("{case}: panicked, expected an error"),
    }
}

fn head(f: impl FnOnce(&mut HeadConfig)) -> HeadConfig {
    let mut c = HeadConfig::new(64, 2);
    f(&mut c);
    c
}

#[test]
fn bad_heads_are_errors() {
    let cases: Vec<(&str, HeadConfig)> = vec![
        ("nf 0", head(|c| c.nf = 0)),
        ("nf -5", head(|c| c.nf = -5)),
        ("nf i64::MAX", head(|c| c.nf = i64::MAX)),
        ("nf 2^31", head(|c| c.nf = 1 << 31)),
        ("n_out 0", head(|c| c.n_out = 0)),
        ("n_out 2^31", head(|c| c.n_out = 1 << 31)),
        (
            "lin_ftrs huge",
            head(|c| c.lin_ftrs = Some(vec![1 << 31, 1 << 31])),
        ),
        ("lin_ftrs 0", head(|c| c.lin_ftrs = Some(vec![0]))),
        ("ps -0.5", head(|c| c.ps = vec![-0.5])),
        ("ps NaN", head(|c| c.ps = vec![f64::NAN])),
        ("ps 1.5", head(|c| c.ps = vec![0.1, 1.5])),
        ("ps empty", head(|c| c.ps = vec![])),
        ("y_range NaN", head(|c| c.y_range = Some((0.0, f64::NAN)))),
        (
            "y_range inf",
            head(|c| c.y_range = Some((f64::NEG_INFINITY, 1.0))),
        ),
    ];
    for (case, c) in cases {
        refused(case, || create_head(&c));
        refused(case, || SiameseModel::state_shapes("resnet18", 3, None, &c));
    }
}

#[test]
fn bad_bodies_are_errors() {
    for n_in in [0, -1, 1 << 40, i64::MAX, i64::MIN] {
        refused(&format!("n_in {n_in}"), || {
            create_body("resnet18", n_in, None)
        });
        let c = HeadConfig::new(1024, 2);
        refused(&format!("n_in {n_in}"), || {
            SiameseModel::state_shapes("resnet18", n_in, None, &c)
        });
    }
    refused("arch", || create_body("resnet9", 3, None));
}

#[test]
fn extreme_cuts_build_what_python_slicing_does() {
    for cut in [i64::MIN, -100, 0, 100, i64::MAX] {
        let body = catch_unwind(|| create_body("resnet18", 3, Some(cut))).expect("no panic");
        let n = body.expect("a cut is a slice").children.len();
        assert_eq!(n, if cut > 0 { 10 } else { 0 }, "cut {cut}");
    }
}

#[test]
fn shapes_of_a_huge_model_are_found_without_allocating_it() {
    // 64 x 120000 x 7 x 7 float32 is 1.5 GB; its shape alone costs nothing.
    let shapes =
        SiameseModel::state_shapes("resnet18", 120_000, Some(-2), &HeadConfig::new(1024, 2))
            .unwrap();
    assert_eq!(shapes[0].0, "encoder.0.weight");
    assert_eq!(shapes[0].2, [64, 120_000, 7, 7]);
    let built = SiameseModel::new(
        create_body("resnet18", 3, Some(-2)).unwrap(),
        create_head(&HeadConfig::new(1024, 2)).unwrap(),
    );
    let want: Vec<(String, Vec<i64>)> = built
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect();
    let got: Vec<(String, Vec<i64>)> =
        SiameseModel::state_shapes("resnet18", 3, Some(-2), &HeadConfig::new(1024, 2))
            .unwrap()
            .into_iter()
            .map(|(k, _, s)| (k, s))
            .collect();
    assert_eq!(got, want);
}
