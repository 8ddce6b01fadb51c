//! Tokenizers, the token-file format and `prepare`.

use std::path::{Path, PathBuf};

use wgslm::data::loader::shard_paths;
use wgslm::data::prepare::{self, PrepareOptions, TokenizerSpec};
use wgslm::data::{tokenfile, Loader, Tok, TokenSet};

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
    let tok = Tok::train_bpe(docs.iter().cloned(), 400).unwrap();
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
    let chars = Tok::chars(std::iter::once(text.clone())).unwrap();
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
    let tok = Tok::train_bpe(std::iter::once(text.clone()), 300).unwrap();
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
            shard_tokens: prepare::DEFAULT_SHARD_TOKENS,
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

fn opts(inputs: Vec<PathBuf>, out: &Path, tokenizer: &str, shard_tokens: usize) -> PrepareOptions {
    PrepareOptions {
        inputs,
        out: out.to_path_buf(),
        tokenizer: tokenizer.parse::<TokenizerSpec>().unwrap(),
        vocab_size: 300,
        val_fraction: 0.1,
        seed: 1,
        split: Some("\n\n".into()),
        shard_tokens,
    }
}

/// Every token of a split, across its shards.
fn split_tokens(dir: &Path, split: &str) -> Vec<u32> {
    let set = TokenSet::open(&shard_paths(dir, split).unwrap(), None).unwrap();
    set.get(0, set.len())
}

#[test]
fn shards_hold_the_stream_one_file_holds_and_batches_cross_them() {
    let (one, many) = (temp("one-shard"), temp("many-shards"));
    let input = vec![fixture("text/sample.txt")];
    let p1 = prepare::prepare(&opts(input.clone(), &one, "bpe", prepare::DEFAULT_SHARD_TOKENS)).unwrap();
    let p2 = prepare::prepare(&opts(input.clone(), &many, "bpe", 97)).unwrap();
    assert_eq!(p1.shards, 2);
    assert!(p2.shards > 4, "{} shards", p2.shards);
    assert!(many.join("tokens_train_000000.bin").is_file() && !many.join("train.bin").exists());
    for split in ["train", "val"] {
        assert_eq!(split_tokens(&one, split), split_tokens(&many, split), "{split}");
    }
    // The loader draws the same windows from the shards as from the one file, crossing shard edges.
    let open = |dir: &Path| {
        let tokens = TokenSet::open(&shard_paths(dir, "train").unwrap(), Some(300)).unwrap();
        Loader::new(tokens, 4, 50, 9, "train").unwrap()
    };
    let (mut a, mut b) = (open(&one), open(&many));
    for _ in 0..20 {
        assert_eq!(a.next_batch(), b.next_batch());
    }
    assert_eq!(a.eval_batches(3), b.eval_batches(3));
    // Preparing again with one shard replaces the shards rather than leaving them beside train.bin.
    prepare::prepare(&opts(input, &many, "bpe", prepare::DEFAULT_SHARD_TOKENS)).unwrap();
    assert_eq!(split_tokens(&many, "train"), split_tokens(&one, "train"));
    let left: Vec<String> = std::fs::read_dir(&many)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin") || n.contains(".tmp"))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn a_damaged_shard_among_good_ones_is_named_when_the_data_is_opened() {
    let dir = temp("damaged-shard");
    prepare::prepare(&opts(vec![fixture("text/sample.txt")], &dir, "bpe", 97)).unwrap();
    let paths = shard_paths(&dir, "train").unwrap();
    assert!(TokenSet::open(&paths, Some(300)).is_ok());
    // A truncated shard.
    let victim = &paths[paths.len() / 2];
    let bytes = std::fs::read(victim).unwrap();
    std::fs::write(victim, &bytes[..bytes.len() - 3]).unwrap();
    let err = TokenSet::open(&paths, Some(300)).err().expect("a truncated shard is refused").to_string();
    assert!(err.contains(&victim.display().to_string()) && err.contains("truncated"), "{err}");
    // A token outside the vocabulary.
    let mut bad = bytes.clone();
    let at = bad.len() - 10;
    bad[at..at + 2].copy_from_slice(&5000u16.to_le_bytes());
    std::fs::write(victim, &bad).unwrap();
    let err =
        TokenSet::open(&paths, Some(300)).err().expect("an out-of-vocabulary token is refused").to_string();
    assert!(err.contains(&victim.display().to_string()) && err.contains("token 5000"), "{err}");
    // A directory with both train.bin and shards.
    std::fs::write(victim, &bytes).unwrap();
    std::fs::copy(victim, dir.join("train.bin")).unwrap();
    let err = shard_paths(&dir, "train").unwrap_err().to_string();
    assert!(err.contains("both train.bin and"), "{err}");
}

/// A document far larger than one piece of the parallel tokenizer (and than one read), with
/// multi-byte characters across the read boundaries, tokenizes as it does whole.
#[test]
fn a_large_document_streams_into_the_tokens_it_has_whole() {
    let dir = temp("large-document");
    let mut text = String::new();
    let mut i = 0;
    while text.len() < (5 << 20) {
        text.push_str(&format!("Ünïcödé story {i} — über café, the cat sat.\n"));
        if i % 7 == 0 {
            text.push_str("  \n\n   spaced   out\t\n");
        }
        i += 1;
    }
    let input = dir.join("big.txt");
    std::fs::write(&input, &text).unwrap();
    for tokenizer in ["bpe", "char"] {
        let out = dir.join(tokenizer);
        let mut o = opts(vec![input.clone()], &out, tokenizer, prepare::DEFAULT_SHARD_TOKENS);
        o.split = None;
        o.val_fraction = 0.0;
        let p = prepare::prepare(&o).unwrap();
        let tok = Tok::load(&out.join("tokenizer.json")).unwrap();
        let streamed = split_tokens(&out, "train");
        assert_eq!(p.documents, 1);
        assert_eq!(streamed, tok.encode(&text).unwrap(), "{tokenizer}");
    }
    // Three-byte characters with a two-byte separator that never occurs: cut pieces must still end on
    // character boundaries (the char vocabulary tokenizes any cut the same).
    let cjk: String = "从前有一只小猫它很喜欢玩耍。".repeat(3 << 20 >> 5);
    let cjk_input = dir.join("cjk.txt");
    std::fs::write(&cjk_input, &cjk).unwrap();
    let out = dir.join("cjk");
    let mut o = opts(vec![cjk_input], &out, "char", prepare::DEFAULT_SHARD_TOKENS);
    o.val_fraction = 0.0;
    assert!(cjk.len() > 2 << 20);
    prepare::prepare(&o).unwrap();
    let tok = Tok::load(&out.join("tokenizer.json")).unwrap();
    assert_eq!(split_tokens(&out, "train"), tok.encode(&cjk).unwrap());
    // Invalid UTF-8 past the first read is named with its byte offset.
    let mut bytes = text.into_bytes();
    let at = (3 << 20) + 5;
    bytes[at] = 0xff;
    std::fs::write(&input, &bytes).unwrap();
    let err = prepare::prepare(&opts(vec![input], &dir.join("bad"), "byte", 1000)).unwrap_err().to_string();
    assert!(err.contains(&format!("byte {at}")), "{err}");
}

/// `prepare` neither removes nor mixes with token files it did not write (llm.c's shards, say).
#[test]
fn prepare_leaves_token_files_it_did_not_write_alone() {
    let dir = temp("foreign");
    let foreign = dir.join("fineweb_train_000001.bin");
    tokenfile::write(&foreign, &[1, 2, 3], 10).unwrap();
    let err = prepare::prepare(&opts(vec![fixture("text/sample.txt")], &dir, "byte", 1000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not write") && err.contains("fineweb_train_000001.bin"), "{err}");
    assert_eq!(tokenfile::read(&foreign).unwrap(), vec![1, 2, 3]);
    assert!(!dir.join("tokenizer.json").exists() && !dir.join("train.bin").exists());
}
