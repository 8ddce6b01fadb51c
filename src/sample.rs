//! Text generation: temperature, top-k and top-p (nucleus) sampling from a model's logits.

use crate::data::Tok;
use crate::model::Model;
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token every time.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to p (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions { max_new_tokens: 200, temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1337 }
    }
}

impl SampleOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Invalid(format!(
                "--temperature {} must be a finite number >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!("--top-p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// Picks the next token from `logits`.
pub fn pick(logits: &[f32], opts: &SampleOptions, rng: &mut Rng) -> u32 {
    let argmax =
        || logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best }) as u32;
    if opts.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if opts.top_k > 0 {
        order.truncate(opts.top_k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> =
        order.iter().map(|&i| ((logits[i] as f64 - max) / opts.temperature as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= opts.top_p as f64
        });
        probs.truncate(keep.map_or(probs.len(), |k| k + 1));
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.uniform() * total;
    for (p, &i) in probs.iter().zip(&order) {
        r -= p;
        if r < 0.0 {
            return i as u32;
        }
    }
    order[probs.len() - 1] as u32
}

/// The token ids a prompt starts from (`<|endoftext|>` for an empty one), refused when there are
/// more than the model's block size.
pub fn encode_prompt(tok: &Tok, prompt: &str, block: usize) -> Result<Vec<u32>> {
    let ids = if prompt.is_empty() { vec![tok.eot()] } else { tok.encode(prompt)? };
    if ids.len() > block {
        return Err(Error::Invalid(format!(
            "the prompt is {} tokens, longer than the model's block size of {block}; shorten it",
            ids.len()
        )));
    }
    Ok(ids)
}

/// Generates text after `prompt` (the end-of-text token when empty), calling `on_text` with each new
/// piece as it comes (the pieces make up the returned text, unless the tokenizer rewrites text it
/// already decoded). Stops at the end-of-text token or after `max_new_tokens`. Contexts longer than the model's
/// block size slide.
pub fn generate(
    model: &mut Model,
    tok: &Tok,
    prompt: &str,
    opts: &SampleOptions,
    mut on_text: impl FnMut(&str),
) -> Result<String> {
    opts.validate()?;
    let block = model.shape.t;
    let mut ids = encode_prompt(tok, prompt, block)?;
    let start = ids.len();
    let mut rng = Rng::new(opts.seed);
    // What has been handed out: the text so far, less any trailing replacement characters (a
    // character whose bytes span several tokens decodes as one until its last byte comes).
    let mut shown = String::new();
    let mut hand_out = |text: &str, last: bool| {
        let stable = if last { text } else { text.trim_end_matches('\u{FFFD}') };
        if stable.len() > shown.len() && stable.starts_with(shown.as_str()) {
            on_text(&stable[shown.len()..]);
            shown = stable.to_string();
        }
    };
    let mut text = String::new();
    for _ in 0..opts.max_new_tokens {
        let context = &ids[ids.len().saturating_sub(block)..];
        let next = pick(&model.next_logits(context)?, opts, &mut rng);
        if next == tok.eot() {
            break;
        }
        ids.push(next);
        text = tok.decode(&ids[start..])?;
        hand_out(&text, false);
    }
    hand_out(&text, true);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p_pick_from_the_right_set() {
        let logits = [0.0, 3.0, 1.0, 2.9, -1.0];
        let mut rng = Rng::new(1);
        let greedy = SampleOptions { temperature: 0.0, ..Default::default() };
        assert_eq!(pick(&logits, &greedy, &mut rng), 1);
        let top2 = SampleOptions { top_k: 2, ..Default::default() };
        for _ in 0..200 {
            assert!(matches!(pick(&logits, &top2, &mut rng), 1 | 3));
        }
        // p(1) ≈ 0.47 and p(3) ≈ 0.43: a nucleus of 0.4 holds token 1 alone, one of 0.5 both.
        let nucleus = SampleOptions { top_p: 0.4, ..Default::default() };
        for _ in 0..200 {
            assert_eq!(pick(&logits, &nucleus, &mut rng), 1);
        }
        let nucleus = SampleOptions { top_p: 0.5, ..Default::default() };
        let picks: Vec<u32> = (0..200).map(|_| pick(&logits, &nucleus, &mut rng)).collect();
        assert!(picks.iter().all(|p| matches!(p, 1 | 3)) && picks.contains(&3));
    }
}
