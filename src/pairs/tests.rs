//! The kernels against a plain float64 reading of the same head, on every ISA this CPU runs.
use super::*;

/// A small deterministic generator (no dependency for tests).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// The unpadded `(weight, bias)` of each layer, for the reference.
type Raw = Vec<(Vec<f32>, Vec<f32>)>;
/// `(width, relu, [(n_out, relu)], output)`.
type Shape = (usize, bool, Vec<(usize, bool)>, Output);

fn layer(rng: &mut Lcg, n_in: usize, n_out: usize, relu: bool) -> (Vec<f32>, Vec<f32>, Layer) {
    let (w, b) = (rng.vec(n_in * n_out), rng.vec(n_out));
    let l = Layer::new(&w, b.clone(), n_in, relu).unwrap();
    (w, b, l)
}

/// The head as plain float64 loops, for one pair.
fn reference(head: &PairHead, raw: &Raw, u: &[f32], v: &[f32]) -> f64 {
    let mut h: Vec<f64> = u
        .iter()
        .zip(v)
        .map(|(a, b)| f64::from(*a) + f64::from(*b))
        .collect();
    if head.relu {
        h.iter_mut().for_each(|x| *x = x.max(0.0));
    }
    for ((w, b), l) in raw.iter().zip(&head.layers) {
        h = (0..l.n_out)
            .map(|o| {
                let z: f64 = (0..l.n_in)
                    .map(|i| f64::from(w[o * l.n_in + i]) * h[i])
                    .sum();
                let z = z + f64::from(b[o]);
                if l.relu {
                    z.max(0.0)
                } else {
                    z
                }
            })
            .collect();
    }
    match head.output {
        Output::LogOdds => 1.0 / (1.0 + (-h[0]).exp()),
        Output::Softmax { y_range } => {
            if let Some((lo, hi)) = y_range {
                h.iter_mut().for_each(|x| {
                    *x = 1.0 / (1.0 + (-*x).exp()) * f64::from(hi - lo) + f64::from(lo)
                });
            }
            let s: f64 = h.iter().map(|x| x.exp()).sum();
            h[1].exp() / s
        }
    }
}

/// Heads of every shape the kernels distinguish: fused with 1–4 rows, layered, no layers.
fn heads(rng: &mut Lcg) -> Vec<(PairHead, Raw)> {
    let soft = Output::Softmax { y_range: None };
    let shapes: Vec<Shape> = vec![
        (40, true, vec![(1, false)], Output::LogOdds),
        (37, true, vec![(2, false)], soft),
        (
            16,
            true,
            vec![(3, false)],
            Output::Softmax {
                y_range: Some((-2.0, 3.0)),
            },
        ),
        (20, true, vec![(4, false)], soft),
        (24, true, vec![(9, true), (5, false)], soft),
        (12, false, vec![(6, true), (2, false)], soft),
        (2, false, vec![], soft),
        (1, false, vec![], Output::LogOdds),
    ];
    shapes
        .into_iter()
        .map(|(width, relu, ls, out)| {
            let (mut raw, mut layers, mut n) = (vec![], vec![], width);
            for (n_out, r) in ls {
                let (w, b, l) = layer(rng, n, n_out, r);
                raw.push((w, b));
                layers.push(l);
                n = n_out;
            }
            (PairHead::new(width, relu, layers, out).unwrap(), raw)
        })
        .collect()
}

#[test]
fn every_isa_matches_float64() {
    let mut rng = Lcg(7);
    for (head, raw) in heads(&mut rng) {
        let (nq, ng) = (37, 70);
        let (u, v) = (rng.vec(nq * head.width), rng.vec(ng * head.width));
        for isa in Isa::available() {
            let mut out = vec![0.0; nq * ng];
            score(&head, isa, Rows::F32(&u), Rows::F32(&v), &mut out, 2).unwrap();
            for i in 0..nq {
                for j in 0..ng {
                    let w = head.width;
                    let want =
                        reference(&head, &raw, &u[i * w..(i + 1) * w], &v[j * w..(j + 1) * w]);
                    let got = f64::from(out[i * ng + j]);
                    assert!(
                        (got - want).abs() < 2e-6,
                        "{isa:?} {head:?} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn threads_and_tiles_do_not_change_a_score() {
    let mut rng = Lcg(3);
    let (head, _) = heads(&mut rng).swap_remove(0);
    let (nq, ng) = (150, 1300);
    let (u, v) = (rng.vec(nq * head.width), rng.vec(ng * head.width));
    let isa = Isa::detect();
    let mut all = vec![0.0; nq * ng];
    score(&head, isa, Rows::F32(&u), Rows::F32(&v), &mut all, 2).unwrap();
    let mut each = vec![0.0; nq];
    score_each(
        &head,
        isa,
        Rows::F32(&u),
        Rows::F32(&v[..nq * head.width]),
        &mut each,
        2,
    )
    .unwrap();
    assert!((0..nq).all(|k| each[k] == all[k * ng + k]));
    let mut one = vec![0.0; ng];
    score(
        &head,
        isa,
        Rows::F32(&u[5 * head.width..6 * head.width]),
        Rows::F32(&v),
        &mut one,
        1,
    )
    .unwrap();
    assert_eq!(one, all[5 * ng..6 * ng]);
    let m = matches(&head, isa, Rows::F32(&u), Rows::F32(&v), 0.6, 0, true, 2).unwrap();
    let want: Vec<(i64, i64, f32)> = (0..nq * ng)
        .filter(|k| all[*k] >= 0.6 && k / ng != k % ng)
        .map(|k| ((k / ng) as i64, (k % ng) as i64, all[k]))
        .collect();
    let got: Vec<(i64, i64, f32)> = m
        .pairs
        .chunks(2)
        .zip(&m.p)
        .map(|(ij, p)| (ij[0], ij[1], *p))
        .collect();
    assert!(!want.is_empty() && got == want);
    let shifted = matches(
        &head,
        isa,
        Rows::F32(&u[head.width..]),
        Rows::F32(&v),
        0.6,
        1,
        true,
        2,
    )
    .unwrap();
    assert_eq!(
        shifted.p,
        m.p[m.pairs.chunks(2).take_while(|ij| ij[0] == 0).count()..]
    );
}

#[test]
fn bfloat16_rows_widen_exactly() {
    let mut rng = Lcg(5);
    let (head, _) = heads(&mut rng).swap_remove(1);
    let (nq, ng) = (9, 11);
    let round = |x: f32| f32::from_bits(x.to_bits() & 0xffff_0000);
    let (u, v) = (rng.vec(nq * head.width), rng.vec(ng * head.width));
    let v16: Vec<u16> = v.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
    let vr: Vec<f32> = v.iter().map(|x| round(*x)).collect();
    let (mut a, mut b) = (vec![0.0; nq * ng], vec![0.0; nq * ng]);
    let isa = Isa::detect();
    score(&head, isa, Rows::F32(&u), Rows::Bf16(&v16), &mut a, 1).unwrap();
    score(&head, isa, Rows::F32(&u), Rows::F32(&vr), &mut b, 1).unwrap();
    assert_eq!(a, b);
}

#[test]
fn nan_propagates_and_empty_sides_are_fine() {
    let mut rng = Lcg(9);
    for (head, _) in heads(&mut rng) {
        let w = head.width;
        let mut u = rng.vec(2 * w);
        u[0] = f32::NAN;
        let v = rng.vec(3 * w);
        let mut out = vec![0.0; 6];
        score(
            &head,
            Isa::detect(),
            Rows::F32(&u),
            Rows::F32(&v),
            &mut out,
            1,
        )
        .unwrap();
        assert!(out[..3].iter().all(|p| p.is_nan()), "{head:?}: {out:?}");
        assert!(out[3..].iter().all(|p| (0.0..=1.0).contains(p)));
        let mut none = vec![];
        score(
            &head,
            Isa::detect(),
            Rows::F32(&[]),
            Rows::F32(&v),
            &mut none,
            2,
        )
        .unwrap();
        let m = matches(
            &head,
            Isa::detect(),
            Rows::F32(&u),
            Rows::F32(&[]),
            0.0,
            0,
            true,
            2,
        )
        .unwrap();
        assert!(m.p.is_empty());
    }
}

#[test]
fn wrong_sizes_are_errors() {
    let mut rng = Lcg(1);
    let (head, _) = heads(&mut rng).swap_remove(0);
    let mut out = vec![0.0; 4];
    let u = rng.vec(2 * head.width);
    assert!(score(
        &head,
        Isa::detect(),
        Rows::F32(&u[1..]),
        Rows::F32(&u),
        &mut out,
        1
    )
    .is_err());
    assert!(score(
        &head,
        Isa::detect(),
        Rows::F32(&u),
        Rows::F32(&u),
        &mut out[1..],
        1
    )
    .is_err());
}
