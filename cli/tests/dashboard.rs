//! The dashboard (issue 16) in a real headless Chromium, driven over the DevTools protocol
//! (chromiumoxide), against a 2-node swarm of real node processes on 127.0.0.1. Node `a`'s
//! API listens beyond loopback, so the page needs the token: the test logs in through the
//! login page (an `HttpOnly`, `SameSite=Strict` cookie) and then, without reloading the page:
//! the swarm page lists both nodes while `b` steals from `a`; a job submitted with the CLI
//! appears on the queue page and goes to `done`; the Cancel and Retry buttons cancel a
//! running job, re-queue it, and re-queue a dead job with fresh attempts (as `myco retry`
//! does; both show in the job's history); an archive job's page shows its progress; a
//! collection search returns hits; a chat streams its answer (the page shows the text grow,
//! then tokens/s and the node that served it).
//!
//! Every request the page made is checked: each goes to node `a` (nothing from elsewhere).
//! The browser itself is kept on this machine: every host but 127.0.0.1 resolves to
//! nothing, and anything not on loopback goes to a proxy that is not there. Screenshots are
//! saved under the test's output directory (`CARGO_TARGET_TMPDIR/dashboard/`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::network::EventRequestWillBeSent;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{Browser, BrowserConfig, Page};
use common::{Http, NodeProc, eventually, linked_home};
use futures_util::StreamExt;
use myco_jobs::llm::gguf::TinyLlama;
use serde_json::Value;

/// Short leases and heartbeats, so that stealing and failure handling show in seconds.
const CONFIG: &str = "lease = 3\ntick = 0.2\nbackoff_base = 0.05\nbackoff_max = 1\n\
                      heartbeat = 0.25\npeer_timeout = 2\n";

const LIMIT: Duration = Duration::from_secs(90);

/// Debian's `chromium`, installed by ./setup.sh (or `MYCO_CHROMIUM`).
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("MYCO_CHROMIUM") {
        return p.into();
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("no chromium: ./setup.sh installs Debian's `chromium` (or set MYCO_CHROMIUM)")
}

/// A headless Chromium with one page, driven from this (sync) test through a runtime of
/// its own, and every URL the page requested.
struct Chrome {
    rt: tokio::runtime::Runtime,
    browser: Browser,
    page: Page,
    requests: Arc<Mutex<Vec<String>>>,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chrome {
    fn launch(shots: &Path) -> Chrome {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let config = BrowserConfig::builder()
            .chrome_executable(chromium())
            .new_headless_mode()
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1280, 900)
            .viewport(None)
            .request_timeout(Duration::from_secs(60))
            .args([
                // Nothing leaves this machine: no name resolves but loopback's, and whatever
                // is not on loopback goes to a proxy nobody listens on.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--proxy-server=127.0.0.1:9",
                "--disable-component-update",
                "--disable-domain-reliability",
                "--no-pings",
                "--hide-scrollbars",
                "--font-render-hinting=none",
            ])
            .build()
            .unwrap();
        let (browser, page, requests) = rt.block_on(async {
            let (browser, mut handler) = Browser::launch(config).await.expect("start chromium");
            tokio::spawn(async move { while handler.next().await.is_some() {} });
            let page = browser.new_page("about:blank").await.unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let mut sent = page
                .event_listener::<EventRequestWillBeSent>()
                .await
                .unwrap();
            let seen = requests.clone();
            tokio::spawn(async move {
                while let Some(e) = sent.next().await {
                    seen.lock().unwrap().push(e.request.url.clone());
                }
            });
            (browser, page, requests)
        });
        std::fs::create_dir_all(shots).unwrap();
        Chrome {
            rt,
            browser,
            page,
            requests,
            shots: shots.to_path_buf(),
            _profile: profile,
        }
    }

    fn goto(&self, url: &str) {
        self.rt.block_on(self.page.goto(url)).unwrap();
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&self, js: &str) -> Value {
        self.rt
            .block_on(self.page.evaluate(js))
            .ok()
            .and_then(|r| r.into_value::<Value>().ok())
            .unwrap_or(Value::Null)
    }

    /// Wait until a JavaScript expression is truthy (not null, false, 0 or "").
    fn wait(&self, js: &str, what: &str) -> Value {
        self.wait_up_to(LIMIT, js, what)
    }

    fn wait_up_to(&self, limit: Duration, js: &str, what: &str) -> Value {
        eventually(limit, what, || {
            let v = self.eval(js);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            truthy.then_some(v)
        })
    }

    /// Click an element as a person would (the mouse, at its centre). Like a person, it
    /// waits for the element (a page that is still loading, or just re-rendered).
    fn click(&self, selector: &str) {
        eventually(LIMIT, &format!("click {selector}"), || {
            self.rt
                .block_on(async {
                    self.page
                        .find_element(selector)
                        .await?
                        .click()
                        .await
                        .map(|_| ())
                })
                .ok()
        })
    }

    /// Type into an input, as keystrokes (waiting for it, as [`Chrome::click`] does).
    fn type_into(&self, selector: &str, text: &str) {
        eventually(LIMIT, &format!("type into {selector}"), || {
            self.rt
                .block_on(async {
                    let el = self.page.find_element(selector).await?;
                    el.click().await?;
                    el.type_str(text).await.map(|_| ())
                })
                .ok()
        })
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.shots.join(name);
        self.rt
            .block_on(
                self.page
                    .save_screenshot(ScreenshotParams::builder().full_page(true).build(), &path),
            )
            .unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.rt.block_on(async {
            let _ = self.browser.close().await;
            self.browser.wait().await
        });
    }
}

/// A size of the run, from the environment.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn submit_spec(node: &NodeProc, dir: &Path, name: &str, toml: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    node.submit(&path)
}

fn noop(payload: &str, extra: &str, noop: &str) -> String {
    format!("version = 1\nkind = \"noop\"\n{extra}\n[noop]\npayload = {payload:?}\n{noop}\n")
}

fn job(http: &Http, node: &NodeProc, id: &str) -> Value {
    let (status, v) = http.get(&node.url(&format!("/api/jobs/{id}"))).unwrap();
    assert_eq!(status, 200, "{v}");
    v
}

fn row_state(id: &str) -> String {
    format!(
        "((document.querySelector('#jobs tr[data-id=\"{id}\"]') || {{dataset: {{}}}}).dataset.state || '')"
    )
}

/// The notes of a job's history.
fn notes(v: &Value) -> Vec<String> {
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["note"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_dashboard_shows_and_drives_a_two_node_swarm_in_a_real_browser() {
    let root = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let port = (23_000 + (std::process::id() % 2_000) as u16 * 2).to_string();
    let discovery = |name: &'static str| {
        vec![
            "--name",
            name,
            "--discovery-iface",
            "127.0.0.1",
            "--discovery-port",
            &port,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<String>>()
    };

    // Node a: the embedding model and a tiny GGUF for the chat; its API beyond loopback.
    let home_a = linked_home(root.path(), "a", true);
    // Serving transfers at 2 MB/s, so one is seen on its way.
    std::fs::write(
        home_a.join("config.toml"),
        format!("{CONFIG}workers = 2\ntransfer_rate = 2000000\n"),
    )
    .unwrap();
    TinyLlama::default()
        .write(&home_a.join("models/tiny.gguf"), true)
        .unwrap();
    // About 8 MB: a model b pulls while the page watches.
    TinyLlama {
        n_embd: 512,
        n_head: 8,
        n_head_kv: 4,
        n_ff: 2048,
        n_layer: 2,
        wtype: myco_jobs::llm::gguf::WType::Q8_0,
        ..TinyLlama::default()
    }
    .write(&home_a.join("models/big.gguf"), false)
    .unwrap();
    let mut args_a = discovery("a");
    args_a.extend(["--api".into(), "0.0.0.0:0".into()]);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let a = NodeProc::start_logged(&home_a, &args_a, &root.path().join("a.log"));
    let home_b = linked_home(root.path(), "b", true);
    std::fs::write(home_b.join("config.toml"), format!("{CONFIG}workers = 4\n")).unwrap();
    common::copy_secret(&home_a, &home_b);
    let args_b = discovery("b");
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let b = NodeProc::start_logged(&home_b, &args_b, &root.path().join("b.log"));
    let token = common::api_token(&home_a);
    let http = Http::with_token(&token);
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();

    let chrome = Chrome::launch(&shots);
    // The browser comes from this machine, as a person on another would come from theirs.
    let host = format!("127.0.0.1:{}", a.addr.port());

    // Without the token the page sends the browser to the login page.
    chrome.goto(&format!("http://{host}/"));
    chrome.wait(
        "location.pathname === '/login' && document.readyState === 'complete'",
        "the login page",
    );
    chrome.type_into("#token", "myco-not-the-token");
    chrome.click("#login");
    chrome.wait(
        "location.pathname === '/login' && document.readyState === 'complete' \
         && document.body.innerText.includes('not this node')",
        "a wrong token refused",
    );
    chrome.type_into("#token", &token);
    chrome.click("#login");
    chrome.wait(
        "location.pathname === '/' && !!document.querySelector('#nodes')",
        "the swarm page after logging in",
    );
    let cookies = chrome.rt.block_on(chrome.page.get_cookies()).unwrap();
    let cookie = cookies.iter().find(|c| c.name == "myco_token").unwrap();
    assert!(cookie.http_only, "the token cookie is HttpOnly");
    assert_eq!(
        cookie.same_site.as_ref().map(|s| format!("{s:?}")),
        Some("Strict".to_owned())
    );
    assert_eq!(
        chrome.eval("document.cookie"),
        Value::String(String::new()),
        "the page's scripts cannot read the token"
    );
    // From here on the page is never reloaded: this mark would be gone.
    chrome.eval("window.__loaded = 'once'");

    // The swarm page lists both nodes, b up.
    chrome.wait(
        "document.querySelectorAll('#nodes .node').length === 2 \
         && !!document.querySelector('#nodes .node[data-node=\"b\"] .badge.up')",
        "both nodes on the swarm page",
    );

    // b pulls a's big model: the swarm page shows the transfer on b's card as it goes, then
    // the model among b's.
    eventually(LIMIT, "b sees a's big model with its hash", || {
        let (_, s) = http.get(&a.url("/api/swarm")).ok()?;
        s["nodes"]
            .as_array()?
            .iter()
            .any(|n| {
                n["name"] == "a"
                    && n["info"]["models"].as_array().is_some_and(|m| {
                        m.iter()
                            .any(|m| m["name"] == "big" && m["sha256"].is_string())
                    })
            })
            .then_some(())
    });
    let mut pull = b.cli();
    pull.args(["models", "pull", "big", "--from", "a"]);
    let pulling = std::thread::spawn(move || pull.output().unwrap());
    chrome.wait(
        "(() => { const t = document.querySelector('#nodes .node[data-node=\"b\"] .transfers .transfer'); \
         return !!t && t.innerText.includes('model big from a') \
           && Number(t.dataset.done) < Number(t.dataset.size); })()",
        "b's transfer with its progress on the swarm page",
    );
    chrome.screenshot("swarm-transfer.png");
    let out = pulling.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    chrome.wait(
        "!document.querySelector('#nodes .node[data-node=\"b\"] .transfers') \
         && document.querySelector('#nodes .node[data-node=\"b\"]').innerText.includes('big')",
        "the transfer done, big among b's models",
    );

    // A steal-heavy run: jobs on a; b (4 slots to a's 2) takes its share. The swarm page is
    // shot when 80 % of them are done. (MYCO_DASHBOARD_JOBS, _JOB_MS and _DOCS make the run
    // and the archive below bigger, for the README's screenshots.)
    let n_jobs = knob("MYCO_DASHBOARD_JOBS", 60);
    let job_ms = knob("MYCO_DASHBOARD_JOB_MS", 400);
    let run = Duration::from_millis(n_jobs * job_ms);
    let many: Vec<String> = (0..n_jobs)
        .map(|i| {
            submit_spec(
                &a,
                &jobs,
                &format!("many-{i}"),
                &noop(&format!("m{i}"), "", &format!("sleep_ms = {job_ms}")),
            )
        })
        .collect();
    chrome.wait_up_to(
        LIMIT + run,
        &format!(
            "Number((document.querySelector('#steal tr[data-node=\"b\"] .hour') || {{}}).textContent) > 0 \
             && Array.from(document.querySelectorAll('#steal .hour')).reduce((s, e) => s + Number(e.textContent), 0) >= {}",
            n_jobs * 4 / 5
        ),
        "b's stolen jobs on the swarm page",
    );
    chrome.screenshot("swarm-stealing.png");
    eventually(LIMIT + run, "the steal-heavy run done", || {
        many.iter()
            .all(|id| job(&http, &a, id)["state"] == "done")
            .then_some(())
    });

    // A job submitted with the CLI appears on the queue page and goes to done, live.
    chrome.goto_hash("#/queue");
    let id = submit_spec(&a, &jobs, "one", &noop("hello", "", "sleep_ms = 1500"));
    chrome.wait(&row_state(&id), "the CLI's job on the queue page");
    chrome.wait(
        &format!("{} === 'done'", row_state(&id)),
        "the job done on the queue page",
    );
    chrome.screenshot("queue.png");

    // Cancel a running job with its button, then retry it.
    let long = submit_spec(&a, &jobs, "long", &noop("long", "", "sleep_ms = 120000"));
    chrome.wait(
        &format!("{} === 'leased'", row_state(&long)),
        "the long job running",
    );
    chrome.click(&format!(
        "#jobs tr[data-id=\"{long}\"] button[data-act=\"cancel\"]"
    ));
    chrome.wait(
        &format!("{} === 'cancelled'", row_state(&long)),
        "the long job cancelled by its button",
    );
    let v = job(&http, &a, &long);
    assert_eq!(v["state"], "cancelled", "{v:#}");
    chrome.click(&format!(
        "#jobs tr[data-id=\"{long}\"] button[data-act=\"retry\"]"
    ));
    eventually(LIMIT, "the cancelled job running again", || {
        let v = job(&http, &a, &long);
        (v["state"] == "leased").then_some(v)
    });
    http.post(&a.url(&format!("/api/jobs/{long}/cancel")), &Value::Null)
        .unwrap();

    // A dead job: `myco retry` and the job page's Retry button queue it again with fresh
    // attempts (its planned failure comes again at attempt 1), and its history says so.
    let dead = submit_spec(
        &a,
        &jobs,
        "dead",
        &noop("bad", "max_attempts = 1", "fail_attempts = 1"),
    );
    eventually(LIMIT, "the job dead", || {
        (job(&http, &a, &dead)["state"] == "dead").then_some(())
    });
    let out = a.cli().args(["retry", &dead]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fresh attempts"));
    let after_cli = eventually(LIMIT, "dead again after the CLI's retry", || {
        let v = job(&http, &a, &dead);
        (v["state"] == "dead" && notes(&v).iter().any(|n| n.contains("retried"))).then_some(v)
    });
    assert_eq!(after_cli["attempts"], 1, "fresh attempts: {after_cli}");
    let status = a.cli().args(["status", &dead]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("retried with fresh attempts (was dead after 1 attempts"),
        "{status}"
    );
    // A job that is not dead is not retried: the CLI says why and fails.
    let out = a.cli().args(["retry", &id]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("resubmit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    chrome.goto_hash(&format!("#/job/{dead}"));
    chrome.wait(
        "!!document.querySelector('#retry') && !document.querySelector('#retry').disabled",
        "the dead job's page with Retry",
    );
    chrome.click("#retry");
    let after_button = eventually(LIMIT, "dead again after the button's retry", || {
        let v = job(&http, &a, &dead);
        let retried = notes(&v).iter().filter(|n| n.contains("retried")).count();
        (v["state"] == "dead" && retried == 2).then_some(v)
    });
    assert_eq!(after_button["attempts"], 1);
    chrome.wait(
        "document.querySelectorAll('#history tr').length > 0 && \
         document.querySelector('#history').innerText.split('retried with fresh attempts').length === 3",
        "both retries in the page's history",
    );

    // An archive job: its page follows its progress; then its collection is searched.
    let docs = root.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let n_docs = knob("MYCO_DASHBOARD_DOCS", 24);
    for i in 0..n_docs {
        let body = format!(
            "# Note {i}\n\nThe mini PC number {i} draws about {} watts when idle and runs the \
             embedding worker overnight.\n\n{}\n",
            5 + i,
            "Swarm nodes share one durable queue and steal work from each other. ".repeat(40)
        );
        std::fs::write(docs.join(format!("note-{i:02}.md")), body).unwrap();
    }
    std::fs::write(
        docs.join("solar.md"),
        "# Solar\n\nThe garden shed's solar panel charges the laptop battery.\n",
    )
    .unwrap();
    let archive = submit_spec(
        &a,
        &jobs,
        "archive",
        &format!(
            "version = 1\nkind = \"archive\"\n[archive]\ninput = {:?}\ncollection = \"notes\"\n",
            docs.display().to_string()
        ),
    );
    chrome.goto_hash(&format!("#/job/{archive}"));
    chrome.wait(
        "(document.querySelector('#jprogress') || {}).textContent",
        "the archive job's page",
    );
    // Mid-run if it can be caught (it is not asserted: a fast machine finishes first).
    chrome.wait(
        "/[1-9][0-9]* of [0-9]+ documents/.test(document.querySelector('#jprogress').textContent) \
         || document.querySelector('#jstate').innerText === 'done'",
        "the archive job under way",
    );
    chrome.screenshot("job-archive.png");
    chrome.wait_up_to(
        LIMIT + Duration::from_secs(n_docs),
        "document.querySelector('#jstate').innerText === 'done'",
        "the archive job done on its page",
    );
    chrome.wait(
        "document.querySelector('#result').textContent.length > 2 && \
         !document.querySelector('#result').textContent.startsWith('Loading')",
        "the archive job's result preview",
    );

    chrome.goto_hash("#/collections");
    chrome.wait(
        "!!document.querySelector('#colls tr[data-name=\"notes\"]')",
        "the collection listed",
    );
    chrome.type_into("#qtext", "what charges the laptop battery?");
    chrome.click("#qgo");
    let sources = chrome.wait(
        "document.querySelectorAll('#hits .hit').length > 0 && \
         Array.from(document.querySelectorAll('#hits .source')).map(e => e.textContent)",
        "search hits",
    );
    assert!(
        sources
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().ends_with("solar.md")),
        "{sources}"
    );
    chrome.screenshot("collections.png");

    // A chat streams its answer: the page shows the text grow, then the rate and who
    // served it.
    chrome.goto_hash("#/chat");
    chrome.wait(
        "Array.from(document.querySelectorAll('#cmodel option')).some(o => o.value === 'tiny')",
        "the swarm's model in the chat's list",
    );
    chrome.eval(
        "window.__lengths = []; new MutationObserver(() => { \
           const m = document.querySelector('#chatlog .msg.assistant'); \
           if (m) window.__lengths.push(m.firstChild && m.firstChild.nodeType === 3 ? m.firstChild.textContent.length : 0); \
         }).observe(document.querySelector('#chatlog'), {childList: true, subtree: true, characterData: true}); 1",
    );
    chrome.eval("document.querySelector('#cmax').value = '48'");
    chrome.type_into("#cprompt", "hello swarm");
    chrome.click("#csend");
    let meta = chrome.wait(
        "(m => m && m.includes('served by') && m)((document.querySelector('#chatlog .msg.assistant .meta') || {}).textContent)",
        "the chat's answer with its provenance",
    );
    let meta = meta.as_str().unwrap();
    assert!(
        meta.contains("tokens/s") && meta.contains("served by a"),
        "{meta}"
    );
    let lengths = chrome.eval("window.__lengths");
    let mut grew: Vec<u64> = lengths
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .filter(|n| *n > 0)
        .collect();
    grew.dedup();
    assert!(
        grew.len() >= 2 && grew.windows(2).all(|w| w[0] < w[1]),
        "the answer's text grew piece by piece as it streamed: {lengths}"
    );
    chrome.screenshot("chat.png");

    // The plan page draws how a pipeline of the model would be placed.
    chrome.goto_hash("#/plan?model=tiny");
    chrome.wait(
        "document.querySelectorAll('#plan .plan-node').length > 0",
        "the plan's picture",
    );
    chrome.screenshot("plan.png");

    // The phone-sized page: the same swarm, readable.
    chrome.rt.block_on(async {
        use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
        chrome
            .page
            .execute(SetDeviceMetricsOverrideParams::new(390, 844, 3.0, true))
            .await
            .unwrap();
    });
    chrome.goto_hash("#/swarm");
    chrome.wait(
        "document.querySelectorAll('#nodes .node').length === 2",
        "the swarm page on a phone",
    );
    assert!(
        chrome
            .eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
            .as_bool()
            .unwrap(),
        "no sideways scrolling on a phone"
    );
    chrome.screenshot("swarm-phone.png");

    assert_eq!(
        chrome.eval("window.__loaded"),
        Value::String("once".into()),
        "the page was never reloaded"
    );

    // Every request the page made went to node a.
    let requests = chrome.requests.lock().unwrap().clone();
    assert!(requests.len() > 20, "{requests:?}");
    let outside: Vec<&String> = requests
        .iter()
        .filter(|u| {
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("ws://"));
            match rest {
                Some(r) => r.split('/').next() != Some(host.as_str()),
                None => !(u.starts_with("data:") || *u == "about:blank"),
            }
        })
        .collect();
    assert!(outside.is_empty(), "requests beyond node a: {outside:?}");
    eprintln!(
        "{} requests, all to {host}; screenshots in {}",
        requests.len(),
        shots.display()
    );
}

impl Chrome {
    /// Go to a page of the dashboard without reloading it.
    fn goto_hash(&self, hash: &str) {
        self.eval(&format!("location.hash = {hash:?}; 1"));
    }
}
