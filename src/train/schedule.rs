//! The learning rate: linear warmup, then cosine decay to the minimum at the last step (nanoGPT's).

/// The learning rate of step `step` (0-based) of `max_steps`.
pub fn lr_at(step: usize, lr: f32, min_lr: f32, warmup: usize, max_steps: usize) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / (warmup + 1) as f32;
    }
    if step >= max_steps || max_steps <= warmup {
        return min_lr;
    }
    let ratio = (step - warmup) as f64 / (max_steps - warmup) as f64;
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
    (min_lr as f64 + coeff * (lr - min_lr) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warms_up_then_decays_to_the_minimum() {
        let at = |s| lr_at(s, 1e-3, 1e-4, 10, 110);
        assert!(at(0) > 0.0 && at(0) < at(5) && at(5) < at(9));
        assert!((at(10) - 1e-3).abs() < 1e-9, "peak at the end of warmup: {}", at(10));
        assert!((at(60) - 5.5e-4).abs() < 1e-6, "halfway down: {}", at(60));
        assert!(at(100) > 1e-4 && at(109) < at(100));
        assert_eq!(at(110), 1e-4);
    }
}
