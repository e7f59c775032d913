//! `spawn_app()`: the real engine on a random port, with `fake-llm` as its upstream, talked to
//! as a client would (HTTP and WebSocket).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
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
    /// Sends the owner's access token on every request.
    pub http: reqwest::Client,
    /// The bootstrap owner (also platform superadmin) every helper acts as.
    pub owner: Session,
    /// A client with no credentials.
    pub anon: reqwest::Client,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// How far the engine thread got in stopping (see [`STOP_PHASES`]).
    stopping: Arc<AtomicU8>,
    /// The step the engine's own shutdown is in.
    shutdown: engine::server::ShutdownProgress,
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
    config.auth.bootstrap_email = Some(OWNER_EMAIL.to_owned());
    config.auth.bootstrap_password = Some(OWNER_PASSWORD.into());
    customize(&mut config);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stopping = Arc::new(AtomicU8::new(0));
    let progress = stopping.clone();
    let thread = std::thread::spawn(move || {
        let shutdown_progress = progress.clone();
        actix_rt::System::new().block_on(async move {
            let engine = Engine::start(config).await.expect("engine starts");
            let owner = login_in_process(&engine, OWNER_EMAIL, OWNER_PASSWORD).await;
            addr_tx.send((engine.addr(), owner, engine.state().shutdown_progress())).unwrap();
            let (state, handle) = (engine.state(), engine.handle());
            actix_rt::spawn(async move {
                // The test's drop asks us to stop; poll without blocking the runtime.
                loop {
                    if stop_rx.try_recv().is_ok() {
                        shutdown_progress.store(1, Ordering::Release);
                        Engine::shutdown(state, handle).await;
                        shutdown_progress.store(2, Ordering::Release);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let _ = engine.run().await;
            progress.store(3, Ordering::Release);
        });
    });
    let (addr, owner, shutdown) =
        addr_rx.recv_timeout(Duration::from_secs(30)).expect("engine reports its address");
    TestApp {
        addr,
        fake,
        http: client_with(&owner.access_token),
        owner,
        anon: test_client().build().unwrap(),
        stop: Some(stop_tx),
        thread: Some(thread),
        stopping,
        shutdown,
    }
}

/// The bootstrap owner of every test engine.
pub const OWNER_EMAIL: &str = "owner@test.switchyard";
pub const OWNER_PASSWORD: &str = "owner-password-for-tests";

/// Tokens from a login.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub tenant_id: String,
    pub user_id: String,
}

impl Session {
    pub fn from_json(json: &Value) -> Session {
        Session {
            access_token: json["access_token"].as_str().expect("access_token").to_owned(),
            refresh_token: json["refresh_token"].as_str().expect("refresh_token").to_owned(),
            tenant_id: json["tenant_id"].as_str().expect("tenant_id").to_owned(),
            user_id: json["user_id"].as_str().expect("user_id").to_owned(),
        }
    }
}

async fn login_in_process(engine: &Engine, email: &str, password: &str) -> Session {
    let state = engine.state();
    let login = engine::auth::service::Login {
        email,
        password,
        totp_code: None,
        tenant_id: None,
        ip: None,
    };
    let session = state.auth.login(login).await.expect("the bootstrap owner logs in");
    Session::from_json(&serde_json::to_value(&session).unwrap())
}

/// A client that sends `Authorization: Bearer <token>` on every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    test_client().default_headers(headers).build().unwrap()
}

/// A test's HTTP client. libtest has no per-test timeout, so a request that never ends would
/// stall the whole suite; this bound turns such a hang into a failure that names the test.
pub fn test_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(Duration::from_secs(120))
}

/// A WebSocket handshake for `conversation_id` carrying `token` in `Sec-WebSocket-Protocol`.
pub fn ws_request(
    addr: SocketAddr,
    conversation_id: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws/{conversation_id}").into_client_request().unwrap();
    let protocols = format!("switchyard.v1, bearer.{token}");
    request.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
    request
}

pub fn spawn_app() -> TestApp {
    spawn_app_with("", Scenario { tokens: 8, ..Scenario::default() }, "")
}

/// What the engine thread had done when a test engine failed to stop, by progress value.
const STOP_PHASES: [&str; 4] = [
    "the stop request was not seen",
    "Engine::shutdown began and did not return",
    "Engine::shutdown returned; the server did not stop",
    "the server stopped; dropping the actix system (its tasks and blocking pool) did not finish",
];

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A shutdown that never ends would stall the whole suite: fail the test instead.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !thread.is_finished() {
                if std::time::Instant::now() > deadline {
                    let phase = STOP_PHASES[usize::from(self.stopping.load(Ordering::Acquire))];
                    if !std::thread::panicking() {
                        eprintln!("{}", thread_stacks());
                    }
                    let step = self.shutdown.phase();
                    assert!(
                        std::thread::panicking(),
                        "the engine did not stop within 60 s; it got as far as: {phase} \
                         (Engine::shutdown: {step})"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = thread.join();
        }
    }
}

/// Every thread's stack in this process, from gdb when it is installed: what a hung engine
/// was waiting on, printed with the failure that reports the hang. gdb writes to a file, not
/// a pipe: it stops every thread of this process, the one that would drain a pipe included.
fn thread_stacks() -> String {
    let path = std::env::temp_dir().join(format!("switchyard-stacks-{}.txt", std::process::id()));
    let Ok(file) = std::fs::File::create(&path) else {
        return String::from("no thread stacks: could not create a file for them");
    };
    let pid = std::process::id().to_string();
    let ran = std::process::Command::new("gdb")
        .args(["-p", &pid, "-batch", "-nx", "-iex", "set debuginfod enabled off"])
        .args(["-ex", "thread apply all bt"])
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("clone a file handle"))
        .stderr(file)
        .status();
    let stacks = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    match ran {
        Ok(_) => format!("thread stacks (gdb):\n{stacks}"),
        Err(e) => format!("no thread stacks: gdb did not run ({e})"),
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

    /// Connects as the owner (token in `Sec-WebSocket-Protocol`).
    pub async fn ws_connect(&self, conversation_id: &str) -> Ws {
        self.ws_connect_as(conversation_id, &self.owner.access_token).await
    }

    pub async fn ws_connect_as(&self, conversation_id: &str, token: &str) -> Ws {
        let request = ws_request(self.addr, conversation_id, token);
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
        ws
    }

    /// The owner's handshake for `conversation_id` (for tests that build their own socket).
    pub fn ws_request(
        &self,
        conversation_id: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        ws_request(self.addr, conversation_id, &self.owner.access_token)
    }

    /// Logs in over HTTP; the response JSON.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        let body = serde_json::json!({ "email": email, "password": password });
        self.anon.post(self.url("/api/v1/auth/login")).json(&body).send().await.unwrap()
    }

    /// Creates a tenant (as the superadmin owner) and returns its id.
    pub async fn create_tenant(&self, name: &str) -> String {
        let response =
            self.post_json("/api/v1/tenants", &serde_json::json!({ "name": name })).await;
        assert_eq!(response.status(), 201, "create tenant");
        let json: Value = response.json().await.unwrap();
        json["id"].as_str().unwrap().to_owned()
    }

    /// Creates a user with `role` in `tenant_id` (as the owner) and logs them in.
    pub async fn user(&self, tenant_id: &str, email: &str, role: &str) -> Session {
        let password = format!("{email}-password");
        let body = serde_json::json!({ "email": email, "password": password, "role": role });
        let response = self.post_json(&format!("/api/v1/tenants/{tenant_id}/users"), &body).await;
        assert_eq!(response.status(), 201, "create user {email}");
        let response = self.login(email, &password).await;
        assert_eq!(response.status(), 200, "login {email}");
        Session::from_json(&response.json().await.unwrap())
    }
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into())).await.unwrap();
}

/// The next JSON text frame (skipping pings), or panics after `timeout`.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")
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
    /// The bootstrap owner's access token, once [`ProcessNode::signed_in`].
    token: String,
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
        .env("SWITCHYARD_BOOTSTRAP_EMAIL", OWNER_EMAIL)
        .env("SWITCHYARD_BOOTSTRAP_PASSWORD", OWNER_PASSWORD)
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
    ProcessNode { addr: addr.parse().unwrap(), child, _config: path, token: String::new() }
}

impl ProcessNode {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The bootstrap owner's token on this node. Accounts and signing keys are per node
    /// until accounts are stored in PostgreSQL, so each node is logged into separately.
    pub async fn token(&self) -> String {
        let body = serde_json::json!({ "email": OWNER_EMAIL, "password": OWNER_PASSWORD });
        let login: Value = test_client()
            .build()
            .unwrap()
            .post(self.url("/api/v1/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["access_token"].as_str().expect("an access token").to_owned()
    }

    /// Logs the bootstrap owner in once, for [`ProcessNode::client`] and [`ProcessNode::ws`].
    pub async fn signed_in(mut self) -> ProcessNode {
        self.token = self.token().await;
        self
    }

    /// A client with the token of [`ProcessNode::signed_in`].
    pub fn client(&self) -> reqwest::Client {
        client_with(&self.token)
    }

    /// A socket on `conversation_id` with the token of [`ProcessNode::signed_in`].
    pub async fn ws(&self, conversation_id: &str) -> Ws {
        let request = ws_request(self.addr, conversation_id, &self.token);
        tokio_tungstenite::connect_async(request).await.expect("websocket connects").0
    }

    /// The process id, for reading the node's memory from `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
