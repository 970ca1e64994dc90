//! Sets `cfg(engine_x86)` where the AVX-512 and AVX2 kernels are compiled: on x86_64, unless
//! `MOBILENET_ENGINE_PORTABLE_ONLY=1` asks for the build every other target gets (the portable
//! path alone). That switch lets an x86 machine compile and test exactly the code an aarch64
//! build runs.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(engine_x86)");
    println!("cargo::rerun-if-env-changed=MOBILENET_ENGINE_PORTABLE_ONLY");
    let x86 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    let portable_only = std::env::var("MOBILENET_ENGINE_PORTABLE_ONLY").is_ok_and(|v| v == "1");
    if x86 && !portable_only {
        println!("cargo::rustc-cfg=engine_x86");
    }
}
