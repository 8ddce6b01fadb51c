use wgslm::data::{builtin, Tok};
fn main() {
    let docs = builtin::stories(1, 3);
    for d in &docs {
        println!("{d}\n");
    }
    let docs = builtin::stories(1, 2000);
    let t0 = std::time::Instant::now();
    for (name, tok) in [
        ("char", Tok::chars(&docs).unwrap()),
        ("byte", Tok::bytes().unwrap()),
        ("bpe", Tok::train_bpe(&docs, 512).unwrap()),
    ] {
        let text = "Once upon a time, \"hi\" said Tom.\n\nThe end.";
        let ids = tok.encode(text).unwrap();
        let back = tok.decode(&ids).unwrap();
        println!(
            "{name}: vocab {} eot {} ids {} roundtrip {} ({:?})",
            tok.vocab_size(),
            tok.eot(),
            ids.len(),
            back == text,
            t0.elapsed()
        );
        if back != text {
            println!("  {back:?}");
        }
        let unk = tok.encode("Zebra@#").unwrap();
        println!("  unk -> {:?} -> {:?}", unk, tok.decode(&unk).unwrap());
    }
    let chars: usize = docs.iter().map(|d| d.len()).sum();
    println!("avg story chars {}", chars / docs.len());
}
