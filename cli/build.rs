//! The `myco` binary finds llama.cpp's shared libraries in its own folder (`$ORIGIN`), where
//! the build puts them (`jobs/build.rs`), so it runs from `target/<profile>/` without
//! `cargo run`, and from any folder it is copied to with them.

fn main() {
    match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("linux" | "freebsd" | "android") => {
            println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN");
        }
        Ok("macos" | "ios") => println!("cargo:rustc-link-arg-bins=-Wl,-rpath,@loader_path"),
        _ => {}
    }
}
