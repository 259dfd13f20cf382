//! Test support: start real `myco node` processes on port 0, talk to them over HTTP, and
//! poll for conditions with a deadline (never sleep-and-hope).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod netns;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MYCO: &str = env!("CARGO_BIN_EXE_myco");

/// A `myco` command with its home set and logs quiet.
pub fn myco(home: &Path) -> Command {
    myco_in(None, home)
}

/// [`myco`], run inside the network namespace `netns` (`ip netns exec`, which execs it:
/// the child's pid is myco's) when one is named.
pub fn myco_in(netns: Option<&str>, home: &Path) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, MYCO]);
            cmd
        }
        None => Command::new(MYCO),
    };
    cmd.arg("--home")
        .arg(home)
        .env("MYCO_LOG", "warn,ractor_cluster=error")
        .env_remove("RUST_BACKTRACE");
    for var in ["MYCO_API", "MYCO_JSON", "MYCO_WORKERS", "MYCO_NAME"] {
        cmd.env_remove(var);
    }
    cmd
}

/// A running `myco node` process.
pub struct NodeProc {
    pub child: Child,
    pub addr: SocketAddr,
    /// The cluster address it advertises.
    pub cluster: Option<String>,
    pub home: PathBuf,
}

impl NodeProc {
    /// Start a lone node (no discovery) on 127.0.0.1:0 and wait for it to say where it
    /// listens.
    pub fn start(home: &Path, extra: &[&str]) -> NodeProc {
        let mut args = vec!["--name", "test", "--no-discovery"];
        args.extend_from_slice(extra);
        NodeProc::start_with(home, &args)
    }

    /// Start a node with exactly these `node` arguments (API and cluster port on
    /// 127.0.0.1:0). Tests that discover peers must pass `--discovery-iface 127.0.0.1`.
    pub fn start_with(home: &Path, node_args: &[&str]) -> NodeProc {
        NodeProc::spawn(home, node_args, None, &[])
    }

    /// Like [`NodeProc::start_with`], with the node's log (level info) written to `log`.
    pub fn start_logged(home: &Path, node_args: &[&str], log: &Path) -> NodeProc {
        NodeProc::spawn(home, node_args, Some(log), &[])
    }

    /// Like [`NodeProc::start_logged`], with variables set in the node's environment.
    pub fn start_logged_env(
        home: &Path,
        node_args: &[&str],
        log: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> NodeProc {
        NodeProc::spawn(home, node_args, Some(log), env)
    }

    /// Run a prepared `myco ... --json node ...` command (e.g. inside a network namespace)
    /// and wait for it to say where it listens.
    pub fn from_command(mut cmd: Command, home: &Path) -> NodeProc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn myco node");
        NodeProc::started(child, home)
    }

    /// [`NodeProc::from_command`] with the node's log (level info) written to `log`.
    pub fn from_command_logged(mut cmd: Command, home: &Path, log: &Path) -> NodeProc {
        let file = std::fs::File::create(log).expect("log file");
        cmd.env("MYCO_LOG", "info,ractor_cluster=error")
            .stdout(Stdio::piped())
            .stderr(file);
        let child = cmd.spawn().expect("spawn myco node");
        NodeProc::started(child, home)
    }

    fn spawn(
        home: &Path,
        node_args: &[&str],
        log: Option<&Path>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> NodeProc {
        let mut cmd = myco(home);
        cmd.envs(env.iter().copied());
        if !node_args.contains(&"--cluster") {
            // Keep the cluster port on loopback unless the test says otherwise.
            cmd.env("MYCO_CLUSTER", "127.0.0.1:0");
        }
        if !node_args.contains(&"--api") {
            cmd.args(["--api", "127.0.0.1:0"]);
        }
        cmd.args(["--json", "node"])
            .args(node_args)
            .stdout(Stdio::piped());
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("log file");
                cmd.env("MYCO_LOG", "info,ractor_cluster=error")
                    .stderr(file);
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        let child = cmd.spawn().expect("spawn myco node");
        NodeProc::started(child, home)
    }

    fn started(mut child: Child, home: &Path) -> NodeProc {
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the node's first line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("node printed {line:?}: {e}"));
        let addr = v["api"].as_str().expect("api").parse().expect("addr");
        let cluster = v["cluster"].as_str().map(str::to_owned);
        NodeProc {
            child,
            addr,
            cluster,
            home: home.to_path_buf(),
        }
    }

    /// A `myco` command of this node's home that talks to this node (`--api`).
    pub fn cli(&self) -> Command {
        let mut cmd = myco(&self.home);
        cmd.args(["--api", &self.addr.to_string()]);
        cmd
    }

    /// `myco submit JOB` to this node; the id of the (first) job.
    pub fn submit(&self, job: &Path) -> String {
        let out = self
            .cli()
            .args(["--json", "submit"])
            .arg(job)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["jobs"][0]["id"].as_str().unwrap().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        wait_exit(&mut self.child, Duration::from_secs(60))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `cond` until it returns Some, or panic after `limit` with `what`.
pub fn eventually<T>(limit: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The API token the node at `home` made on its first start.
pub fn api_token(home: &Path) -> String {
    std::fs::read_to_string(home.join("api.token"))
        .expect("the node's API token")
        .trim()
        .to_owned()
}

/// A blocking HTTP helper (a reqwest client on a private runtime).
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Http {
        Http::with_headers(reqwest::header::HeaderMap::new())
    }

    /// A client of `node`'s owner: its API token (from the node's home), from this machine,
    /// as `myco` commands call it. Jobs it submits may read any path.
    pub fn owner(node: &NodeProc) -> Http {
        Http::with_token(&api_token(&node.home))
    }
    /// A client that sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(token: &str) -> Http {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        Http::with_headers(h)
    }

    fn with_headers(headers: reqwest::header::HeaderMap) -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // Under the node's 10 s header timeout, which closes idle kept-alive
                // connections: a connection reused as the node closes it fails the request.
                .pool_idle_timeout(Duration::from_secs(5))
                .default_headers(headers)
                .build()
                .unwrap(),
        }
    }

    /// GET → (status, the `Retry-After` header, body text).
    pub fn get_retry(&self, url: &str) -> Result<(u16, Option<String>, String), reqwest::Error> {
        self.rt.block_on(async {
            let r = self.client.get(url).send().await?;
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((status, retry, r.text().await?))
        })
    }

    /// GET → (status, JSON body).
    pub fn get(&self, url: &str) -> Result<(u16, serde_json::Value), reqwest::Error> {
        self.rt.block_on(async {
            let r = self.client.get(url).send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            Ok((
                status,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
            ))
        })
    }

    pub fn get_text(&self, url: &str) -> Result<(u16, String), reqwest::Error> {
        self.rt.block_on(async {
            let r = self.client.get(url).send().await?;
            let status = r.status().as_u16();
            Ok((status, r.text().await?))
        })
    }

    /// POST JSON → (status, JSON body).
    pub fn post(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value), reqwest::Error> {
        self.rt.block_on(async {
            let r = self.client.post(url).json(body).send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            Ok((
                status,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
            ))
        })
    }
}

impl Http {
    /// DELETE → (status, JSON body).
    pub fn delete(&self, url: &str) -> Result<(u16, serde_json::Value), reqwest::Error> {
        self.rt.block_on(async {
            let r = self.client.delete(url).send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            Ok((
                status,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
            ))
        })
    }
}

/// Give the node at home `to` the swarm secret of the node at `from`, so it may join.
pub fn copy_secret(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("swarm.key"), to.join("swarm.key")).unwrap();
}

/// A noop job spec as the API takes it.
pub fn noop_spec(payload: &str, extra: &str) -> serde_json::Value {
    serde_json::json!({
        "toml": format!("version = 1\nkind = \"noop\"\n{extra}\n[noop]\npayload = {payload:?}\n"),
        "base_dir": "/",
    })
}

/// Where ./setup.sh installs the Python clients (openai, langchain-openai).
pub fn pyclients_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("myco/pyclients")
}

/// The home ./setup.sh filled (`MYCO_HOME`, else `~/.myco`): ONNX Runtime and the default
/// embedding model.
pub fn real_home() -> PathBuf {
    std::env::var_os("MYCO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".myco"))
}

/// The default embedding model's name.
pub const MODEL: &str = "all-MiniLM-L6-v2";

/// A fresh home `root/name` linking the real home's ONNX Runtime and, if `model`, the
/// default embedding model, as ./setup.sh leaves a real home.
pub fn linked_home(root: &Path, name: &str, model: bool) -> PathBuf {
    let real = real_home();
    assert!(
        real.join("models").join(MODEL).join("model.onnx").is_file(),
        "run ./setup.sh first"
    );
    let home = root.join(name);
    std::fs::create_dir_all(home.join("lib")).unwrap();
    std::fs::create_dir_all(home.join("models")).unwrap();
    std::os::unix::fs::symlink(
        real.join("lib/libonnxruntime.so"),
        home.join("lib/libonnxruntime.so"),
    )
    .unwrap();
    if model {
        std::os::unix::fs::symlink(
            real.join("models").join(MODEL),
            home.join("models").join(MODEL),
        )
        .unwrap();
    }
    home
}
