//! Talking to the engine over REST: logging in like a real client, creating conversations.

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::scenario::Scenario;

/// A logged-in HTTP client for one run.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// REST calls go here: the first of the targets.
    pub base: String,
    /// Every node given (`--target http://a,http://b`): WebSocket clients spread over them
    /// and move to the next one when theirs goes away.
    pub targets: Vec<String>,
    /// Access token, when the engine requires one.
    pub token: Option<String>,
    /// The token for each target: nodes that keep accounts in memory (no shared account
    /// store) each issue their own, so the harness logs in on every target.
    pub tokens: Vec<Option<String>>,
    pub model: Option<String>,
}

impl Client {
    /// Logs in with `--email/--password` (or the `SWITCHYARD_BOOTSTRAP_*` variables), or uses
    /// `--token`; with neither, runs unauthenticated (an engine without auth configured).
    pub async fn connect(scenario: &Scenario) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            // Under the engine's 5 s keep-alive: a connection the server is closing for
            // idleness must not be picked for the next request (that race failed a few
            // `setup_failed` per 10k run: "connection closed before message completed").
            .pool_idle_timeout(std::time::Duration::from_secs(3))
            .tcp_nodelay(true)
            .build()
            .context("failed to build the HTTP client")?;
        let email =
            scenario.email.clone().or_else(|| std::env::var("SWITCHYARD_BOOTSTRAP_EMAIL").ok());
        let password = scenario
            .password
            .clone()
            .or_else(|| std::env::var("SWITCHYARD_BOOTSTRAP_PASSWORD").ok());
        let targets: Vec<String> = scenario
            .target
            .split(',')
            .map(|t| t.trim().trim_end_matches('/').to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        let base = targets.first().cloned().context("no target given")?;
        let mut tokens = Vec::with_capacity(targets.len());
        for target in &targets {
            tokens.push(match (&scenario.token, &email, &password) {
                (Some(token), _, _) => Some(token.clone()),
                (None, Some(email), Some(password)) => {
                    Some(login(&http, target, email, password).await?)
                }
                _ => None,
            });
        }
        let token = tokens.first().cloned().flatten();
        Ok(Client { http, base, targets, token, tokens, model: scenario.model.clone() })
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Creates a conversation and returns its id.
    pub async fn create_conversation(&self) -> anyhow::Result<String> {
        let body = match &self.model {
            Some(model) => json!({ "model": model }),
            None => json!({}),
        };
        let response = self.post("/api/v1/conversations").json(&body).send().await?;
        let status = response.status();
        let json: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("creating a conversation failed with {status}: {json}");
        }
        json["id"].as_str().map(str::to_owned).context("no conversation id in the response")
    }

    /// `ws://…/ws/{id}` for the first target.
    pub fn ws_url(&self, conversation_id: &str) -> String {
        self.ws_url_on(0, conversation_id)
    }

    /// The token to present on target `index` (modulo the number of targets).
    pub fn token_on(&self, index: usize) -> Option<&str> {
        self.tokens.get(index % self.tokens.len().max(1)).and_then(|t| t.as_deref())
    }

    /// `ws://…/ws/{id}` on target `index` (modulo the number of targets).
    pub fn ws_url_on(&self, index: usize, conversation_id: &str) -> String {
        let target = &self.targets[index % self.targets.len().max(1)];
        let base = target.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
        format!("{base}/ws/{conversation_id}")
    }
}

async fn login(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let response = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .with_context(|| format!("failed to reach {base}"))?;
    let status = response.status();
    let json: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("login failed with {status}: {}", json["error"]["message"]);
    }
    ["access_token", "token"]
        .iter()
        .find_map(|k| json[*k].as_str())
        .map(str::to_owned)
        .context("the login response carries no access token")
}

/// A user message of about `size` bytes, different per client and turn so caches miss.
pub fn message(client: usize, turn: u64, size: usize) -> String {
    let mut text = format!("Load test client {client} turn {turn}: ");
    const FILLER: &str = "tell me something about trains and timetables ";
    while text.len() < size {
        text.push_str(FILLER);
    }
    text.truncate(size.max(text.find(':').map_or(1, |i| i + 1)));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_asked_size_and_differ() {
        let a = message(1, 1, 200);
        assert_eq!(a.len(), 200);
        assert_ne!(a, message(2, 1, 200));
        assert_ne!(a, message(1, 2, 200));
    }
}
