//! The engine alone (no burn) against the torchvision parity fixtures: every model and width in
//! tests/fixtures/parity.safetensors, on every instruction set this build can run, on one, two
//! and three threads (the same bits as one thread). The weights and the input are regenerated
//! by the fixtures' deterministic filler.
//!
//! This is the test that also runs in the portable-only build
//! (`MOBILENET_ENGINE_PORTABLE_ONLY=1`), which compiles exactly what non-x86 targets get.

use std::collections::HashMap;
use std::path::PathBuf;

use mobilenet_engine::testing::{fill, uniform, EVAL_CASES};
use mobilenet_engine::{read_safetensors, Arch, Engine, EngineOptions, Images, Isa, ModelSpec, NamedTensors};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

#[test]
fn engine_alone_matches_torchvision_on_parity_fixtures() {
    let keys: HashMap<String, Vec<(String, Vec<usize>)>> =
        serde_json::from_str(&std::fs::read_to_string(fixture("torchvision_keys.json")).unwrap()).unwrap();
    let (_, parity) = read_safetensors(&fixture("parity.safetensors")).unwrap();
    let shape = [2, 3, 224, 224];
    let input = uniform("input", shape.iter().product());
    let images = Images::from_shape(&input, &shape).unwrap();
    for (arch, width) in EVAL_CASES {
        let name = format!("{arch}_w{width:.1}");
        let tensors: NamedTensors = keys[&name].iter().map(|(k, s)| (k.clone(), (s.clone(), fill(k, s)))).collect();
        let spec = ModelSpec::new(arch.parse::<Arch>().unwrap()).with_width_mult(width);
        let (want_shape, want) = &parity[&format!("{name}.logits")];
        assert_eq!(want_shape, &vec![2, 1000]);
        for isa in Isa::all_available() {
            let mut one_thread: Option<Vec<f32>> = None;
            for threads in [1, 2, 3] {
                let options = EngineOptions::default().with_threads(threads).with_isa(isa);
                let engine = Engine::from_tensors(&spec, tensors.clone(), options).unwrap();
                let ours = engine.run(&images).unwrap().data;
                let diff = ours.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                eprintln!("{name} {isa} threads {threads}: max |engine - torchvision| {diff:.2e}");
                assert!(diff <= 1e-4, "{name} {isa} threads {threads}: engine vs torchvision logits differ by {diff}");
                // Threads split rows and bands at other places (and so the GEMM's blocks), never
                // the order of any sum: the logits are bit for bit those of one thread.
                match &one_thread {
                    None => one_thread = Some(ours),
                    Some(first) => assert!(
                        first.iter().zip(&ours).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name} {isa}: {threads} threads differ from one thread"
                    ),
                }
            }
        }
    }
}
