//! Blocking and threads. The pairs are cut into tiles of query rows × gallery rows sized so a
//! tile's packed gallery rows stay in L2 while each block of queries streams over them; the
//! threads take tiles from a shared counter and pack their rows (padding them, widening
//! bfloat16) before scoring, so the kernels only ever see padded float32.
use super::head::{padded, PairHead};
use super::kernel::{tile_probs, Isa, Scratch, Tile};
use super::Rows;
use crate::bail;
use crate::error::Result;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Query rows per tile.
const TILE_ROWS: usize = 32;
/// Bytes of packed gallery rows per tile: well inside a 512 KiB L2, next to the queries.
const TILE_BYTES: usize = 192 << 10;
/// Below this many multiply-adds a call runs on one thread: spawning costs more.
const MIN_PARALLEL_WORK: usize = 1 << 21;

/// The pairs a threshold selected: `pairs` holds `(i, j)` flattened, `p` their P(same), in
/// row-major order of `(i, j)`.
#[derive(Debug, Default, PartialEq)]
pub struct Matches {
    pub pairs: Vec<i64>,
    pub p: Vec<f32>,
}

/// P(same) of every pair (`u` row `i`, `v` row `j`) into `out` (`n_u × n_v`, row-major).
pub fn score(
    head: &PairHead,
    isa: Isa,
    u: Rows,
    v: Rows,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let plan = Plan::new(head, u, v, threads)?;
    if out.len() != plan.nq * plan.ng {
        bail!(
            Shape,
            "score: output has {} values, expected {}×{}",
            out.len(),
            plan.nq,
            plan.ng
        );
    }
    let shared = SharedOut {
        ptr: out.as_mut_ptr(),
        cols: plan.ng,
    };
    let col_blocks = plan.ng.div_ceil(plan.cols);
    let items = plan.nq.div_ceil(TILE_ROWS) * col_blocks;
    plan.parallel(items, |item, w| {
        let (q0, g0) = (
            (item / col_blocks) * TILE_ROWS,
            (item % col_blocks) * plan.cols,
        );
        let (qn, gn) = w.score(&plan, isa, q0, g0);
        // SAFETY: each item is a distinct tile, so no two threads write the same values, and
        // `out` outlives the scope the threads run in.
        unsafe { shared.write(q0, g0, qn, gn, &w.probs) };
    });
    Ok(())
}

/// P(same) of the pairs (`u` row `k`, `v` row `k`) into `out`, with the numbers `score` gives.
pub fn score_each(
    head: &PairHead,
    isa: Isa,
    u: Rows,
    v: Rows,
    out: &mut [f32],
    threads: usize,
) -> Result<()> {
    let plan = Plan::new(head, u, v, threads)?;
    if plan.nq != plan.ng || out.len() != plan.nq {
        bail!(
            Shape,
            "score_each: expected {} pairs of rows and outputs, got {}, {} and {}",
            plan.nq,
            plan.nq,
            plan.ng,
            out.len()
        );
    }
    let chunks: Vec<&mut [f32]> = out.chunks_mut(TILE_ROWS).collect();
    let chunks: Vec<std::sync::Mutex<&mut [f32]>> =
        chunks.into_iter().map(std::sync::Mutex::new).collect();
    plan.parallel(chunks.len(), |item, w| {
        let k0 = item * TILE_ROWS;
        let mut dst = chunks[item].lock().unwrap_or_else(|e| e.into_inner());
        w.score_diagonal(&plan, isa, k0, &mut dst);
    });
    Ok(())
}

/// Every pair with P(same) ≥ `threshold`, streamed tile by tile (memory: the matches and a
/// tile per thread). `u` row `i` is index `row_offset + i`; with `skip_diagonal` the pairs
/// `(k, k)` of an index with itself are left out.
#[allow(clippy::too_many_arguments)]
pub fn matches(
    head: &PairHead,
    isa: Isa,
    u: Rows,
    v: Rows,
    threshold: f32,
    row_offset: usize,
    skip_diagonal: bool,
    threads: usize,
) -> Result<Matches> {
    let plan = Plan::new(head, u, v, threads)?;
    let blocks = plan.parallel(plan.nq.div_ceil(TILE_ROWS), |r, w| {
        let q0 = r * TILE_ROWS;
        let mut rows = vec![vec![]; TILE_ROWS.min(plan.nq - q0)];
        for g0 in (0..plan.ng).step_by(plan.cols) {
            let (_, gn) = w.score(&plan, isa, q0, g0);
            for (k, row) in rows.iter_mut().enumerate() {
                let i = row_offset + q0 + k;
                for (j, &p) in w.probs[k * gn..(k + 1) * gn].iter().enumerate() {
                    if p >= threshold && !(skip_diagonal && i == g0 + j) {
                        row.push((g0 + j, p));
                    }
                }
            }
        }
        rows
    });
    let mut out = Matches::default();
    let rows = blocks.into_iter().flatten();
    for (i, row) in rows.enumerate() {
        for (j, p) in row {
            out.pairs.extend([(row_offset + i) as i64, j as i64]);
            out.p.push(p);
        }
    }
    Ok(out)
}

/// The shapes of one call.
struct Plan<'a> {
    head: &'a PairHead,
    u: Rows<'a>,
    v: Rows<'a>,
    nq: usize,
    ng: usize,
    stride: usize,
    /// Gallery rows per tile.
    cols: usize,
    threads: usize,
}

impl<'a> Plan<'a> {
    fn new(head: &'a PairHead, u: Rows<'a>, v: Rows<'a>, threads: usize) -> Result<Plan<'a>> {
        let nq = n_rows(&u, head.width, "u")?;
        let ng = n_rows(&v, head.width, "v")?;
        let stride = padded(head.width);
        let work = nq.saturating_mul(ng).saturating_mul(stride);
        Ok(Plan {
            head,
            u,
            v,
            nq,
            ng,
            stride,
            cols: (TILE_BYTES / (4 * stride)).clamp(16, 1024),
            threads: if work < MIN_PARALLEL_WORK {
                1
            } else {
                threads.max(1)
            },
        })
    }

    /// `work(item, worker)` for every item, on up to `threads` threads; results in item order.
    fn parallel<T: Send>(
        &self,
        items: usize,
        work: impl Fn(usize, &mut Worker) -> T + Sync,
    ) -> Vec<T> {
        let threads = self.threads.min(items);
        if threads <= 1 {
            let mut w = Worker::default();
            return (0..items).map(|i| work(i, &mut w)).collect();
        }
        let next = AtomicUsize::new(0);
        let mut done: Vec<(usize, T)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let (mut w, mut got) = (Worker::default(), vec![]);
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= items {
                                return got;
                            }
                            got.push((i, work(i, &mut w)));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, t)| t).collect()
    }
}

fn n_rows(rows: &Rows, width: usize, name: &str) -> Result<usize> {
    if !rows.len().is_multiple_of(width) {
        bail!(
            Shape,
            "{name}: expected rows of {width} values, got {} values in all",
            rows.len()
        );
    }
    Ok(rows.len() / width)
}

/// One thread's packed rows and tile of probabilities.
#[derive(Default)]
struct Worker {
    u: Vec<f32>,
    v: Vec<f32>,
    scratch: Scratch,
    probs: Vec<f32>,
}

impl Worker {
    /// Scores the tile whose first query row is `q0` and first gallery row `g0` into
    /// `self.probs`; returns its size.
    fn score(&mut self, plan: &Plan, isa: Isa, q0: usize, g0: usize) -> (usize, usize) {
        let (qn, gn) = (TILE_ROWS.min(plan.nq - q0), plan.cols.min(plan.ng - g0));
        let (width, stride) = (plan.head.width, plan.stride);
        let u = plan.u.rows(width, q0, qn, stride, &mut self.u);
        let v = plan.v.rows(width, g0, gn, stride, &mut self.v);
        self.probs.resize(qn * gn, 0.0);
        let tile = Tile {
            u,
            v,
            qn,
            gn,
            stride: plan.stride,
        };
        tile_probs(isa, plan.head, &tile, &mut self.scratch, &mut self.probs);
        (qn, gn)
    }
}

impl Worker {
    /// The pairs `(k0 + k, k0 + k)` into `out`, each as a one-pair tile.
    fn score_diagonal(&mut self, plan: &Plan, isa: Isa, k0: usize, out: &mut [f32]) {
        let (n, width, stride) = (out.len(), plan.head.width, plan.stride);
        plan.u.pack(width, k0, n, stride, &mut self.u);
        plan.v.pack(width, k0, n, stride, &mut self.v);
        for (k, o) in out.iter_mut().enumerate() {
            let tile = Tile {
                u: &self.u[k * stride..(k + 1) * stride],
                v: &self.v[k * stride..(k + 1) * stride],
                qn: 1,
                gn: 1,
                stride,
            };
            tile_probs(
                isa,
                plan.head,
                &tile,
                &mut self.scratch,
                std::slice::from_mut(o),
            );
        }
    }
}

/// The output matrix, written by several threads at once, each to its own tiles.
struct SharedOut {
    ptr: *mut f32,
    cols: usize,
}

// SAFETY: threads write disjoint tiles (see `score`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Copies a `qn × gn` tile to rows `q0..`, columns `g0..`.
    ///
    /// # Safety
    /// The tile lies inside the matrix and no other thread accesses it meanwhile.
    unsafe fn write(&self, q0: usize, g0: usize, qn: usize, gn: usize, tile: &[f32]) {
        for k in 0..qn {
            let dst = self.ptr.add((q0 + k) * self.cols + g0);
            std::ptr::copy_nonoverlapping(tile[k * gn..(k + 1) * gn].as_ptr(), dst, gn);
        }
    }
}
