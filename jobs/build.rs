//! Puts llama.cpp's backend modules (ggml's CPU variants and GPU backends, which the node
//! loads at run time) and its shared libraries beside the binaries in `target/<profile>/`,
//! replacing older copies. llama-cpp-sys-2 links its libraries there too, but keeps a copy
//! that is already there, even one from an older llama.cpp. With the binary's `$ORIGIN`
//! run path (`cli/build.rs`), that folder's `myco` and `*.so` files are a whole install
//! that can be copied to another machine.

use std::path::{Path, PathBuf};

fn main() {
    // Set by llama-cpp-sys-2 (`links = "llama"`) when built with dynamic backends.
    let Some(backends) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR").map(PathBuf::from) else {
        return;
    };
    // OUT_DIR is target/<profile>/build/myco-jobs-<hash>/out.
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let Some(profile) = out.ancestors().nth(3) else {
        return;
    };
    place(&backends, profile);
    // The libraries also where llama-cpp-sys-2 puts them for tests and examples. It links
    // only `lib*.so`, which are symbolic links to `lib*.so.0`: left dangling there, they make
    // its next build (another feature set, e.g. `--features vulkan`) fail ("File exists").
    if let Some(libs) = backends.parent().map(|p| p.join("lib")) {
        for to in [
            profile.to_path_buf(),
            profile.join("deps"),
            profile.join("examples"),
        ] {
            if to.is_dir() {
                place(&libs, &to);
            }
        }
    }
}

/// Hard-link (or copy) every shared library in `from` into `to`, replacing what is there
/// (`std::fs::hard_link` links a symbolic link itself, not its target).
fn place(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let shared = name.to_str().is_some_and(|n| {
            n.ends_with(".so") || n.contains(".so.") || n.ends_with(".dylib") || n.ends_with(".dll")
        });
        // Symbolic links (`libllama.so -> libllama.so.0`) are linked as links.
        if !shared || !(path.is_file() || path.is_symlink()) {
            continue;
        }
        let dst = to.join(&name);
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(&path, &dst).is_err()
            && let Err(e) = std::fs::copy(&path, &dst)
        {
            println!(
                "cargo:warning=could not place {} in {}: {e}",
                path.display(),
                to.display()
            );
        }
    }
}
