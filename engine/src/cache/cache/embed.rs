//! Embedders behind one trait: the local MiniLM model ([`LocalEmbedder`], CPU work moved off
//! the async runtime) and any OpenAI-compatible `/v1/embeddings` API ([`OpenAiEmbedder`]).
//!
//! [`Embedder::space`] names the vector space: entries embedded by one model are never
//! compared with vectors of another, so switching models only costs hits, never correctness.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::minilm::MiniLm;

/// Why a text could not be embedded; the cache then treats the turn as a miss.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model failed: {0}")]
    Model(String),
    #[error("embeddings endpoint failed: {0}")]
    Upstream(String),
}

/// Turns a prompt into a unit-length vector.
pub trait Embedder: Send + Sync + 'static {
    /// The vector space (model) these vectors live in.
    fn space(&self) -> &str;
    fn embed(&self, text: String) -> BoxFuture<'static, Result<Vec<f32>, EmbedError>>;
}

/// all-MiniLM-L6-v2 in process.
pub struct LocalEmbedder {
    model: Arc<MiniLm>,
}

impl LocalEmbedder {
    pub fn load(dir: &Path) -> anyhow::Result<LocalEmbedder> {
        Ok(LocalEmbedder { model: Arc::new(MiniLm::load(dir)?) })
    }

    pub fn model(&self) -> &Arc<MiniLm> {
        &self.model
    }
}

impl Embedder for LocalEmbedder {
    fn space(&self) -> &str {
        self.model.name()
    }

    fn embed(&self, text: String) -> BoxFuture<'static, Result<Vec<f32>, EmbedError>> {
        let model = self.model.clone();
        // A forward pass is milliseconds of CPU: keep it off the reactor threads.
        tokio::task::spawn_blocking(move || model.embed(&text))
            .map(|joined| match joined {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(EmbedError::Model(e.to_string())),
                Err(e) => Err(EmbedError::Model(e.to_string())),
            })
            .boxed()
    }
}

/// `POST {base_url}/embeddings` of an OpenAI-compatible provider.
pub struct OpenAiEmbedder {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<SecretString>,
    space: String,
}

impl OpenAiEmbedder {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        model: &str,
        api_key: Option<SecretString>,
    ) -> Self {
        let base = base_url.trim_end_matches('/');
        OpenAiEmbedder {
            http,
            url: format!("{base}/embeddings"),
            model: model.to_owned(),
            api_key,
            space: format!("openai:{model}"),
        }
    }
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
}

impl Embedder for OpenAiEmbedder {
    fn space(&self) -> &str {
        &self.space
    }

    fn embed(&self, text: String) -> BoxFuture<'static, Result<Vec<f32>, EmbedError>> {
        let mut request = self.http.post(&self.url).timeout(Duration::from_secs(10)).json(
            &serde_json::json!({ "model": self.model, "input": text, "encoding_format": "float" }),
        );
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        async move {
            // Status and transport only: an upstream body may echo credentials or prompts.
            let response =
                request.send().await.map_err(|e| EmbedError::Upstream(kind_of(&e).into()))?;
            let status = response.status();
            if !status.is_success() {
                return Err(EmbedError::Upstream(format!("status {}", status.as_u16())));
            }
            let body: EmbeddingsResponse = response
                .json()
                .await
                .map_err(|_| EmbedError::Upstream("malformed response".into()))?;
            let mut v = body
                .data
                .into_iter()
                .next()
                .map(|d| d.embedding)
                .ok_or_else(|| EmbedError::Upstream("no embedding in the response".into()))?;
            normalize(&mut v);
            Ok(v)
        }
        .boxed()
    }
}

fn kind_of(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}

/// Scales `v` to unit length (providers usually do; the index relies on it).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
