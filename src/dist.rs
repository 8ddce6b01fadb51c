//! Data parallelism across processes: `mpirun -np N wgslm train ...` runs N ranks, one per GPU, and
//! every step sums the ranks' gradients on the host (wgpu has no GPU-to-GPU collective).
//!
//! Each rank draws the whole step's token stream from the same seeded loader and keeps its own share
//! of it (rank r takes micro-batches r·A .. r·A + A of the N·A the step draws), so the stream is a
//! function of the seed, the step and the rank, and N ranks with `grad_accum_steps` A see exactly the
//! batches one process with A·N sees. After its backward pass a rank reads its gradients and its loss
//! into one flat buffer; one all-reduce sums that buffer over the ranks, the sum is scaled by 1/N, and
//! every rank runs the same global norm, clipping and AdamW on the same numbers, so the parameters
//! stay the same on every rank. A non-finite gradient on any rank makes the sum non-finite on all of
//! them, so every rank skips that step together.
//!
//! MPI is a cargo feature (`--features mpi`); without it `World` is always one process, and a binary
//! started by a launcher as one of several ranks refuses to run rather than train N copies.

use std::time::Instant;

use crate::backend::{AdamwHyper, Backend};
use crate::data::Loader;
use crate::gpu::DeviceChoice;
use crate::model::{Model, StepStats};
use crate::{Error, Result};

/// The processes of one job and this process's place among them.
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    #[cfg(feature = "mpi")]
    mpi: Option<Mpi>,
}

#[cfg(feature = "mpi")]
struct Mpi {
    // Declared first so it is dropped before the universe finalizes MPI.
    world: mpi::topology::SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// Returns once every rank has reached this point, napping meanwhile. MPI's blocking calls
    /// busy-poll: a rank that reached the all-reduce first would spin a core while the others still
    /// compute (or rank 0 evaluates), taking the CPU that their driver (or lavapipe itself) needs.
    /// After this the collective that follows finds every rank there and spins only while it moves
    /// the data.
    fn arrive(&self) {
        use mpi::collective::CommunicatorCollectives;
        let mut request = self.world.immediate_barrier();
        let mut nap = std::time::Duration::from_micros(10);
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(std::time::Duration::from_millis(1));
        }
    }
}

/// The size of the job a launcher started this process in, if one did: Open MPI's mpirun sets
/// OMPI_COMM_WORLD_SIZE; MPICH's and Intel MPI's mpiexec (Hydra) and Slurm's srun with PMI set PMI_SIZE.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|var| std::env::var(var).ok()?.trim().parse().ok())
}

impl World {
    /// One process: no MPI.
    pub fn single() -> Self {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    /// The job this process belongs to: MPI's world when a launcher started it (and the binary has
    /// MPI), else one process.
    pub fn from_env() -> Result<Self> {
        let Some(size) = launched_size() else { return Ok(Self::single()) };
        #[cfg(feature = "mpi")]
        {
            let _ = size;
            Self::init_mpi()
        }
        #[cfg(not(feature = "mpi"))]
        {
            if size > 1 {
                return Err(Error::Invalid(format!(
                    "started by an MPI launcher as one of {size} ranks, but this wgslm was built without MPI, \
                     so every rank would train alone; build it with `cargo build --release --features mpi`, \
                     or run it without mpirun"
                )));
            }
            Ok(Self::single())
        }
    }

    #[cfg(feature = "mpi")]
    fn init_mpi() -> Result<Self> {
        use mpi::topology::Communicator;
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Invalid("MPI was initialised twice in one process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        // The ranks that share this machine's memory, numbered in world order: the GPU to take.
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(World { rank, size, local_rank, mpi: Some(Mpi { world, _universe: universe }) })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// This rank's number among the ranks on its machine.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The adapter this rank opens for `--device choice`: with several ranks, `auto` becomes the
    /// adapter of this rank's number on its machine; anything else is as given.
    pub fn device(&self, choice: &DeviceChoice) -> DeviceChoice {
        match choice {
            DeviceChoice::Auto if self.size > 1 => DeviceChoice::Local(self.local_rank),
            other => other.clone(),
        }
    }

    /// Rank 0: the one that prints, evaluates, samples and writes.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Replaces `buf` on every rank by its element-wise sum over the ranks (one MPI_Allreduce into
    /// `scratch`, which then trades places with `buf`: both are reused from call to call). Returns the
    /// seconds spent waiting for the other ranks to arrive and the seconds of the all-reduce itself.
    pub fn sum(&self, buf: &mut Vec<f32>, scratch: &mut Vec<f32>) -> (f64, f64) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let t0 = Instant::now();
            m.arrive();
            let t1 = Instant::now();
            scratch.resize(buf.len(), 0.0);
            m.world.all_reduce_into(&buf[..], &mut scratch[..], SystemOperation::sum());
            std::mem::swap(buf, scratch);
            return ((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64());
        }
        let _ = (buf, scratch);
        (0.0, 0.0)
    }

    /// Replaces `buf` on every rank by rank 0's (one MPI_Bcast).
    pub fn broadcast(&self, buf: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            use mpi::topology::Communicator;
            use mpi::traits::Root;
            m.world.process_at_rank(0).broadcast_into(buf);
        }
        let _ = buf;
    }

    /// Rank 0's `bytes` on every rank (two MPI_Bcasts: the length, then the bytes); what the other
    /// ranks pass is ignored.
    pub fn share(&self, bytes: Vec<u8>) -> Vec<u8> {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            use mpi::topology::Communicator;
            use mpi::traits::Root;
            m.arrive();
            let root = m.world.process_at_rank(0);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            let mut buf = if self.is_root() { bytes } else { vec![0u8; len as usize] };
            root.broadcast_into(&mut buf[..]);
            return buf;
        }
        bytes
    }

    /// Whether every rank passed the same `value` (a fingerprint of what must agree).
    pub fn agree(&self, value: u64) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            use mpi::collective::{CommunicatorCollectives, SystemOperation};
            let (mut lo, mut hi) = (0u64, 0u64);
            m.world.all_reduce_into(&value, &mut lo, SystemOperation::min());
            m.world.all_reduce_into(&value, &mut hi, SystemOperation::max());
            return lo == hi;
        }
        let _ = value;
        true
    }

    /// Ends the whole job with `code` (MPI_Abort): what a rank does on an error, so the others do not
    /// wait for it forever. A single process just exits.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            use mpi::topology::Communicator;
            m.world.abort(code);
        }
        std::process::exit(code)
    }
}

/// Loads one step's micro-batches: draws all `world.size() × A` of the step from `loader` (every rank
/// draws the same stream), gives `model` this rank's share, and passes every batch, in stream order,
/// to `each` (the batch record).
pub fn load_step(
    model: &mut Model,
    loader: &mut Loader,
    world: &World,
    mut each: impl FnMut(&[u32], &[u32]) -> Result<()>,
) -> Result<()> {
    let accum = model.shape.accum;
    for global in 0..world.size() * accum {
        let (x, y) = loader.next_batch();
        if global / accum == world.rank() {
            model.set_batch(global % accum, &x, &y)?;
        }
        each(&x, &y)?;
    }
    Ok(())
}

/// One optimizer step of the job, and where a data-parallel step spent its host time (all zero for
/// one process).
pub struct Stepped {
    pub stats: StepStats,
    /// Waiting for the other ranks to finish their backward pass (or rank 0 its evaluation).
    pub wait_s: f64,
    /// The all-reduce of the gradients and the loss, once every rank is there.
    pub allreduce_s: f64,
    /// Reading the gradients back and writing their mean.
    pub copy_s: f64,
}

/// Host buffers a data-parallel step reuses.
#[derive(Default)]
pub struct StepBuffers {
    flat: Vec<f32>,
    scratch: Vec<f32>,
}

/// One optimizer step over the loaded micro-batches of every rank. One process runs
/// [`Model::step`] (one program, no readback); N ranks compute their gradients, sum them and the
/// loss in one all-reduce, scale by 1/N, and update identically.
pub fn step(model: &mut Model, world: &World, hyper: &AdamwHyper, bufs: &mut StepBuffers) -> Result<Stepped> {
    if world.size() == 1 {
        return Ok(Stepped { stats: model.step(hyper)?, wait_s: 0.0, allreduce_s: 0.0, copy_s: 0.0 });
    }
    let loss = model.local_grads()?;
    let t0 = Instant::now();
    let total = model.layout.total;
    bufs.flat.resize(total + 1, 0.0);
    model.read_grads_into(&mut bufs.flat[..total])?;
    bufs.flat[total] = loss;
    let t1 = Instant::now();
    let (wait_s, allreduce_s) = world.sum(&mut bufs.flat, &mut bufs.scratch);
    let t2 = Instant::now();
    let scale = (1.0 / world.size() as f64) as f32;
    bufs.flat.iter_mut().for_each(|g| *g *= scale);
    let loss = bufs.flat[total];
    model.set_grads(&bufs.flat[..total])?;
    let copy_s = (t1 - t0 + t2.elapsed()).as_secs_f64();
    Ok(Stepped { stats: model.apply_grads(hyper, loss)?, wait_s, allreduce_s, copy_s })
}

/// Builds a model with `build` so that every rank runs rank 0's matmul variants: the autotuner times
/// kernels in each process, and ranks that picked differently would round differently and drift
/// apart. Rank 0 builds its model (tuning as it goes) and shares its choices; the others pin them
/// before they build theirs.
pub fn build_alike(
    world: &World,
    mut backend: Box<dyn Backend>,
    build: impl FnOnce(Box<dyn Backend>) -> Result<Model>,
) -> Result<Model> {
    if world.size() == 1 {
        return build(backend);
    }
    if world.is_root() {
        let model = build(backend)?;
        world.share(serde_json::to_vec(&model.backend().kernel_choices()).expect("a map of strings"));
        return Ok(model);
    }
    let choices = serde_json::from_slice(&world.share(Vec::new()))
        .map_err(|e| Error::Invalid(format!("rank 0's kernel choices: {e}")))?;
    backend.pin_kernel_choices(&choices)?;
    build(backend)
}

/// Makes every rank start from rank 0's parameters (ranks on different adapters may round their
/// initialisation differently; after this they agree bit for bit) and checks that every rank built
/// the same model for the same run.
pub fn sync_start(model: &mut Model, world: &World, fingerprint: u64) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    if !world.agree(fingerprint) {
        return Err(Error::Invalid(
            "the ranks disagree on the config, the data or the checkpoint; start every rank with the same \
             command line in the same directory"
                .into(),
        ));
    }
    let mut params = model.params()?;
    world.broadcast(&mut params);
    model.set_params(&params)
}
