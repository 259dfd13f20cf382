//! One binary for old CPUs and new: llama.cpp's CPU kernels are modules that ggml picks at
//! run time for the CPU it finds (GGML_CPU_ALL_VARIANTS with GGML_BACKEND_DL). A Nehalem
//! (SSE4.2, no AVX: 2008–2011), emulated with `qemu-x86_64 -cpu Nehalem` (Debian `qemu-user`,
//! which setup.sh installs), runs an infer job on the `sse42` kernels; this machine gets the
//! best variant its CPU has (an AVX-512 one where the CPU has AVX-512F).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::MYCO;

fn qemu() -> Command {
    let probe = Command::new("qemu-x86_64").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "qemu-x86_64 is missing: install qemu-user (./setup.sh does)"
    );
    let mut cmd = Command::new("qemu-x86_64");
    cmd.args(["-cpu", "Nehalem", MYCO])
        .env("MYCO_LOG", "warn,ractor_cluster=error");
    cmd
}

/// The variant `myco detect` says llama.cpp's CPU backend loaded.
fn kernels(mut cmd: Command, home: &Path) -> String {
    let out = cmd.arg("--home").arg(home).arg("detect").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "detect failed: {out:?}");
    let line = text
        .lines()
        .find(|l| l.starts_with("kernels   cpu "))
        .unwrap_or_else(|| panic!("no kernels line: {text}"));
    line.trim_start_matches("kernels   cpu ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
#[cfg(target_arch = "x86_64")]
fn this_cpu_gets_its_best_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let mut native = Command::new(MYCO);
    native.env("MYCO_LOG", "warn");
    let variant = kernels(native, &dir.path().join("home"));
    // ggml's x86 variants, and what each needs (ggml/src/CMakeLists.txt).
    let avx512 = [
        "skylakex",
        "cannonlake",
        "cascadelake",
        "icelake",
        "cooperlake",
        "zen4",
        "sapphirerapids",
    ];
    if std::arch::is_x86_feature_detected!("avx512f") {
        assert!(
            avx512.contains(&variant.as_str()),
            "this CPU has AVX-512 but llama.cpp runs the {variant} kernels"
        );
    } else if std::arch::is_x86_feature_detected!("avx2") {
        assert!(
            !["x64", "sse42", "sandybridge", "ivybridge", "piledriver"].contains(&variant.as_str()),
            "this CPU has AVX2 but llama.cpp runs the {variant} kernels"
        );
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn a_cpu_without_avx_runs_infer_jobs_on_sse_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert_eq!(kernels(qemu(), &home), "sse42");

    let model = dir.path().join("tiny.gguf");
    myco_jobs::llm::gguf::TinyLlama::default()
        .write(&model, false)
        .unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "version = 1\nkind = \"infer\"\n[infer]\nmodel = {:?}\nprompt = \"hi\"\nmax_tokens = 4\nthreads = 1\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let out = qemu()
        .arg("--home")
        .arg(&home)
        .args(["run", "--no-discovery"])
        .arg(&job)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    assert!((1..=4).contains(&tokens.len()), "{v}");
}
