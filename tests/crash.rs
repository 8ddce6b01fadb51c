//! Crash safety: training killed with SIGKILL at random moments (checkpoints are written every step,
//! so many kills land inside a write) always leaves a newest checkpoint that loads, and resuming each
//! time ends exactly where an uninterrupted run ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wgslm::rng::Rng;
use wgslm::train::checkpoint;

const STEPS: u64 = 40;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start(out: &Path, resume: bool) -> Child {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgslm"));
    cmd.args([
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    for set in [
        format!("max_steps={STEPS}"),
        "checkpoint_every=1".into(),
        "keep_checkpoints=3".into(),
        "eval_every=0".into(),
    ] {
        cmd.args(["--set", &set]);
    }
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn losses(run: &Path) -> Vec<(u64, u32)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), (v["loss"].as_f64().unwrap() as f32).to_bits()))
        .collect()
}

#[test]
fn killed_training_always_resumes_from_a_complete_checkpoint() {
    let straight = temp("straight");
    assert!(start(&straight, false).wait().unwrap().success());

    let run = temp("killed");
    let mut rng = Rng::new(2024);
    let mut kills = 0;
    while kills < 25 {
        let resume = checkpoint::latest(&run).is_some();
        let mut child = start(&run, resume);
        std::thread::sleep(Duration::from_millis(30 + rng.below(400)));
        if child.try_wait().unwrap().is_some() {
            break; // it finished before the kill
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        kills += 1;
        // Whatever moment the kill hit, the newest complete checkpoint loads in full.
        if let Some((step, dir)) = checkpoint::latest(&run) {
            let loaded = checkpoint::load(&dir)
                .unwrap_or_else(|e| panic!("checkpoint {step} after kill {kills}: {e}"));
            assert_eq!(loaded.state.step, step);
            assert!(loaded.params.iter().all(|x| x.is_finite()));
        }
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap_or_default();
        assert!(config.is_empty() || config.contains("max_steps"), "config.toml was left half-written");
    }
    assert!(kills >= 5, "only {kills} kills landed: the run is too fast for this test");
    // Finish the run.
    let resume = checkpoint::latest(&run).is_some();
    assert!(start(&run, resume).wait().unwrap().success());

    assert_eq!(losses(&run), losses(&straight), "the killed-and-resumed run's losses differ");
    let (sa, da) = checkpoint::latest(&straight).unwrap();
    let (sb, db) = checkpoint::latest(&run).unwrap();
    assert_eq!((sa, sb), (STEPS, STEPS));
    let (a, b) = (checkpoint::load(&da).unwrap(), checkpoint::load(&db).unwrap());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&a.params) == bits(&b.params) && bits(&a.m) == bits(&b.m), "the final state differs");
}
