//! Data-parallel training under `mpirun` (built with `--features mpi`; CI installs Open MPI and runs
//! `cargo test --release --features mpi --test mpi`). Two ranks share one adapter here, which shows
//! correctness, not speed.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wgslm::train::{checkpoint, RunOptions, TrainConfig};
use wgslm::verify::rel_l2;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tiny.toml");

/// Each job runs two lavapipe ranks that want every core: one job at a time.
fn one_job_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static JOBS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    JOBS.lock().unwrap_or_else(|e| e.into_inner())
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `mpirun -np N wgslm train --config tiny ...` as CI runs it: as root where CI is root, and with
/// more ranks than cores allowed.
fn mpirun(ranks: usize, out: &Path, device: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &ranks.to_string(), env!("CARGO_BIN_EXE_wgslm"), "train"])
        .args(["--config", TINY, "--device", device, "--out"])
        .arg(out)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("mpirun (apt-get install openmpi-bin libopenmpi-dev)");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The training config the single-process runs use: tiny with `--set` overrides.
fn tiny(sets: &[&str]) -> TrainConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(Some(Path::new(TINY)), &sets).unwrap()
}

/// (step, loss, grad_norm) of every step line of a run's metrics.jsonl (a non-finite norm is null).
fn steps(run: &Path) -> Vec<(u64, f64, Option<f64>)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64()))
        .collect()
}

fn assert_same_losses(a: &Path, b: &Path, what: &str) {
    let (sa, sb) = (steps(a), steps(b));
    assert_eq!(sa.len(), sb.len(), "{what}: step lines");
    let (mut worst, mut equal) = (0f64, 0);
    for ((step, la, _), (_, lb, _)) in sa.iter().zip(&sb) {
        let rel = (la - lb).abs() / lb.abs();
        assert!(rel <= 1e-5, "{what}: step {step} loss {la} vs {lb}");
        worst = worst.max(rel);
        equal += usize::from(la == lb);
    }
    eprintln!(
        "{what}: {equal} of {} step losses equal, the largest relative difference {worst:.1e}",
        sa.len()
    );
}

fn final_params(run: &Path) -> Vec<f32> {
    let (_, dir) = checkpoint::latest(run).unwrap();
    checkpoint::load(&dir).unwrap().params
}

#[test]
fn two_ranks_train_as_one_process_accumulating_two_micro_batches_and_resume_on_one() {
    let Some(device) = common::gpu_device() else { return };
    let _job = one_job_at_a_time();
    let (ranks, one, half) = (temp("two-ranks"), temp("one-process"), temp("half"));
    run(mpirun(2, &ranks, &device.to_string(), &["--set", "max_steps=20", "--set", "checkpoint_every=10"]));
    let opts = RunOptions::new(&one, device.clone());
    wgslm::train::run(&tiny(&["max_steps=20", "grad_accum_steps=2"]), &opts).unwrap();

    // Rank 0 alone wrote the run: a line per step and one evaluation (eval_every 50: the last step).
    let text = std::fs::read_to_string(ranks.join("metrics.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 21, "metrics.jsonl of the 2-rank run:\n{text}");
    assert_same_losses(&ranks, &one, "2 ranks vs 1 process with grad_accum_steps 2");
    let err = rel_l2(&final_params(&ranks), &final_params(&one));
    assert!(err <= 1e-5, "parameters after 20 steps: relative L2 {err:.2e}");
    eprintln!("2 ranks vs accumulation: parameters relative L2 {err:.2e}");
    let state = checkpoint::load(&checkpoint::latest(&ranks).unwrap().1).unwrap().state;
    assert_eq!(state.ranks, Some(2));

    // The 2-rank run as if stopped at step 10, then on one process, which takes both ranks'
    // micro-batches a step: the same run as one process throughout.
    std::fs::rename(&ranks, &half).unwrap();
    std::fs::remove_dir_all(checkpoint::latest(&half).unwrap().1).unwrap();
    let mut opts = RunOptions::new(&half, device);
    opts.resume = true;
    let s = wgslm::train::run(&tiny(&["max_steps=20", "checkpoint_every=10"]), &opts).unwrap();
    assert_eq!(s.steps, 20);
    // metrics.jsonl kept the first ten steps and took the resumed ten.
    assert_same_losses(&half, &one, "2 ranks then 1 process vs 1 process throughout");
    let err = rel_l2(&final_params(&half), &final_params(&one));
    assert!(err <= 1e-5, "parameters: relative L2 {err:.2e}");
    eprintln!("2 ranks then 1 process vs 1 process: parameters relative L2 {err:.2e}");
    let _ = std::fs::remove_dir_all(&half);
    let _ = std::fs::remove_dir_all(&one);
}

#[test]
fn non_finite_gradients_on_one_rank_make_every_rank_skip_the_step() {
    let Some(device) = common::gpu_device() else { return };
    let _job = one_job_at_a_time();
    let (ranks, one) = (temp("nan-ranks"), temp("nan-one"));
    let args = ["--set", "max_steps=8", "--nan-steps", "3,4", "--nan-rank", "1"];
    run(mpirun(2, &ranks, &device.to_string(), &args));
    let mut opts = RunOptions::new(&one, device);
    opts.nan_steps = vec![3, 4];
    wgslm::train::run(&tiny(&["max_steps=8", "grad_accum_steps=2"]), &opts).unwrap();
    let s = steps(&ranks);
    for (step, _, norm) in &s {
        assert_eq!(norm.is_none(), [3, 4].contains(step), "step {step}: grad norm {norm:?}");
    }
    // Had rank 0 applied its own half of those steps, the ranks' parameters would part and the
    // averaged gradients after them would not be the skipping process's.
    assert_same_losses(&ranks, &one, "skipping steps 3 and 4");
    let err = rel_l2(&final_params(&ranks), &final_params(&one));
    assert!(err <= 1e-5, "parameters: relative L2 {err:.2e}");
    eprintln!("skipping steps 3 and 4: parameters relative L2 {err:.2e}");
    let _ = std::fs::remove_dir_all(&ranks);
    let _ = std::fs::remove_dir_all(&one);
}

/// The pid of the `wgslm` process that is rank `rank` of a job (Open MPI tells each its rank in
/// OMPI_COMM_WORLD_RANK).
fn rank_pid(rank: usize, out: &Path) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let has = |hay: &[u8], needle: &[u8]| hay.split(|&b| b == 0).any(|s| s == needle);
        if has(&cmdline, out.to_string_lossy().as_bytes()) && has(&environ, want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// A job that is killed when the test ends, passing or failing, so no ranks outlive it.
struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_and_leaves_a_checkpoint_that_resumes() {
    let Some(device) = common::gpu_device() else { return };
    let _job = one_job_at_a_time();
    let out = temp("killed");
    let mut cmd = mpirun(
        2,
        &out,
        &device.to_string(),
        &["--set", "max_steps=100000", "--set", "checkpoint_every=5", "--set", "eval_every=0"],
    );
    let mut job = Job(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let job = &mut job.0;
    let t0 = Instant::now();
    // A bound against hanging only: a cold shader cache on a slow machine takes minutes.
    while checkpoint::latest(&out).is_none_or(|(step, _)| step < 10) {
        assert!(t0.elapsed() < Duration::from_secs(900), "no checkpoint at step 10 after 15 minutes");
        assert!(job.try_wait().unwrap().is_none(), "the job ended before the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = rank_pid(1, &out).expect("rank 1's process");
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let killed = Instant::now();
    let status =
        wait(job, Duration::from_secs(60)).expect("the job still runs a minute after rank 1 was killed");
    eprintln!("the job ended {:.1} s after rank 1 was killed", killed.elapsed().as_secs_f64());
    assert!(!status.success(), "a job that lost a rank exited 0");

    // The newest checkpoint loads, and one process goes on from it (the run's two micro-batches a step
    // now both on this process).
    let (step, dir) = checkpoint::latest(&out).unwrap();
    checkpoint::load(&dir).unwrap();
    let mut opts = RunOptions::new(&out, device);
    opts.resume = true;
    let max = format!("max_steps={}", step + 2);
    let s = wgslm::train::run(&tiny(&[&max, "checkpoint_every=5", "eval_every=0"]), &opts).unwrap();
    assert_eq!(s.steps, step + 2);
    assert!(s.last_loss.is_finite());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn ranks_started_with_different_configs_refuse_to_train() {
    let Some(device) = common::gpu_device() else { return };
    let _job = one_job_at_a_time();
    let out = temp("disagree");
    let exe = env!("CARGO_BIN_EXE_wgslm");
    let (dev, dir) = (device.to_string(), out.to_string_lossy().to_string());
    let rank = |lr: &str| {
        let args = ["-np", "1", exe, "train", "--config", TINY, "--device", &dev, "--out", &dir];
        args.iter().chain(&["--set", "max_steps=5", "--set", lr]).map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let mut args = rank("lr=1e-3");
    args.push(":".into());
    args.extend(rank("lr=2e-3"));
    let t0 = Instant::now();
    let output = Command::new("mpirun")
        .arg("--oversubscribe")
        .args(&args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the ranks disagree"), "stderr:\n{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(900), "the refusal took {:?}", t0.elapsed());
    assert!(checkpoint::latest(&out).is_none());
    let _ = std::fs::remove_dir_all(&out);
}
