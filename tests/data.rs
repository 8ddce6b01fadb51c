//! Tokenizers, the token-file format and `prepare`.

use std::path::{Path, PathBuf};

use wgslm::data::prepare::{self, PrepareOptions, TokenizerSpec};
use wgslm::data::{tokenfile, Tok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn sample_text() -> String {
    std::fs::read_to_string(fixture("text/sample.txt")).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bpe_round_trip_is_exact() {
    let text = sample_text();
    let docs = vec![text.clone(); 3];
    let tok = Tok::train_bpe(&docs, 400).unwrap();
    assert!(tok.vocab_size() <= 400 && tok.vocab_size() > 257);
    let ids = tok.encode(&text).unwrap();
    assert!(ids.len() < text.len(), "BPE should compress: {} ids for {} bytes", ids.len(), text.len());
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // Text the BPE never saw (any bytes) round-trips too.
    let unseen = "Zebras 🦓 & quokkas ∑ ≠ 42\r\n";
    assert_eq!(tok.decode(&tok.encode(unseen).unwrap()).unwrap(), unseen);
}

#[test]
fn char_and_byte_vocabularies_round_trip() {
    let text = sample_text();
    let chars = Tok::chars(std::slice::from_ref(&text)).unwrap();
    let ids = chars.encode(&text).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert_eq!(chars.decode(&ids).unwrap(), text);
    let err = chars.encode("Ω").unwrap_err().to_string();
    assert!(err.contains("no token for"), "{err}");

    let bytes = Tok::bytes().unwrap();
    assert_eq!(bytes.vocab_size(), 257);
    let ids = bytes.encode(&text).unwrap();
    assert_eq!(ids.len(), text.len());
    assert_eq!(bytes.decode(&ids).unwrap(), text);
}

#[test]
fn a_saved_tokenizer_loads_and_encodes_the_same() {
    let text = sample_text();
    let tok = Tok::train_bpe(std::slice::from_ref(&text), 300).unwrap();
    let dir = temp("tokenizer");
    tok.save(&dir).unwrap();
    let back = Tok::load(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(back.encode(&text).unwrap(), tok.encode(&text).unwrap());
    assert_eq!(back.eot(), tok.eot());
}

#[test]
fn token_files_round_trip_in_both_widths() {
    let dir = temp("tokens");
    for (vocab, version) in [(50_257usize, 1), (100_000, 2)] {
        let tokens: Vec<u32> = (0..1000).map(|i| (i * 7919) as u32 % vocab as u32).collect();
        let path = dir.join(format!("v{version}.bin"));
        tokenfile::write(&path, &tokens, vocab).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().unwrap()), 20240520);
        assert_eq!(i32::from_le_bytes(bytes[4..8].try_into().unwrap()), version);
        assert_eq!(i32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1000);
        assert_eq!(bytes.len(), 1024 + 1000 * if version == 1 { 2 } else { 4 });
        assert_eq!(tokenfile::read(&path).unwrap(), tokens);
    }
}

#[test]
fn damaged_token_files_are_refused() {
    let good = tokenfile::encode(&[1, 2, 3, 4], 10);
    let p = Path::new("x.bin");
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 1;
    assert!(tokenfile::decode(p, &bad_magic).unwrap_err().to_string().contains("bad magic"));
    assert!(tokenfile::decode(p, &good[..good.len() - 2]).unwrap_err().to_string().contains("truncated"));
    assert!(tokenfile::decode(p, &good[..100]).unwrap_err().to_string().contains("header"));
    let mut bad_version = good.clone();
    bad_version[4] = 9;
    assert!(tokenfile::decode(p, &bad_version).unwrap_err().to_string().contains("version"));
}

#[test]
fn prepare_writes_a_tokenizer_and_both_splits() {
    for (tokenizer, input) in
        [("bpe", "text/sample.txt"), ("char", "text/sample.txt"), ("byte", "text/sample.jsonl")]
    {
        let out = temp(&format!("prepare-{tokenizer}"));
        let opts = PrepareOptions {
            inputs: vec![fixture(input)],
            out: out.clone(),
            tokenizer: tokenizer.parse::<TokenizerSpec>().unwrap(),
            vocab_size: 300,
            val_fraction: 0.2,
            seed: 1,
            split: None,
        };
        let p = prepare::prepare(&opts).unwrap();
        let (train, val) = (
            tokenfile::read(&out.join("train.bin")).unwrap(),
            tokenfile::read(&out.join("val.bin")).unwrap(),
        );
        assert_eq!((train.len(), val.len()), (p.train_tokens, p.val_tokens));
        // The last 20% of the token stream is validation, cut at floor(0.8·n) as nanoGPT cuts it.
        let total = train.len() + val.len();
        assert!(!val.is_empty(), "an empty validation split");
        assert_eq!(
            train.len(),
            (total as f64 * 0.8).floor() as usize,
            "a 20% split: {} / {}",
            train.len(),
            val.len()
        );
        let tok = Tok::load(&out.join("tokenizer.json")).unwrap();
        assert!(train.iter().chain(&val).all(|&t| (t as usize) < tok.vocab_size()));
        if tokenizer == "byte" {
            // Three JSONL documents, each starting with the end-of-text token.
            assert_eq!(p.documents, 3);
            assert_eq!(train.iter().chain(&val).filter(|&&t| t == tok.eot()).count(), 3);
        } else {
            // One document: the stream is the text itself.
            let all: Vec<u32> = train.iter().chain(&val).copied().collect();
            assert_eq!(tok.decode(&all).unwrap(), sample_text());
        }
    }
}
