//! OpenAI embeddings (`POST /v1/embeddings`): deterministic unit-length vectors from a hashed
//! bag of words, so equal texts get equal vectors and texts sharing words get close ones, which
//! is what the engine's semantic cache needs to be tested against.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use serde_json::{Value, json};

use super::text::fnv1a;
use super::{Shared, hang_forever, random_id};

/// Dimensions when the request does not ask for any (as small sentence-embedding models use).
pub const DEFAULT_DIMENSIONS: usize = 384;
/// Upper bound on `dimensions`, as large as OpenAI's biggest embedding model.
const MAX_DIMENSIONS: usize = 3072;

/// The embedding of `text`: each lower-cased alphanumeric word adds ±1 to a hashed dimension,
/// then the vector is scaled to unit length. Text without words maps to the first axis.
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let dims = dimensions.max(1);
    let mut v = vec![0f32; dims];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let h = fnv1a(word.to_lowercase().as_bytes());
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % dims as u64) as usize] += sign;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        v[0] = 1.0;
    } else {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Standard base64 with padding, for `encoding_format: "base64"` (the `openai` Python SDK asks
/// for it by default): the vector's little-endian f32 bytes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn invalid(message: &str, param: &str) -> HttpResponse {
    HttpResponseBuilder::new(StatusCode::BAD_REQUEST)
        .insert_header(("x-request-id", format!("req_{}", random_id(32))))
        .json(json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}))
}

/// One input as text: a string, or a token array rendered as its numbers.
fn input_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(tokens) if tokens.iter().all(Value::is_u64) => {
            Some(tokens.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "))
        }
        _ => None,
    }
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: Bytes,
) -> HttpResponse {
    shared.begin(&req, &body);
    let scenario = match shared.scenario(&req) {
        Ok(s) => s,
        Err(message) => return invalid(&message, "x-fake-llm"),
    };
    if let Some(status) = scenario.error_status {
        shared.injected();
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = HttpResponseBuilder::new(code);
        if let Some(secs) = scenario.retry_after_for(status) {
            resp.insert_header(("retry-after", secs.to_string()));
        }
        let kind = if status >= 500 { "server_error" } else { "invalid_request_error" };
        return resp.json(json!({"error": {"message": format!("fake-llm injected a {status} error."), "type": kind, "param": null, "code": null}}));
    }
    if scenario.hang {
        return hang_forever().await;
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return invalid("We could not parse the JSON body of your request.", "body");
    };
    let Some(model) = json.get("model").and_then(Value::as_str) else {
        return invalid("you must provide a model parameter", "model");
    };
    let inputs: Vec<String> = match json.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) && !items.is_empty() => {
            input_text(&Value::Array(items.clone())).into_iter().collect()
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            match items.iter().map(input_text).collect::<Option<Vec<_>>>() {
                Some(texts) => texts,
                None => {
                    return invalid(
                        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                        "input",
                    );
                }
            }
        }
        Some(v @ Value::String(_)) => input_text(v).into_iter().collect(),
        None => return invalid("Missing required parameter: 'input'.", "input"),
        Some(_) => {
            return invalid(
                "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
                "input",
            );
        }
    };
    if inputs.iter().any(String::is_empty) {
        return invalid("'$.input' is invalid: input cannot be an empty string.", "input");
    }
    let dimensions = match json.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(d) => match d.as_u64() {
            Some(d) if (1..=MAX_DIMENSIONS as u64).contains(&d) => d as usize,
            _ => {
                return invalid(
                    &format!(
                        "Invalid 'dimensions': expected an integer between 1 and {MAX_DIMENSIONS}."
                    ),
                    "dimensions",
                );
            }
        },
    };
    let as_base64 = match json.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return invalid(
                "Invalid 'encoding_format': expected 'float' or 'base64'.",
                "encoding_format",
            );
        }
    };
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += super::text::word_count(text);
            let v = embed(text, dimensions);
            let embedding = if as_base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    HttpResponseBuilder::new(StatusCode::OK)
        .insert_header(("x-request-id", format!("req_{}", random_id(32))))
        .json(json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let a = embed("How do I reset my password?", 384);
        assert_eq!(a.len(), 384);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        assert_eq!(a, embed("how do i reset my PASSWORD", 384));
        assert!((cosine(&embed("", 8), &embed("", 8)) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let a = embed("how do I reset my password", 384);
        let b = embed("how can I reset my password please", 384);
        let c = embed("weather forecast for tomorrow in Paris", 384);
        assert!(cosine(&a, &b) > 0.6);
        assert!(cosine(&a, &b) > cosine(&a, &c) + 0.3);
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
