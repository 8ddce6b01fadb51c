//! Bounded fuzzing of what wgslm reads from disk: random and mutated token files, safetensors
//! weights, config.json and config TOML never panic (an error is fine).

use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;

use wgslm::data::tokenfile;
use wgslm::model::{hf, init_params, ModelConfig, ParamLayout};
use wgslm::tensors::{self, Tensor, TensorFile};
use wgslm::train::TrainConfig;

const TINY: ModelConfig = ModelConfig::gpt2(1, 2, 8, 11, 5);

fn valid_tokens() -> Vec<u8> {
    tokenfile::encode(&(0..300).map(|i| i % 11).collect::<Vec<u32>>(), 11)
}

fn valid_weights() -> Vec<u8> {
    let layout = ParamLayout::new(&TINY);
    let flat = init_params(&TINY, 3);
    let list = layout
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), Tensor::F32(layout.slice(&flat, i), s.shape.clone())))
        .collect();
    tensors::serialize(list, None).unwrap()
}

/// Applies byte flips, then cuts or extends the input.
fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)], cut: usize, tail: &[u8]) -> Vec<u8> {
    for &(at, x) in flips {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
    }
    bytes.truncate(cut.min(bytes.len()));
    bytes.extend_from_slice(tail);
    bytes
}

fn mutation() -> impl Strategy<Value = (Vec<(usize, u8)>, usize, Vec<u8>)> {
    (vec((any::<usize>(), any::<u8>()), 0..16), any::<usize>(), vec(any::<u8>(), 0..16))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn token_file_reader_never_panics(bytes in vec(any::<u8>(), 0..2048), (flips, cut, tail) in mutation()) {
        let _ = tokenfile::decode(Path::new("random.bin"), &bytes);
        let mutated = mutate(valid_tokens(), &flips, cut, &tail);
        let _ = tokenfile::decode(Path::new("mutated.bin"), &mutated);
    }

    #[test]
    fn weight_loader_never_panics(bytes in vec(any::<u8>(), 0..512), (flips, cut, tail) in mutation()) {
        for data in [bytes, mutate(valid_weights(), &flips, cut, &tail)] {
            if let Ok(file) = TensorFile::from_bytes(Path::new("model.safetensors"), data) {
                let _ = hf::load_weights(TINY, &file);
            }
        }
    }

    #[test]
    fn config_json_parser_never_panics((flips, cut, tail) in mutation(), n in any::<u64>()) {
        let json = hf::config_json(&TINY, Some(3)).to_string().replace("\"n_layer\":1", &format!("\"n_layer\":{n}"));
        let _ = hf::parse_config(Path::new("config.json"), &mutate(json.into_bytes(), &flips, cut, &tail));
    }

    #[test]
    fn train_config_parser_never_panics((flips, cut, tail) in mutation()) {
        let text = TrainConfig::default().to_toml();
        let mutated = mutate(text.into_bytes(), &flips, cut, &tail);
        let _ = TrainConfig::parse("fuzz.toml", &String::from_utf8_lossy(&mutated));
    }
}
