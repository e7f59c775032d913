//! `spawn_app()`: the real engine on a random port, with `fake-llm` as its upstream, talked to
//! as a client would (HTTP and WebSocket).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use engine::config::Config;
use engine::server::Engine;
use futures_util::{SinkExt, StreamExt};
use loadtest::fake_llm::{FakeLlmServer, Scenario};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub fake: FakeLlmServer,
    pub http: reqwest::Client,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The engine with two models on `fake-llm`: `primary` (scripted by `primary_knobs`, an
/// `x-fake-llm` header value) falling back to `fallback`. `extra_toml` is appended to the config.
pub fn spawn_app_with(primary_knobs: &str, fake_defaults: Scenario, extra_toml: &str) -> TestApp {
    spawn_app_configured(primary_knobs, fake_defaults, extra_toml, |_| {})
}

/// [`spawn_app_with`], with a last change to the configuration before the engine starts.
pub fn spawn_app_configured(
    primary_knobs: &str,
    fake_defaults: Scenario,
    extra_toml: &str,
    customize: impl FnOnce(&mut Config),
) -> TestApp {
    let fake = FakeLlmServer::start(fake_defaults).expect("fake-llm starts");
    let base = format!("{}/v1", fake.base_url());
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
shutdown_grace_secs = 2

[[models]]
name = "primary"
provider = "openai_compatible"
upstream_model = "gpt-4o"
base_url = "{base}"
fallbacks = ["fallback"]
headers = {{ "x-fake-llm" = "{primary_knobs}" }}

[[models]]
name = "fallback"
provider = "openai_compatible"
upstream_model = "claude-sonnet"
base_url = "{base}"

[routing]
default_model = "primary"
{extra_toml}
"#
    );
    let mut config = Config::parse(&toml).unwrap().finish(&BTreeMap::new()).unwrap();
    customize(&mut config);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let engine = Engine::start(config).await.expect("engine starts");
            addr_tx.send(engine.addr()).unwrap();
            let (state, handle) = (engine.state(), engine.handle());
            actix_rt::spawn(async move {
                // The test's drop asks us to stop; poll without blocking the runtime.
                loop {
                    if stop_rx.try_recv().is_ok() {
                        Engine::shutdown(state, handle).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let _ = engine.run().await;
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("engine reports its address");
    TestApp { addr, fake, http: reqwest::Client::new(), stop: Some(stop_tx), thread: Some(thread) }
}

pub fn spawn_app() -> TestApp {
    spawn_app_with("", Scenario { tokens: 8, ..Scenario::default() }, "")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a conversation and returns its id.
    pub async fn create_conversation(&self, body: Value) -> String {
        let response = self.post_json("/api/v1/conversations", &body).await;
        assert_eq!(response.status(), 201, "create conversation");
        let json: Value = response.json().await.unwrap();
        json["id"].as_str().unwrap().to_owned()
    }

    pub async fn ws_connect(&self, conversation_id: &str) -> Ws {
        let url = format!("ws://{}/ws/{conversation_id}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        ws
    }
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into())).await.unwrap();
}

/// The next JSON text frame (skipping pings), or panics after `timeout`.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("no transport error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("socket closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// Frames until (and including) the first `done` or turn `error`.
pub async fn recv_turn(ws: &mut Ws) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = recv(ws).await;
        let end =
            frame["type"] == "done" || (frame["type"] == "error" && frame.get("seq").is_some());
        frames.push(frame);
        if end {
            return frames;
        }
    }
}

/// The text of a turn: its deltas joined.
pub fn text_of(frames: &[Value]) -> String {
    frames.iter().filter(|f| f["type"] == "delta").map(|f| f["text"].as_str().unwrap()).collect()
}

/// Asserts the seqs of `frames` (those that have one) are consecutive.
pub fn assert_gap_free(frames: &[Value]) {
    let seqs: Vec<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "seqs must be gap-free: {seqs:?}");
    }
}

/// A `switchyard` process (the real binary), for tests that must kill a node outright.
pub struct ProcessNode {
    pub addr: SocketAddr,
    child: std::process::Child,
    _config: std::path::PathBuf,
}

/// Starts the `switchyard` binary with `config_toml` (listen on port 0 is added) and waits
/// for it to print its address.
pub fn spawn_process_node(name: &str, config_toml: &str) -> ProcessNode {
    use std::io::BufRead;
    let path =
        std::env::temp_dir().join(format!("switchyard-{name}-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\nshutdown_grace_secs = 1\n{config_toml}")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&path)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env("SWITCHYARD_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("switchyard starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("Switchyard is listening on http://") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the node prints its address");
    ProcessNode { addr: addr.parse().unwrap(), child, _config: path }
}

impl ProcessNode {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn ws_connect(&self, conversation_id: &str) -> Ws {
        let url = format!("ws://{}/ws/{conversation_id}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        ws
    }

    /// `kill -9`: no shutdown, no lease release, unsaved events lost.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self._config);
    }
}

/// The engine (as [`spawn_app_with`]) on PostgreSQL at `database_url`: migrated at start,
/// every conversation stored there.
pub fn spawn_app_with_database(database_url: &str, fake_defaults: Scenario) -> TestApp {
    spawn_app_with("", fake_defaults, &format!("\n[database]\nurl = \"{database_url}\"\n"))
}
