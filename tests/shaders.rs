//! Every WGSL file parses and validates with naga, and a broken one is reported with file:line.

use std::path::Path;

use wgslm::gpu::kernels::{validate_wgsl, SHADERS};
use wgslm::Error;

fn shader_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_shader_parses_and_validates() {
    let files = shader_files();
    // Every file the binary embeds is on disk and checked here (the other test checks the converse).
    let embedded: Vec<&str> = SHADERS.iter().map(|(n, _)| *n).collect();
    let checked: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(embedded.iter().all(|n| checked.contains(n)), "shaders/ lacks some of {embedded:?}");
    let errors: Vec<String> = files
        .iter()
        .filter_map(|(name, src)| validate_wgsl(&format!("shaders/{name}"), src).err())
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "invalid WGSL:\n{}", errors.join("\n"));
}

#[test]
fn every_shader_file_is_compiled_into_the_binary() {
    let on_disk = shader_files();
    let mut embedded: Vec<(String, String)> =
        SHADERS.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
    embedded.sort();
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&on_disk), names(&embedded), "shaders/ and kernels::SHADERS list different files");
}

#[test]
fn a_broken_shader_is_reported_with_file_line_and_column() {
    let src = "struct P { n: u32 }\n\nfn f() -> u32 {\n    return 1u +;\n}\n";
    match validate_wgsl("shaders/broken.wgsl", src) {
        Err(Error::Shader { path, line, .. }) => {
            assert_eq!(path, "shaders/broken.wgsl");
            assert_eq!(line, 4, "the error is on line 4");
        }
        other => panic!("expected a shader error, got {:?}", other.map(|_| ())),
    }
    // A module that parses but does not validate (a type error) is reported too.
    let src = "fn f() -> u32 {\n    let x: f32 = 1.0;\n    return x;\n}\n";
    let err = validate_wgsl("shaders/typed.wgsl", src).unwrap_err().to_string();
    assert!(err.starts_with("shaders/typed.wgsl:"), "{err}");
}
