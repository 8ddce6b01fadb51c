//! The wgpu backend: buffers, pipelines built once from shaders/, and programs replayed into one
//! command encoder per run. This module knows kernels and buffers, never a model.

pub mod context;
pub mod kernels;
pub mod tune;

use std::num::NonZeroU64;
use std::sync::Arc;

pub use context::{list_adapters, AdapterSummary, DeviceChoice, GpuContext};

use crate::backend::{Backend, BufId, Created, DType, Op, PlanId, View};
use crate::{Error, Result};

/// Bytes per uniform-params slot: the largest `min_uniform_buffer_offset_alignment` WebGPU allows.
const PARAM_SLOT: u64 = 256;

struct GpuBuf {
    buffer: wgpu::Buffer,
    dtype: DType,
    len: usize,
    label: String,
}

struct Dispatch {
    entry: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

struct Plan {
    dispatches: Vec<Dispatch>,
    /// Holds every dispatch's params; kept alive with the bind groups that point into it.
    _params: Option<wgpu::Buffer>,
}

/// Buffers and prepared programs on one device. Cheap to create: pipelines live in the shared
/// [`GpuContext`].
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    bufs: Vec<GpuBuf>,
    plans: Vec<Plan>,
    staging: Option<wgpu::Buffer>,
    dummy: Option<View>,
    stats: Created,
    /// Elements per storage binding for whole-buffer ops (see `kernels::Env::max_binding`).
    max_binding: usize,
    /// Whether this backend acts as if its adapter lacked shader-f16 ([`GpuBackend::hide_shader_f16`]).
    no_f16: bool,
    /// The matmul variant used where it applies.
    matmul: &'static str,
    /// The kernel family of the fused attention and row-norm ops (`kernels::FAMILIES`).
    family: &'static str,
    /// A matmul kernel loaded at run time (variant "custom").
    custom: Option<Arc<kernels::CustomMatmul>>,
    /// The autotuner's time budget per `prepare`; None leaves every shape to `matmul`.
    tuning: Option<std::time::Duration>,
    /// The variant the autotuner chose for each shape seen so far.
    choices: std::collections::BTreeMap<tune::GemmShape, &'static str>,
}

/// `name` as the `&'static str` of `list` that equals it, or an error naming `what` and the choices.
pub(crate) fn one_of(name: &str, list: &[&'static str], what: &str) -> Result<&'static str> {
    list.iter()
        .find(|v| **v == name)
        .copied()
        .ok_or_else(|| Error::Invalid(format!("{what} {name:?}: expected one of {}", list.join(", "))))
}

impl GpuBackend {
    /// Copies the 4-byte words of `view` into `out` (`view.len` · 4 bytes; waits for all submitted work).
    fn read_words(&mut self, view: View, out: &mut [u8]) -> Result<()> {
        if view.len == 0 {
            return Ok(());
        }
        let size = view.len as u64 * 4;
        if self.staging.as_ref().is_none_or(|s| s.size() < size) {
            let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
            self.staging = Some(self.create_buffer("readback staging", size, usage)?);
        }
        let staging = self.staging.as_ref().unwrap();
        let src = &self.bufs[view.buf.0].buffer;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(src, view.offset as u64 * 4, staging, 0, size);
        self.ctx.queue.submit([encoder.finish()]);
        self.stats.submits += 1;
        let slice = staging.slice(..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait("reading back a result")?;
        rx.recv()
            .map_err(|_| Error::DeviceLost("the readback was abandoned".into()))?
            .map_err(|e| Error::DeviceLost(format!("mapping the readback buffer: {e}")))?;
        {
            let mapped = slice
                .get_mapped_range()
                .map_err(|e| Error::DeviceLost(format!("mapping the readback buffer: {e}")))?;
            out.copy_from_slice(&mapped);
        }
        staging.unmap();
        Ok(())
    }

    pub fn new(choice: &DeviceChoice) -> Result<Self> {
        Ok(Self::with_context(Arc::new(GpuContext::new(choice)?)))
    }

    pub fn with_context(ctx: Arc<GpuContext>) -> Self {
        let max_binding = (ctx.adapter.limits.max_storage_buffer_binding_size / 4) as usize / 64 * 64;
        // Until the autotuner measures, a CPU-type adapter (lavapipe, SwiftShader) gets the variant
        // written for SIMD CPUs (rows32x16k4, which runs rows16x32 where a's rows are not whole vec4s)
        // and a GPU the register-blocked vec4 one.
        let matmul =
            if ctx.adapter.info.device_type == wgpu::DeviceType::Cpu { "rows32x16k4" } else { "vec4" };
        GpuBackend {
            max_binding,
            no_f16: false,
            matmul,
            family: kernels::family(ctx.adapter.info.device_type),
            custom: None,
            tuning: None,
            choices: Default::default(),
            ctx,
            bufs: Vec::new(),
            plans: Vec::new(),
            staging: None,
            dummy: None,
            stats: Created::default(),
        }
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Times the matmul variants for each new shape of the programs prepared from now on (at most
    /// `budget` per program), using and filling the on-disk cache; see `tune`.
    pub fn autotune(&mut self, budget: std::time::Duration) {
        self.tuning = Some(budget);
    }

    /// The variant each tuned shape uses.
    pub fn tuned(&self) -> &std::collections::BTreeMap<tune::GemmShape, &'static str> {
        &self.choices
    }

    /// Uses a matmul kernel loaded at run time in programs prepared from now on (variant "custom").
    pub fn set_custom_matmul(&mut self, kernel: kernels::CustomMatmul) {
        let kernel = Arc::new(kernel);
        self.ctx.register_custom(kernel.clone());
        self.custom = Some(kernel);
        self.matmul = "custom";
    }

    /// Chooses a variant for each matmul shape of `ops` not chosen yet, when autotuning; the other
    /// kernels of `ops` (mapped by `env`) compile beside the candidates.
    fn tune(&mut self, ops: &[Op], env: &kernels::Env) {
        let Some(budget) = self.tuning else { return };
        let mut shapes: Vec<tune::GemmShape> = ops.iter().flat_map(kernels::gemm_shapes).collect();
        shapes.sort();
        shapes.dedup();
        shapes.retain(|s| !self.choices.contains_key(s));
        if !shapes.is_empty() {
            let others: Vec<kernels::Call> = ops
                .iter()
                .filter(|op| kernels::gemm_shapes(op).is_empty())
                .flat_map(|op| kernels::calls(op, env))
                .collect();
            let chosen = tune::choose(&self.ctx, &shapes, self.matmul, budget, &others);
            self.choices.extend(chosen);
        }
    }

    /// [`GpuBackend::env`] with placeholders for the spare views (for planning, never for binding).
    fn placeholder_env(&self, ops: &[Op]) -> kernels::Env {
        let placeholder = |len| View::new(BufId(usize::MAX), 0, len);
        let scratch = ops.iter().map(|op| kernels::scratch_len(op, self.max_binding)).max().unwrap_or(0);
        self.env(placeholder(1), placeholder(scratch.max(1)))
    }

    /// What maps this backend's ops to dispatches, with `dummy` and `scratch` as its spare views.
    fn env(&self, dummy: View, scratch: View) -> kernels::Env {
        kernels::Env {
            choices: Arc::new(self.choices.clone()),
            custom: self.custom.clone(),
            matmul: self.matmul,
            subgroup_lanes: self.ctx.subgroup_lanes(),
            dummy,
            scratch,
            max_binding: self.max_binding,
            k_chunk: kernels::k_chunk(self.ctx.adapter.info.device_type),
            family: self.family,
        }
    }

    /// The dispatches a program of `ops` would make here, with the variants chosen so far: what
    /// [`GpuContext::precompile`] needs ahead of the program (pipelines, parameters, binding count;
    /// the views are the ops' own, or placeholders, and are never bound).
    /// `ops` must pass [`Op::check`] (`warm` checks them; the autotuner's and `verify`'s are valid by
    /// construction).
    pub fn planned_calls(&self, ops: &[Op]) -> Vec<kernels::Call> {
        let env = self.placeholder_env(ops);
        ops.iter().flat_map(|op| kernels::calls(op, &env)).collect()
    }

    /// Uses kernel family `name` (one of `kernels::FAMILIES`) for the fused attention and row-norm ops
    /// in programs prepared from now on, instead of the adapter's (`kernels::family`).
    pub fn set_family(&mut self, name: &str) -> Result<()> {
        self.family = one_of(name, &kernels::FAMILIES, "kernel family")?;
        Ok(())
    }

    /// Pins `variant` of `kernel` as `wgslm verify` and the kernel tests run it: a matmul variant for
    /// the matmul kernels, a kernel family for the fused attention and row-norm kernels; "" leaves the
    /// defaults.
    pub fn set_variant(&mut self, kernel: &str, variant: &str) -> Result<()> {
        match variant {
            "" => Ok(()),
            _ if crate::verify::uses_families(kernel) => self.set_family(variant),
            _ => self.set_matmul_variant(variant),
        }
    }

    /// Uses matmul variant `name` (one of `kernels::MATMUL_VARIANTS`) in programs prepared from now on.
    pub fn set_matmul_variant(&mut self, name: &str) -> Result<()> {
        self.matmul = one_of(name, kernels::MATMUL_VARIANTS, "matmul variant")?;
        if let Some(why) = self.ctx.variant_unavailable(name) {
            return Err(Error::Invalid(format!(
                "{why}; use one of {}",
                self.ctx.matmul_variants().join(", ")
            )));
        }
        Ok(())
    }

    /// What `prepare` refuses before it tunes, compiles or allocates anything: an index past u32, a
    /// loop past lavapipe's budget, an op whose shapes do not fit, a kernel the adapter cannot run.
    fn check_ops(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            if let Some((view, elements)) = kernels::index_range(op) {
                return Err(Error::IndexRange { op: op.name(), view: view + 1, elements: elements as u64 });
            }
        }
        self.check_loop_budget(ops)?;
        for op in ops {
            op.check().map_err(Error::Invalid)?;
            if let Some(why) = self.ctx.kernel_unavailable(op.name(), "") {
                return Err(Error::Invalid(why));
            }
        }
        Ok(())
    }

    /// lavapipe (Mesa's gallivm, on CPU-type adapters) silently ends an invocation's loops after 65,535
    /// iterations in all, which would truncate the flash kernels' walk over the keys at long
    /// sequences with large heads: refused here, with what to do.
    fn check_loop_budget(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            if let Op::AttentionDecode { t, c, nh, .. } = *op {
                if let Some(why) = self.decode_unsupported(t, c / nh) {
                    return Err(Error::Invalid(format!("{}: {why}", op.name())));
                }
            }
            if let Op::FlashAttentionForward { t, c, nh, .. } | Op::FlashAttentionBackward { t, c, nh, .. } =
                *op
            {
                if let Some(why) = self.flash_unsupported(t, c / nh) {
                    return Err(Error::Invalid(format!(
                        "{}: {why}; use attention = \"naive\" (or \"auto\", which picks it here)",
                        op.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies a config's `matmul` policy: "auto" (the autotuner, within [`crate::TUNING_BUDGET`]),
    /// "default" (the adapter's default variant) or a variant name (pinned, after its check).
    pub fn set_matmul_policy(&mut self, matmul: &str) -> Result<()> {
        match matmul {
            "auto" => self.autotune(crate::TUNING_BUDGET),
            "default" => {}
            variant => self.pin_matmul_variant(variant)?,
        }
        Ok(())
    }

    /// Uses matmul variant `name`, as [`GpuBackend::set_matmul_variant`] does, after checking it
    /// against the CPU twin on this adapter ([`tune::check_variant`]): the path of a variant the user
    /// pins.
    pub fn pin_matmul_variant(&mut self, name: &str) -> Result<()> {
        self.set_matmul_variant(name)?;
        tune::check_variant(&self.ctx, name)
    }

    /// Caps the elements one storage binding may hold at `elements` (rounded down to a multiple of
    /// 64), as a smaller adapter would: whole-buffer ops and the classifier then run in more pieces.
    /// Tests use it to exercise the chunked paths.
    pub fn limit_bindings(&mut self, elements: usize) {
        self.max_binding = (elements / 64 * 64).clamp(64, self.max_binding);
    }

    /// Acts as if the adapter lacked shader-f16, as many do (GL, older GPUs): tests use it to check
    /// what f16 training does there.
    pub fn hide_shader_f16(&mut self) {
        self.no_f16 = true;
    }

    /// How [`Backend::profile`] times dispatches on this adapter: "by timestamps between its
    /// dispatches" (GPU timestamps between the dispatches of one run, where the adapter writes
    /// timestamps inside passes), else "each dispatch alone".
    pub fn profile_method(&self) -> &'static str {
        let inside = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if self.ctx.features.contains(inside) {
            "by timestamps between its dispatches"
        } else {
            "each dispatch alone"
        }
    }

    /// Every dispatch's time in one run of a prepared program, recorded as [`Backend::run`] records
    /// it (one compute pass, one submit) with a GPU timestamp before each dispatch and after the last:
    /// a dispatch's time is the interval to the next stamp, so the times add up to the program's.
    fn profile_in_pass(&mut self, plan: PlanId) -> Result<Vec<(&'static str, f64)>> {
        let device = &self.ctx.device;
        let dispatches = &self.plans[plan.0].dispatches;
        let stamps = dispatches.len() + 1;
        let per_set = wgpu::QUERY_SET_MAX_QUERIES as usize;
        let sets: Vec<wgpu::QuerySet> = (0..stamps.div_ceil(per_set))
            .map(|i| {
                device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (stamps - i * per_set).min(per_set) as u32,
                })
            })
            .collect();
        let stamp = |pass: &mut wgpu::ComputePass, i: usize| {
            pass.write_timestamp(&sets[i / per_set], (i % per_set) as u32);
        };
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wgslm program (profiled)"),
                timestamp_writes: None,
            });
            for (i, d) in dispatches.iter().enumerate() {
                stamp(&mut pass, i);
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
            stamp(&mut pass, stamps - 1);
        }
        // Each set resolves to its own 256-aligned stretch (4096 stamps of 8 bytes).
        let bytes = (sets.len() * per_set * 8) as u64;
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolve = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let read = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        for (i, set) in sets.iter().enumerate() {
            let count = (stamps - i * per_set).min(per_set) as u32;
            encoder.resolve_query_set(set, 0..count, &resolve, (i * per_set * 8) as u64);
        }
        encoder.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        self.ctx.queue.submit([encoder.finish()]);
        self.ctx.check_faults("profiling a program")?;
        read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        self.ctx.wait("reading timestamps")?;
        let ticks: Vec<u64> = {
            let view = read
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::DeviceLost(format!("timestamps: {e}")))?;
            bytemuck::cast_slice::<u8, u64>(&view).to_vec()
        };
        let period = self.ctx.queue.get_timestamp_period() as f64;
        Ok(dispatches
            .iter()
            .enumerate()
            .map(|(i, d)| (d.entry, ticks[i + 1].saturating_sub(ticks[i]) as f64 * period * 1e-9))
            .collect())
    }

    /// Every dispatch's time with its entry point: inside one run of the program where the adapter
    /// can ([`GpuBackend::profile_in_pass`]), else each dispatch alone, submitted and waited for on its
    /// own (the wall clock). For profiling only.
    fn profile_dispatches(&mut self, plan: PlanId) -> Result<Vec<(&'static str, f64)>> {
        if self.profile_method() == "by timestamps between its dispatches" {
            return self.profile_in_pass(plan);
        }
        let mut times = Vec::new();
        for d in &self.plans[plan.0].dispatches {
            let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
            let t0 = std::time::Instant::now();
            self.ctx.queue.submit([encoder.finish()]);
            self.ctx.wait("profiling")?;
            times.push((d.entry, t0.elapsed().as_secs_f64()));
        }
        Ok(times)
    }

    /// Seconds per run of a prepared program, over `reps` runs recorded into one compute pass: by GPU
    /// timestamps where the adapter has them, else by the wall clock around submit and wait. Returns
    /// the seconds and the method ("timestamps" or "wall clock").
    pub fn time(&mut self, plan: PlanId, reps: usize) -> Result<(f64, &'static str)> {
        let reps = reps.max(1);
        let device = &self.ctx.device;
        let stamps = self.ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY);
        let query = stamps.then(|| {
            device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let timestamp_writes = query.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
                query_set: q,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("timing"), timestamp_writes });
            for _ in 0..reps {
                for d in &self.plans[plan.0].dispatches {
                    pass.set_pipeline(&d.pipeline);
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
        }
        let resolved = query.as_ref().map(|q| {
            let usage = wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC;
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 16,
                usage,
                mapped_at_creation: false,
            });
            let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
            let read = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: 16,
                usage,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(q, 0..2, &resolve, 0);
            encoder.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
            read
        });
        let t0 = std::time::Instant::now();
        self.ctx.queue.submit([encoder.finish()]);
        self.ctx.wait("timing a program")?;
        let wall = t0.elapsed().as_secs_f64() / reps as f64;
        let Some(read) = resolved else { return Ok((wall, "wall clock")) };
        read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        self.ctx.wait("reading timestamps")?;
        let ticks: Vec<u64> = {
            let view = read
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::DeviceLost(format!("timestamps: {e}")))?;
            bytemuck::cast_slice::<u8, u64>(&view).to_vec()
        };
        let ns = ticks[1].saturating_sub(ticks[0]) as f64 * self.ctx.queue.get_timestamp_period() as f64;
        // Some drivers report zero for passes they do not time; the wall clock is then the answer.
        Ok(if ns > 0.0 { (ns * 1e-9 / reps as f64, "timestamps") } else { (wall, "wall clock") })
    }

    /// Bytes allocated in storage buffers.
    pub fn allocated_bytes(&self) -> u64 {
        self.bufs.iter().map(|b| b.buffer.size()).sum()
    }

    fn create_buffer(&mut self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
        let limits = &self.ctx.adapter.limits;
        if size > limits.max_buffer_size {
            return Err(Error::TooLarge {
                what: label.to_string(),
                bytes: size,
                limit: limits.max_buffer_size,
                kind: "buffer",
                adapter: self.ctx.adapter.title(),
            });
        }
        log::debug!("allocating `{label}`: {size} bytes");
        let buffer = self.ctx.scoped(&format!("allocating {label} ({size} bytes)"), || {
            self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        })?;
        self.stats.buffers += 1;
        Ok(buffer)
    }

    fn dummy(&mut self) -> Result<View> {
        if let Some(d) = self.dummy {
            return Ok(d);
        }
        let id = self.alloc(DType::F32, 1, "unused binding")?;
        let view = View::new(id, 0, 1);
        self.dummy = Some(view);
        Ok(view)
    }

    /// Checks what wgpu would otherwise reject (or worse, clamp silently) for one bound view.
    fn check_view(&self, op: &str, i: usize, v: &View) -> Result<()> {
        let limits = &self.ctx.adapter.limits;
        let buf = self.bufs.get(v.buf.0).ok_or_else(|| {
            Error::Invalid(format!("{op}: binding {} names a buffer this backend does not own", i + 1))
        })?;
        let (offset, size) = (v.offset as u64 * 4, v.len as u64 * 4);
        if v.len == 0 || v.end() > buf.len {
            return Err(Error::Invalid(format!(
                "{op}: binding {} ({}..{}) is empty or outside `{}` ({} elements)",
                i + 1,
                v.offset,
                v.end(),
                buf.label,
                buf.len
            )));
        }
        if offset % limits.min_storage_buffer_offset_alignment as u64 != 0 {
            return Err(Error::Invalid(format!(
                "{op}: binding {} starts at byte {offset} of `{}`, not a multiple of {}: tensors must \
                 be laid out on 256-byte boundaries",
                i + 1,
                buf.label,
                limits.min_storage_buffer_offset_alignment
            )));
        }
        if size > limits.max_storage_buffer_binding_size {
            return Err(Error::TooLarge {
                what: format!("{op} binding {} (`{}`)", i + 1, buf.label),
                bytes: size,
                limit: limits.max_storage_buffer_binding_size,
                kind: "storage binding",
                adapter: self.ctx.adapter.title(),
            });
        }
        Ok(())
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!("gpu: {}", self.ctx.describe())
    }

    fn alloc(&mut self, dtype: DType, len: usize, label: &str) -> Result<BufId> {
        // A half buffer is its words from here on (only word views of it are ever bound).
        let len = if dtype == DType::Half { len.div_ceil(2) } else { len };
        let size = (len.max(1) as u64) * 4;
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let buffer = self.create_buffer(label, size, usage)?;
        self.bufs.push(GpuBuf { buffer, dtype, len, label: label.to_string() });
        Ok(BufId(self.bufs.len() - 1))
    }

    fn write_f32(&mut self, view: View, data: &[f32]) -> Result<()> {
        assert_eq!(view.len, data.len(), "write_f32: view and data lengths differ");
        let buf = &self.bufs[view.buf.0];
        assert_eq!(buf.dtype, DType::F32, "write_f32 into the u32 buffer `{}`", buf.label);
        assert!(view.end() <= buf.len, "write_f32 past the end of `{}`", buf.label);
        if !data.is_empty() {
            self.ctx.queue.write_buffer(&buf.buffer, view.offset as u64 * 4, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    fn write_u32(&mut self, view: View, data: &[u32]) -> Result<()> {
        assert_eq!(view.len, data.len(), "write_u32: view and data lengths differ");
        let buf = &self.bufs[view.buf.0];
        assert_ne!(buf.dtype, DType::F32, "write_u32 into the f32 buffer `{}`", buf.label);
        assert!(view.end() <= buf.len, "write_u32 past the end of `{}`", buf.label);
        if !data.is_empty() {
            self.ctx.queue.write_buffer(&buf.buffer, view.offset as u64 * 4, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    fn read_f32_into(&mut self, view: View, out: &mut [f32]) -> Result<()> {
        assert_eq!(out.len(), view.len, "read_f32_into: the slice must hold the view");
        self.read_words(view, bytemuck::cast_slice_mut(out))
    }

    fn read_u32_into(&mut self, view: View, out: &mut [u32]) -> Result<()> {
        assert_eq!(out.len(), view.len, "read_u32_into: the slice must hold the view");
        assert_ne!(self.bufs[view.buf.0].dtype, DType::F32, "read_u32_into from an f32 buffer");
        self.read_words(view, bytemuck::cast_slice_mut(out))
    }

    fn prepare(&mut self, ops: &[Op]) -> Result<PlanId> {
        self.check_ops(ops)?;
        let dummy = self.dummy()?;
        // One scratch buffer serves every op of the program: ops run one after another, and each
        // uses its scratch only within its own dispatches.
        let scratch_len = ops.iter().map(|op| kernels::scratch_len(op, self.max_binding)).max().unwrap_or(0);
        let scratch = if scratch_len > 0 {
            View::new(self.alloc(DType::F32, scratch_len, "reduction scratch")?, 0, scratch_len)
        } else {
            dummy
        };
        self.tune(ops, &self.env(dummy, scratch));
        // With the choices just made.
        let env = self.env(dummy, scratch);
        let mut calls = Vec::new();
        for op in ops {
            for call in kernels::calls(op, &env) {
                for (i, v) in call.views.iter().enumerate() {
                    self.check_view(op.name(), i, v)?;
                }
                if call.groups.iter().any(|&g| g > kernels::MAX_GROUPS_PER_DIM) {
                    return Err(Error::Invalid(format!(
                        "{}: grid {:?} is beyond {} workgroups per dimension; use a smaller batch",
                        op.name(),
                        call.groups,
                        kernels::MAX_GROUPS_PER_DIM
                    )));
                }
                calls.push(call);
            }
        }
        // On lavapipe, compile the program's new pipelines on every core before the first dispatch.
        self.ctx.precompile(&calls)?;
        let params = if calls.is_empty() {
            None
        } else {
            let mut bytes = vec![0u8; calls.len() * PARAM_SLOT as usize];
            for (i, call) in calls.iter().enumerate() {
                let words: &[u8] = bytemuck::cast_slice(&call.params);
                let at = i * PARAM_SLOT as usize;
                bytes[at..at + words.len()].copy_from_slice(words);
            }
            let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
            let buffer = self.create_buffer("kernel params", bytes.len() as u64, usage)?;
            self.ctx.queue.write_buffer(&buffer, 0, &bytes);
            Some(buffer)
        };
        let mut dispatches = Vec::with_capacity(calls.len());
        for (i, call) in calls.iter().enumerate() {
            let pipeline = self.ctx.pipeline(call)?;
            let layout = pipeline.get_bind_group_layout(0);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: params.as_ref().unwrap(),
                    offset: i as u64 * PARAM_SLOT,
                    size: NonZeroU64::new(PARAM_SLOT),
                }),
            }];
            for (b, v) in call.views.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: b as u32 + 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &self.bufs[v.buf.0].buffer,
                        offset: v.offset as u64 * 4,
                        size: NonZeroU64::new(v.len as u64 * 4),
                    }),
                });
            }
            let bind_group = self.ctx.scoped(&format!("binding the buffers of {}", call.entry), || {
                self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(call.entry),
                    layout: &layout,
                    entries: &entries,
                })
            })?;
            self.stats.bind_groups += 1;
            dispatches.push(Dispatch { entry: call.entry, pipeline, bind_group, groups: call.groups });
        }
        self.plans.push(Plan { dispatches, _params: params });
        Ok(PlanId(self.plans.len() - 1))
    }

    fn run(&mut self, plan: PlanId) -> Result<()> {
        let plan = &self.plans[plan.0];
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgslm program") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wgslm program"),
                timestamp_writes: None,
            });
            for d in &plan.dispatches {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.stats.submits += 1;
        self.ctx.check_faults("running a program")
    }

    fn sync(&mut self) -> Result<()> {
        self.ctx.wait("waiting for the GPU")
    }

    fn created(&self) -> Created {
        Created { pipelines: self.ctx.pipelines_built(), ..self.stats }
    }

    fn dtype(&self, buf: BufId) -> DType {
        self.bufs[buf.0].dtype
    }

    fn profile(&mut self, plan: PlanId) -> Result<Vec<(&'static str, f64)>> {
        self.profile_dispatches(plan)
    }

    fn profile_method(&self) -> &'static str {
        GpuBackend::profile_method(self)
    }

    fn live_buffers(&self) -> Option<(usize, u64)> {
        Some(self.ctx.live_buffers())
    }

    fn buffers(&self) -> Vec<(String, u64)> {
        self.bufs.iter().map(|b| (b.label.clone(), b.buffer.size())).collect()
    }

    fn warm(&mut self, ops: &[Op]) -> Result<()> {
        self.check_ops(ops)?;
        let env = self.placeholder_env(ops);
        self.tune(ops, &env);
        // Without tuning (or with every shape chosen already), the kernels as they will run.
        self.ctx.precompile(&self.planned_calls(ops))
    }

    fn max_binding(&self) -> usize {
        self.max_binding
    }

    fn f16_unsupported(&self) -> Option<String> {
        (self.no_f16 || !self.ctx.features.contains(wgpu::Features::SHADER_F16))
            .then(|| format!("{} lacks shader-f16", self.ctx.adapter.title()))
    }

    fn flash_unsupported(&self, t: usize, hs: usize) -> Option<String> {
        if let Some(why) = self.ctx.flash_unavailable() {
            return Some(why);
        }
        if self.ctx.adapter.info.device_type == wgpu::DeviceType::Cpu {
            let iterations = if self.family == "rows" {
                kernels::flash_rows_loop_iterations(t, hs)
            } else {
                kernels::flash_loop_iterations(t, hs)
            };
            if iterations > 65_535 {
                return Some(format!(
                    "at T = {t} with head size {hs} one invocation would loop {iterations} times, and {} stops \
                     every invocation after 65,535",
                    self.ctx.adapter.title()
                ));
            }
        }
        None
    }

    fn decode_unsupported(&self, t: usize, hs: usize) -> Option<String> {
        let iterations = kernels::decode_loop_iterations(t, hs);
        (self.ctx.adapter.info.device_type == wgpu::DeviceType::Cpu && iterations > 65_535).then(|| {
            format!(
                "over {t} keys with head size {hs} one invocation of attention_decode would loop {iterations} \
                 times, and {} stops every invocation after 65,535",
                self.ctx.adapter.title()
            )
        })
    }

    fn kernel_choices(&self) -> std::collections::BTreeMap<String, String> {
        self.choices.iter().map(|(s, v)| (tune::shape_key(*s), v.to_string())).collect()
    }

    fn pin_kernel_choices(&mut self, choices: &std::collections::BTreeMap<String, String>) -> Result<()> {
        for (shape, variant) in choices {
            let parsed = tune::parse_shape_key(shape);
            let known = self.ctx.matmul_variants().into_iter().find(|v| *v == variant.as_str());
            match (parsed, known) {
                (Some(s), Some(v)) => {
                    self.choices.insert(s, v);
                }
                (Some(_), None) if self.ctx.variant_unavailable(variant).is_some() => {
                    let why = self.ctx.variant_unavailable(variant).unwrap_or_default();
                    return Err(Error::Invalid(format!(
                        "the checkpoint's kernel choice {shape} -> {variant}: {why}; resume on the adapter it was \
                         trained on"
                    )));
                }
                _ => return Err(Error::Invalid(format!("unknown kernel choice {shape:?} -> {variant:?}"))),
            }
        }
        Ok(())
    }
}
