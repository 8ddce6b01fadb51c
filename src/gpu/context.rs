//! Adapter choice, device creation with the adapter's own limits, and wgpu fault capture.
//!
//! wgpu's default uncaptured-error handler panics; here every fault is recorded instead and turned into
//! an `Error` at the next synchronisation point, and allocations are wrapped in error scopes.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::kernels::{self, Call};
use crate::{Error, Result};

/// What `--device` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// First discrete GPU, then integrated, then virtual, then anything (software last).
    Auto,
    /// The best adapter of one graphics API.
    Api(wgpu::Backend),
    /// An index from `wgslm devices`.
    Index(usize),
    /// The CPU reference backend (no wgpu at all).
    Cpu,
    /// What `auto` picks for one of several processes on a machine (data-parallel ranks): the n-th
    /// adapter (modulo their count) among those of the best kind.
    Local(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "vulkan" | "vk" => DeviceChoice::Api(wgpu::Backend::Vulkan),
            "metal" => DeviceChoice::Api(wgpu::Backend::Metal),
            "dx12" | "d3d12" => DeviceChoice::Api(wgpu::Backend::Dx12),
            "gl" | "gles" | "opengl" => DeviceChoice::Api(wgpu::Backend::Gl),
            other => match other.parse::<usize>() {
                Ok(i) => DeviceChoice::Index(i),
                Err(_) => return Err(Error::BadDevice(s.to_string())),
            },
        })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Api(b) => write!(f, "{}", b.to_str()),
            DeviceChoice::Index(i) => write!(f, "{i}"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Local(n) => write!(f, "auto (local rank {n})"),
        }
    }
}

/// The optional features wgslm uses when an adapter has them. Requested explicitly, never assumed.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
}

/// Everything `wgslm devices` prints about one adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub cooperative_matrix_shapes: usize,
}

impl AdapterSummary {
    fn of(index: usize, adapter: &wgpu::Adapter) -> Self {
        AdapterSummary {
            index,
            info: adapter.get_info(),
            limits: adapter.limits(),
            features: adapter.features(),
            cooperative_matrix_shapes: adapter.cooperative_matrix_properties().len(),
        }
    }

    /// "llvmpipe (LLVM 15.0.6, 256 bits) [Vulkan, Cpu]"
    pub fn title(&self) -> String {
        format!("{} [{}, {:?}]", self.info.name, self.info.backend.to_str(), self.info.device_type)
    }

    pub fn driver(&self) -> String {
        let (d, i) = (&self.info.driver, &self.info.driver_info);
        match (d.is_empty(), i.is_empty()) {
            (true, true) => "unknown".into(),
            (false, true) => d.clone(),
            (true, false) => i.clone(),
            (false, false) => format!("{d} ({i})"),
        }
    }

    /// The optional features that matter to wgslm, by name.
    pub fn feature_names(&self) -> Vec<&'static str> {
        let f = self.features;
        let mut names = Vec::new();
        for (flag, name) in [
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SUBGROUP, "subgroups"),
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
            (wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES, "timestamp-query-inside-passes"),
        ] {
            if f.contains(flag) {
                names.push(name);
            }
        }
        if f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) || self.cooperative_matrix_shapes > 0 {
            names.push("cooperative-matrix");
        }
        names
    }
}

/// Rank for `--device auto`: lower is better.
fn auto_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    // GL lacks features (timestamps, subgroups) the native APIs have; prefer those.
    let api = u8::from(info.backend == wgpu::Backend::Gl);
    (ty, api)
}

/// The adapters of some graphics APIs. Each call makes its own instance: an instance initialises
/// every API it is created for, and GL's EGL probe is slow and noisy where there is no display.
fn adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// The first per-pipeline limit `call`'s entry point (in the validated `module`) exceeds, as (what, needed, allowed):
/// storage buffers per stage (one per bound view), invocations per workgroup, or workgroup memory (the
/// workgroup variables its function names directly).
pub fn exceeded_limit(
    call: &Call,
    module: &naga::Module,
    limits: &wgpu::Limits,
) -> Option<(&'static str, u64, u64)> {
    let buffers = call.views.len() as u64;
    if buffers > limits.max_storage_buffers_per_shader_stage as u64 {
        return Some((
            "storage buffers per shader stage",
            buffers,
            limits.max_storage_buffers_per_shader_stage as u64,
        ));
    }
    let entry = module.entry_points.iter().find(|e| e.name == call.entry)?;
    let invocations: u64 = entry.workgroup_size.iter().map(|&d| d as u64).product();
    if invocations > limits.max_compute_invocations_per_workgroup as u64 {
        let have = limits.max_compute_invocations_per_workgroup as u64;
        return Some(("invocations per workgroup", invocations, have));
    }
    let mut shared = 0u64;
    let mut seen = std::collections::HashSet::new();
    for (_, expr) in entry.function.expressions.iter() {
        if let naga::Expression::GlobalVariable(g) = expr {
            let var = &module.global_variables[*g];
            if var.space == naga::AddressSpace::WorkGroup && seen.insert(*g) {
                shared += module.types[var.ty].inner.size(module.to_ctx()) as u64;
            }
        }
    }
    let have = limits.max_compute_workgroup_storage_size as u64;
    (shared > have).then_some(("bytes of workgroup memory", shared, have))
}

/// Every adapter this machine offers, in the order `--device <index>` uses.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(wgpu::Backends::all()).iter().enumerate().map(|(i, a)| AdapterSummary::of(i, a)).collect()
}

/// Faults reported by wgpu outside of error scopes, collected until the next check.
#[derive(Default)]
struct Faults {
    errors: Vec<String>,
    lost: Option<String>,
}

/// Shader modules and pipelines, built once per device and shared by every backend on it.
#[derive(Default)]
struct PipelineCache {
    /// Each source's compiled module and its naga form (parsed and validated once; the limit check
    /// reads the naga form).
    modules: HashMap<(&'static str, &'static str), (wgpu::ShaderModule, naga::Module)>,
    pipelines: HashMap<String, wgpu::ComputePipeline>,
}

/// The most devices [`GpuContext::precompile`] compiles on at once (this one and its helpers).
pub const PRECOMPILE_WORKERS: usize = 4;

/// What tells one pipeline from another: entry point, source variant and override constants.
fn pipeline_key(call: &Call) -> String {
    format!("{}[{}]{:?}", call.entry, call.source, call.constants)
}

/// An open device on the chosen adapter. Shared (`Arc`) by the backends that run on it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    /// The features requested and granted (a subset of [`wanted_features`]).
    pub features: wgpu::Features,
    faults: Arc<Mutex<Faults>>,
    cache: Mutex<PipelineCache>,
    pipelines_built: AtomicUsize,
    /// A matmul kernel loaded at run time, compiled for calls whose source is "custom".
    custom: Mutex<Option<Arc<kernels::CustomMatmul>>>,
    /// What opened this device (a helper device of [`GpuContext::precompile`] opens the same adapter).
    choice: DeviceChoice,
}

impl GpuContext {
    /// Opens the adapter `choice` names. `DeviceChoice::Cpu` is not a GPU and is refused here.
    pub fn new(choice: &DeviceChoice) -> Result<Self> {
        // `auto` and the native APIs look only at Vulkan, Metal and DX12 first (GL ranks last anyway);
        // an index counts every adapter, as `wgslm devices` lists them.
        let native = matches!(choice, DeviceChoice::Auto | DeviceChoice::Local(_))
            || matches!(choice, DeviceChoice::Api(b) if *b != wgpu::Backend::Gl);
        let mut all = if native { adapters(wgpu::Backends::PRIMARY) } else { Vec::new() };
        if all.is_empty() {
            all = adapters(wgpu::Backends::all());
        }
        let available = || {
            let names: Vec<String> = all
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{i}: {}", AdapterSummary::of(i, a).title()))
                .collect();
            if names.is_empty() {
                "none (no Vulkan, Metal, DX12 or GL driver found; on Linux without a GPU: \
                 apt-get install mesa-vulkan-drivers)"
                    .to_string()
            } else {
                names.join("; ")
            }
        };
        let no_adapter = || Error::NoAdapter { wanted: choice.to_string(), available: available() };
        let index = match choice {
            DeviceChoice::Cpu => return Err(Error::BadDevice("cpu is not a GPU adapter".into())),
            DeviceChoice::Index(i) if *i < all.len() => *i,
            DeviceChoice::Index(_) => return Err(no_adapter()),
            DeviceChoice::Auto | DeviceChoice::Api(_) => (0..all.len())
                .filter(|&i| match choice {
                    DeviceChoice::Api(b) => all[i].get_info().backend == *b,
                    _ => true,
                })
                .min_by_key(|&i| auto_rank(&all[i].get_info()))
                .ok_or_else(no_adapter)?,
            DeviceChoice::Local(n) => {
                let best = all.iter().map(|a| auto_rank(&a.get_info())).min().ok_or_else(no_adapter)?;
                let tier: Vec<usize> =
                    (0..all.len()).filter(|&i| auto_rank(&all[i].get_info()) == best).collect();
                tier[n % tier.len()]
            }
        };
        let adapter = &all[index];
        let summary = AdapterSummary::of(index, adapter);
        let features = adapter.features() & wanted_features();
        let desc = wgpu::DeviceDescriptor {
            label: Some("wgslm"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::RequestDevice { adapter: summary.title(), message: e.to_string() })?;

        let faults = Arc::new(Mutex::new(Faults::default()));
        let sink = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            sink.lock().unwrap().errors.push(e.to_string());
        }));
        let sink = faults.clone();
        device.set_device_lost_callback(move |reason, message| {
            sink.lock().unwrap().lost.get_or_insert(format!("{reason:?}: {message}"));
        });
        log::info!("opened {} (driver {})", summary.title(), summary.driver());
        Ok(GpuContext {
            device,
            queue,
            adapter: summary,
            features,
            faults,
            cache: Mutex::new(PipelineCache::default()),
            pipelines_built: AtomicUsize::new(0),
            custom: Mutex::new(None),
            choice: choice.clone(),
        })
    }

    /// Whether this adapter compiles a pipeline only at its first dispatch, one at a time on its queue
    /// thread, keeps what it compiled in Mesa's on-disk shader cache, and compiles at a dispatch over
    /// no workgroups: lavapipe (llvmpipe under Vulkan). [`GpuContext::precompile`] spreads such
    /// compiles over the CPU's cores; unless `MESA_SHADER_CACHE_DISABLE` turns that cache off, which
    /// the spreading relies on. llvmpipe under GL compiles lazily too, but an empty dispatch does not
    /// make it compile (measured: `verify --quick --device gl` precompiled 48 pipelines in 0.2 s and
    /// then compiled each at its first real dispatch), so GL is left as it was.
    pub fn compiles_lazily_with_a_disk_cache(&self) -> bool {
        let disabled = std::env::var("MESA_SHADER_CACHE_DISABLE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        let info = &self.adapter.info;
        info.device_type == wgpu::DeviceType::Cpu && info.backend == wgpu::Backend::Vulkan && !disabled
    }

    /// Compiles the pipelines of `calls` that this device has not built yet, before their first real
    /// dispatch, on as many cores as there are (at most [`PRECOMPILE_WORKERS`]).
    ///
    /// lavapipe (llvmpipe under Vulkan) compiles a pipeline at its first dispatch, on the one queue thread, so the pipelines
    /// of a new program compile one after another while the other core idles: most of a cold start.
    /// Here, this device and helper devices on the same adapter, one per further core, take the
    /// pipelines from one list and dispatch each once, over no workgroups, on placeholder buffers
    /// ([`GpuContext::dispatch_once`]). What a helper compiles lands in Mesa's on-disk
    /// shader cache, from which this device loads it at the pipeline's first real dispatch instead of
    /// compiling it again. Elsewhere (a GPU driver compiles when the pipeline is built, and one core or
    /// a disabled cache leaves nothing to gain) the pipelines are built as the program needs them.
    /// A helper that fails only costs time: this device compiles what it left.
    pub fn precompile(&self, calls: &[Call]) -> Result<()> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(PRECOMPILE_WORKERS);
        if workers < 2 || !self.compiles_lazily_with_a_disk_cache() {
            return Ok(());
        }
        let mut todo: Vec<&Call> = Vec::new();
        {
            let cache = self.cache.lock().unwrap();
            let mut seen = std::collections::HashSet::new();
            for call in calls {
                let key = pipeline_key(call);
                if !cache.pipelines.contains_key(&key) && seen.insert(key) {
                    todo.push(call);
                }
            }
        }
        if todo.len() < 2 {
            return Ok(());
        }
        // The slowest compiles first, so that none is left to run alone at the end: `matmul_rows`
        // (its 16x32 tile, f32 or f16) and `matmul_rows4` take 12-45 s each on llvmpipe, most kernels
        // a second or two.
        todo.sort_by_key(|call| !matches!(call.entry, "matmul_rows" | "matmul_rows4"));
        let started = std::time::Instant::now();
        let next = AtomicUsize::new(0);
        let take = || todo.get(next.fetch_add(1, Ordering::Relaxed)).copied();
        std::thread::scope(|scope| -> Result<()> {
            for _ in 1..workers.min(todo.len()) {
                scope.spawn(|| {
                    let helper = match GpuContext::new(&self.choice) {
                        Ok(helper) => helper,
                        Err(e) => return log::warn!("precompiling: no helper device ({e})"),
                    };
                    while let Some(call) = take() {
                        // A kernel loaded at run time exists on this device only.
                        if call.source == "custom" {
                            continue;
                        }
                        if let Err(e) = helper.dispatch_once(call) {
                            log::warn!("precompiling {} on a helper device: {e}", call.entry);
                        }
                    }
                });
            }
            while let Some(call) = take() {
                if let Err(e) = self.dispatch_once(call) {
                    // The helpers stop at their next pipeline instead of compiling the rest.
                    next.store(todo.len(), Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        })?;
        // What the helpers compiled is in the disk cache; building the pipelines here (cheap: lavapipe
        // compiles at the first dispatch) keeps a later call from handing them out again.
        for call in &todo {
            self.pipeline(call)?;
        }
        log::info!("precompiled {} pipelines on {workers} devices in {:.1?}", todo.len(), started.elapsed());
        Ok(())
    }

    /// Builds `call`'s pipeline and dispatches it with its own parameters over no workgroups, on
    /// placeholder buffers: on llvmpipe, what makes the pipeline compile, as its first real dispatch
    /// would. (The parameters matter: dispatched with all of them zero, `matmul_rows` took 20 ms and
    /// its first real dispatch still compiled for 17 s; lavapipe can inline uniform values.)
    fn dispatch_once(&self, call: &Call) -> Result<()> {
        let pipeline = self.pipeline(call)?;
        let layout = pipeline.get_bind_group_layout(0);
        let buffer = |usage, label| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 256,
                usage,
                mapped_at_creation: false,
            })
        };
        let params = buffer(wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST, "precompile params");
        let mut bytes = [0u8; 256];
        let words: &[u8] = bytemuck::cast_slice(&call.params);
        bytes[..words.len()].copy_from_slice(words);
        self.queue.write_buffer(&params, 0, &bytes);
        // One buffer per binding: a buffer bound read-only and read-write in one dispatch is refused.
        let storage: Vec<wgpu::Buffer> = call
            .views
            .iter()
            .map(|_| buffer(wgpu::BufferUsages::STORAGE, "precompile placeholder"))
            .collect();
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() }];
        entries.extend(
            storage.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            }),
        );
        self.scoped(&format!("precompiling {}", call.entry), || {
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("precompile"),
                layout: &layout,
                entries: &entries,
            });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(0, 0, 0);
            }
            self.queue.submit([encoder.finish()]);
        })?;
        let started = std::time::Instant::now();
        self.wait(&format!("precompiling {}", call.entry))?;
        log::debug!("precompiled {} in {:.1?}", pipeline_key(call), started.elapsed());
        Ok(())
    }

    /// Why matmul `variant` cannot run on this device (a feature it needs is missing), if it cannot.
    pub fn variant_unavailable(&self, variant: &str) -> Option<String> {
        let (feature, name) = kernels::variant_feature(variant)?;
        if !self.features.contains(feature) {
            return Some(format!(
                "matmul variant {variant:?} needs {name}, which {} lacks",
                self.adapter.title()
            ));
        }
        // The subgroup kernel numbers its lanes as if every subgroup held exactly `subgroup_lanes`
        // invocations. An adapter whose subgroup size varies (Intel 8/16/32, AMD 32/64) may run it with
        // another size, so it is not offered there.
        let (min, max) = (self.adapter.info.subgroup_min_size, self.adapter.info.subgroup_max_size);
        (feature == wgpu::Features::SUBGROUP && min != max).then(|| {
            format!(
                "matmul variant {variant:?} needs one subgroup size, and {} varies between {min} and {max}",
                self.adapter.title()
            )
        })
    }

    /// Why kernel `kernel` (an op name, as `wgslm verify` lists them) run with matmul `variant` ("" for
    /// none) cannot run on this device, if it cannot: `matmul_f16` needs shader-f16 whatever the variant.
    pub fn kernel_unavailable(&self, kernel: &str, variant: &str) -> Option<String> {
        if kernel.starts_with("flash_attention") {
            // Its variants are kernel families, not matmul variants.
            return self.flash_unavailable();
        }
        self.variant_unavailable(if kernel == "matmul_f16" { kernels::F16_SOURCE } else { variant })
    }

    /// Why the fused attention kernels are not used on this adapter at all, if they are not: llvmpipe
    /// under GL compiles a compute shader with barriers into LLVM coroutines, and for these kernels
    /// (their loops unrolled by Mesa's GLSL compiler) that takes minutes per head size (measured: more
    /// than 100 s at head size 32 with LLVM 15, stuck in CoroSplit). Vulkan on the same CPU compiles
    /// them in seconds.
    pub fn flash_unavailable(&self) -> Option<String> {
        let info = &self.adapter.info;
        (info.backend == wgpu::Backend::Gl && info.device_type == wgpu::DeviceType::Cpu).then(|| {
            format!(
                "{} (a software GL driver) takes minutes to compile the fused attention kernels",
                self.adapter.title()
            )
        })
    }

    /// The matmul variants this device can run, of [`kernels::MATMUL_VARIANTS`].
    pub fn matmul_variants(&self) -> Vec<&'static str> {
        kernels::MATMUL_VARIANTS.iter().copied().filter(|v| self.variant_unavailable(v).is_none()).collect()
    }

    /// The variants the autotuner times here: every available one, less the GPU-only ones
    /// ([`kernels::GPU_ONLY_VARIANTS`]) on a CPU adapter. (Per shape it may leave out more:
    /// [`kernels::superseded`].)
    pub fn tuning_candidates(&self) -> Vec<&'static str> {
        let cpu = self.adapter.info.device_type == wgpu::DeviceType::Cpu;
        self.matmul_variants()
            .into_iter()
            .filter(|v| !(cpu && kernels::GPU_ONLY_VARIANTS.contains(v)))
            .collect()
    }

    /// Lanes per lane group of the subgroup matmul: the adapter's smallest subgroup size, as a power
    /// of two within 4..=64.
    pub fn subgroup_lanes(&self) -> u32 {
        let min = self.adapter.info.subgroup_min_size.clamp(4, 64);
        1 << (31 - min.leading_zeros())
    }

    /// Turns any fault wgpu reported since the last check into an error.
    pub fn check_faults(&self, context: &str) -> Result<()> {
        let mut f = self.faults.lock().unwrap();
        if let Some(lost) = &f.lost {
            return Err(Error::DeviceLost(lost.clone()));
        }
        if !f.errors.is_empty() {
            let message = std::mem::take(&mut f.errors).join("; ");
            return Err(Error::Validation { context: context.to_string(), message });
        }
        Ok(())
    }

    /// Runs `f` inside out-of-memory and validation error scopes, and turns what they catch into errors.
    pub fn scoped<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o {
            log::debug!("out of memory: {e}");
            return Err(Error::OutOfMemory(context.to_string()));
        }
        if let Some(e) = v {
            return Err(Error::Validation { context: context.to_string(), message: e.to_string() });
        }
        Ok(value)
    }

    /// Blocks until all submitted work has finished, then reports faults.
    pub fn wait(&self, context: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(format!("{context}: {e}")))?;
        self.check_faults(context)
    }

    pub fn describe(&self) -> String {
        format!("{} (driver {})", self.adapter.title(), self.adapter.driver())
    }

    /// Buffers alive on the device and the bytes they hold, as wgpu's own counters see them.
    pub fn live_buffers(&self) -> (usize, u64) {
        let c = self.device.get_internal_counters();
        (c.hal.buffers.read().max(0) as usize, c.hal.buffer_memory.read().max(0) as u64)
    }

    /// Makes `kernel` the source of calls whose source is "custom" (replacing any earlier one).
    pub fn register_custom(&self, kernel: Arc<kernels::CustomMatmul>) {
        *self.custom.lock().unwrap() = Some(kernel);
        let mut cache = self.cache.lock().unwrap();
        cache.modules.retain(|(_, source), _| *source != "custom");
        cache.pipelines.retain(|key, _| !key.contains("[custom]"));
    }

    /// How many compute pipelines this device has built so far.
    pub fn pipelines_built(&self) -> usize {
        self.pipelines_built.load(Ordering::Relaxed)
    }

    /// The pipeline for a call's entry point and constants, built on first use.
    pub fn pipeline(&self, call: &Call) -> Result<wgpu::ComputePipeline> {
        let key = pipeline_key(call);
        let mut cache = self.cache.lock().unwrap();
        if let Some(p) = cache.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let custom = self.custom.lock().unwrap().clone().filter(|_| call.source == "custom");
        let file = if custom.is_some() { "custom" } else { kernels::shader_file(call.entry) };
        let (module, parsed) = match cache.modules.entry((file, call.source)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(match &custom {
                // Never in `kernels::TRUSTED` (no name there has this prefix); unchecked only when its
                // author asked (`bench kernels --unchecked`).
                Some(c) => self.compile_as(&format!("custom:{}", c.name), &c.source, c.unchecked)?,
                None => self.compile(file, &kernels::variant_source(file, call.source))?,
            }),
        };
        let shown = custom.as_ref().map_or(file, |c| c.name.as_str());
        self.check_limits(call, shown, parsed)?;
        let pipeline = self.scoped(&format!("building the pipeline {key}"), || {
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(call.entry),
                layout: None,
                module,
                entry_point: Some(call.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &call.constants,
                    ..Default::default()
                },
                cache: None,
            })
        })?;
        self.pipelines_built.fetch_add(1, Ordering::Relaxed);
        cache.pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Checks that `call`'s entry point fits this adapter's per-pipeline limits before its pipeline is
    /// built (see [`exceeded_limit`]); wgpu would refuse such a pipeline with a validation error that
    /// names neither the kernel nor the limit.
    fn check_limits(&self, call: &Call, file: &str, module: &naga::Module) -> Result<()> {
        match exceeded_limit(call, module, &self.adapter.limits) {
            None => Ok(()),
            Some((what, need, have)) => Err(Error::Unsupported {
                kernel: call.entry.to_string(),
                file: file.to_string(),
                what,
                need,
                have,
                adapter: self.adapter.title(),
            }),
        }
    }

    /// Compiles one WGSL source, and returns its validated naga form with it; a compile error names
    /// the file, line and column.
    pub fn compile(&self, file: &str, source: &str) -> Result<(wgpu::ShaderModule, naga::Module)> {
        self.compile_as(file, source, kernels::TRUSTED.contains(&file))
    }

    /// As [`GpuContext::compile`], without wgpu's runtime bounds checks when `trusted`.
    fn compile_as(
        &self,
        file: &str,
        source: &str,
        trusted: bool,
    ) -> Result<(wgpu::ShaderModule, naga::Module)> {
        let parsed = kernels::validate_wgsl(file, source)?;
        let module = self.scoped(&format!("compiling shaders/{file}"), || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            };
            if trusted {
                // SAFETY: every index the kernels of `kernels::TRUSTED` compute is clamped or guarded in
                // the source, and tests/kernels.rs checks them at edge shapes against the CPU twins; a
                // drop-in is compiled so only on its author's word (`bench kernels --unchecked`).
                unsafe {
                    self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            } else {
                self.device.create_shader_module(desc)
            }
        })?;
        Ok((module, parsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::View;

    fn call(entry: &'static str, views: usize) -> Call {
        let v = View::new(crate::backend::BufId(0), 0, 1);
        Call {
            entry,
            source: "",
            constants: Vec::new(),
            views: vec![v; views],
            params: Vec::new(),
            groups: [1; 3],
        }
    }

    /// GLES 3.1's minimum limits: 4 storage buffers per stage, 128 invocations, 16 KiB.
    fn gles() -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffers_per_shader_stage: 4,
            max_compute_invocations_per_workgroup: 128,
            ..wgpu::Limits::default()
        }
    }

    fn check(entry: &'static str, views: usize, limits: &wgpu::Limits) -> Option<(&'static str, u64, u64)> {
        let file = kernels::shader_file(entry);
        let module = kernels::validate_wgsl(file, kernels::shader_source(file)).unwrap();
        exceeded_limit(&call(entry, views), &module, limits)
    }

    #[test]
    fn kernels_over_an_adapters_limits_are_named_before_the_pipeline() {
        // layernorm_backward binds six buffers; GLES allows four.
        assert_eq!(check("layernorm_backward", 6, &gles()), Some(("storage buffers per shader stage", 6, 4)));
        // reduce_sum runs 256 invocations per workgroup.
        assert_eq!(check("reduce_sum", 2, &gles()), Some(("invocations per workgroup", 256, 128)));
        // tiled64 stages two 64x16 tiles of f32 in workgroup memory: 8 KiB.
        let tiny = wgpu::Limits { max_compute_workgroup_storage_size: 4096, ..wgpu::Limits::default() };
        let (what, need, have) = check("matmul_tiled", 4, &tiny).expect("over the limit");
        assert_eq!((what, have), ("bytes of workgroup memory", 4096));
        assert!(need > 4096, "{need}");
        // Everything fits WebGPU's defaults.
        assert_eq!(check("layernorm_backward", 6, &wgpu::Limits::default()), None);
        assert_eq!(check("matmul_tiled", 4, &wgpu::Limits::default()), None);
    }
}
