//! Accounts in PostgreSQL, end to end with the real binary: two engine processes on one
//! database share logins, refresh tokens, revocations and signing keys, and a restarted node
//! still honours the tokens issued before; the offline admin commands (`switchyard tenant
//! create`, `user create`, `keys rotate`) write accounts a running engine then accepts.
//!
//! Each test creates its own database. Without `TEST_DATABASE_URL` the tests print
//! `SKIPPED` and pass, unless `SWITCHYARD_REQUIRE_SERVICES=1`.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use loadtest::fake_llm::{FakeLlmServer, Scenario};
use serde_json::{Value, json};

use crate::app::{OWNER_EMAIL, OWNER_PASSWORD, ProcessNode, spawn_process_node};
use crate::postgres::TestDatabase;

/// A node on `database` with a model on `fake`.
fn node(name: &str, fake: &FakeLlmServer, database: &str) -> ProcessNode {
    let toml = format!(
        r#"
[[models]]
name = "primary"
provider = "openai_compatible"
upstream_model = "gpt-4o"
base_url = "{}/v1"

[routing]
default_model = "primary"

[database]
url = "{database}"
"#,
        fake.base_url()
    );
    spawn_process_node(name, &toml)
}

async fn post(url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: String, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(node: &ProcessNode, email: &str, password: &str) -> (u16, Value) {
    post(node.url("/api/v1/auth/login"), None, json!({ "email": email, "password": password }))
        .await
}

/// `GET /api/v1/auth/me` with `token` on `node`: the status.
async fn me(node: &ProcessNode, token: &str) -> (u16, Value) {
    get(node.url("/api/v1/auth/me"), Some(token)).await
}

/// Waits (up to 15 s: nodes sync every 2 s) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn key_ids(node: &ProcessNode) -> Vec<u64> {
    let (status, body) = get(node.url("/.well-known/biscuit-keys"), None).await;
    assert_eq!(status, 200, "{body}");
    body["keys"].as_array().unwrap().iter().map(|k| k["id"].as_u64().unwrap()).collect()
}

async fn current_key(node: &ProcessNode) -> u64 {
    let (_, body) = get(node.url("/.well-known/biscuit-keys"), None).await;
    body["keys"].as_array().unwrap().iter().find(|k| k["current"] == true).unwrap()["id"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_logins_refresh_revocation_and_signing_keys_across_restarts() {
    let Some(db) = TestDatabase::create().await else { return };
    let fake = FakeLlmServer::start(Scenario::default()).unwrap();
    let mut a = node("accounts-a", &fake, &db.url);
    let b = node("accounts-b", &fake, &db.url);
    // Both nodes bootstrapped the same owner into the one database, and use one key.
    assert_eq!(key_ids(&a).await, [1]);
    assert_eq!(key_ids(&b).await, [1]);

    // Log in on A; the access token works on B, and B refreshes it.
    let (status, session) = login(&a, OWNER_EMAIL, OWNER_PASSWORD).await;
    assert_eq!(status, 200, "{session}");
    let access = session["access_token"].as_str().unwrap().to_owned();
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let (status, who) = me(&b, &access).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["user_id"], session["user_id"]);
    assert_eq!(who["superadmin"], true);
    let (status, refreshed) =
        post(b.url("/api/v1/auth/refresh"), None, json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 200, "{refreshed}");
    let access2 = refreshed["access_token"].as_str().unwrap().to_owned();
    let refresh2 = refreshed["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(me(&a, &access2).await.0, 200);

    // The spent refresh token presented again on A is reuse: the session is revoked, and
    // within a sync interval every node refuses its access tokens.
    let (status, _) =
        post(a.url("/api/v1/auth/refresh"), None, json!({ "refresh_token": refresh })).await;
    assert_eq!(status, 401);
    assert_eq!(me(&a, &access2).await.0, 401, "the node that saw the reuse refuses at once");
    eventually("B learns the revocation", || async { me(&b, &access2).await.0 == 401 }).await;
    assert_eq!(me(&b, &access).await.0, 401);
    let (status, _) =
        post(b.url("/api/v1/auth/refresh"), None, json!({ "refresh_token": refresh2 })).await;
    assert_eq!(status, 401, "the family's current refresh token is dead too");

    // Two nodes presented one refresh token at the same moment: exactly one wins.
    let (_, session) = login(&b, OWNER_EMAIL, OWNER_PASSWORD).await;
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let (on_a, on_b) = tokio::join!(
        post(a.url("/api/v1/auth/refresh"), None, json!({ "refresh_token": refresh })),
        post(b.url("/api/v1/auth/refresh"), None, json!({ "refresh_token": refresh })),
    );
    let mut statuses = [on_a.0, on_b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "{on_a:?} {on_b:?}");
    let winner = if on_a.0 == 200 { on_a.1 } else { on_b.1 };
    let winner_access = winner["access_token"].as_str().unwrap().to_owned();
    eventually("both nodes refuse the raced session", || async {
        me(&a, &winner_access).await.0 == 401 && me(&b, &winner_access).await.0 == 401
    })
    .await;

    // A key rotated on A is published and honoured by B.
    let (_, session) = login(&a, OWNER_EMAIL, OWNER_PASSWORD).await;
    let owner = session["access_token"].as_str().unwrap().to_owned();
    let (status, rotated) =
        post(a.url("/admin/signing-keys/rotate"), Some(&owner), json!({})).await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(rotated["current_key_id"], 2);
    eventually("B publishes the new key", || async { key_ids(&b).await == [1, 2] }).await;
    assert_eq!(current_key(&b).await, 2);
    let (_, session) = login(&a, OWNER_EMAIL, OWNER_PASSWORD).await;
    let signed_by_2 = session["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me(&b, &signed_by_2).await.0, 200, "B verifies a token signed with key 2");
    assert_eq!(me(&b, &owner).await.0, 200, "and still the ones signed with key 1");

    // A restarted node still verifies the tokens issued before, and logs in from the store.
    a.kill();
    let a = node("accounts-a2", &fake, &db.url);
    assert_eq!(key_ids(&a).await, [1, 2]);
    assert_eq!(me(&a, &signed_by_2).await.0, 200);
    assert_eq!(me(&a, &owner).await.0, 200);
    assert_eq!(me(&a, &access2).await.0, 401, "a revoked session stays revoked after a restart");
    let (status, _) = login(&a, OWNER_EMAIL, OWNER_PASSWORD).await;
    assert_eq!(status, 200);
}

/// Runs `switchyard <args>` against `database` (`None`: no database), with `stdin`.
fn switchyard(database: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env("RUST_LOG", "warn")
        .env("SWITCHYARD_LOG_FORMAT", "text")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = database {
        command.env("DATABASE_URL", url);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The value of the `name value` line `name` in a command's stdout.
fn field(output: &Output, name: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{name}` in {stdout}"))
        .to_owned()
}

fn stderr_of(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_create_accounts_and_keys_the_engine_then_honours() {
    // Without a database there is nothing to administer, and the command says so.
    let refused = switchyard(None, &["tenant", "create", "Acme"], "");
    let message = stderr_of(&refused);
    assert!(message.contains("nothing to administer offline"), "{message}");
    assert!(message.contains("REST API"), "{message}");

    let Some(db) = TestDatabase::create().await else { return };
    let url = Some(db.url.as_str());
    let tenant = field(&switchyard(url, &["tenant", "create", "Acme"], ""), "tenant_id");
    let admin = switchyard(
        url,
        &["user", "create", "--tenant", &tenant, "--email", "Ada@Acme.test", "--role", "admin"],
        "a-password-from-stdin\n",
    );
    // Without --password-stdin a password is generated and printed once.
    let admin_id = field(&admin, "user_id");
    let generated = field(&admin, "password");
    assert!(generated.len() >= 20, "{generated}");
    let viewer = switchyard(
        url,
        &[
            "user",
            "create",
            "--tenant",
            &tenant,
            "--email",
            "vic@acme.test",
            "--role",
            "viewer",
            "--superadmin",
            "--password-stdin",
        ],
        "a-password-from-stdin\n",
    );
    let viewer_id = field(&viewer, "user_id");
    assert!(!String::from_utf8_lossy(&viewer.stdout).contains("password"));
    // Refusals: a taken email, an unknown tenant or role, a short password.
    let taken = switchyard(
        url,
        &["user", "create", "--tenant", &tenant, "--email", "ada@acme.test", "--role", "member"],
        "",
    );
    assert!(stderr_of(&taken).contains("email_taken"), "{}", stderr_of(&taken));
    let no_tenant = switchyard(
        url,
        &["user", "create", "--tenant", "nope", "--email", "x@acme.test", "--role", "member"],
        "",
    );
    assert!(stderr_of(&no_tenant).contains("no tenant"), "{}", stderr_of(&no_tenant));
    let bad_role = switchyard(
        url,
        &["user", "create", "--tenant", &tenant, "--email", "y@acme.test", "--role", "king"],
        "",
    );
    assert!(stderr_of(&bad_role).contains("unknown role"), "{}", stderr_of(&bad_role));
    let short = switchyard(
        url,
        &[
            "user",
            "create",
            "--tenant",
            &tenant,
            "--email",
            "z@acme.test",
            "--role",
            "member",
            "--password-stdin",
        ],
        "short\n",
    );
    assert!(stderr_of(&short).contains("at least"), "{}", stderr_of(&short));
    // The first command created signing key 1; rotation adds 2.
    assert_eq!(field(&switchyard(url, &["keys", "rotate"], ""), "signing_key"), "2");

    // The engine logs them in, with their tenant, role and flags, signing with key 2.
    let fake = FakeLlmServer::start(Scenario::default()).unwrap();
    let engine = node("accounts-cli", &fake, &db.url);
    assert_eq!(key_ids(&engine).await, [1, 2]);
    assert_eq!(current_key(&engine).await, 2);
    let (status, session) = login(&engine, "ada@acme.test", &generated).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(
        (&session["tenant_id"], &session["user_id"], &session["role"]),
        (&json!(tenant), &json!(admin_id), &json!("admin"))
    );
    let ada = session["access_token"].as_str().unwrap().to_owned();
    let (status, who) = me(&engine, &ada).await;
    assert_eq!((status, &who["superadmin"]), (200, &json!(false)), "{who}");
    let (status, session) = login(&engine, "vic@acme.test", "a-password-from-stdin").await;
    assert_eq!(status, 200, "{session}");
    assert_eq!((&session["user_id"], &session["role"]), (&json!(viewer_id), &json!("viewer")));
    let vic = session["access_token"].as_str().unwrap().to_owned();
    // A superadmin may create tenants; a tenant admin may not.
    let (status, _) = post(engine.url("/api/v1/tenants"), Some(&vic), json!({"name": "B"})).await;
    assert_eq!(status, 201);
    let (status, _) = post(engine.url("/api/v1/tenants"), Some(&ada), json!({"name": "C"})).await;
    assert_eq!(status, 403);

    // A key rotated from the command line while the engine runs is picked up and used.
    assert_eq!(field(&switchyard(url, &["keys", "rotate"], ""), "signing_key"), "3");
    eventually("the engine signs with key 3", || async { current_key(&engine).await == 3 }).await;
    let (_, session) = login(&engine, "ada@acme.test", &generated).await;
    assert_eq!(me(&engine, session["access_token"].as_str().unwrap()).await.0, 200);
    assert_eq!(me(&engine, &ada).await.0, 200, "tokens of key 2 stay valid");
}
