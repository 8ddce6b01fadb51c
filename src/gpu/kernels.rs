//! The WGSL sources and the mapping from each `Op` to the dispatches that run it.
//!
//! This file is the binding contract in code: for every entry point, which buffers go to bindings
//! 1, 2, ... (binding 0 is always the uniform params), which words the params hold, and the grid.
//! docs/KERNELS.md describes the same contract for people writing drop-in kernels.

use crate::backend::{dropout_scale, dropout_threshold, Op, View, WeightLayout};

/// Every shader file, compiled into the binary.
pub const SHADERS: &[(&str, &str)] = &[
    ("attention.wgsl", include_str!("../../shaders/attention.wgsl")),
    ("crossentropy.wgsl", include_str!("../../shaders/crossentropy.wgsl")),
    ("elementwise.wgsl", include_str!("../../shaders/elementwise.wgsl")),
    ("decode.wgsl", include_str!("../../shaders/decode.wgsl")),
    ("dropout.wgsl", include_str!("../../shaders/dropout.wgsl")),
    ("encoder.wgsl", include_str!("../../shaders/encoder.wgsl")),
    ("half.wgsl", include_str!("../../shaders/half.wgsl")),
    ("flash_attention.wgsl", include_str!("../../shaders/flash_attention.wgsl")),
    ("layernorm.wgsl", include_str!("../../shaders/layernorm.wgsl")),
    ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl")),
    ("matmul_rows.wgsl", include_str!("../../shaders/matmul_rows.wgsl")),
    ("matmul_rows4.wgsl", include_str!("../../shaders/matmul_rows4.wgsl")),
    ("matmul_subgroup.wgsl", include_str!("../../shaders/matmul_subgroup.wgsl")),
    ("matmul_tiled.wgsl", include_str!("../../shaders/matmul_tiled.wgsl")),
    ("matmul_gemv.wgsl", include_str!("../../shaders/matmul_gemv.wgsl")),
    ("matmul_vec4.wgsl", include_str!("../../shaders/matmul_vec4.wgsl")),
    ("adamw.wgsl", include_str!("../../shaders/adamw.wgsl")),
    ("reduce.wgsl", include_str!("../../shaders/reduce.wgsl")),
    ("rmsnorm.wgsl", include_str!("../../shaders/rmsnorm.wgsl")),
    ("rope.wgsl", include_str!("../../shaders/rope.wgsl")),
];

/// Files compiled without wgpu's runtime bounds checks. Each index they compute is clamped into range
/// or guarded in the source, and the kernel tests prove it at edge shapes. The checks matter on
/// lavapipe: a checked load is never recognised as uniform across lanes, which costs the `matmul_rows`
/// kernels and the "rows" flash kernels about 4x; and with them Mesa no longer unrolls the rows kernels'
/// register loops, whose trip counts the loop budget assumes (`flash_rows_iterations_per_tile`):
/// checked, they loop past lavapipe's limit at T 1024 and the `verify` cases there fail.
pub const TRUSTED: &[&str] = &["matmul_rows.wgsl", "matmul_rows4.wgsl", "flash_attention.wgsl"];

/// The source of one of [`SHADERS`].
pub fn shader_source(file: &str) -> &'static str {
    SHADERS
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, src)| *src)
        .unwrap_or_else(|| panic!("{file} is not listed in kernels::SHADERS"))
}

/// Parses and validates WGSL with naga, turning the first error into `path:line:column: message`.
pub fn validate_wgsl(path: &str, source: &str) -> crate::Result<naga::Module> {
    let located = |message: String, loc: Option<naga::SourceLocation>| {
        let (line, column) = loc.map_or((0, 0), |l| (l.line_number as usize, l.line_position as usize));
        crate::Error::Shader { path: path.to_string(), line, column, message }
    };
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| located(e.message().to_string(), e.location(source)))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| {
            let loc = e.spans().next().map(|(span, _)| span.location(source));
            located(e.emit_to_string(source).trim().to_string(), loc)
        })?;
    Ok(module)
}

/// The file each entry point lives in.
pub fn shader_file(entry: &str) -> &'static str {
    match entry {
        "zero" | "gelu_forward" | "gelu_backward" | "residual_forward" | "residual_backward"
        | "swiglu_forward" | "swiglu_backward" => "elementwise.wgsl",
        "encoder_forward" | "encoder_backward_wte" | "encoder_backward_wpe" => "encoder.wgsl",
        "layernorm_forward"
        | "layernorm_backward"
        | "layernorm_backward_params_partial"
        | "layernorm_rows_forward"
        | "layernorm_rows_backward" => "layernorm.wgsl",
        "rmsnorm_forward"
        | "rmsnorm_backward"
        | "rmsnorm_backward_weight_partial"
        | "rmsnorm_rows_forward"
        | "rmsnorm_rows_backward" => "rmsnorm.wgsl",
        "rope_forward" | "rope_backward" => "rope.wgsl",
        "gather_row" | "scatter_row" | "attention_decode" => "decode.wgsl",
        "matmul" | "matmul_backward_bias_partial" => "matmul.wgsl",
        "matmul_vec4_rows" | "matmul_vec4_dot" => "matmul_vec4.wgsl",
        "matmul_rows" => "matmul_rows.wgsl",
        "matmul_rows4" => "matmul_rows4.wgsl",
        "matmul_subgroup" => "matmul_subgroup.wgsl",
        "matmul_tiled" => "matmul_tiled.wgsl",
        "matmul_gemv_nn" | "matmul_gemv_nt" => "matmul_gemv.wgsl",
        "attention_scores"
        | "attention_softmax"
        | "attention_values"
        | "attention_backward_probs"
        | "attention_backward_softmax"
        | "attention_backward_q"
        | "attention_backward_kv" => "attention.wgsl",
        "flash_attention_forward"
        | "flash_attention_backward_dsum"
        | "flash_attention_backward_kv"
        | "flash_attention_backward_q"
        | "flash_rows_forward"
        | "flash_rows_backward_kv"
        | "flash_rows_backward_q" => "flash_attention.wgsl",
        "crossentropy_forward" | "crossentropy_backward" | "crossentropy_backward_inplace" => {
            "crossentropy.wgsl"
        }
        "dropout_forward" | "dropout_backward" | "dropout_mask_inplace" => "dropout.wgsl",
        "reduce_sum" | "global_norm_partial" | "global_norm_final" | "colsum_final" => "reduce.wgsl",
        "adamw_update" => "adamw.wgsl",
        "round_half" | "widen_half" | "quantize_half" | "quantize_half_inplace" => "half.wgsl",
        other => panic!("no shader file holds the entry point {other}"),
    }
}

/// Workgroups per grid dimension that every adapter accepts; larger 1-D grids fold into y.
pub const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// The most loop iterations a kernel may run in one invocation, all loops together. lavapipe (Mesa's
/// gallivm) silently ends an invocation's loops after 65,535 iterations in total, so long serial work
/// is split there: matmul sums K in chunks of this size, one dispatch each ([`k_chunk`]).
pub const MATMUL_K_CHUNK: usize = 16_384;

/// Rows per block in the first stage of a column sum (bias, LayerNorm and RMSNorm parameter gradients);
/// must equal the 256 of the `*_partial` kernels.
pub const ROW_BLOCK: usize = 256;

/// Partial sums per chunk in the first stage of `global_norm`; must equal PARTIALS in reduce.wgsl.
/// Fixed, so the order of summation (and so the bits of the result) does not depend on the adapter.
pub const NORM_PARTIALS: usize = 256;

/// The matmul kernel variants, by name. `blocked4x4` (matmul.wgsl) handles every shape; the others
/// handle the shapes their header comment names and fall back to it elsewhere.
pub const MATMUL_VARIANTS: &[&str] =
    &["blocked4x4", "vec4", "tiled64", "tiled128", "rows16x32", "rows32x16k4", "subgroup", "gemv"];

/// The variants made for GPUs, which the autotuner does not time on a CPU adapter (lavapipe, llvmpipe
/// GL): there they stage through workgroup memory between barriers, which a CPU runs as loop splits,
/// and run at a sixth of `rows16x32`'s rate (docs/BENCHMARKS.md), so compiling them to time them
/// only delays the first step. They stay available when pinned, and every test runs them.
pub const GPU_ONLY_VARIANTS: &[&str] = &["tiled64", "tiled128", "subgroup"];

/// Whether the autotuner can skip timing `variant` at shape (M, K, N, trans_a, trans_b) on an adapter of
/// `device_type`, because another candidate covers it: on a CPU adapter, `rows16x32` where
/// `rows32x16k4` runs it itself (a's rows not whole vec4s) or where M fills `rows32x16k4`'s 256-row
/// tile (there `rows32x16k4` beat it on every shape of configs A and B, docs/BENCHMARKS.md). Where M
/// is smaller, `rows16x32`'s 128-row tile can win, and it is timed. Skipping it saves its 12-45 s
/// compile on a first run whose shapes are all large; pinned, it still runs, and every test runs it.
pub fn superseded(
    variant: &str,
    device_type: wgpu::DeviceType,
    (m, k, _, trans_a, _): (usize, usize, usize, bool, bool),
) -> bool {
    device_type == wgpu::DeviceType::Cpu
        && variant == "rows16x32"
        && (!rows4_applies(m, k, trans_a) || m >= ROWS4_TILE.0)
}

/// Whether `rows32x16k4` runs its own kernel (matmul_rows4.wgsl) at this shape: a's stored rows are
/// whole vec4s (K % 4 = 0 with a stored (M,K), M % 4 = 0 with a stored (K,M)); elsewhere it runs
/// rows16x32.
fn rows4_applies(m: usize, k: usize, trans_a: bool) -> bool {
    if trans_a {
        m % 4 == 0
    } else {
        k % 4 == 0
    }
}

/// The most rows of `a` the matrix-vector variant ("gemv") takes; above, it runs the blocked kernel.
pub const GEMV_ROWS: usize = 8;

/// The wgpu feature a matmul variant (or the f16-storage kernel, [`F16_SOURCE`]) needs beyond core
/// WebGPU, if any.
pub fn variant_feature(variant: &str) -> Option<(wgpu::Features, &'static str)> {
    match variant {
        "subgroup" => Some((wgpu::Features::SUBGROUP, "subgroups")),
        F16_SOURCE => Some((wgpu::Features::SHADER_F16, "shader-f16")),
        _ => None,
    }
}

/// The source variant of matmul_rows.wgsl that reads a and b as f16 (`Op::Matmul` with `half`).
pub const F16_SOURCE: &str = "f16";

/// The output tile of one workgroup of `rows32x16k4` (matmul_rows4.wgsl): 8 invocations of R = 32
/// rows, 4·C4 = 16 columns.
const ROWS4_TILE: (usize, usize) = (256, 16);

/// The tile of a `rows` variant: (rows per invocation R, columns per workgroup 4·C4).
fn rows_tile(variant: &str) -> Option<(usize, usize)> {
    match variant {
        "rows16x32" => Some((16, 8)),
        _ => None,
    }
}

/// The tile of a `tiled` source variant: (output tile edge, depth of a K slice, loads as vec4).
fn tiled_tile(source: &str) -> Option<(u32, u32, bool)> {
    match source {
        "tiled64" => Some((64, 16, false)),
        "tiled64.vec4" => Some((64, 16, true)),
        "tiled128" => Some((128, 8, false)),
        "tiled128.vec4" => Some((128, 8, true)),
        _ => None,
    }
}

/// The WGSL source of a shader, with a `rows` or `tiled` variant's tile written into its `const` lines
/// (and, for a `tiled` variant that loads vec4s, its `//vec4 ` lines in place of its `// scalar` ones).
pub fn variant_source(file: &str, variant: &str) -> std::borrow::Cow<'static, str> {
    let source = shader_source(file);
    if let (Some((tile, kt, vec4)), "matmul_tiled.wgsl") = (tiled_tile(variant), file) {
        let lines = source.lines().filter_map(|line| match line.trim_start().strip_prefix("//vec4 ") {
            Some(code) => vec4.then_some(code),
            None if line.ends_with("// scalar") => (!vec4).then_some(line),
            None => Some(line),
        });
        let text = lines.collect::<Vec<_>>().join("\n");
        return text
            .replace("const TILE: u32 = 64u;", &format!("const TILE: u32 = {tile}u;"))
            .replace("const KT: u32 = 16u;", &format!("const KT: u32 = {kt}u;"))
            .replace("const TV: u32 = 16u;", &format!("const TV: u32 = {}u;", tile / 4))
            .replace("const V: u32 = 1u;", &format!("const V: u32 = {}u;", tile / 64))
            .into();
    }
    if file == "matmul_rows.wgsl" && variant == F16_SOURCE {
        return format!("enable f16;\n{}", source.replace("alias Elem = f32;", "alias Elem = f16;")).into();
    }
    match rows_tile(variant) {
        Some((r, c4)) if file == "matmul_rows.wgsl" => source
            .replace("const R: u32 = 16u;", &format!("const R: u32 = {r}u;"))
            .replace("const C4: u32 = 8u;", &format!("const C4: u32 = {c4}u;"))
            .into(),
        _ => source.into(),
    }
}

/// A matmul kernel loaded at run time (`wgslm bench kernels --shader FILE.wgsl`). It honours the
/// binding contract of matmul.wgsl, declares `const TILE_M: u32` and `const TILE_N: u32` (the output
/// tile of one workgroup, which sets the grid), and may declare the TRANS_A / TRANS_B overrides; without
/// them it runs only the layout with neither operand transposed.
#[derive(Clone, Debug)]
pub struct CustomMatmul {
    pub name: String,
    pub source: String,
    pub entry: &'static str,
    pub tile_m: u32,
    pub tile_n: u32,
    pub transposes: bool,
    /// Compiled without wgpu's runtime bounds checks, as ours in [`TRUSTED`] are (`bench kernels
    /// --unchecked`): its author vouches that every index stays in range.
    pub unchecked: bool,
}

impl CustomMatmul {
    /// Validates `source` and reads its entry point, tile and overrides.
    pub fn parse(name: &str, source: String) -> crate::Result<Self> {
        let module = validate_wgsl(name, &source)?;
        let bad = |what: String| {
            crate::Error::Invalid(format!("{name}: {what} (see docs/KERNELS.md, \"Drop-in kernels\")"))
        };
        let computes: Vec<&str> = module
            .entry_points
            .iter()
            .filter(|e| e.stage == naga::ShaderStage::Compute)
            .map(|e| e.name.as_str())
            .collect();
        let entry = match computes.as_slice() {
            [one] => *one,
            many if many.contains(&"matmul") => "matmul",
            _ => return Err(bad("needs one compute entry point, or one named `matmul`".into())),
        };
        let constant = |wanted: &str| -> crate::Result<u32> {
            let (_, c) = module
                .constants
                .iter()
                .find(|(_, c)| c.name.as_deref() == Some(wanted))
                .ok_or_else(|| bad(format!("no `const {wanted}: u32`")))?;
            match module.global_expressions[c.init] {
                naga::Expression::Literal(naga::Literal::U32(v)) if v > 0 => Ok(v),
                naga::Expression::Literal(naga::Literal::I32(v)) if v > 0 => Ok(v as u32),
                naga::Expression::Literal(naga::Literal::AbstractInt(v)) if v > 0 && v <= u32::MAX as i64 => {
                    Ok(v as u32)
                }
                _ => Err(bad(format!("`{wanted}` must be a positive integer literal"))),
            }
        };
        let (tile_m, tile_n) = (constant("TILE_M")?, constant("TILE_N")?);
        let has = |o: &str| module.overrides.iter().any(|(_, ov)| ov.name.as_deref() == Some(o));
        Ok(CustomMatmul {
            name: name.to_string(),
            source,
            entry: Box::leak(entry.to_string().into_boxed_str()),
            tile_m,
            tile_n,
            transposes: has("TRANS_A") && has("TRANS_B"),
            unchecked: false,
        })
    }
}

/// What the op → dispatch mapping needs to know beyond the op.
#[derive(Clone, Debug)]
pub struct Env {
    /// The variant chosen for each shape (by the autotuner); shapes not listed use `matmul`.
    pub choices: std::sync::Arc<std::collections::BTreeMap<super::tune::GemmShape, &'static str>>,
    /// A kernel loaded at run time, used where the variant is "custom".
    pub custom: Option<std::sync::Arc<CustomMatmul>>,
    /// The matmul variant to use where it applies (one of [`MATMUL_VARIANTS`]).
    pub matmul: &'static str,
    /// Lanes per lane group of the subgroup variant: the adapter's smallest subgroup, within 4..=64.
    pub subgroup_lanes: u32,
    /// A 1-element f32 view for bindings an entry declares but a call does not use.
    pub dummy: View,
    /// GPU-only scratch of at least [`scratch_len`] elements.
    pub scratch: View,
    /// The most elements one storage binding may hold (a multiple of 64). Whole-buffer ops (zero,
    /// global norm, AdamW) are split into chunks of this size.
    pub max_binding: usize,
    /// The longest stretch of K one matmul dispatch sums: [`MATMUL_K_CHUNK`] on an adapter that limits
    /// an invocation's loop iterations ([`k_chunk`]), unbounded elsewhere.
    pub k_chunk: usize,
    /// The kernel family of the fused attention and row-norm ops (one of [`FAMILIES`]).
    pub family: &'static str,
}

/// The `k_chunk` of [`Env`]: only an adapter that stops long loops (lavapipe's and llvmpipe GL's
/// gallivm, both `DeviceType::Cpu`) has its matmuls split along K; every other adapter sums K in one
/// dispatch.
pub fn k_chunk(device_type: wgpu::DeviceType) -> usize {
    if device_type == wgpu::DeviceType::Cpu {
        MATMUL_K_CHUNK
    } else {
        usize::MAX
    }
}

/// `[offset, len)` pieces of `n` elements, each at most `max` long.
fn chunks(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n.div_ceil(max).max(1)).map(move |i| (i * max, max.min(n - (i * max).min(n))))
}

/// One dispatch: an entry point (plus override constants), its buffers in binding order, its
/// uniform params and its grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub entry: &'static str,
    /// The source variant of the entry's file ("" for the file as it is; see [`variant_source`]).
    pub source: &'static str,
    pub constants: Vec<(&'static str, f64)>,
    pub views: Vec<View>,
    pub params: Vec<u32>,
    pub groups: [u32; 3],
}

/// A 1-D grid of `groups` workgroups, folded into (x, y) when above the per-dimension limit. Kernels
/// compute the flat workgroup id as `wid.y * nwg.x + wid.x` and ignore ids past the end.
pub fn fold(groups: usize) -> [u32; 3] {
    let max = MAX_GROUPS_PER_DIM as usize;
    if groups <= max {
        [groups.max(1) as u32, 1, 1]
    } else {
        [MAX_GROUPS_PER_DIM, groups.div_ceil(max) as u32, 1]
    }
}

/// Grid for one invocation per item, 64 per workgroup.
fn per_item(items: usize) -> [u32; 3] {
    fold(items.div_ceil(64))
}

/// A shape value as the u32 a kernel's params hold. Every value passed here is at most the length of
/// a view the op binds, and `GpuBackend::prepare` refuses any op with a view past `u32::MAX` elements
/// ([`index_range`]) before it maps the op, so nothing is lost; saturating keeps this panic-free.
fn u(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

/// The kernels index their arrays with u32: the first view of `op` too long for that, as (which view,
/// elements). Every flat index a kernel computes (element, row·stride, grid position) is below the
/// length of a view it binds (`Op::check` ties the lengths to the shapes), so this one check covers the
/// products the kernels form, such as crossentropy's n·v and naive attention's b·nh·t·t.
pub fn index_range(op: &Op) -> Option<(usize, usize)> {
    op.inputs()
        .into_iter()
        .chain(op.outputs())
        .enumerate()
        .map(|(i, (v, want))| (i, v.len.max(want)))
        .find(|&(_, len)| len > u32::MAX as usize)
}

fn f(x: f32) -> u32 {
    x.to_bits()
}

fn call(entry: &'static str, views: Vec<View>, params: Vec<u32>, groups: [u32; 3]) -> Call {
    Call { entry, source: "", constants: Vec::new(), views, params, groups }
}

/// How a matmul variant runs one shape: entry point, source variant, override constants, grid, and the
/// bits it adds to `Params.flags` (the layout, for the `rows` kernels, which read it at run time).
struct MatmulEntry {
    entry: &'static str,
    source: &'static str,
    constants: Vec<(&'static str, f64)>,
    groups: [u32; 3],
    flags: u32,
}

/// How matmul `variant` runs one shape.
fn matmul_entry(
    variant: &'static str,
    custom: Option<&CustomMatmul>,
    subgroup_lanes: u32,
    (m, k, n): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
) -> MatmulEntry {
    let flag = |b: bool| b as u8 as f64;
    let both = vec![("TRANS_A", flag(trans_a)), ("TRANS_B", flag(trans_b))];
    let tiles32 = [u(n.div_ceil(32)), u(m.div_ceil(32)), 1];
    let with = |entry, source, constants, groups| MatmulEntry { entry, source, constants, groups, flags: 0 };
    if let (Some(c), "custom") = (custom, variant) {
        if c.transposes || (!trans_a && !trans_b) {
            let constants = if c.transposes { both } else { vec![] };
            let grid = [u(n.div_ceil(c.tile_n as usize)), u(m.div_ceil(c.tile_m as usize)), 1];
            return with(c.entry, "custom", constants, grid);
        }
    }
    match (variant, rows_tile(variant)) {
        ("vec4", _) if !trans_b && n % 4 == 0 => {
            with("matmul_vec4_rows", "", vec![("TRANS_A", flag(trans_a))], tiles32)
        }
        ("vec4", _) if trans_b && !trans_a && k % 4 == 0 => with("matmul_vec4_dot", "", vec![], tiles32),
        ("gemv", _) if m <= GEMV_ROWS && !trans_a && trans_b => with("matmul_gemv_nt", "", vec![], fold(n)),
        ("gemv", _) if m <= GEMV_ROWS && !trans_a => with("matmul_gemv_nn", "", vec![], per_item(n)),
        // a read as vec4s along its stored rows (see matmul_rows4.wgsl); rows16x32 where they are not
        // whole vec4s.
        ("rows32x16k4", _) => {
            if rows4_applies(m, k, trans_a) {
                MatmulEntry {
                    entry: "matmul_rows4",
                    source: "",
                    constants: vec![],
                    groups: [u(n.div_ceil(ROWS4_TILE.1)), u(m.div_ceil(ROWS4_TILE.0)), 1],
                    flags: (u32::from(trans_a) << 2) | (u32::from(trans_b) << 3),
                }
            } else {
                matmul_entry("rows16x32", custom, subgroup_lanes, (m, k, n), trans_a, trans_b)
            }
        }
        // One pipeline for every layout: the kernel reads it from flags bits 2 and 3.
        (v, Some((r, c4))) => MatmulEntry {
            entry: "matmul_rows",
            source: v,
            constants: vec![],
            groups: [u(n.div_ceil(4 * c4)), u(m.div_ceil(8 * r)), 1],
            flags: (u32::from(trans_a) << 2) | (u32::from(trans_b) << 3),
        },
        // One pipeline for every layout (flags bits 2 and 3), and one more where both operands' rows
        // are whole vec4s.
        ("tiled64" | "tiled128", _) => {
            let tile = if variant == "tiled64" { 64 } else { 128 };
            let vec4 = (if trans_a { m } else { k }) % 4 == 0 && (if trans_b { k } else { n }) % 4 == 0;
            let source = match (tile, vec4) {
                (64, false) => "tiled64",
                (64, true) => "tiled64.vec4",
                (_, false) => "tiled128",
                (_, true) => "tiled128.vec4",
            };
            MatmulEntry {
                entry: "matmul_tiled",
                source,
                constants: vec![],
                groups: [u(n.div_ceil(tile)), u(m.div_ceil(tile)), 1],
                flags: (u32::from(trans_a) << 2) | (u32::from(trans_b) << 3),
            }
        }
        ("subgroup", _) => {
            let x = subgroup_lanes as usize;
            let mut constants = both;
            constants.push(("X", x as f64));
            with("matmul_subgroup", "", constants, [u(n.div_ceil(4 * x)), u(m.div_ceil(8 * 64 / x)), 1])
        }
        _ => with("matmul", "", both, tiles32),
    }
}

/// The general matrix product `out (M,N) (+)= op(a)·op(b) (+ bias)`, as one dispatch per chunk of
/// [`MATMUL_K_CHUNK`] along K (the later ones accumulate). `dummy` stands in for a missing bias.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    env: &Env,
    out: View,
    a: View,
    b: View,
    bias: Option<View>,
    dummy: View,
    (m, k, n): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) -> Vec<Call> {
    let variant = env.choices.get(&(m, k, n, trans_a, trans_b)).copied().unwrap_or(env.matmul);
    let entry = matmul_entry(variant, env.custom.as_deref(), env.subgroup_lanes, (m, k, n), trans_a, trans_b);
    k_chunks(entry, out, a, b, bias, dummy, (m, k, n), accumulate, env.k_chunk)
}

/// One dispatch of a matmul entry per `chunk_len` along K (a multiple of 16, so every chunk but the
/// last is whole vec4s and whole K slices of the tiled kernels).
#[allow(clippy::too_many_arguments)]
fn k_chunks(
    entry: MatmulEntry,
    out: View,
    a: View,
    b: View,
    bias: Option<View>,
    dummy: View,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    chunk_len: usize,
) -> Vec<Call> {
    (0..k.div_ceil(chunk_len).max(1))
        .map(|chunk| {
            let k_begin = chunk * chunk_len;
            let k_end = k_begin.saturating_add(chunk_len).min(k);
            let add_bias = bias.is_some() && chunk == 0;
            let flags = u32::from(accumulate || chunk > 0) | (u32::from(add_bias) << 1) | entry.flags;
            Call {
                entry: entry.entry,
                source: entry.source,
                constants: entry.constants.clone(),
                views: vec![out, a, b, bias.unwrap_or(dummy)],
                params: vec![u(m), u(k), u(n), flags, u(k_begin), u(k_end)],
                groups: entry.groups,
            }
        })
        .collect()
}

/// The matrix-product shapes an op dispatches (what the autotuner times).
pub fn gemm_shapes(op: &Op) -> Vec<super::tune::GemmShape> {
    match *op {
        Op::Matmul { m, k, n, trans_a, trans_b, half: false, .. } => vec![(m, k, n, trans_a, trans_b)],
        Op::MatmulForward { m, k, n, layout, .. } => vec![(m, k, n, false, layout == WeightLayout::OutIn)],
        Op::MatmulBackward { m, k, n, layout, .. } => vec![
            (m, n, k, false, layout == WeightLayout::InOut),
            match layout {
                WeightLayout::InOut => (k, m, n, true, false),
                WeightLayout::OutIn => (n, m, k, true, false),
            },
        ],
        _ => Vec::new(),
    }
}

/// Blocks of [`ROW_BLOCK`] rows in `rows`.
fn row_blocks(rows: usize) -> usize {
    rows.div_ceil(ROW_BLOCK).max(1)
}

/// Elements of GPU-only scratch an op needs (the first stage of a two-stage reduction); the backend
/// allocates it when it prepares the program.
pub fn scratch_len(op: &Op, max_binding: usize) -> usize {
    match *op {
        Op::LayernormBackward { n, c, .. } => 2 * row_blocks(n) * c,
        Op::RmsnormBackward { n, c, .. } => row_blocks(n) * c,
        Op::MatmulBackward { dbias: Some(_), m, n, .. } => row_blocks(m) * n,
        Op::GlobalNorm { n, .. } => NORM_PARTIALS * n.div_ceil(max_binding).max(1),
        _ => 0,
    }
}

/// Rows (queries, or keys in the dK/dV kernel) one workgroup of the flash-attention kernels owns: its
/// invocations, WG in flash_attention.wgsl.
pub const FLASH_ROWS: usize = 64;

/// vec4s per staged tile in flash_attention.wgsl (each of its two tiles: 16 KiB of workgroup memory
/// in all).
pub const FLASH_TILE_VEC4: usize = 512;

/// The flash-attention tiles for head size `hd`: (C4 vec4s per chunk of a head row, BC rows per staged
/// tile, chunks per head row). One chunk covers heads up to 128; larger heads loop over chunks.
pub fn flash_tile(hd: usize) -> (usize, usize, usize) {
    let hd4 = hd.div_ceil(4).max(1);
    let c4 = hd4.min(32);
    let bc = (FLASH_TILE_VEC4 / c4 / 4 * 4).min(32);
    (c4, bc, hd4.div_ceil(c4))
}

/// Loop iterations one invocation runs per tile of the flash kernels, counting every loop of
/// flash_attention.wgsl (a loop of n iterations counts n, nested loops multiply), as lavapipe's limiter
/// counts them: (forward or dQ per key tile, dK/dV per (query head, query tile) pair).
fn flash_iterations_per_tile(c4: usize, bc: usize, nch: usize) -> (usize, usize) {
    let stage = (bc * c4).div_ceil(FLASH_ROWS);
    let blocks = bc / 4;
    let reload = if nch > 1 { c4 } else { 0 };
    let dots = nch * (1 + reload + stage + blocks * (1 + c4));
    let restage = if nch > 1 { stage } else { 0 };
    let forward = 1 + dots + 2 * blocks + c4 + stage + blocks * (1 + c4);
    let backward = 1 + dots + blocks + restage + blocks * (1 + c4);
    (forward.max(backward), backward)
}

/// The most loop iterations one invocation of a flash kernel may run (below lavapipe's 65,535, with
/// room for the loops outside the tile loop).
pub const FLASH_LOOP_BUDGET: usize = 60_000;

/// (query head, query tile) pairs one dK/dV dispatch walks: as many as the loop budget allows.
fn flash_kv_pairs_per_dispatch(c4: usize, bc: usize, nch: usize) -> usize {
    (FLASH_LOOP_BUDGET / flash_iterations_per_tile(c4, bc, nch).1).max(1)
}

/// The two kernel families of the fused attention ops (flash_attention.wgsl) and the row norms
/// (layernorm.wgsl, rmsnorm.wgsl): "tiled" (workgroups of 64 invocations sharing work through
/// workgroup memory and barriers: the shape GPUs want) and "rows" (one SIMD vector per workgroup, no
/// workgroup memory, no barriers; flash attention in RR x KT register blocks, a norm one row per
/// invocation: the shape lavapipe wants, 3-6x faster there). [`family`] picks by adapter type;
/// `GpuBackend::set_family` pins one (the tests run both).
pub const FAMILIES: [&str; 2] = ["tiled", "rows"];

/// The kernel family for an adapter of `device_type`: "rows" on CPU-type adapters (lavapipe,
/// SwiftShader), "tiled" on GPUs.
pub fn family(device_type: wgpu::DeviceType) -> &'static str {
    if device_type == wgpu::DeviceType::Cpu {
        "rows"
    } else {
        "tiled"
    }
}

/// Rows one workgroup of the "rows" norm kernels owns (RW in layernorm.wgsl and rmsnorm.wgsl).
const NORM_ROWS_ROWS: usize = 8;

/// The widest row the "rows" norm kernels take: they walk a row up to three times in one invocation,
/// and lavapipe ends an invocation's loops after 65,535 iterations; wider rows take the "tiled" kernel.
pub const NORM_ROWS_MAX_C: usize = FLASH_LOOP_BUDGET / 3;

/// The entry point and grid of a row-norm op: the "rows" family's kernel (8 rows per workgroup) where
/// the family is "rows" and the row fits [`NORM_ROWS_MAX_C`], else the "tiled" one (a row per workgroup).
fn norm_entry(
    env: &Env,
    tiled: &'static str,
    rows: &'static str,
    n: usize,
    c: usize,
) -> (&'static str, [u32; 3]) {
    if env.family == "rows" && c <= NORM_ROWS_MAX_C {
        (rows, fold(n.div_ceil(NORM_ROWS_ROWS)))
    } else {
        (tiled, fold(n))
    }
}

/// Rows one workgroup of the "rows" flash kernels owns (LANES * RR in flash_attention.wgsl).
pub const FLASH_ROWS_ROWS: usize = 64;

/// Rows of the other side per tile of the "rows" flash kernels (KT in flash_attention.wgsl).
pub const FLASH_ROWS_TILE: usize = 16;

/// Loop iterations of a "rows" flash kernel per tile of [`FLASH_ROWS_TILE`] rows at head size `hd`:
/// two loops over the head's columns (their bodies, over RR rows and KT tile rows, are constant-length
/// loops over registers, which Mesa unrolls: a test at a length that would pass the budget if they
/// were not proves it), plus the tile loop's own step.
fn flash_rows_iterations_per_tile(hd: usize) -> usize {
    2 * hd + 1
}

/// (query head, query tile) pairs one "rows" dK/dV dispatch walks.
fn flash_rows_pairs_per_dispatch(hd: usize) -> usize {
    (FLASH_LOOP_BUDGET / flash_rows_iterations_per_tile(hd)).max(1)
}

/// As [`flash_loop_iterations`], for the "rows" family: the forward kernel's zeroing and scaling
/// passes and its walk over key tiles, or one dK/dV dispatch.
pub fn flash_rows_loop_iterations(t: usize, hd: usize) -> usize {
    let per = flash_rows_iterations_per_tile(hd);
    let walk = t.div_ceil(FLASH_ROWS_TILE) * per + 2 * hd + 4;
    walk.max(flash_rows_pairs_per_dispatch(hd) * per + 4)
}

/// The most loop iterations any invocation of the flash kernels runs for sequence length `t` and head
/// size `hd`: the forward and dQ kernels walk every key tile up to the diagonal in one dispatch (the
/// dK/dV kernel is split to stay within [`FLASH_LOOP_BUDGET`]).
pub fn flash_loop_iterations(t: usize, hd: usize) -> usize {
    let (c4, bc, nch) = flash_tile(hd);
    let (per_tile, per_pair) = flash_iterations_per_tile(c4, bc, nch);
    let edges = 4 * c4 * nch + 4;
    let kv = flash_kv_pairs_per_dispatch(c4, bc, nch) * per_pair;
    (t.div_ceil(bc) * per_tile + edges).max(kv + edges)
}

/// Loop iterations of one `attention_decode` invocation over `t` keys with head size `hd` (see
/// decode.wgsl): per 256-key tile, the scores (4 keys per invocation, hd each), the 63-step maximum,
/// the 4 exponentials, the 256-step sum, and 256 keys for each output element the invocation owns;
/// plus the first and last passes over its output elements.
pub fn decode_loop_iterations(t: usize, hd: usize) -> usize {
    let owned = hd.div_ceil(64);
    t.div_ceil(256) * (4 * hd + 4 + 63 + 4 + 256 + owned * (256 + 1)) + 2 * owned
}

/// `D = rowsum(dout ∘ out)` (B,NH,T), the first pass of either flash family's backward.
fn flash_dsum(
    dsum: View,
    out: View,
    dout: View,
    (b, t, c, nh, nkv): (usize, usize, usize, usize, usize),
) -> Call {
    let params = flash_params(b, t, c, nh, nkv, None, 0, 0);
    call("flash_attention_backward_dsum", vec![dsum, out, dout], params, per_item(b * nh * t))
}

/// The uniform params of the flash-attention kernels (see `Params` in flash_attention.wgsl).
#[allow(clippy::too_many_arguments)]
fn flash_params(
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    nkv: usize,
    dropout: Option<&crate::backend::AttnDropout>,
    u_begin: usize,
    u_end: usize,
) -> Vec<u32> {
    let (drop, threshold, scale, stream) =
        dropout.map_or((0, 0, 0, 0), |d| (1, dropout_threshold(d.p), f(dropout_scale(d.p)), d.stream));
    vec![u(b), u(t), u(c), u(nh), u(nkv), drop, threshold, scale, stream, u(u_begin), u(u_end), 0]
}

/// A dropout dispatch over the first binding's elements.
fn dropout_call(entry: &'static str, views: Vec<View>, p: f32, stream: u32) -> Call {
    let n = views[0].len;
    let params = vec![u(n), dropout_threshold(p), f(dropout_scale(p)), stream];
    call(entry, views, params, per_item(n))
}

/// `out (C) += Σ_blocks partial[offset + block·C ..]`: the second stage of a column sum.
fn colsum_final(out: View, partial: View, blocks: usize, c: usize, offset: usize) -> Call {
    call("colsum_final", vec![out, partial], vec![u(blocks), 0, u(c), u(offset)], per_item(c))
}

/// The dispatches that run `op`, in order.
pub fn calls(op: &Op, env: &Env) -> Vec<Call> {
    let (dummy, scratch) = (env.dummy, env.scratch);
    match *op {
        Op::FlashAttentionForward { out, lse, qkv, b, t, c, nh, nkv, dropout } if env.family == "rows" => {
            vec![call(
                "flash_rows_forward",
                vec![out, lse, qkv, dropout.map_or(dummy, |d| d.seed)],
                flash_params(b, t, c, nh, nkv, dropout.as_ref(), 0, 0),
                [u(t.div_ceil(FLASH_ROWS_ROWS)), u(b * nh), 1],
            )]
        }
        Op::FlashAttentionForward { out, lse, qkv, b, t, c, nh, nkv, dropout } => {
            let (c4, bc, nch) = flash_tile(c / nh);
            let params = flash_params(b, t, c, nh, nkv, dropout.as_ref(), 0, 0);
            vec![Call {
                entry: "flash_attention_forward",
                source: "",
                constants: vec![("C4", c4 as f64), ("BC", bc as f64)],
                views: vec![out, lse, qkv, dropout.map_or(dummy, |d| d.seed)],
                params,
                groups: [u(t.div_ceil(FLASH_ROWS)), u(b * nh), u(nch)],
            }]
        }
        Op::FlashAttentionBackward { dqkv, dsum, dout, qkv, out, lse, b, t, c, nh, nkv, dropout }
            if env.family == "rows" =>
        {
            let views = vec![dqkv, dsum, qkv, dout, lse, dropout.map_or(dummy, |d| d.seed)];
            let mut v = vec![flash_dsum(dsum, out, dout, (b, t, c, nh, nkv))];
            // As the tiled dK/dV kernel: (query head, query tile) pairs in dispatches within the loop
            // budget, each adding after the one before.
            let pairs = nh / nkv * t.div_ceil(FLASH_ROWS_TILE);
            let per = flash_rows_pairs_per_dispatch(c / nh);
            v.extend((0..pairs).step_by(per).map(|begin| {
                let params =
                    flash_params(b, t, c, nh, nkv, dropout.as_ref(), begin, (begin + per).min(pairs));
                call(
                    "flash_rows_backward_kv",
                    views.clone(),
                    params,
                    [u(t.div_ceil(FLASH_ROWS_ROWS)), u(b * nkv), 1],
                )
            }));
            let params = flash_params(b, t, c, nh, nkv, dropout.as_ref(), 0, 0);
            v.push(call(
                "flash_rows_backward_q",
                views,
                params,
                [u(t.div_ceil(FLASH_ROWS_ROWS)), u(b * nh), 1],
            ));
            v
        }
        Op::FlashAttentionBackward { dqkv, dsum, dout, qkv, out, lse, b, t, c, nh, nkv, dropout } => {
            let (c4, bc, nch) = flash_tile(c / nh);
            let constants = vec![("C4", c4 as f64), ("BC", bc as f64)];
            let seed = dropout.map_or(dummy, |d| d.seed);
            let views = vec![dqkv, dsum, qkv, dout, lse, seed];
            let mut v = vec![flash_dsum(dsum, out, dout, (b, t, c, nh, nkv))];
            // The group's (query head, query tile) pairs, in dispatches short enough for the loop
            // budget; each adds to dK and dV after the one before, so the order stays fixed.
            let pairs = nh / nkv * t.div_ceil(bc);
            let per = flash_kv_pairs_per_dispatch(c4, bc, nch);
            v.extend((0..pairs).step_by(per).map(|begin| Call {
                entry: "flash_attention_backward_kv",
                source: "",
                constants: constants.clone(),
                views: views.clone(),
                params: flash_params(b, t, c, nh, nkv, dropout.as_ref(), begin, (begin + per).min(pairs)),
                groups: [u(t.div_ceil(FLASH_ROWS)), u(b * nkv), u(nch)],
            }));
            v.push(Call {
                entry: "flash_attention_backward_q",
                source: "",
                constants,
                views,
                params: flash_params(b, t, c, nh, nkv, dropout.as_ref(), 0, 0),
                groups: [u(t.div_ceil(FLASH_ROWS)), u(b * nh), u(nch)],
            });
            v
        }
        Op::Round { out, inp, first, n, format } => {
            let words = (first + n).div_ceil(2) - first / 2;
            vec![call("round_half", vec![out, inp], vec![u(n), u(first), format.code(), 0], per_item(words))]
        }
        Op::Widen { out, inp, first, n, format } => {
            vec![call("widen_half", vec![out, inp], vec![u(n), u(first), format.code(), 0], per_item(n))]
        }
        Op::Quantize { out, inp, n, format } if out == inp => {
            vec![call("quantize_half_inplace", vec![out], vec![u(n), 0, format.code(), 0], per_item(n))]
        }
        Op::Quantize { out, inp, n, format } => {
            vec![call("quantize_half", vec![out, inp], vec![u(n), 0, format.code(), 0], per_item(n))]
        }
        Op::Zero { out } => chunks(out.len, env.max_binding)
            .map(|(at, len)| call("zero", vec![out.slice(at, len)], vec![u(len)], per_item(len)))
            .collect(),
        Op::EncoderForward { out, tokens, wte, wpe, b, t, c } => vec![call(
            "encoder_forward",
            // Without wpe the kernel reads only wte (has_wpe = 0); the dummy fills the binding.
            vec![out, tokens, wte, wpe.unwrap_or(dummy)],
            vec![u(b), u(t), u(c), u32::from(wpe.is_some())],
            per_item(b * t * c),
        )],
        Op::EncoderBackward { dwte, dwpe, dout, tokens, order, b, t, c } => {
            let mut v = vec![call(
                "encoder_backward_wte",
                vec![dwte, dout, tokens, order],
                vec![u(b), u(t), u(c), 0],
                per_item(b * t * c),
            )];
            v.extend(dwpe.map(|dwpe| {
                call("encoder_backward_wpe", vec![dwpe, dout], vec![u(b), u(t), u(c), 0], per_item(t * c))
            }));
            v
        }
        Op::LayernormForward { out, mean, rstd, inp, weight, bias, n, c } => {
            let (entry, groups) = norm_entry(env, "layernorm_forward", "layernorm_rows_forward", n, c);
            vec![call(entry, vec![out, mean, rstd, inp, weight, bias], vec![u(n), u(c)], groups)]
        }
        Op::LayernormBackward { dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c } => {
            let blocks = row_blocks(n);
            let (entry, groups) = norm_entry(env, "layernorm_backward", "layernorm_rows_backward", n, c);
            vec![
                call(entry, vec![dinp, mean, rstd, inp, weight, dout], vec![u(n), u(c)], groups),
                call(
                    "layernorm_backward_params_partial",
                    vec![scratch, mean, rstd, inp, dout],
                    vec![u(n), u(c)],
                    [u(c.div_ceil(64)), u(blocks), 1],
                ),
                colsum_final(dweight, scratch, blocks, c, 0),
                colsum_final(dbias, scratch, blocks, c, blocks * c),
            ]
        }
        Op::RmsnormForward { out, rstd, inp, weight, n, c, eps } => {
            let (entry, groups) = norm_entry(env, "rmsnorm_forward", "rmsnorm_rows_forward", n, c);
            vec![call(entry, vec![out, rstd, inp, weight], vec![u(n), u(c), f(eps)], groups)]
        }
        Op::RmsnormBackward { dinp, dweight, dout, inp, weight, rstd, n, c } => {
            let blocks = row_blocks(n);
            let (entry, groups) = norm_entry(env, "rmsnorm_backward", "rmsnorm_rows_backward", n, c);
            vec![
                call(entry, vec![dinp, rstd, inp, weight, dout], vec![u(n), u(c), 0], groups),
                call(
                    "rmsnorm_backward_weight_partial",
                    vec![scratch, rstd, inp, dout],
                    vec![u(n), u(c), 0],
                    [u(c.div_ceil(64)), u(blocks), 1],
                ),
                colsum_final(dweight, scratch, blocks, c, 0),
            ]
        }
        Op::RopeForward { out, inp, positions, table, n, width, heads, hd } => vec![call(
            "rope_forward",
            vec![out, inp, positions, table],
            vec![u(n), u(width), u(heads), u(hd)],
            per_item(n * width),
        )],
        Op::RopeBackward { dinp, dout, positions, table, n, width, heads, hd } => vec![call(
            "rope_backward",
            vec![dinp, dout, positions, table],
            vec![u(n), u(width), u(heads), u(hd)],
            per_item(n * width),
        )],
        Op::GatherRow { out, inp, row, w } => {
            vec![call("gather_row", vec![out, inp, row], vec![u(w), 0, 0, 0], per_item(w))]
        }
        Op::ScatterRow { out, inp, row, w } => {
            vec![call("scatter_row", vec![out, inp, row], vec![u(w), 0, 0, 0], per_item(w))]
        }
        Op::AttentionDecode { out, qkv, row, t, c, nh, nkv } => {
            vec![call("attention_decode", vec![out, qkv, row], vec![u(t), u(c), u(nh), u(nkv)], fold(nh))]
        }
        Op::SwigluForward { out, inp, n, i } => {
            vec![call("swiglu_forward", vec![out, inp], vec![u(n * i), u(i)], per_item(n * i))]
        }
        Op::SwigluBackward { dinp, inp, dout, n, i } => {
            vec![call("swiglu_backward", vec![dinp, inp, dout], vec![u(n * i), u(i)], per_item(n * i))]
        }
        Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate, half: false } => {
            gemm(env, out, a, b, None, dummy, (m, k, n), trans_a, trans_b, accumulate)
        }
        Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate, half: true } => {
            // The rows16x32 kernel with a and b read as halves.
            let entry = MatmulEntry {
                source: F16_SOURCE,
                ..matmul_entry("rows16x32", None, 0, (m, k, n), trans_a, trans_b)
            };
            k_chunks(entry, out, a, b, None, dummy, (m, k, n), accumulate, env.k_chunk)
        }
        Op::MatmulForward { out, inp, weight, bias, m, k, n, layout } => {
            let trans_b = layout == WeightLayout::OutIn;
            gemm(env, out, inp, weight, bias, dummy, (m, k, n), false, trans_b, false)
        }
        Op::MatmulBackward { dinp, dweight, dbias, dout, inp, weight, m, k, n, layout } => {
            // dinp (M,K) += dout (M,N) · Wᵀ. W as a (K',N') = (N,K) operand is transposed exactly
            // when it is stored [in, out].
            let dx = gemm(
                env,
                dinp,
                dout,
                weight,
                None,
                dummy,
                (m, n, k),
                false,
                layout == WeightLayout::InOut,
                true,
            );
            // dW += inpᵀ·dout for [in, out], doutᵀ·inp for [out, in]; the left operand is stored
            // (M, ·), so it is always read transposed.
            let dw = match layout {
                WeightLayout::InOut => {
                    gemm(env, dweight, inp, dout, None, dummy, (k, m, n), true, false, true)
                }
                WeightLayout::OutIn => {
                    gemm(env, dweight, dout, inp, None, dummy, (n, m, k), true, false, true)
                }
            };
            let mut v = [dx, dw].concat();
            if let Some(dbias) = dbias {
                let blocks = row_blocks(m);
                v.push(call(
                    "matmul_backward_bias_partial",
                    vec![scratch, dout],
                    vec![u(m), 0, u(n), 0, 0, 0],
                    [u(n.div_ceil(64)), u(blocks), 1],
                ));
                v.push(colsum_final(dbias, scratch, blocks, n, 0));
            }
            v
        }
        Op::AttentionForward { out, att, qkv, b, t, c, nh, nkv, dropout } => {
            let p = vec![u(b), u(t), u(c), u(nh), u(nkv), 0, 0, 0];
            let mut v = vec![
                call("attention_scores", vec![att, qkv], p.clone(), per_item(b * nh * t * t)),
                call("attention_softmax", vec![att], p.clone(), per_item(b * nh * t)),
            ];
            let weights = match dropout {
                Some(d) => {
                    v.push(dropout_call("dropout_forward", vec![d.probs, att, d.seed], d.p, d.stream));
                    d.probs
                }
                None => att,
            };
            v.push(call("attention_values", vec![out, qkv, weights], p, per_item(b * t * c)));
            v
        }
        Op::AttentionBackward { dqkv, datt, dout, qkv, att, b, t, c, nh, nkv, dropout } => {
            let p = vec![u(b), u(t), u(c), u(nh), u(nkv), 0, 0, 0];
            let mut v = vec![call(
                "attention_backward_probs",
                vec![datt, qkv, dout],
                p.clone(),
                per_item(b * nh * t * t),
            )];
            let weights = match dropout {
                Some(d) => {
                    v.push(dropout_call("dropout_mask_inplace", vec![datt, d.seed], d.p, d.stream));
                    d.probs
                }
                None => att,
            };
            v.extend([
                call("attention_backward_softmax", vec![datt, att], p.clone(), per_item(b * nh * t)),
                call("attention_backward_q", vec![dqkv, qkv, datt], p.clone(), per_item(b * t * c)),
                // One invocation per element of the k (or v) part: B·T·NKV·hs.
                call(
                    "attention_backward_kv",
                    vec![dqkv, qkv, datt, weights, dout],
                    p,
                    per_item(b * t * nkv * (c / nh)),
                ),
            ]);
            v
        }
        Op::DropoutForward { out, inp, seed, p, stream, .. } => {
            vec![dropout_call("dropout_forward", vec![out, inp, seed], p, stream)]
        }
        Op::DropoutBackward { dinp, dout, seed, p, stream, .. } => {
            vec![dropout_call("dropout_backward", vec![dinp, dout, seed], p, stream)]
        }
        Op::GeluForward { out, inp, n } => {
            vec![call("gelu_forward", vec![out, inp], vec![u(n)], per_item(n))]
        }
        Op::GeluBackward { dinp, inp, dout, n } => {
            vec![call("gelu_backward", vec![dinp, inp, dout], vec![u(n)], per_item(n))]
        }
        Op::ResidualForward { out, inp1, inp2, n } => {
            vec![call("residual_forward", vec![out, inp1, inp2], vec![u(n)], per_item(n))]
        }
        Op::ResidualBackward { dinp1, dinp2, dout, n } => {
            vec![call("residual_backward", vec![dinp1, dinp2, dout], vec![u(n)], per_item(n))]
        }
        Op::CrossentropyForward { losses, lse, logits, targets, n, v } => vec![call(
            "crossentropy_forward",
            vec![losses, lse, logits, targets],
            vec![u(n), u(v), 0],
            fold(n),
        )],
        Op::CrossentropyBackward { dlogits, logits, lse, targets, grad_scale, n, v, scale } => {
            let (entry, views) = if dlogits == logits {
                ("crossentropy_backward_inplace", vec![dlogits, lse, targets, grad_scale])
            } else {
                ("crossentropy_backward", vec![dlogits, logits, lse, targets, grad_scale])
            };
            vec![call(entry, views, vec![u(n), u(v), f(scale)], per_item(n * v))]
        }
        Op::ReduceSum { out, inp, n, scale } => {
            vec![call("reduce_sum", vec![out, inp], vec![u(n), f(scale)], [1, 1, 1])]
        }
        Op::GlobalNorm { out, inp, n } => {
            // Each chunk fills its own NORM_PARTIALS slots of scratch; one final pass sums them all.
            let mut v: Vec<Call> = chunks(n, env.max_binding)
                .enumerate()
                .map(|(i, (at, len))| {
                    call(
                        "global_norm_partial",
                        vec![scratch.slice(i * NORM_PARTIALS, NORM_PARTIALS), inp.slice(at, len)],
                        vec![u(len), 0],
                        [NORM_PARTIALS as u32, 1, 1],
                    )
                })
                .collect();
            let partials = scratch.slice(0, v.len() * NORM_PARTIALS);
            v.push(call("global_norm_final", vec![out, partials], vec![u(partials.len), 0], [1, 1, 1]));
            v
        }
        Op::AdamwUpdate { params, grads, m, v, hyper, norm, n, weight_decay } => chunks(n, env.max_binding)
            .map(|(at, len)| {
                let piece = |x: View| x.slice(at, len);
                call(
                    "adamw_update",
                    vec![piece(params), piece(m), piece(v), piece(grads), hyper, norm],
                    vec![u(len), f(weight_decay)],
                    per_item(len),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_attention_fits_the_loop_budget_at_practical_lengths() {
        // Every head size up to 128 at T = 8192; past the budget only beyond that.
        for hd in 1..=128 {
            assert!(decode_loop_iterations(8192, hd) <= 65_535, "hd {hd}");
        }
        assert!(decode_loop_iterations(16_384, 128) > 65_535);
    }

    #[test]
    fn flash_tiles_fit_16_kib_and_the_loop_budget() {
        for hd in 1..=256 {
            let (c4, bc, nch) = flash_tile(hd);
            assert!((1..=32).contains(&c4) && (4..=32).contains(&bc) && bc % 4 == 0, "hd {hd}");
            assert!(bc * c4 <= FLASH_TILE_VEC4 && c4 * nch * 4 >= hd, "hd {hd}");
            // Two staged tiles of BC x C4 vec4s.
            assert!(2 * bc * c4 * 16 <= 16 * 1024, "hd {hd}");
            // Every invocation stays below lavapipe's 65,535 loop iterations at T = 2048 for heads
            // up to 128.
            if hd <= 128 {
                assert!(
                    flash_loop_iterations(2048, hd) <= 65_535,
                    "hd {hd}: {}",
                    flash_loop_iterations(2048, hd)
                );
            }
        }
        assert_eq!(flash_tile(64), (16, 32, 1));
        // The "rows" family: within the budget at T = 2048 for heads up to 128, and each dK/dV
        // dispatch within it at every head size.
        for hd in 1..=512 {
            let per = flash_rows_iterations_per_tile(hd);
            assert!(flash_rows_pairs_per_dispatch(hd) * per <= FLASH_LOOP_BUDGET || per > FLASH_LOOP_BUDGET);
            if hd <= 128 {
                assert!(flash_rows_loop_iterations(2048, hd) <= 65_535, "hd {hd}");
            }
        }
        assert_eq!(family(wgpu::DeviceType::Cpu), "rows");
        assert_eq!(family(wgpu::DeviceType::DiscreteGpu), "tiled");
        assert_eq!(flash_tile(128), (32, 16, 1));
        assert_eq!(flash_tile(132), (32, 16, 2));
    }

    fn env(matmul: &'static str, k_chunk: usize) -> Env {
        let view = View::new(crate::backend::BufId(0), 0, 1);
        let choices = Default::default();
        Env {
            choices,
            custom: None,
            matmul,
            subgroup_lanes: 8,
            dummy: view,
            scratch: view,
            max_binding: 1 << 30,
            k_chunk,
            family: "tiled",
        }
    }

    /// `out = op(a)·op(b)` on placeholder views.
    fn matmul_op((m, k, n): (usize, usize, usize), trans_a: bool, trans_b: bool) -> Op {
        let v = |len| View::new(crate::backend::BufId(0), 0, len);
        let (out, a, b) = (v(m * n), v(m * k), v(k * n));
        Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate: false, half: false }
    }

    /// Issue 12, item 4: K is split only on an adapter that limits loops; each chunk of a split sums
    /// its own stretch of K and every one but the first accumulates.
    #[test]
    fn matmuls_split_k_only_where_the_adapter_limits_loops() {
        let k = 40_000;
        let op = matmul_op((4, k, 12), false, true);
        for variant in MATMUL_VARIANTS {
            let whole = calls(&op, &env(variant, k_chunk(wgpu::DeviceType::DiscreteGpu)));
            assert_eq!(whole.len(), 1, "{variant}");
            assert_eq!((whole[0].params[4], whole[0].params[5], whole[0].params[3] & 1), (0, k as u32, 0));
            let split = calls(&op, &env(variant, k_chunk(wgpu::DeviceType::Cpu)));
            let ranges: Vec<(u32, u32, u32)> =
                split.iter().map(|c| (c.params[4], c.params[5], c.params[3] & 1)).collect();
            assert_eq!(ranges, vec![(0, 16_384, 0), (16_384, 32_768, 1), (32_768, 40_000, 1)], "{variant}");
        }
    }

    /// rows32x16k4 runs its vec4 kernel exactly where a's stored rows are whole vec4s (K with a stored
    /// (M,K), M with a stored (K,M)), and rows16x32 elsewhere; both take the layout from flags.
    #[test]
    fn rows4_matmul_reads_vec4s_only_where_a_rows_are_whole_vec4s() {
        for (m, k, n, ta, tb, rows4) in [
            (7, 12, 5, false, false, true),
            (7, 13, 5, false, true, false),
            (8, 13, 5, true, false, true),
            (6, 12, 5, true, true, false),
            (1, 4, 1, false, true, true),
        ] {
            let call = &calls(&matmul_op((m, k, n), ta, tb), &env("rows32x16k4", usize::MAX))[0];
            let want = if rows4 { "matmul_rows4" } else { "matmul_rows" };
            assert_eq!(call.entry, want, "{m}x{k}x{n} {ta} {tb}");
            assert_eq!(call.params[3] >> 2, u32::from(ta) | (u32::from(tb) << 1));
            let (rows, cols) = if rows4 { ROWS4_TILE } else { (128, 32) };
            assert_eq!(call.groups, [n.div_ceil(cols) as u32, m.div_ceil(rows) as u32, 1]);
        }
    }

    /// On CPU adapters the autotuner skips rows16x32 where rows32x16k4 runs it itself or fills its
    /// 256-row tile, and times it where M is smaller; it skips nothing else, and nothing on a GPU.
    #[test]
    fn rows16x32_is_timed_on_cpus_only_where_it_can_win() {
        let cpu = wgpu::DeviceType::Cpu;
        for (shape, skipped) in [
            ((256, 128, 64, false, false), true),
            ((255, 128, 64, false, false), false),
            ((128, 1024, 384, true, false), false),
            ((256, 1024, 384, true, false), true),
            ((64, 13, 8, false, true), true),
            ((126, 1024, 8, true, false), true),
        ] {
            assert_eq!(superseded("rows16x32", cpu, shape), skipped, "{shape:?}");
            assert!(!superseded("rows16x32", wgpu::DeviceType::DiscreteGpu, shape));
            for v in MATMUL_VARIANTS.iter().filter(|v| **v != "rows16x32") {
                assert!(!superseded(v, cpu, shape), "{v}");
            }
        }
    }

    /// The "rows" norm kernels take 8 rows per workgroup (the grid folds past 65,535 workgroups) up to
    /// rows of `NORM_ROWS_MAX_C`; the "tiled" ones a row per workgroup.
    #[test]
    fn row_norms_follow_the_family_and_the_row_length() {
        let view = View::new(crate::backend::BufId(0), 0, 1);
        for (n, c, family, entry, groups) in [
            (37, 68, "rows", "layernorm_rows_forward", [5, 1, 1]),
            (600_000, 4, "rows", "layernorm_rows_forward", [65_535, 2, 1]),
            (7, NORM_ROWS_MAX_C + 1, "rows", "layernorm_forward", [7, 1, 1]),
            (37, 68, "tiled", "layernorm_forward", [37, 1, 1]),
        ] {
            let op = Op::LayernormForward {
                out: view,
                mean: view,
                rstd: view,
                inp: view,
                weight: view,
                bias: view,
                n,
                c,
            };
            let env = Env { family, ..env("rows16x32", usize::MAX) };
            let call = &calls(&op, &env)[0];
            assert_eq!((call.entry, call.groups), (entry, groups), "{n}x{c} {family}");
            let op = Op::RmsnormBackward {
                dinp: view,
                dweight: view,
                dout: view,
                inp: view,
                weight: view,
                rstd: view,
                n,
                c,
            };
            let call = &calls(&op, &env)[0];
            assert_eq!(call.entry, entry.replace("layernorm", "rmsnorm").replace("forward", "backward"));
            assert_eq!(call.groups, groups);
        }
    }

    /// The tiled kernels load vec4s exactly where both operands' rows are whole vec4s, and take the
    /// layout from flags bits 2 and 3.
    #[test]
    fn tiled_matmuls_pick_vec4_loads_by_row_length() {
        for (variant, tile) in [("tiled64", 64), ("tiled128", 128)] {
            for (m, k, n, ta, tb, vec4) in [
                (8, 12, 16, false, false, true),
                (8, 12, 18, false, false, false),
                (8, 13, 16, false, false, false),
                (8, 13, 16, true, false, true),
                (7, 13, 16, true, false, false),
                (8, 12, 18, false, true, true),
                (6, 12, 18, true, true, false),
            ] {
                let call = &calls(&matmul_op((m, k, n), ta, tb), &env(variant, usize::MAX))[0];
                assert_eq!(call.entry, "matmul_tiled");
                assert_eq!(call.source.ends_with(".vec4"), vec4, "{variant} {m}x{k}x{n} {ta} {tb}");
                assert_eq!(call.params[3] >> 2, u32::from(ta) | (u32::from(tb) << 1));
                assert_eq!(call.groups, [n.div_ceil(tile) as u32, m.div_ceil(tile) as u32, 1]);
                let source = variant_source("matmul_tiled.wgsl", call.source);
                assert!(source.contains(&format!("const TILE: u32 = {tile}u;")));
                assert_eq!(source.contains("array<vec4<f32>>"), vec4);
                validate_wgsl(call.source, &source).unwrap();
            }
        }
    }
}
