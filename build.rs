//! Adds libtorch's folder to the rpath of every binary, test and benchmark.
//!
//! torch-sys (the `tch` link target) passes its rpath only to its own C++
//! shim, so without this `cargo run` and `cargo test` fail with
//! "libtorch_cpu.so: cannot open shared object file".

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    // The linker drops libtorch_cuda.so under --as-needed because no symbol
    // of it is referenced directly, and then libtorch finds no CUDA device.
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
