//! The archive pipeline end to end, with real node processes, the real model and ONNX
//! Runtime from ./setup.sh: build a collection from a generated archive of 500 files and
//! query it; re-run on a changed archive; resume after SIGKILLs; share the work among three
//! nodes. Collections are compared byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Http, MODEL, NodeProc, eventually, linked_home, myco, real_home};
use myco_benches::{ArchiveFile, write_archive};

/// A fresh home with (links to) the runtime library and the default model.
fn home_with_model(root: &Path, name: &str) -> PathBuf {
    linked_home(root, name, true)
}

fn job_file(dir: &Path, input: &Path, collection: &str) -> PathBuf {
    let path = dir.join(format!("{collection}.toml"));
    std::fs::write(
        &path,
        format!(
            "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = {collection:?}\n",
            input.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// The collection's files, for byte comparison.
fn collection_bytes(home: &Path, name: &str) -> BTreeMap<&'static str, Vec<u8>> {
    let dir = home.join("collections").join(name);
    ["vectors.npy", "chunks.jsonl", "files.jsonl"]
        .into_iter()
        .map(|f| (f, std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

fn assert_same_collection(a: &Path, b: &Path, name: &str) {
    let (x, y) = (collection_bytes(a, name), collection_bytes(b, name));
    for f in ["files.jsonl", "chunks.jsonl", "vectors.npy"] {
        assert!(
            x[f] == y[f],
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

fn chunk_rows(home: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(home.join("collections").join(name).join("chunks.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every chunk appears once, files in order, chunk numbers 0.. without gaps.
fn assert_rows_complete(home: &Path, name: &str, files: &[ArchiveFile]) {
    let rows = chunk_rows(home, name);
    let mut per_file: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &rows {
        per_file
            .entry(r["source"].as_str().unwrap().to_owned())
            .or_default()
            .push(r["index"].as_u64().unwrap());
    }
    let want: BTreeSet<&str> = files.iter().map(|f| f.rel.as_str()).collect();
    let got: BTreeSet<&str> = per_file.keys().map(String::as_str).collect();
    assert_eq!(got, want, "every file has chunks in the collection");
    for (f, idx) in &per_file {
        let expect: Vec<u64> = (0..idx.len() as u64).collect();
        assert_eq!(idx, &expect, "{f}: chunks missing or duplicated");
    }
}

fn query(home: &Path, collection: &str, text: &str) -> serde_json::Value {
    query_mode(home, collection, text, "hybrid")
}

fn query_mode(home: &Path, collection: &str, text: &str, mode: &str) -> serde_json::Value {
    let out = myco(home)
        .args([
            "--json",
            "query",
            text,
            "--collection",
            collection,
            "-k",
            "3",
            "--mode",
            mode,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn run(home: &Path, job: &Path) -> serde_json::Value {
    let out = myco(home)
        .args(["run", "--no-discovery", "--workers", "2"])
        .arg(job)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "myco run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn a_500_file_archive_becomes_a_searchable_collection_and_reruns_do_only_new_work() {
    let tmp = tempfile::tempdir().unwrap();
    let home = home_with_model(tmp.path(), "home");
    let archive = tmp.path().join("archive");
    let files = write_archive(&archive, 500, 7).unwrap();
    let job = job_file(tmp.path(), &archive, "docs");

    let summary = run(&home, &job);
    assert_eq!(summary["files"], 500, "{summary}");
    assert_eq!(summary["embedded"], 500);
    assert_rows_complete(&home, "docs", &files);
    let rows = chunk_rows(&home, "docs");
    assert_eq!(summary["chunks"], rows.len());

    // A sentence from a file (md, txt, html and pdf ones) finds that file's chunk first.
    for i in [3, 128, 257, 498] {
        let f = &files[i];
        let sentence = &f.sentences[f.sentences.len() / 2];
        let reply = query(&home, "docs", sentence);
        let top = &reply["hits"][0];
        assert_eq!(
            top["source"], f.rel,
            "query {sentence:?} should find {}: {reply}",
            f.rel
        );
        assert!(top["text"].as_str().unwrap().contains(&sentence[..20]));
    }

    // The archive grows and changes: only the new and changed files are embedded again.
    std::fs::write(archive.join("added.md"), "# Added\n\nThe quiet walrus of Ghent counts a green kettle every Sunday morning near the brewery.\n").unwrap();
    std::fs::write(
        archive.join(&files[10].rel),
        "Rewritten entirely: the violet heron of Porto weighs a clumsy anchor.\n",
    )
    .unwrap();
    std::fs::remove_file(archive.join(&files[20].rel)).unwrap();
    let summary = run(&home, &job);
    assert_eq!(summary["embedded"], 2, "{summary}");
    assert_eq!(summary["kept"], 498, "{summary}");
    assert_eq!(summary["removed"], 1, "{summary}");
    assert_eq!(summary["files"], 500, "{summary}");
    let reply = query(
        &home,
        "docs",
        "the violet heron of Porto weighs a clumsy anchor",
    );
    assert_eq!(reply["hits"][0]["source"], files[10].rel, "{reply}");
    let reply = query(&home, "docs", "a walrus of Ghent counting kettles");
    assert_eq!(reply["hits"][0]["source"], "added.md", "{reply}");
    let sources: BTreeSet<String> = chunk_rows(&home, "docs")
        .iter()
        .map(|r| r["source"].as_str().unwrap().to_owned())
        .collect();
    assert!(!sources.contains(&files[20].rel), "a deleted file leaves");

    // Every mode finds a copied sentence; keyword needs no model.
    let f = &files[77];
    let sentence = &f.sentences[0];
    for mode in ["hybrid", "vector", "keyword"] {
        let reply = query_mode(&home, "docs", sentence, mode);
        assert_eq!(reply["mode"], mode, "{reply}");
        assert_eq!(reply["hits"][0]["source"], f.rel, "{mode}: {reply}");
    }
    let out = myco(&home)
        .args(["query", "x", "-c", "docs", "--mode", "fuzzy"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hybrid, vector or keyword"));

    // Listed, then removed with its files; removing it again is bad input.
    let out = myco(&home)
        .args(["--json", "collections"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let docs = &list["collections"][0];
    assert_eq!(docs["name"], "docs", "{list}");
    assert_eq!(docs["files"], 500, "{list}");
    assert_eq!(docs["chunks"], chunk_rows(&home, "docs").len(), "{list}");
    assert_eq!(docs["model"], "all-MiniLM-L6-v2", "{list}");
    assert_eq!(docs["keyword"], true, "{list}");
    assert!(docs["bytes"].as_u64().unwrap() > 500 * 384 * 4, "{list}");
    let out = myco(&home)
        .args(["collections", "rm", "docs"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!home.join("collections/docs").exists());
    let out = myco(&home)
        .args(["collections", "rm", "docs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no collection `docs`"));
}

/// A collection as myco wrote it before version 2 (no keyword index, no chunking record):
/// queried in every mode, listed, and written as version 2 by its next run.
#[test]
fn a_version_1_collection_is_queried_listed_and_upgraded_by_its_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let home = home_with_model(tmp.path(), "home");
    let archive = tmp.path().join("archive");
    let files = write_archive(&archive, 24, 3).unwrap();
    let job = job_file(tmp.path(), &archive, "old");
    run(&home, &job);
    let dir = home.join("collections/old");
    std::fs::remove_dir_all(dir.join("keyword")).unwrap();
    let meta_path = dir.join("collection.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["version"] = 1.into();
    meta.as_object_mut().unwrap().remove("chunking");
    std::fs::write(&meta_path, meta.to_string()).unwrap();

    let f = &files[5];
    for mode in ["hybrid", "vector", "keyword"] {
        let reply = query_mode(&home, "old", &f.sentences[0], mode);
        assert_eq!(reply["hits"][0]["source"], f.rel, "{mode}: {reply}");
    }
    let out = myco(&home).args(["collections"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("old") && text.contains("format 1"), "{text}");

    // Its next run re-chunks everything (no chunking record) and writes version 2.
    let summary = run(&home, &job);
    assert_eq!(summary["embedded"], 24, "{summary}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["version"], 2, "{meta}");
    assert!(dir.join("keyword").is_dir());
}

#[test]
fn a_collection_is_queried_while_a_run_holds_the_home() {
    let tmp = tempfile::tempdir().unwrap();
    let home = home_with_model(tmp.path(), "home");
    let small = tmp.path().join("small");
    let files = write_archive(&small, 24, 4).unwrap();
    run(&home, &job_file(tmp.path(), &small, "docs"));

    // A long run on the same home: its embedded node holds queue.redb while it runs.
    let big = tmp.path().join("big");
    write_archive(&big, 1500, 5).unwrap();
    let mut batch = myco(&home)
        .args(["run", "--no-discovery", "--workers", "1"])
        .arg(job_file(tmp.path(), &big, "big"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        batch.try_wait().unwrap().is_none(),
        "the run ended too soon"
    );
    for mode in ["hybrid", "keyword"] {
        let reply = query_mode(&home, "docs", &files[9].sentences[0], mode);
        assert_eq!(reply["hits"][0]["source"], files[9].rel, "{mode}: {reply}");
    }
    let out = myco(&home)
        .args(["--json", "collections"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        batch.try_wait().unwrap().is_none(),
        "the run must still hold the home, or this tested nothing"
    );
    batch.kill().unwrap();
    batch.wait().unwrap();
}

#[test]
fn filters_narrow_a_query_to_files_by_path_type_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let home = home_with_model(tmp.path(), "home");
    let archive = tmp.path().join("archive");
    let files = write_archive(&archive, 24, 6).unwrap();
    run(&home, &job_file(tmp.path(), &archive, "docs"));
    let ask = |text: &str, extra: &[&str]| {
        let out = myco(&home)
            .args(["--json", "query", text, "-c", "docs", "-k", "5"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hits = |text: &str, extra: &[&str]| -> Vec<String> {
        let (code, out, err) = ask(text, extra);
        assert_eq!(code, Some(0), "{err}");
        let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
        reply["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["source"].as_str().unwrap().to_owned())
            .collect()
    };
    let ext = |rel: &str| rel.rsplit('.').next().unwrap().to_owned();
    let a = &files[2];
    let other = files.iter().find(|f| ext(&f.rel) != ext(&a.rel)).unwrap();
    let sentence = &a.sentences[0];
    assert_eq!(hits(sentence, &[])[0], a.rel);
    // Another type: a's sentence no longer finds a, and every hit is of that type.
    let got = hits(sentence, &["--type", &ext(&other.rel)]);
    assert!(
        !got.is_empty() && got.iter().all(|s| ext(s) == ext(&other.rel)),
        "{got:?}"
    );
    // The source glob: only that file.
    let got = hits(sentence, &["--source", &other.rel]);
    assert!(
        !got.is_empty() && got.iter().all(|s| *s == other.rel),
        "{got:?}"
    );
    // Modified since a day ago: everything; before 2000: nothing.
    assert_eq!(hits(sentence, &["--since", "1d"])[0], a.rel);
    assert!(hits(sentence, &["--before", "2000-01-01"]).is_empty());
    // A malformed glob or time is bad input (exit 2) that says what is wrong.
    let (code, _, err) = ask(sentence, &["--source", "guide/["]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a glob"), "{err}");
    let (code, _, err) = ask(sentence, &["--since", "last tuesday"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--since"), "{err}");
}

#[test]
fn lines_most_pages_share_are_dropped_as_boilerplate_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let home = home_with_model(tmp.path(), "home");
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    const SHARED: &str = "Subscribe to our newsletter for weekly updates from the lighthouse";
    for i in 0..12 {
        std::fs::write(
            site.join(format!("page-{i:02}.html")),
            format!(
                "<html><head><title>Page {i}</title></head><body><div class=\"promo\">{SHARED}</div>\
                 <p>The keeper of lighthouse number {i} counts {} gulls every morning.</p></body></html>",
                i * 7
            ),
        )
        .unwrap();
    }
    let summary = run(&home, &job_file(tmp.path(), &site, "site"));
    assert_eq!(summary["files"], 12, "{summary}");
    assert_eq!(summary["boilerplate_bytes"], 12 * SHARED.len(), "{summary}");
    let rows = chunk_rows(&home, "site");
    assert!(
        rows.iter()
            .all(|r| !r["text"].as_str().unwrap().contains("newsletter"))
    );
    let reply = query(
        &home,
        "site",
        "keeper of lighthouse number 5 counts 35 gulls",
    );
    assert_eq!(reply["hits"][0]["source"], "page-05.html", "{reply}");
}

/// A Markdown file of about `bytes`, of numbered sections, each with a sentence of its own.
fn big_markdown(bytes: usize) -> (String, Vec<String>) {
    let mut text = String::from("# The big handbook\n\n");
    let mut sentences = Vec::new();
    let mut i = 0;
    while text.len() < bytes {
        let s = format!(
            "Section {i} explains how the otter number {i} repairs the violin of glacier {}.",
            i * 13 % 997
        );
        text.push_str(&format!("## Part {i}\n\n{s} "));
        for j in 0..12 {
            text.push_str(&format!(
                "Filler words about lighthouses and bakeries, line {j}. "
            ));
        }
        text.push_str("\n\n");
        sentences.push(s);
        i += 1;
    }
    (text, sentences)
}

#[test]
fn a_big_file_is_shared_among_children_and_chunked_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let home = home_with_model(tmp.path(), "home");
    let archive = tmp.path().join("archive");
    let files = write_archive(&archive, 6, 2).unwrap();
    let (text, sentences) = big_markdown(700 * 1024);
    std::fs::write(archive.join("big.md"), &text).unwrap();
    let http = Http::new();
    let node = NodeProc::start(&home, &["--workers", "2"]);
    let id = node.submit(&job_file(tmp.path(), &archive, "big"));
    let job = wait_done(&http, &node, &id);
    let kids = children(&http, &node, &id);
    let parts: Vec<&serde_json::Value> = kids
        .iter()
        .filter(|k| {
            k["description"]
                .as_str()
                .unwrap_or("")
                .contains("big.md (part")
        })
        .collect();
    assert_eq!(parts.len(), 3, "700 KiB in parts of 256 KiB: {kids:#?}");
    assert_eq!(job["progress"]["items_total"], 7, "{job}");
    drop(node);

    // Every chunk of big.md once, numbered in text order across the parts.
    let rows: Vec<serde_json::Value> = chunk_rows(&home, "big")
        .into_iter()
        .filter(|r| r["source"] == "big.md")
        .collect();
    assert!(rows.len() > 100, "{}", rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i, "{r}");
        if i > 0 {
            assert!(r["start"].as_u64() > rows[i - 1]["start"].as_u64());
        }
        let (a, b) = (
            r["start"].as_u64().unwrap() as usize,
            r["end"].as_u64().unwrap() as usize,
        );
        assert_eq!(r["text"].as_str().unwrap(), &text[a..b]);
    }
    // Sentences from its beginning, middle and end are found; the small files still are.
    for s in [
        &sentences[1],
        &sentences[sentences.len() / 2],
        &sentences[sentences.len() - 2],
    ] {
        let reply = query_mode(&home, "big", s, "keyword");
        assert_eq!(reply["hits"][0]["source"], "big.md", "{s}: {reply}");
        assert!(
            reply["hits"][0]["text"]
                .as_str()
                .unwrap()
                .contains(s.as_str())
        );
    }
    let reply = query(&home, "big", &files[3].sentences[0]);
    assert_eq!(reply["hits"][0]["source"], files[3].rel, "{reply}");
}

/// Children of an archive job, with their histories, from a node's API.
fn children(http: &Http, node: &NodeProc, id: &str) -> Vec<serde_json::Value> {
    let (status, body) = http
        .get(&node.url(&format!("/api/jobs?parent={id}&limit=100000")))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["jobs"].as_array().unwrap().clone()
}

fn wait_done(http: &Http, node: &NodeProc, id: &str) -> serde_json::Value {
    eventually(Duration::from_secs(600), "the archive job finishes", || {
        let (_, job) = http.get(&node.url(&format!("/api/jobs/{id}"))).ok()?;
        match job["state"].as_str()? {
            "done" => Some(job),
            "dead" | "cancelled" => panic!("the archive job ended {job}"),
            _ => None,
        }
    })
}

fn states(history: &serde_json::Value, state: &str) -> usize {
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == state)
        .count()
}

#[test]
fn killed_three_times_the_run_resumes_and_matches_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let files = write_archive(&archive, 160, 11).unwrap();
    let job = job_file(tmp.path(), &archive, "resumed");
    let http = Http::new();

    // The reference: one uninterrupted run.
    let reference = home_with_model(tmp.path(), "reference");
    run(&reference, &job);

    let home = home_with_model(tmp.path(), "home");
    let mut node = NodeProc::start(&home, &["--workers", "2"]);
    let id = node.submit(&job);
    let mut kills = 0;
    // Child id → the wall-clock time (ms) of the first kill it had finished before.
    let mut done_before_kill: BTreeMap<String, u64> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(5);
    while kills < 3 {
        // Let some work finish (a random number of children), then SIGKILL.
        let total = children(&http, &node, &id).len();
        let target = done_before_kill.len() + 1 + rng.usize(0..3);
        if target >= total {
            break;
        }
        let done = eventually(Duration::from_secs(300), "children finish", || {
            let done: BTreeSet<String> = children(&http, &node, &id)
                .iter()
                .filter(|c| c["state"] == "done")
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect();
            (done.len() >= target).then_some(done)
        });
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        node.kill9();
        let killed_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        kills += 1;
        for d in done {
            done_before_kill.entry(d).or_insert(killed_ms);
        }
        node = NodeProc::start(&home, &["--workers", "2"]);
        // Submitting the same file again finds the live run (its key is the collection).
        assert_eq!(node.submit(&job), id, "resubmitting resumes the run");
    }
    assert_eq!(kills, 3, "the run was killed three times before it ended");
    let parent = wait_done(&http, &node, &id);
    node.terminate();

    assert_same_collection(&reference, &home, "resumed");
    assert_rows_complete(&home, "resumed", &files);
    // Children done before a kill were not run again; every child was done exactly once.
    let kids = {
        let node = NodeProc::start(&home, &["--workers", "1"]);
        let kids = children(&http, &node, &id);
        drop(node);
        kids
    };
    for c in &kids {
        assert_eq!(states(&c["history"], "done"), 1, "{c}");
        let last = c["history"].as_array().unwrap().last().unwrap();
        assert_eq!(last["state"], "done", "nothing ran after done: {c}");
        if let Some(killed) = done_before_kill.get(c["id"].as_str().unwrap()) {
            // Its one result dates from before the kill: the restarted nodes did not redo it.
            assert!(c["finished_ms"].as_u64().unwrap() <= *killed, "{c}");
        }
    }
    assert!(
        done_before_kill.len() >= 3,
        "the kills interrupted a run in progress"
    );
    assert_eq!(parent["progress"]["items_done"], files.len());
}

#[test]
fn three_nodes_share_the_archive_and_build_the_same_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    write_archive(&archive, 240, 13).unwrap();
    let job = job_file(tmp.path(), &archive, "shared");
    let http = Http::new();

    let reference = home_with_model(tmp.path(), "reference");
    run(&reference, &job);

    let homes: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| home_with_model(tmp.path(), n))
        .collect();
    // One worker each, so that the owner alone would take three times as long.
    let a = NodeProc::start_with(
        &homes[0],
        &["--name", "a", "--no-discovery", "--workers", "1"],
    );
    let join = a.cluster.clone().unwrap();
    // One swarm: b and c hold a's secret.
    for h in &homes[1..] {
        std::fs::copy(homes[0].join("swarm.key"), h.join("swarm.key")).unwrap();
    }
    let b = NodeProc::start_with(
        &homes[1],
        &[
            "--name",
            "b",
            "--no-discovery",
            "--workers",
            "1",
            "--join",
            &join,
        ],
    );
    let c = NodeProc::start_with(
        &homes[2],
        &[
            "--name",
            "c",
            "--no-discovery",
            "--workers",
            "1",
            "--join",
            &join,
        ],
    );
    eventually(Duration::from_secs(20), "three members", || {
        let (_, s) = http.get(&a.url("/api/swarm")).ok()?;
        let up = s["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "up" || n["status"] == "self")
            .count();
        (up == 3).then_some(())
    });
    let id = a.submit(&job);
    wait_done(&http, &a, &id);
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for c in children(&http, &a, &id) {
        // The history notes who ran each attempt; the last lease is the one that finished.
        let holder = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|t| t["state"] == "leased")
            .and_then(|t| t["note"].as_str())
            .unwrap()
            .split('#')
            .next()
            .unwrap()
            .to_owned();
        *by_node.entry(holder).or_default() += 1;
    }
    eprintln!("children by node: {by_node:?}");
    for n in ["a", "b", "c"] {
        assert!(
            by_node.get(n).copied().unwrap_or(0) > 0,
            "node {n} did a part: {by_node:?}"
        );
    }
    assert_same_collection(&reference, &homes[0], "shared");
    drop((b, c));
}

/// A broken model or a missing ONNX Runtime: the run ends with the file named and the setup
/// command to run, no panic, and the jobs stay on record (dead, with the reason).
#[test]
fn a_corrupt_model_or_missing_runtime_names_the_file_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    write_archive(&archive, 6, 1).unwrap();

    // A model directory whose model.onnx is garbage.
    let home = home_with_model(tmp.path(), "corrupt");
    let broken = home.join("models/broken");
    std::fs::create_dir_all(&broken).unwrap();
    let real = real_home().join("models").join(MODEL);
    for f in [
        "tokenizer.json",
        "config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(real.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(broken.join("model.onnx"), b"not an onnx graph").unwrap();
    let job = tmp.path().join("broken.toml");
    std::fs::write(
        &job,
        format!(
            "version = 1\nkind = \"archive\"\nmax_attempts = 2\n[archive]\ninput = {:?}\ncollection = \"c\"\nmodel = \"broken\"\n",
            archive.display().to_string()
        ),
    )
    .unwrap();
    let out = myco(&home)
        .args(["run", "--no-discovery"])
        .arg(&job)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken/model.onnx"), "{stderr}");
    assert!(stderr.contains("setup.sh"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The jobs are on record: dead, with the reason.
    {
        let node = NodeProc::start(&home, &[]);
        let (_, list) = Http::new()
            .get(&node.url("/api/jobs?all=true&limit=100"))
            .unwrap();
        let jobs = list["jobs"].as_array().unwrap();
        assert!(!jobs.is_empty());
        for j in jobs {
            assert_eq!(j["state"], "dead", "{j}");
        }
        assert!(
            jobs.iter().any(|j| j["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("model.onnx")),
            "{list}"
        );
    }

    // No ONNX Runtime where the node looks for it.
    let home = tmp.path().join("no-runtime");
    std::fs::create_dir_all(home.join("models")).unwrap();
    std::os::unix::fs::symlink(&real, home.join("models").join(MODEL)).unwrap();
    let job = job_file(tmp.path(), &archive, "c");
    let out = myco(&home)
        .args(["run", "--no-discovery"])
        .arg(&job)
        .env_remove("MYCO_ORT_LIB")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("libonnxruntime.so"), "{stderr}");
    assert!(stderr.contains("setup.sh"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
