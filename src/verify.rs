//! Kernel checks: each kernel on a backend against its CPU twin, on random data at awkward shapes.
//!
//! One list of cases serves the test suite (`tests/kernels.rs`, one `<kernel>_matches_cpu` test per
//! kernel) and `wgslm verify` (every case on the user's adapter). A case builds its inputs from a seed,
//! so the reference and the backend under test see the same numbers; it passes when every checked
//! output is within `tolerance` (relative L2) of the twin's and a second run gives the same bits.

use crate::backend::{AdamwHyper, AttnDropout, Backend, DType, HalfFormat, Op, View, WeightLayout};
use crate::cpu;
use crate::cpu::CpuBackend;
use crate::rng::Rng;
use crate::Result;

/// The agreement every f32 kernel must reach with its twin.
pub const TOLERANCE: f64 = 1e-5;

enum Init {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

/// Allocates a case's tensors on a backend and remembers their initial contents.
pub struct Setup<'a> {
    backend: &'a mut dyn Backend,
    rng: Rng,
    inits: Vec<(View, Init)>,
}

impl Setup<'_> {
    /// A tensor of normal samples times `scale`, plus `shift`.
    pub fn normal(&mut self, len: usize, scale: f64, shift: f64) -> Result<View> {
        let data = (0..len).map(|_| (self.rng.normal() * scale + shift) as f32).collect();
        self.with(data)
    }

    /// A tensor holding `data`.
    pub fn with(&mut self, data: Vec<f32>) -> Result<View> {
        let id = self.backend.alloc(DType::F32, data.len(), "verify")?;
        let view = View::new(id, 0, data.len());
        self.inits.push((view, Init::F32(data)));
        Ok(view)
    }

    /// A u32 tensor of uniform integers below `bound`.
    pub fn ids(&mut self, len: usize, bound: u32) -> Result<View> {
        let data = (0..len).map(|_| self.rng.below(bound as u64) as u32).collect();
        self.ids_with(data)
    }

    pub fn ids_with(&mut self, data: Vec<u32>) -> Result<View> {
        let id = self.backend.alloc(DType::U32, data.len(), "verify")?;
        let view = View::new(id, 0, data.len());
        self.inits.push((view, Init::U32(data)));
        Ok(view)
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn upload(&mut self) -> Result<()> {
        for (view, init) in &self.inits {
            match init {
                Init::F32(d) => self.backend.write_f32(*view, d)?,
                Init::U32(d) => self.backend.write_u32(*view, d)?,
            }
        }
        Ok(())
    }
}

/// What a case builds: the ops to run and the outputs to compare (scratch outputs are left out).
pub struct Built {
    pub ops: Vec<Op>,
    pub checked: Vec<(&'static str, View)>,
}

type Builder = Box<dyn Fn(&mut Setup) -> Result<Built> + Send + Sync>;

/// One kernel at one shape.
pub struct Case {
    pub kernel: &'static str,
    pub shape: String,
    pub tolerance: f64,
    build: Builder,
}

/// The result of one case on one backend.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub kernel: &'static str,
    pub shape: String,
    /// Worst relative L2 error over the checked outputs, and which output it was.
    pub worst: f64,
    pub worst_output: &'static str,
    pub tolerance: f64,
    /// Worst single element over the checked outputs: |got − want| relative to the largest |want| of
    /// its output ([`max_element_error`]), which a few wrong elements among millions cannot hide in.
    pub worst_element: f64,
    /// A second run on the same input gave the same bits.
    pub deterministic: bool,
    /// The backend failed to run the case at all.
    pub error: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.deterministic
            && self.worst <= self.tolerance
            && self.worst_element <= ELEMENT_TOLERANCE
    }

    /// One line for a table or an assertion message.
    pub fn line(&self) -> String {
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let detail = match &self.error {
            Some(e) => e.clone(),
            None if !self.deterministic => "a second run gave different bits".to_string(),
            None => format!(
                "rel L2 {:.2e} ({}), worst element {:.2e}",
                self.worst, self.worst_output, self.worst_element
            ),
        };
        format!("{verdict}  {:<22} {:<34} {detail}", self.kernel, self.shape)
    }
}

/// The tolerance of a matmul with K terms at arbitrary sizes (`bench kernels`, the autotuner): f32 sums
/// of K products carry about sqrt(K)·2⁻²⁴ relative error.
pub fn matmul_tolerance(k: usize) -> f64 {
    TOLERANCE.max(4.0 * (k as f64).sqrt() * f32::EPSILON as f64)
}

/// The most any single element of a checked output may differ from the twin's, relative to the
/// largest magnitude in that output. Rounding of f32 sums leaves elements within about 1e-6 of it at
/// the test shapes; one wrong element is off by its own size.
pub const ELEMENT_TOLERANCE: f64 = 1e-4;

/// max |a − b| / max |b| in f64 (absolute when b is zero); NaN when either holds a NaN.
pub fn max_element_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        diff = diff.max(d);
        scale = scale.max((y as f64).abs());
    }
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// ‖a − b‖₂ / ‖b‖₂ in f64 (absolute when b is zero); NaN when either holds a NaN.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (x as f64 - y as f64).powi(2);
        norm += (y as f64).powi(2);
    }
    if diff.is_nan() || norm.is_nan() {
        return f64::NAN;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

fn seed_of(kernel: &str, shape: &str) -> u64 {
    // FNV-1a: a stable seed per case, independent of the order cases run in.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in kernel.bytes().chain([0]).chain(shape.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The names of the checked outputs, and their values after each of `runs` runs.
type Runs = (Vec<&'static str>, Vec<Vec<Vec<f32>>>);

fn run_on(case: &Case, backend: &mut dyn Backend, runs: usize) -> Result<Runs> {
    let mut setup = Setup { backend, rng: Rng::new(seed_of(case.kernel, &case.shape)), inits: Vec::new() };
    let built = (case.build)(&mut setup)?;
    let plan = setup.backend.prepare(&built.ops)?;
    let mut results = Vec::new();
    for _ in 0..runs {
        setup.upload()?;
        setup.backend.run(plan)?;
        let mut outs = Vec::new();
        for (_, view) in &built.checked {
            outs.push(setup.backend.read_f32(*view)?);
        }
        results.push(outs);
    }
    Ok((built.checked.iter().map(|(name, _)| *name).collect(), results))
}

/// Builds `case` on `backend` and prepares its program (inputs uploaded), for timing; returns the
/// plan and the bytes its views hold (what a memory-bound kernel must at least move).
pub fn prepare_case(case: &Case, backend: &mut dyn Backend) -> Result<(crate::backend::PlanId, u64)> {
    let mut setup = Setup { backend, rng: Rng::new(seed_of(case.kernel, &case.shape)), inits: Vec::new() };
    let built = (case.build)(&mut setup)?;
    setup.upload()?;
    let bytes: usize =
        built.ops.iter().flat_map(|op| op.inputs().into_iter().chain(op.outputs())).map(|(_, n)| n * 4).sum();
    let plan = setup.backend.prepare(&built.ops)?;
    Ok((plan, bytes as u64))
}

/// The ops `case` runs, built on `backend` (which allocates their tensors).
pub fn case_ops(case: &Case, backend: &mut dyn Backend) -> Result<Vec<Op>> {
    let mut setup = Setup { backend, rng: Rng::new(seed_of(case.kernel, &case.shape)), inits: Vec::new() };
    Ok((case.build)(&mut setup)?.ops)
}

/// Runs `case` on the twin and on `backend`, twice on the latter.
pub fn run_case(case: &Case, backend: &mut dyn Backend) -> Outcome {
    let mut outcome = Outcome {
        kernel: case.kernel,
        shape: case.shape.clone(),
        worst: 0.0,
        worst_output: "",
        tolerance: case.tolerance,
        worst_element: 0.0,
        deterministic: true,
        error: None,
    };
    let reference = match run_on(case, &mut CpuBackend::new(), 1) {
        Ok((_, mut r)) => r.remove(0),
        Err(e) => {
            outcome.error = Some(format!("the CPU twin failed: {e}"));
            return outcome;
        }
    };
    let (names, runs) = match run_on(case, backend, 2) {
        Ok(r) => r,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    for (i, (got, want)) in runs[0].iter().zip(&reference).enumerate() {
        let err = rel_l2(got, want);
        // NaN is the worst of all and stays.
        if !outcome.worst.is_nan() && (err.is_nan() || err > outcome.worst || i == 0) {
            outcome.worst = err;
            outcome.worst_output = names[i];
        }
        let element = max_element_error(got, want);
        if !outcome.worst_element.is_nan() && (element.is_nan() || element > outcome.worst_element) {
            outcome.worst_element = element;
        }
        outcome.deterministic &= got.iter().zip(&runs[1][i]).all(|(a, b)| a.to_bits() == b.to_bits());
    }
    outcome
}

fn case(
    kernel: &'static str,
    shape: String,
    build: impl Fn(&mut Setup) -> Result<Built> + Send + Sync + 'static,
) -> Case {
    Case { kernel, shape, tolerance: TOLERANCE, build: Box::new(build) }
}

/// Elementwise sizes: awkward small ones, and one whose grid needs more than 65,535 workgroups of 64.
const ELEMENTWISE: [usize; 5] = [1, 7, 37, 129, 65_537 * 64 + 3];
/// (rows, channels) for row kernels; the last has more rows than one grid dimension holds.
const ROWS: [(usize, usize); 5] = [(1, 4), (7, 24), (37, 68), (129, 200), (65_600, 4)];
/// (N, C) for the row norms: [`ROWS`], and rows past 8 · 65,535, where the "rows" family's grid (8 rows
/// per workgroup) folds into y.
const NORM_ROWS: [(usize, usize); 6] = [ROWS[0], ROWS[1], ROWS[2], ROWS[3], ROWS[4], (524_300, 2)];
/// (M, K, N) for matrix products: edges of every tile size; K long enough to be split into chunks;
/// M long enough for several row blocks in the bias gradient and chunks in the weight gradient.
/// Some have every dimension a multiple of 4, the condition of the vec4 variants. Those with M <= 8 run
/// the matrix-vector variant; (2, 3, 65_600) has more columns than one dispatch row of its NT kernel holds.
const GEMM: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (7, 24, 37),
    (37, 68, 65),
    (129, 200, 24),
    (65, 3, 129),
    (4, 40_000, 3),
    (70_000, 3, 2),
    (36, 100, 68),
    (124, 36, 132),
    // Long enough that inner tile loops, if the loop limiter counted them, would cut the sum short.
    (300, 2048, 72),
    (2, 3, 65_600),
    // Rows that are whole vec4s and a K that is not, past one K chunk: rows32x16k4 reads a stored (K,M)
    // as vec4s and stops three steps into its last step of four.
    (12, 16_387, 20),
];
/// (B, T, C, NH, NKV) for attention: multi-head (NKV = NH) with head sizes 4, 6, 17, 25, 128 (none a
/// power of two but the first and last; the last has rows long enough that a row-per-invocation kernel
/// would loop T·hs > 65,535 times), then grouped-query (NKV < NH) with head sizes 4, 6, 32, 128; last
/// two whose grids need more than 65,535 workgroups of 64 and fold: one with B·NH·T² scores past that
/// (the per-score kernels), one with B·T·C and B·NH·T past it (the per-element and per-row kernels).
const ATTENTION: [(usize, usize, usize, usize, usize); 11] = [
    (1, 1, 4, 1, 1),
    (2, 7, 24, 4, 4),
    (1, 37, 68, 4, 4),
    (3, 65, 200, 8, 8),
    (1, 300, 256, 2, 2),
    (2, 7, 24, 6, 2),
    (1, 37, 24, 4, 1),
    (2, 65, 128, 4, 2),
    (1, 129, 512, 4, 2),
    (1, 1024, 16, 4, 2),
    (4100, 1, 1024, 1024, 1024),
];
/// (B, T, C, NH, NKV, with dropout) for fused attention: T = 1, 7, 37, 129, 259 and 1024 (the key and
/// query tiles' edges, and a sequence long enough for the loop budget to matter); head sizes 4, 6, 17,
/// 32, 64, 128 and 132 (above 128: two chunks per head row); multi-head and grouped-query (6/2, 4/1,
/// 2/1). Dropout where the flag says, which is everywhere but the first and the largest multi-head case.
/// The last case has more (query head, query tile) pairs than one dK/dV dispatch walks, so its sum is
/// split across dispatches.
const FLASH_ATTENTION: [(usize, usize, usize, usize, usize, bool); 10] = [
    (1, 1, 4, 1, 1, false),
    (2, 7, 24, 4, 4, true),
    (1, 37, 68, 4, 4, true),
    (2, 37, 24, 6, 2, true),
    (1, 129, 128, 4, 1, true),
    (1, 259, 36, 6, 2, true),
    (1, 259, 256, 2, 2, true),
    (1, 37, 264, 2, 1, true),
    (2, 1024, 256, 4, 4, false),
    (1, 1024, 512, 4, 1, true),
];
/// (rows, W) for the row copies of incremental decoding; the last row is longer than one dispatch row
/// of workgroups holds.
const ROW_COPY: [(usize, usize); 5] = [(1, 1), (7, 37), (37, 65), (129, 129), (3, 65_537 * 64 + 3)];
/// (T, C, NH, NKV, pos) for one-query attention over a cache: T = 1, 7, 37, 129, 259 and 1024, head
/// sizes 4, 6, 17, 32, 64, 128 and 130 (above 64: several output elements per invocation), multi-head
/// and grouped-query; the query at the last row, in the middle, and past one 256-key tile.
const ATTENTION_DECODE: [(usize, usize, usize, usize, usize); 8] = [
    (1, 4, 1, 1, 0),
    (7, 24, 4, 2, 6),
    (37, 51, 3, 1, 20),
    (129, 128, 4, 4, 128),
    (259, 128, 2, 1, 258),
    (259, 384, 6, 2, 257),
    (1024, 256, 2, 2, 1000),
    (300, 260, 2, 1, 299),
];
/// (N, width, heads, hd, table rows) for RoPE: head sizes 4, 6, 32, 128; rows wider than heads·hd (the
/// copied tail) except the first; the third is a packed qkv row of 4 q and 2 k heads rotated, 2 v
/// heads copied; the last has more than 65,535 workgroups. Positions are random below the table rows.
const ROPE: [(usize, usize, usize, usize, usize); 5] = [
    (1, 4, 1, 4, 1),
    (7, 23, 3, 6, 5),
    (37, 256, 6, 32, 50),
    (129, 259, 2, 128, 300),
    (65_537, 68, 4, 16, 64),
];
/// (N, I) for SwiGLU; the last has N·I above 65,535 workgroups of 64.
const SWIGLU: [(usize, usize); 5] = [(1, 3), (7, 24), (37, 68), (129, 200), (65_537, 64)];
/// (B, T, C, V) for the embedding; the last has more than 65,535 workgroups.
const ENCODER: [(usize, usize, usize, usize); 5] =
    [(1, 1, 4, 3), (2, 7, 24, 65), (3, 37, 68, 997), (1, 129, 200, 65), (64, 257, 256, 65)];
/// (N, V) for cross-entropy; the last two exceed one grid dimension (rows, then elements).
const CROSSENTROPY: [(usize, usize); 6] = [(1, 3), (7, 65), (37, 997), (129, 65), (65_600, 3), (70_000, 65)];

/// Every case, grouped by kernel in schedule order.
pub fn cases() -> Vec<Case> {
    let mut all = Vec::new();

    for n in ELEMENTWISE {
        all.push(case("zero", format!("n={n}"), move |s| {
            let out = s.normal(n, 1.0, 0.0)?;
            Ok(Built { ops: vec![Op::Zero { out }], checked: vec![("out", out)] })
        }));
    }
    for (b, t, c, v) in ENCODER {
        // With a position embedding at every shape; without one (RoPE models) at all but the largest.
        for with_wpe in [true, false].into_iter().filter(|w| *w || b * t * c < 1_000_000) {
            let shape = format!("B={b} T={t} C={c} V={v}{}", if with_wpe { "" } else { " no wpe" });
            all.push(case("encoder_forward", shape.clone(), move |s| {
                let out = s.normal(b * t * c, 1.0, 0.0)?;
                let tokens = s.ids(b * t, v as u32)?;
                let wte = s.normal(v * c, 1.0, 0.0)?;
                let wpe = if with_wpe { Some(s.normal((t + 3) * c, 1.0, 0.0)?) } else { None };
                Ok(Built {
                    ops: vec![Op::EncoderForward { out, tokens, wte, wpe, b, t, c }],
                    checked: vec![("out", out)],
                })
            }));
            all.push(case("encoder_backward", shape, move |s| {
                let dwte = s.normal(v * c, 1.0, 0.0)?;
                let dwpe = if with_wpe { Some(s.normal((t + 3) * c, 1.0, 0.0)?) } else { None };
                let dout = s.normal(b * t * c, 1.0, 0.0)?;
                let ids: Vec<u32> = (0..b * t).map(|_| s.rng().below(v as u64) as u32).collect();
                let order = s.ids_with(crate::backend::encoder_order(&ids))?;
                let tokens = s.ids_with(ids)?;
                let mut checked = vec![("dwte", dwte)];
                checked.extend(dwpe.map(|d| ("dwpe", d)));
                Ok(Built {
                    ops: vec![Op::EncoderBackward { dwte, dwpe, dout, tokens, order, b, t, c }],
                    checked,
                })
            }));
        }
    }
    for (n, c) in NORM_ROWS {
        let shape = format!("N={n} C={c}");
        all.push(case("layernorm_forward", shape.clone(), move |s| {
            let out = s.normal(n * c, 1.0, 0.0)?;
            let mean = s.normal(n, 1.0, 0.0)?;
            let rstd = s.normal(n, 1.0, 0.0)?;
            let inp = s.normal(n * c, 2.0, 0.5)?;
            let weight = s.normal(c, 0.1, 1.0)?;
            let bias = s.normal(c, 0.1, 0.0)?;
            Ok(Built {
                ops: vec![Op::LayernormForward { out, mean, rstd, inp, weight, bias, n, c }],
                checked: vec![("out", out), ("mean", mean), ("rstd", rstd)],
            })
        }));
        all.push(case("layernorm_backward", shape, move |s| {
            let dinp = s.normal(n * c, 1.0, 0.0)?;
            let dweight = s.normal(c, 1.0, 0.0)?;
            let dbias = s.normal(c, 1.0, 0.0)?;
            let dout = s.normal(n * c, 1.0, 0.0)?;
            let x: Vec<f32> = (0..n * c).map(|_| (s.rng().normal() * 2.0 + 0.5) as f32).collect();
            // The saved statistics must be those of the input, as the forward pass leaves them.
            let (mut mean, mut rstd) = (vec![0f32; n], vec![0f32; n]);
            let mut y = vec![0f32; n * c];
            let (w1, b0) = (vec![1f32; c], vec![0f32; c]);
            cpu::layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &w1, &b0, n, c);
            let inp = s.with(x)?;
            let weight = s.normal(c, 0.1, 1.0)?;
            let mean = s.with(mean)?;
            let rstd = s.with(rstd)?;
            Ok(Built {
                ops: vec![Op::LayernormBackward {
                    dinp,
                    dweight,
                    dbias,
                    dout,
                    inp,
                    weight,
                    mean,
                    rstd,
                    n,
                    c,
                }],
                checked: vec![("dinp", dinp), ("dweight", dweight), ("dbias", dbias)],
            })
        }));
    }
    for (row, (n, c)) in NORM_ROWS.into_iter().enumerate() {
        let eps = [1e-5f32, 1e-6][row % 2];
        let shape = format!("N={n} C={c} eps={eps}");
        all.push(case("rmsnorm_forward", shape.clone(), move |s| {
            let out = s.normal(n * c, 1.0, 0.0)?;
            let rstd = s.normal(n, 1.0, 0.0)?;
            let inp = s.normal(n * c, 2.0, 0.5)?;
            let weight = s.normal(c, 0.1, 1.0)?;
            Ok(Built {
                ops: vec![Op::RmsnormForward { out, rstd, inp, weight, n, c, eps }],
                checked: vec![("out", out), ("rstd", rstd)],
            })
        }));
        all.push(case("rmsnorm_backward", shape, move |s| {
            let dinp = s.normal(n * c, 1.0, 0.0)?;
            let dweight = s.normal(c, 1.0, 0.0)?;
            let dout = s.normal(n * c, 1.0, 0.0)?;
            let x: Vec<f32> = (0..n * c).map(|_| (s.rng().normal() * 2.0 + 0.5) as f32).collect();
            // The saved rstd must be the input's, as the forward pass leaves it.
            let (mut y, mut rstd) = (vec![0f32; n * c], vec![0f32; n]);
            cpu::rmsnorm_forward(&mut y, &mut rstd, &x, &vec![1f32; c], n, c, eps as f64);
            let inp = s.with(x)?;
            let weight = s.normal(c, 0.1, 1.0)?;
            let rstd = s.with(rstd)?;
            Ok(Built {
                ops: vec![Op::RmsnormBackward { dinp, dweight, dout, inp, weight, rstd, n, c }],
                checked: vec![("dinp", dinp), ("dweight", dweight)],
            })
        }));
    }
    for (n, width, heads, hd, rows) in ROPE {
        let shape = format!("N={n} width={width} heads={heads} hd={hd} positions<{rows}");
        let table = crate::backend::rope_table(10_000.0, hd, rows);
        let table2 = table.clone();
        all.push(case("rope_forward", shape.clone(), move |s| {
            let out = s.normal(n * width, 1.0, 0.0)?;
            let inp = s.normal(n * width, 1.0, 0.0)?;
            let positions = s.ids(n, rows as u32)?;
            let table = s.with(table.clone())?;
            Ok(Built {
                ops: vec![Op::RopeForward { out, inp, positions, table, n, width, heads, hd }],
                checked: vec![("out", out)],
            })
        }));
        all.push(case("rope_backward", shape, move |s| {
            let dinp = s.normal(n * width, 1.0, 0.0)?;
            let dout = s.normal(n * width, 1.0, 0.0)?;
            let positions = s.ids(n, rows as u32)?;
            let table = s.with(table2.clone())?;
            Ok(Built {
                ops: vec![Op::RopeBackward { dinp, dout, positions, table, n, width, heads, hd }],
                checked: vec![("dinp", dinp)],
            })
        }));
    }
    for (n, i) in SWIGLU {
        let shape = format!("N={n} I={i}");
        // Gates up to about ±30 and a few far out, where a naive sigmoid's exp overflows.
        let gates = move |s: &mut Setup| -> Result<View> {
            let data = (0..n * 2 * i)
                .map(|k| {
                    let x = s.rng().normal() * 8.0;
                    (if k % 97 == 5 { x * 40.0 } else { x }) as f32
                })
                .collect();
            s.with(data)
        };
        all.push(case("swiglu_forward", shape.clone(), move |s| {
            let out = s.normal(n * i, 1.0, 0.0)?;
            let inp = gates(s)?;
            Ok(Built { ops: vec![Op::SwigluForward { out, inp, n, i }], checked: vec![("out", out)] })
        }));
        all.push(case("swiglu_backward", shape, move |s| {
            let dinp = s.normal(n * 2 * i, 1.0, 0.0)?;
            let inp = gates(s)?;
            let dout = s.normal(n * i, 1.0, 0.0)?;
            Ok(Built {
                ops: vec![Op::SwigluBackward { dinp, inp, dout, n, i }],
                checked: vec![("dinp", dinp)],
            })
        }));
    }
    for (m, k, n) in GEMM {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let accumulate = (m + k + n + trans_a as usize) % 2 == 1;
            let shape = format!(
                "{m}x{k}x{n} {}{}{}",
                if trans_a { "T" } else { "N" },
                if trans_b { "T" } else { "N" },
                if accumulate { " +=" } else { "" }
            );
            all.push(case("matmul", shape, move |s| {
                let out = s.normal(m * n, 1.0, 0.0)?;
                let a = s.normal(m * k, 1.0, 0.0)?;
                let b = s.normal(k * n, 1.0, 0.0)?;
                Ok(Built {
                    ops: vec![Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate, half: false }],
                    checked: vec![("out", out)],
                })
            }));
        }
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let accumulate = (m + n + trans_b as usize) % 2 == 0;
            let shape = format!(
                "{m}x{k}x{n} {}{}{}",
                if trans_a { "T" } else { "N" },
                if trans_b { "T" } else { "N" },
                if accumulate { " +=" } else { "" }
            );
            // The twin reads the same halves, so only the f32 sums can differ: the f32 tolerance.
            all.push(case("matmul_f16", shape, move |s| {
                let out = s.normal(m * n, 1.0, 0.0)?;
                let mut halves = |len: usize| -> Result<View> {
                    let x: Vec<f32> = (0..len).map(|_| s.rng().normal() as f32).collect();
                    s.ids_with(crate::cpu::pack_f16(&x))
                };
                let (a, b) = (halves(m * k)?, halves(k * n)?);
                Ok(Built {
                    ops: vec![Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate, half: true }],
                    checked: vec![("out", out)],
                })
            }));
        }
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            let has_bias = layout == WeightLayout::InOut || m % 2 == 1;
            let shape = format!("{m}x{k}x{n} {layout:?}{}", if has_bias { " +bias" } else { "" });
            all.push(case("matmul_forward", shape.clone(), move |s| {
                let out = s.normal(m * n, 1.0, 0.0)?;
                let inp = s.normal(m * k, 1.0, 0.0)?;
                let weight = s.normal(k * n, 0.5, 0.0)?;
                let bias = if has_bias { Some(s.normal(n, 0.5, 0.0)?) } else { None };
                Ok(Built {
                    ops: vec![Op::MatmulForward { out, inp, weight, bias, m, k, n, layout }],
                    checked: vec![("out", out)],
                })
            }));
            all.push(case("matmul_backward", shape, move |s| {
                let dinp = s.normal(m * k, 1.0, 0.0)?;
                let dweight = s.normal(k * n, 1.0, 0.0)?;
                let dbias = if has_bias { Some(s.normal(n, 1.0, 0.0)?) } else { None };
                let dout = s.normal(m * n, 1.0, 0.0)?;
                let inp = s.normal(m * k, 1.0, 0.0)?;
                let weight = s.normal(k * n, 0.5, 0.0)?;
                let mut checked = vec![("dinp", dinp), ("dweight", dweight)];
                checked.extend(dbias.map(|d| ("dbias", d)));
                Ok(Built {
                    ops: vec![Op::MatmulBackward {
                        dinp,
                        dweight,
                        dbias,
                        dout,
                        inp,
                        weight,
                        m,
                        k,
                        n,
                        layout,
                    }],
                    checked,
                })
            }));
        }
    }
    for (i, (b, t, c, nh, nkv)) in ATTENTION.into_iter().enumerate() {
        let w = crate::backend::qkv_width(c, nh, nkv);
        // Every shape without dropout, and all but the first with it.
        for drop in [None, Some(0.25f32)].into_iter().filter(|d| i > 0 || d.is_none()) {
            let shape = format!(
                "B={b} T={t} C={c} NH={nh}{} hs={}{}",
                if nkv == nh { String::new() } else { format!(" NKV={nkv}") },
                c / nh,
                drop.map_or(String::new(), |p| format!(" dropout={p}"))
            );
            let (att_len, stream) = (b * nh * t * t, 3 + i as u32);
            let seed_data = 0x5eed_0000 + i as u32;
            all.push(case("attention_forward", shape.clone(), move |s| {
                let out = s.normal(b * t * c, 1.0, 0.0)?;
                let att = s.normal(att_len, 1.0, 0.0)?;
                let qkv = s.normal(b * t * w, 1.0, 0.0)?;
                let mut checked = vec![("out", out), ("att", att)];
                let dropout = match drop {
                    Some(p) => {
                        let probs = s.normal(att_len, 1.0, 0.0)?;
                        checked.push(("dropped probabilities", probs));
                        Some(AttnDropout { probs, seed: s.ids_with(vec![seed_data])?, p, stream })
                    }
                    None => None,
                };
                Ok(Built {
                    ops: vec![Op::AttentionForward { out, att, qkv, b, t, c, nh, nkv, dropout }],
                    checked,
                })
            }));
            all.push(case("attention_backward", shape, move |s| {
                let dqkv = s.normal(b * t * w, 1.0, 0.0)?;
                let datt = s.normal(att_len, 1.0, 0.0)?;
                let dout = s.normal(b * t * c, 1.0, 0.0)?;
                let q: Vec<f32> = (0..b * t * w).map(|_| s.rng().normal() as f32).collect();
                // att (and the dropped probabilities) must be what the forward pass leaves for these q, k.
                let (mut att, mut probs) = (vec![0f32; att_len], vec![0f32; att_len]);
                let mask = drop.map(|p| cpu::Mask { seed: seed_data, p, stream });
                let fwd = mask.map(|m| (probs.as_mut_slice(), m));
                cpu::attention_forward(&mut vec![0f32; b * t * c], &mut att, &q, b, t, c, nh, nkv, fwd);
                let qkv = s.with(q)?;
                let att = s.with(att)?;
                let dropout = match drop {
                    Some(p) => Some(AttnDropout {
                        probs: s.with(probs)?,
                        seed: s.ids_with(vec![seed_data])?,
                        p,
                        stream,
                    }),
                    None => None,
                };
                Ok(Built {
                    ops: vec![Op::AttentionBackward {
                        dqkv,
                        datt,
                        dout,
                        qkv,
                        att,
                        b,
                        t,
                        c,
                        nh,
                        nkv,
                        dropout,
                    }],
                    checked: vec![("dqkv", dqkv)],
                })
            }));
        }
    }
    for (rows, w) in ROW_COPY {
        let shape = format!("rows={rows} W={w}");
        all.push(case("gather_row", shape.clone(), move |s| {
            let out = s.normal(w, 1.0, 0.0)?;
            let inp = s.normal(rows * w, 1.0, 0.0)?;
            let row = s.ids(1, rows as u32)?;
            Ok(Built { ops: vec![Op::GatherRow { out, inp, row, w }], checked: vec![("out", out)] })
        }));
        all.push(case("scatter_row", shape, move |s| {
            let out = s.normal(rows * w, 1.0, 0.0)?;
            let inp = s.normal(w, 1.0, 0.0)?;
            let row = s.ids(1, rows as u32)?;
            Ok(Built { ops: vec![Op::ScatterRow { out, inp, row, w }], checked: vec![("out", out)] })
        }));
    }
    for (t, c, nh, nkv, pos) in ATTENTION_DECODE {
        let w = crate::backend::qkv_width(c, nh, nkv);
        let kv = if nkv == nh { String::new() } else { format!(" NKV={nkv}") };
        let shape = format!("T={t} C={c} NH={nh}{kv} hs={} pos={pos}", c / nh);
        all.push(case("attention_decode", shape, move |s| {
            let out = s.normal(c, 1.0, 0.0)?;
            let qkv = s.normal(t * w, 1.0, 0.0)?;
            let row = s.ids_with(vec![pos as u32])?;
            Ok(Built {
                ops: vec![Op::AttentionDecode { out, qkv, row, t, c, nh, nkv }],
                checked: vec![("out", out)],
            })
        }));
    }
    for (i, (b, t, c, nh, nkv, with_dropout)) in FLASH_ATTENTION.into_iter().enumerate() {
        let w = crate::backend::qkv_width(c, nh, nkv);
        let drops: &[Option<f32>] = if with_dropout { &[None, Some(0.25)] } else { &[None] };
        for &drop in drops {
            let shape = format!(
                "B={b} T={t} C={c} NH={nh}{} hs={}{}",
                if nkv == nh { String::new() } else { format!(" NKV={nkv}") },
                c / nh,
                drop.map_or(String::new(), |p| format!(" dropout={p}"))
            );
            let (stream, seed_data) = (11 + i as u32, 0xf1a5_0000 + i as u32);
            // `probs` is unused by the fused kernels; a one-element view stands in for it.
            let dropout = move |s: &mut Setup| -> Result<Option<AttnDropout>> {
                Ok(match drop {
                    Some(p) => {
                        let probs = s.normal(1, 1.0, 0.0)?;
                        Some(AttnDropout { probs, seed: s.ids_with(vec![seed_data])?, p, stream })
                    }
                    None => None,
                })
            };
            all.push(case("flash_attention_forward", shape.clone(), move |s| {
                let out = s.normal(b * t * c, 1.0, 0.0)?;
                let lse = s.normal(b * nh * t, 1.0, 0.0)?;
                let qkv = s.normal(b * t * w, 1.0, 0.0)?;
                let dropout = dropout(s)?;
                Ok(Built {
                    ops: vec![Op::FlashAttentionForward { out, lse, qkv, b, t, c, nh, nkv, dropout }],
                    checked: vec![("out", out), ("lse", lse)],
                })
            }));
            all.push(case("flash_attention_backward", shape, move |s| {
                // Small, so that the check measures the gradient rather than what it is added to.
                let dqkv = s.normal(b * t * w, 0.01, 0.0)?;
                let dsum = s.normal(b * nh * t, 1.0, 0.0)?;
                let dout = s.normal(b * t * c, 1.0, 0.0)?;
                let q: Vec<f32> = (0..b * t * w).map(|_| s.rng().normal() as f32).collect();
                // out and lse must be what the forward pass leaves for these q, k, v.
                let (mut o, mut l) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
                let mask = drop.map(|p| cpu::Mask { seed: seed_data, p, stream });
                cpu::flash_attention_forward(&mut o, &mut l, &q, b, t, c, nh, nkv, mask);
                let (qkv, out, lse) = (s.with(q)?, s.with(o)?, s.with(l)?);
                let dropout = dropout(s)?;
                Ok(Built {
                    ops: vec![Op::FlashAttentionBackward {
                        dqkv,
                        dsum,
                        dout,
                        qkv,
                        out,
                        lse,
                        b,
                        t,
                        c,
                        nh,
                        nkv,
                        dropout,
                    }],
                    checked: vec![("dqkv", dqkv), ("dsum", dsum)],
                })
            }));
        }
    }
    for (i, n) in ELEMENTWISE.into_iter().enumerate() {
        let p = [0.5, 0.1, 0.2, 0.9, 0.3][i];
        let (shape, stream) = (format!("n={n} p={p}"), 7 * i as u32);
        all.push(case("dropout_forward", shape.clone(), move |s| {
            let out = s.normal(n, 1.0, 0.0)?;
            let inp = s.normal(n, 1.0, 0.0)?;
            let seed = s.ids(1, u32::MAX)?;
            Ok(Built {
                ops: vec![Op::DropoutForward { out, inp, seed, n, p, stream }],
                checked: vec![("out", out)],
            })
        }));
        all.push(case("dropout_backward", shape, move |s| {
            let dinp = s.normal(n, 1.0, 0.0)?;
            let dout = s.normal(n, 1.0, 0.0)?;
            let seed = s.ids(1, u32::MAX)?;
            Ok(Built {
                ops: vec![Op::DropoutBackward { dinp, dout, seed, n, p, stream }],
                checked: vec![("dinp", dinp)],
            })
        }));
    }
    // The conversions are exact or correctly rounded, so the twin and the kernel must agree to the
    // bit; the tolerance still applies (special values are checked bit for bit in tests/mixed.rs).
    for n in ELEMENTWISE {
        for format in [HalfFormat::Bf16, HalfFormat::F16] {
            // Packed words of finite values (f16's range), so that an untouched half widens finitely.
            let halves = move |s: &mut Setup, len: usize| -> Result<View> {
                let bits: Vec<u16> =
                    (0..len).map(|_| cpu::to_half_bits((s.rng().normal() * 50.0) as f32, format)).collect();
                let words = bits.chunks(2).map(|p| p[0] as u32 | (*p.get(1).unwrap_or(&0) as u32) << 16);
                s.ids_with(words.collect())
            };
            // round_half runs one invocation per word: past 65,535 workgroups only beyond 2 · 64 ·
            // 65,535 elements, so its largest case is twice the others'.
            let round_n = if n == ELEMENTWISE[4] { 2 * n } else { n };
            for first in [0, 1] {
                let shape = format!("n={n} first={first} {}", format.name());
                all.push(case(
                    "round_half",
                    format!("n={round_n} first={first} {}", format.name()),
                    move |s| {
                        let n = round_n;
                        let packed = halves(s, first + n + 1)?;
                        let inp = s.normal(n, 30.0, 0.0)?;
                        let back = s.normal(first + n + 1, 1.0, 0.0)?;
                        let words = packed.slice(0, (first + n).div_ceil(2));
                        Ok(Built {
                            ops: vec![
                                Op::Round { out: words, inp, first, n, format },
                                // The packed result (and the halves around it, which must keep their
                                // bits), read back through the exact widening.
                                Op::Widen { out: back, inp: packed, first: 0, n: first + n + 1, format },
                            ],
                            checked: vec![("halves", back)],
                        })
                    },
                ));
                all.push(case("widen_half", shape, move |s| {
                    let packed = halves(s, first + n)?;
                    let out = s.normal(n, 1.0, 0.0)?;
                    Ok(Built {
                        ops: vec![Op::Widen { out, inp: packed, first, n, format }],
                        checked: vec![("out", out)],
                    })
                }));
            }
            all.push(case("quantize_half", format!("n={n} {}", format.name()), move |s| {
                let inp = s.normal(n, 30.0, 0.0)?;
                let out = s.normal(n, 1.0, 0.0)?;
                Ok(Built { ops: vec![Op::Quantize { out, inp, n, format }], checked: vec![("out", out)] })
            }));
            all.push(case("quantize_half", format!("n={n} {} in place", format.name()), move |s| {
                let x = s.normal(n, 30.0, 0.0)?;
                Ok(Built { ops: vec![Op::Quantize { out: x, inp: x, n, format }], checked: vec![("x", x)] })
            }));
        }
    }
    for n in ELEMENTWISE {
        let shape = format!("n={n}");
        all.push(case("gelu_forward", shape.clone(), move |s| {
            let out = s.normal(n, 1.0, 0.0)?;
            let inp = s.normal(n, 3.0, 0.0)?;
            Ok(Built { ops: vec![Op::GeluForward { out, inp, n }], checked: vec![("out", out)] })
        }));
        all.push(case("gelu_backward", shape.clone(), move |s| {
            let dinp = s.normal(n, 1.0, 0.0)?;
            let inp = s.normal(n, 3.0, 0.0)?;
            let dout = s.normal(n, 1.0, 0.0)?;
            Ok(Built { ops: vec![Op::GeluBackward { dinp, inp, dout, n }], checked: vec![("dinp", dinp)] })
        }));
        all.push(case("residual_forward", shape.clone(), move |s| {
            let out = s.normal(n, 1.0, 0.0)?;
            let inp1 = s.normal(n, 1.0, 0.0)?;
            let inp2 = s.normal(n, 1.0, 0.0)?;
            Ok(Built { ops: vec![Op::ResidualForward { out, inp1, inp2, n }], checked: vec![("out", out)] })
        }));
        all.push(case("residual_backward", shape, move |s| {
            let dinp1 = s.normal(n, 1.0, 0.0)?;
            let dinp2 = s.normal(n, 1.0, 0.0)?;
            let dout = s.normal(n, 1.0, 0.0)?;
            Ok(Built {
                ops: vec![Op::ResidualBackward { dinp1, dinp2, dout, n }],
                checked: vec![("dinp1", dinp1), ("dinp2", dinp2)],
            })
        }));
    }
    for (n, v) in CROSSENTROPY {
        let shape = format!("N={n} V={v}");
        all.push(case("crossentropy_forward", shape.clone(), move |s| {
            let losses = s.normal(n, 1.0, 0.0)?;
            let lse = s.normal(n, 1.0, 0.0)?;
            let logits = s.normal(n * v, 3.0, 1.0)?;
            let targets = s.ids(n, v as u32)?;
            Ok(Built {
                ops: vec![Op::CrossentropyForward { losses, lse, logits, targets, n, v }],
                checked: vec![("losses", losses), ("lse", lse)],
            })
        }));
        for in_place in [false, true] {
            let shape = if in_place { format!("{shape} in place") } else { shape.clone() };
            all.push(case("crossentropy_backward", shape, move |s| {
                let dlogits = s.normal(n * v, 1.0, 0.0)?;
                let l: Vec<f32> = (0..n * v).map(|_| (s.rng().normal() * 3.0 + 1.0) as f32).collect();
                let tgt: Vec<u32> = (0..n).map(|_| s.rng().below(v as u64) as u32).collect();
                let (mut losses, mut lse) = (vec![0f32; n], vec![0f32; n]);
                cpu::crossentropy_forward(&mut losses, &mut lse, &l, &tgt, n, v);
                // In place, the gradient is written over the logits (the model's use).
                let (logits, dlogits) = if in_place {
                    let logits = s.with(l)?;
                    (logits, logits)
                } else {
                    (s.with(l)?, dlogits)
                };
                let lse = s.with(lse)?;
                let targets = s.ids_with(tgt)?;
                let scale = 1.0 / n as f32;
                let grad_scale = s.with(vec![0.75])?;
                Ok(Built {
                    ops: vec![Op::CrossentropyBackward {
                        dlogits,
                        logits,
                        lse,
                        targets,
                        grad_scale,
                        n,
                        v,
                        scale,
                    }],
                    checked: vec![("dlogits", dlogits)],
                })
            }));
        }
    }
    for n in [1, 7, 37, 129, 10_007] {
        all.push(case("reduce_sum", format!("n={n}"), move |s| {
            let out = s.normal(1, 1.0, 0.0)?;
            let inp = s.normal(n, 1.0, 0.5)?;
            let scale = 1.0 / n as f32;
            Ok(Built { ops: vec![Op::ReduceSum { out, inp, n, scale }], checked: vec![("out", out)] })
        }));
    }
    for n in [1, 7, 37, 129, 1_000_003] {
        all.push(case("global_norm", format!("n={n}"), move |s| {
            let out = s.normal(1, 1.0, 0.0)?;
            let inp = s.normal(n, 1.0, 0.0)?;
            Ok(Built { ops: vec![Op::GlobalNorm { out, inp, n }], checked: vec![("out", out)] })
        }));
    }
    for (i, n) in ELEMENTWISE.into_iter().enumerate() {
        // Vary clipping, decay and the step; the last case has a NaN norm and must change nothing.
        let (clip, wd, nan) =
            [(0.0, 0.0, false), (1.0, 0.1, false), (0.5, 0.1, false), (0.0, 0.1, false), (1.0, 0.1, true)][i];
        let shape = format!("n={n} clip={clip} wd={wd}{}", if nan { " norm=NaN" } else { "" });
        all.push(case("adamw_update", shape, move |s| {
            let params = s.normal(n, 1.0, 0.0)?;
            let m = s.normal(n, 0.01, 0.0)?;
            let vdata: Vec<f32> = (0..n).map(|_| (s.rng().normal() * 1e-3).powi(2) as f32).collect();
            let v = s.with(vdata)?;
            let grads = s.normal(n, 0.1, 0.0)?;
            let t = 1 + s.rng().below(100);
            let hyper = AdamwHyper::at_step(3e-3, 0.9, 0.95, 1e-8, clip, t);
            let hyper = s.with(hyper.to_words().to_vec())?;
            let norm = s.with(vec![if nan { f32::NAN } else { 2.5 }])?;
            Ok(Built {
                ops: vec![Op::AdamwUpdate { params, grads, m, v, hyper, norm, n, weight_decay: wd }],
                checked: vec![("params", params), ("m", m), ("v", v)],
            })
        }));
    }
    // f16 loss scaling: gradients and norm arrive multiplied by the scale and are unscaled first; a
    // scale below 1 can make a finite norm infinite once unscaled, which must skip the update.
    for (unscale, norm) in [(2f32.powi(-16), 2.5 * 65536.0), (16384.0, 3e38)] {
        let n = 129;
        let shape = format!("n={n} clip=1 unscale={unscale} norm={norm:e}");
        all.push(case("adamw_update", shape, move |s| {
            let params = s.normal(n, 1.0, 0.0)?;
            let m = s.normal(n, 0.01, 0.0)?;
            let vdata: Vec<f32> = (0..n).map(|_| (s.rng().normal() * 1e-3).powi(2) as f32).collect();
            let v = s.with(vdata)?;
            let grads = s.normal(n, 0.1 / unscale as f64, 0.0)?;
            let hyper =
                AdamwHyper { grad_unscale: unscale, ..AdamwHyper::at_step(3e-3, 0.9, 0.95, 1e-8, 1.0, 7) };
            let hyper = s.with(hyper.to_words().to_vec())?;
            let norm = s.with(vec![norm])?;
            Ok(Built {
                ops: vec![Op::AdamwUpdate { params, grads, m, v, hyper, norm, n, weight_decay: 0.1 }],
                checked: vec![("params", params), ("m", m), ("v", v)],
            })
        }));
    }
    all
}

/// Whether `kernel` runs on the matmul variant chosen (and so is checked once per variant).
pub fn uses_matmul_variants(kernel: &str) -> bool {
    matches!(kernel, "matmul" | "matmul_forward" | "matmul_backward")
}

/// Whether `kernel` has a kernel of each family (`kernels::FAMILIES`): the fused attention and the
/// row norms' forward and backward.
pub fn uses_families(kernel: &str) -> bool {
    kernel.starts_with("flash_attention") || kernel.starts_with("layernorm") || kernel.starts_with("rmsnorm")
}

/// The variants `kernel` is checked under: every matmul variant for the matmul kernels, both kernel
/// families for the fused attention and norm ones, the one kernel ("") elsewhere
/// (`GpuBackend::set_variant` pins each).
pub fn variants(kernel: &str) -> &'static [&'static str] {
    if uses_matmul_variants(kernel) {
        crate::gpu::kernels::MATMUL_VARIANTS
    } else if uses_families(kernel) {
        &crate::gpu::kernels::FAMILIES
    } else {
        &[""]
    }
}

/// The kernels with cases, in schedule order.
pub fn kernel_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for c in cases() {
        if !names.contains(&c.kernel) {
            names.push(c.kernel);
        }
    }
    names
}

/// Runs every case of `kernel` on fresh backends from `make`; returns the outcomes.
pub fn check_kernel(kernel: &str, make: &mut dyn FnMut() -> Result<Box<dyn Backend>>) -> Vec<Outcome> {
    cases()
        .iter()
        .filter(|c| c.kernel == kernel)
        .map(|c| match make() {
            Ok(mut backend) => run_case(c, backend.as_mut()),
            Err(e) => failed_outcome(c, e.to_string()),
        })
        .collect()
}

/// How many cases of each kernel a quick check runs: the smallest ones, which cover the awkward sizes
/// (1, 7, 37, ...) but not the grids past one dispatch row or the long sequences.
pub const QUICK_CASES: usize = 3;

/// One kernel (with one matmul variant, where it runs on them) checked on an adapter.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub kernel: String,
    /// The matmul variant, or "" for a kernel that has none.
    #[serde(default)]
    pub variant: String,
    pub cases: usize,
    /// The worst relative L2 error over the cases (NaN, written as null, when a case could not run).
    #[serde(default, with = "crate::report::nan_as_null")]
    pub worst: f64,
    /// One line per failed case ([`Outcome::line`]); empty when the kernel passed.
    #[serde(default)]
    pub failures: Vec<String>,
    /// Why the kernel was not run (an optional feature the adapter lacks).
    #[serde(default)]
    pub skipped: Option<String>,
}

impl Row {
    /// "kernel" or "kernel [variant]".
    pub fn name(&self) -> String {
        if self.variant.is_empty() {
            self.kernel.clone()
        } else {
            format!("{} [{}]", self.kernel, self.variant)
        }
    }

    pub fn passed(&self) -> bool {
        self.skipped.is_none() && self.failures.is_empty()
    }

    /// PASS, FAIL (n of m) or SKIP (why).
    pub fn verdict(&self) -> String {
        match &self.skipped {
            Some(why) => format!("SKIP ({why})"),
            None if self.failures.is_empty() => "PASS".into(),
            None => format!("FAIL ({} of {})", self.failures.len(), self.cases),
        }
    }
}

/// Checks every kernel (each matmul kernel once per variant) on the adapter of `ctx` against its CPU
/// twin; `only` limits it to one kernel, `quick` to the [`QUICK_CASES`] smallest cases of each.
/// `row_done` sees each row as it finishes (for a live table).
pub fn check_adapter(
    ctx: &std::sync::Arc<crate::gpu::GpuContext>,
    only: Option<&str>,
    quick: bool,
    row_done: &mut dyn FnMut(&Row),
) -> Result<(Vec<Row>, Vec<Outcome>)> {
    let names = kernel_names();
    if let Some(k) = only {
        if !names.contains(&k) {
            return Err(crate::Error::Invalid(format!(
                "--kernel {k}: no such kernel; the kernels are {}",
                names.join(", ")
            )));
        }
    }
    let all = cases();
    let chosen_cases = |kernel: &str| -> Vec<&Case> {
        let of_kernel: Vec<&Case> = all.iter().filter(|c| c.kernel == kernel).collect();
        let n = if quick { of_kernel.len().min(QUICK_CASES) } else { of_kernel.len() };
        of_kernel[..n].to_vec()
    };
    let kernels: Vec<&'static str> = names.into_iter().filter(|n| only.is_none_or(|k| k == *n)).collect();
    // Every pipeline the checks will run, compiled first on every core (on lavapipe; elsewhere
    // pipelines compile when they are built). A kernel that fails here fails in its own row below.
    let mut calls = Vec::new();
    for &kernel in kernels.iter().filter(|_| ctx.compiles_lazily_with_a_disk_cache()) {
        for variant in variants(kernel).iter().filter(|v| ctx.kernel_unavailable(kernel, v).is_none()) {
            let mut gpu = crate::gpu::GpuBackend::with_context(ctx.clone());
            if gpu.set_variant(kernel, variant).is_err() {
                continue;
            }
            for case in chosen_cases(kernel) {
                let mut cpu = crate::cpu::CpuBackend::new();
                if let Ok(ops) = case_ops(case, &mut cpu) {
                    calls.extend(gpu.planned_calls(&ops));
                }
            }
        }
    }
    if let Err(e) = ctx.precompile(&calls) {
        log::warn!("precompiling the checks: {e}");
    }
    let (mut rows, mut failures) = (Vec::new(), Vec::new());
    for kernel in kernels {
        let chosen = chosen_cases(kernel);
        for variant in variants(kernel) {
            let mut row = Row {
                kernel: kernel.to_string(),
                variant: variant.to_string(),
                cases: chosen.len(),
                worst: 0.0,
                failures: Vec::new(),
                skipped: ctx.kernel_unavailable(kernel, variant),
            };
            if row.skipped.is_none() {
                for case in &chosen {
                    let mut gpu = crate::gpu::GpuBackend::with_context(ctx.clone());
                    let chosen = gpu.set_variant(kernel, variant);
                    let outcome = match chosen {
                        Ok(()) => run_case(case, &mut gpu),
                        Err(e) => failed_outcome(case, e.to_string()),
                    };
                    // NaN is the worst of all and stays.
                    if !row.worst.is_nan() && (outcome.worst.is_nan() || outcome.worst > row.worst) {
                        row.worst = outcome.worst;
                    }
                    if !outcome.passed() {
                        row.failures.push(outcome.line());
                        failures.push(outcome);
                    }
                }
            }
            row_done(&row);
            rows.push(row);
        }
    }
    Ok((rows, failures))
}

fn failed_outcome(c: &Case, error: String) -> Outcome {
    Outcome {
        kernel: c.kernel,
        shape: c.shape.clone(),
        worst: f64::NAN,
        worst_output: "",
        tolerance: c.tolerance,
        worst_element: f64::NAN,
        deterministic: false,
        error: Some(error),
    }
}

#[cfg(test)]
mod element_tests {
    use super::*;

    /// Issue 16, item 4: one element off by 1% of the tensor's scale in a 4M-element output stays
    /// under the relative-L2 tolerance, and the element check catches it.
    #[test]
    fn one_wrong_element_among_millions_fails() {
        let want: Vec<f32> = (0..4_000_000).map(|i| ((i % 1001) as f32 - 500.0) / 500.0).collect();
        let mut got = want.clone();
        got[1_234_567] += 0.01;
        assert!(
            rel_l2(&got, &want) <= TOLERANCE,
            "the L2 check alone would catch it: {}",
            rel_l2(&got, &want)
        );
        assert!(max_element_error(&got, &want) > ELEMENT_TOLERANCE);
        assert!(max_element_error(&want, &want) == 0.0);
    }
}
