//! Cost management end to end: every turn priced from its exact usage and written to the
//! ledger, failover legs and cache hits, reports that add up to the ledger, `auto` routing,
//! budgets (on one node and across two), spend anomalies, price edits, and the tenant wall.

use std::time::Duration;

use engine::routing::complexity::Tier;
use loadtest::fake_llm::Scenario;
use serde_json::{Value, json};

use crate::app::{TestApp, client_with, recv_turn, send, spawn_app_configured, spawn_process_node};

/// µ$ per million tokens (input, output) of the models the tests configure.
const PRIMARY: (u64, u64) = (2_500_000, 10_000_000);
const FALLBACK: (u64, u64) = (3_000_000, 15_000_000);
const CHEAP: (u64, u64) = (150_000, 600_000);

/// What `usage` costs at `price`, rounded half-up on the micro-dollar.
fn cost(usage: &Value, price: (u64, u64)) -> u64 {
    let input = usage["input_tokens"].as_u64().or(usage["prompt_tokens"].as_u64()).unwrap();
    let output = usage["output_tokens"].as_u64().or(usage["completion_tokens"].as_u64()).unwrap();
    (input * price.0 + output * price.1 + 500_000) / 1_000_000
}

const PRICES: &str = r#"
[costs.prices.primary]
input_per_mtok = 2.5
output_per_mtok = 10.0
[costs.prices.fallback]
input_per_mtok = 3.0
output_per_mtok = 15.0
[costs.prices.cheap]
input_per_mtok = 0.15
output_per_mtok = 0.60
"#;

/// `primary` and `fallback` (premium) and `cheap` (economy), all on fake-llm, priced.
fn priced_app(primary_knobs: &str, extra_toml: &str) -> TestApp {
    let extra = format!("{PRICES}{extra_toml}");
    // `cheap` is declared in TOML so the price table's validation sees it; its endpoint is
    // replaced with primary's (same fake) before start.
    let extra = format!(
        "{extra}\n[[models]]\nname = \"cheap\"\nprovider = \"mock\"\nupstream_model = \"x\"\ntier = \"economy\"\n"
    );
    spawn_app_configured(
        primary_knobs,
        Scenario { tokens: 8, ..Scenario::default() },
        &extra,
        |config| {
            let fallback = config.models.iter().find(|m| m.name == "fallback").unwrap().clone();
            for model in &mut config.models {
                match model.name.as_str() {
                    "primary" | "fallback" => model.tier = Some(Tier::Premium),
                    "cheap" => model.endpoint = fallback.endpoint.clone(),
                    _ => {}
                }
            }
        },
    )
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

async fn post(http: &reqwest::Client, url: String, body: &Value) -> reqwest::Response {
    http.post(url).header("connection", "close").json(body).send().await.unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// Polls `path` until `done` holds for the JSON body (ledger writes are asynchronous).
async fn poll_json(http: &reqwest::Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let response = http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        last = response.json().await.unwrap();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never satisfied the condition; last: {last}");
}

#[tokio::test]
async fn conversation_turns_are_priced_and_reports_equal_the_ledger() {
    let app = priced_app("", "");
    let conversation = app.create_conversation(json!({"model": "primary"})).await;
    let mut ws = app.ws_connect(&conversation).await;
    let mut total = 0;
    for prompt in ["First question", "A second, somewhat longer question", "Third"] {
        send(&mut ws, json!({"type": "user_message", "content": prompt})).await;
        let frames = recv_turn(&mut ws).await;
        let done = frames.last().unwrap();
        assert_eq!(done["type"], "done", "{frames:?}");
        let expected = cost(&done["usage"], PRIMARY);
        assert!(expected > 0);
        assert_eq!(done["cost_micros"], expected);
        assert!(done.get("route").is_none(), "an explicit model has no routing note");
        total += expected;
    }
    // The stored messages keep their cost too.
    let (status, messages) = app.get_json(&format!("/api/v1/conversations/{conversation}")).await;
    assert_eq!(status, 200);
    let stored: u64 = messages["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["cost_micros"].as_u64())
        .sum();
    assert_eq!(stored, total);

    let by_model =
        poll_json(&app.http, &app.url("/api/v1/costs?group_by=model"), |r| r["turns"] == 3).await;
    assert_eq!(by_model["total_cost_micros"], total);
    assert_eq!(by_model["currency"], "USD");
    let groups = by_model["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0]["key"].as_str(), groups[0]["cost_micros"].as_u64()),
        (Some("primary"), Some(total))
    );

    for group_by in ["user", "day", "tier"] {
        let (status, report) = app.get_json(&format!("/api/v1/costs?group_by={group_by}")).await;
        assert_eq!(status, 200);
        assert_eq!(report["total_cost_micros"], total, "group_by={group_by}");
        let sum: u64 = report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["cost_micros"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, total, "group_by={group_by}: groups add up to the total");
    }
    let (_, by_user) = app.get_json("/api/v1/costs?group_by=user").await;
    assert_eq!(by_user["groups"][0]["key"], app.owner.user_id.as_str());

    // CSV: a header, one row per group, and a total row equal to the JSON total.
    let csv = app
        .http
        .get(app.url("/api/v1/costs?group_by=model"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(header(&csv, "content-type").unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("group,cost_micros,"));
    assert!(lines[1].starts_with(&format!("primary,{total},")));
    assert!(lines.last().unwrap().starts_with(&format!("total,{total},")));

    // The chargeback for this month has the owner's row and the tenant's total.
    let chargeback = app.http.get(app.url("/api/v1/costs/chargeback")).send().await.unwrap();
    assert_eq!(chargeback.status(), 200);
    let chargeback = chargeback.text().await.unwrap();
    assert!(
        chargeback
            .lines()
            .any(|l| l.contains(&app.owner.user_id) && l.contains(&format!(",{total},"))),
        "{chargeback}"
    );
    assert!(
        chargeback.lines().any(|l| l.contains(",(total),") && l.contains(&format!(",{total},"))),
        "{chargeback}"
    );

    // Ranges: nothing before today, and bad input is refused clearly.
    let (_, past) = app.get_json("/api/v1/costs?from=2020-01-01&to=2020-01-31").await;
    assert_eq!((past["total_cost_micros"].as_u64(), past["turns"].as_u64()), (Some(0), Some(0)));
    for bad in ["group_by=colour", "from=2026-02-30x", "from=2026-11-10&to=2026-11-01"] {
        let (status, body) = app.get_json(&format!("/api/v1/costs?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"]["code"].is_string());
    }

    // Recommendations: premium turns on short prompts the scorer would have sent cheaper.
    let (status, advice) = app.get_json("/api/v1/costs/recommendations").await;
    assert_eq!(status, 200);
    assert_eq!(advice["turns_analysed"], 3);
    assert_eq!(advice["premium_turns"], 3);
}

#[tokio::test]
async fn failover_legs_are_each_priced_and_add_up() {
    let app = priced_app("break_after=3", "");
    let response =
        post(&app.http, app.url("/v1/chat/completions"), &chat("primary", "Tell me a story")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-switchyard-model").as_deref(), Some("fallback"));
    assert_eq!(header(&response, "x-switchyard-failovers").as_deref(), Some("1"));
    let charged: u64 = header(&response, "x-switchyard-cost-micros").unwrap().parse().unwrap();
    let body: Value = response.json().await.unwrap();
    // The answer's usage is the sum over legs; the fallback leg alone costs at least its
    // share at the fallback's price.
    assert!(charged > 0);
    assert!(charged <= cost(&body["usage"], FALLBACK));

    let report =
        poll_json(&app.http, &app.url("/api/v1/costs?group_by=model"), |r| r["turns"] == 1).await;
    assert_eq!(report["total_cost_micros"], charged, "the ledger holds every leg, no more");
    let keys: Vec<&str> =
        report["groups"].as_array().unwrap().iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["fallback", "primary"], "one row per leg, by the model that ran it");
}

#[tokio::test]
async fn cache_hits_cost_nothing_and_record_the_saving() {
    let app = priced_app("", "");
    let body = chat("primary", "What is the boiling point of water?");
    let first = post(&app.http, app.url("/v1/chat/completions"), &body).await;
    assert_eq!(header(&first, "x-switchyard-cache").as_deref(), Some("miss"));
    let paid: u64 = header(&first, "x-switchyard-cost-micros").unwrap().parse().unwrap();
    assert!(paid > 0);
    let again = post(&app.http, app.url("/v1/chat/completions"), &body).await;
    assert_eq!(header(&again, "x-switchyard-cache").as_deref(), Some("exact"));
    assert_eq!(header(&again, "x-switchyard-cost-micros").as_deref(), Some("0"));

    let report = poll_json(&app.http, &app.url("/api/v1/costs"), |r| r["turns"] == 2).await;
    assert_eq!(report["total_cost_micros"], paid);
    assert_eq!(report["total_saved_micros"], paid, "the hit saved what the answer cost");
    assert_eq!(report["groups"][0]["cache_hits"], 1);
}

#[tokio::test]
async fn auto_sends_simple_turns_to_the_cheap_tier_and_hard_ones_to_premium() {
    let app = priced_app("", "");
    let (_, models) = app.get_json("/v1/models").await;
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "auto"));

    let simple = post(
        &app.http,
        app.url("/v1/chat/completions"),
        &chat("auto", "What is the capital of France?"),
    )
    .await;
    assert_eq!(simple.status(), 200);
    assert_eq!(header(&simple, "x-switchyard-model").as_deref(), Some("cheap"));
    let route = header(&simple, "x-switchyard-route").unwrap();
    assert!(route.starts_with("complexity; tier=economy"), "{route}");
    let paid: u64 = header(&simple, "x-switchyard-cost-micros").unwrap().parse().unwrap();
    let body: Value = simple.json().await.unwrap();
    assert_eq!(paid, cost(&body["usage"], CHEAP));

    let hard = "Design a fault-tolerant distributed rate limiter for a multi-region API \
        gateway. Compare token bucket and sliding window log approaches, analyse the \
        consistency trade-offs step by step, prove an upper bound on over-admission under \
        clock skew, and give a Rust implementation with tests.";
    let hard = post(&app.http, app.url("/v1/chat/completions"), &chat("auto", hard)).await;
    assert_eq!(hard.status(), 200);
    assert_eq!(
        header(&hard, "x-switchyard-model").as_deref(),
        Some("primary"),
        "the cheapest premium model"
    );
    assert!(header(&hard, "x-switchyard-route").unwrap().contains("tier=premium"));

    // In a conversation the decision is in the `done` event.
    let conversation = app.create_conversation(json!({"model": "auto"})).await;
    let mut ws = app.ws_connect(&conversation).await;
    send(&mut ws, json!({"type": "user_message", "content": "Hi there!"})).await;
    let frames = recv_turn(&mut ws).await;
    let done = frames.last().unwrap();
    assert_eq!(done["model"], "cheap", "{done}");
    assert_eq!(done["route"]["policy"], "complexity");
    assert_eq!(done["route"]["requested"], "auto");
    assert_eq!(done["route"]["tier"], "economy");

    // The ledger keeps the tier the scorer chose.
    let report =
        poll_json(&app.http, &app.url("/api/v1/costs?group_by=tier"), |r| r["turns"] == 3).await;
    let keys: Vec<&str> =
        report["groups"].as_array().unwrap().iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["economy", "premium"]);
}

#[tokio::test]
async fn a_budget_refuses_at_its_limit_or_downgrades() {
    let app = priced_app("", "");
    let budget_url = app.url("/api/v1/tenants/default/budget");
    let set = app
        .http
        .put(&budget_url)
        .json(&json!({"monthly_limit_micros": 1, "soft_percent": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    // Under the limit (nothing spent yet): served, and it spends past the limit.
    let first = post(&app.http, app.url("/v1/chat/completions"), &chat("primary", "One")).await;
    assert_eq!(first.status(), 200);
    let spent: u64 = header(&first, "x-switchyard-cost-micros").unwrap().parse().unwrap();
    poll_json(&app.http, &budget_url, |b| b["spend_micros"].as_u64() == Some(spent)).await;

    let refused = post(&app.http, app.url("/v1/chat/completions"), &chat("primary", "Two")).await;
    assert_eq!(refused.status(), 402);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "budget_exceeded", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("budget"));
    // A conversation turn ends with the same error.
    let conversation = app.create_conversation(json!({"model": "primary"})).await;
    let mut ws = app.ws_connect(&conversation).await;
    send(&mut ws, json!({"type": "user_message", "content": "Three"})).await;
    let frames = recv_turn(&mut ws).await;
    assert_eq!(frames.last().unwrap()["code"], "budget_exceeded", "{frames:?}");

    // The tenant chose to downgrade instead: served by the cheap model, and it says why.
    let set = app
        .http
        .put(&budget_url)
        .json(&json!({"monthly_limit_micros": 1, "on_exceeded": "downgrade", "downgrade_model": "cheap"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let downgraded =
        post(&app.http, app.url("/v1/chat/completions"), &chat("primary", "Four")).await;
    assert_eq!(downgraded.status(), 200);
    assert_eq!(header(&downgraded, "x-switchyard-model").as_deref(), Some("cheap"));
    assert!(header(&downgraded, "x-switchyard-route").unwrap().starts_with("budget_downgrade"));

    // Metrics: the spend by tenant and model, and the refusal and downgrade as budget events
    // (at least: tests sharing this process add to the same tenant's series).
    let page = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let sample = |name: &str, labels: &[&str]| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let cost = sample("switchyard_cost_micros_total", &["tenant=\"default\"", "model=\"primary\""]);
    assert!(cost >= spent as f64, "cost series {cost} < {spent}");
    for kind in ["blocked", "exceeded", "downgraded"] {
        let events = sample(
            "switchyard_budget_events_total",
            &["tenant=\"default\"", &format!("kind=\"{kind}\"")],
        );
        assert!(events >= 1.0, "budget event {kind}: {events}");
    }

    // Bad budgets are refused; removing the budget lifts the limit.
    for bad in [
        json!({"monthly_limit_micros": 5, "soft_percent": 0}),
        json!({"monthly_limit_micros": 5, "downgrade_model": "nope"}),
        json!({"monthly_limit_micros": -1}),
        json!({"limit": 5}),
    ] {
        let response = app.http.put(&budget_url).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let removed = app.http.delete(&budget_url).send().await.unwrap();
    assert_eq!(removed.status(), 200);
    let served = post(&app.http, app.url("/v1/chat/completions"), &chat("primary", "Five")).await;
    assert_eq!(header(&served, "x-switchyard-model").as_deref(), Some("primary"));
}

#[tokio::test]
async fn costs_stay_behind_the_tenant_wall() {
    let app = priced_app("", "");
    let first = post(&app.http, app.url("/v1/chat/completions"), &chat("primary", "Spend")).await;
    assert_eq!(first.status(), 200);
    poll_json(&app.http, &app.url("/api/v1/costs"), |r| r["turns"] == 1).await;

    let other = app.create_tenant("other").await;
    let admin = client_with(&app.user(&other, "admin@other.test", "admin").await.access_token);
    let member = client_with(&app.user(&other, "member@other.test", "member").await.access_token);
    let report: Value =
        admin.get(app.url("/api/v1/costs")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (report["turns"].as_u64(), report["total_cost_micros"].as_u64()),
        (Some(0), Some(0))
    );
    let spend: Value =
        admin.get(app.url("/api/v1/costs/spend")).send().await.unwrap().json().await.unwrap();
    let tenants: Vec<&str> = spend["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, [other.as_str()]);
    for (client, url, status) in [
        (&admin, "/api/v1/tenants/default/budget", 404),
        (&admin, "/api/v1/costs?group_by=tenant", 403),
        (&admin, "/admin/anomalies", 403),
        (&member, "/api/v1/costs", 403),
    ] {
        let response = client.get(app.url(url)).send().await.unwrap();
        assert_eq!(response.status(), status, "{url}");
    }
    let price = json!({"input_per_mtok": 1.0, "output_per_mtok": 1.0});
    let response = admin.put(app.url("/admin/prices/primary")).json(&price).send().await.unwrap();
    assert_eq!(response.status(), 403);

    // The superadmin sees both tenants.
    let (_, all) = app.get_json("/api/v1/costs?group_by=tenant").await;
    let keys: Vec<&str> =
        all["groups"].as_array().unwrap().iter().map(|g| g["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["default"], "only tenants that spent have groups");
    let (_, spend) = app.get_json("/api/v1/costs/spend").await;
    assert_eq!(spend["tenants"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn an_admin_edit_makes_a_new_price_version() {
    let app = priced_app("", "");
    let (_, table) = app.get_json("/api/v1/prices").await;
    assert_eq!(table["version"], 1);
    assert_eq!(table["models"]["primary"]["input_micros_per_mtok"], PRIMARY.0);
    assert_eq!(table["tiers"]["cheap"], "economy");

    let price = json!({"input_per_mtok": 100.0, "output_per_mtok": 200.0});
    let set = app.http.put(app.url("/admin/prices/primary")).json(&price).send().await.unwrap();
    assert_eq!(set.status(), 200);
    let set: Value = set.json().await.unwrap();
    assert_eq!(set["version"], 2);
    let response =
        post(&app.http, app.url("/v1/chat/completions"), &chat("primary", "Price me")).await;
    let charged: u64 = header(&response, "x-switchyard-cost-micros").unwrap().parse().unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(charged, cost(&body["usage"], (100_000_000, 200_000_000)));

    for (model, body, status) in [
        ("nope", json!({"input_per_mtok": 1.0, "output_per_mtok": 1.0}), 404),
        ("primary", json!({"input_per_mtok": -1.0, "output_per_mtok": 1.0}), 400),
        ("primary", json!({"input_per_mtok": 1.0}), 400),
    ] {
        let response = app
            .http
            .put(app.url(&format!("/admin/prices/{model}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{model} {body}");
    }
}

#[tokio::test]
async fn a_spend_spike_raises_an_anomaly_and_steady_spend_does_not() {
    let app = priced_app(
        "",
        "[costs.anomaly]\ninterval_secs = 1\nwarmup_intervals = 3\nmin_spend_micros = 1\nmin_ratio = 3.0\n",
    );
    let turn = |i: usize| {
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        async move {
            // Distinct prompts of one length: no cache hits, nearly equal costs.
            let response =
                post(&http, url, &chat("primary", &format!("Steady question {i:03}"))).await;
            assert_eq!(response.status(), 200);
        }
    };
    // One turn per one-second interval for five intervals.
    for i in 0..5 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let to_next = 1000 - (now.as_millis() % 1000) as u64;
        tokio::time::sleep(Duration::from_millis(to_next + 100)).await;
        turn(i).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, quiet) = app.get_json("/admin/anomalies").await;
    assert_eq!(status, 200);
    assert_eq!(quiet["anomalies"], json!([]), "steady spend raised an anomaly");

    // Twelve turns inside one interval.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    tokio::time::sleep(Duration::from_millis(1000 - (now.as_millis() % 1000) as u64 + 50)).await;
    futures_util::future::join_all((100..112).map(turn)).await;
    let raised = poll_json(&app.http, &app.url("/admin/anomalies"), |a| {
        !a["anomalies"].as_array().unwrap().is_empty()
    })
    .await;
    let anomaly = &raised["anomalies"][0];
    assert_eq!(anomaly["tenant_id"], "default");
    assert_eq!(anomaly["kind"], "spend_spike");
    assert!(
        anomaly["spend_micros"].as_u64().unwrap()
            > 3 * anomaly["baseline_micros"].as_u64().unwrap()
    );
    let (_, own) = app.get_json("/api/v1/costs/anomalies").await;
    assert_eq!(
        own["anomalies"].as_array().unwrap().len(),
        raised["anomalies"].as_array().unwrap().len()
    );
}

/// PostgreSQL + Redis URLs, or `None` after a loud SKIPPED line.
fn services(test: &str) -> Option<(String, String)> {
    let database = std::env::var("TEST_DATABASE_URL").ok().filter(|v| !v.is_empty());
    let redis = std::env::var("TEST_REDIS_URL").ok().filter(|v| !v.is_empty());
    match (database, redis) {
        (Some(d), Some(r)) => Some((d, r)),
        _ if std::env::var("SWITCHYARD_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{test}: TEST_DATABASE_URL and TEST_REDIS_URL are required")
        }
        _ => {
            eprintln!(
                "SKIPPED: {test} needs PostgreSQL and Redis (TEST_DATABASE_URL, TEST_REDIS_URL)"
            );
            None
        }
    }
}

#[tokio::test]
async fn a_budget_holds_across_two_nodes() {
    let Some((_, redis)) = services("a_budget_holds_across_two_nodes") else { return };
    let Some(database) = crate::postgres::TestDatabase::create().await else { return };
    let fake =
        loadtest::fake_llm::FakeLlmServer::start(Scenario { tokens: 8, ..Scenario::default() })
            .unwrap();
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let config = format!(
        "[[models]]\nname = \"primary\"\nprovider = \"openai_compatible\"\nupstream_model = \"gpt-4o\"\nbase_url = \"{}/v1\"\n{PRICES}\n[database]\nurl = \"{}\"\n[redis]\nurl = \"{redis}\"\nkey_prefix = \"{prefix}\"\n",
        fake.base_url(),
        database.url
    )
    .replace("[costs.prices.fallback]\ninput_per_mtok = 3.0\noutput_per_mtok = 15.0\n", "")
    .replace("[costs.prices.cheap]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n", "");
    let a = spawn_process_node("budget-a", &config).signed_in().await;
    let b = spawn_process_node("budget-b", &config).signed_in().await;
    let (http_a, http_b) = (a.client(), b.client());

    let set = http_a
        .put(a.url("/api/v1/tenants/default/budget"))
        .json(&json!({"monthly_limit_micros": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let spent = post(&http_a, a.url("/v1/chat/completions"), &chat("primary", "On node A")).await;
    assert_eq!(spent.status(), 200);
    let cost_a: u64 = header(&spent, "x-switchyard-cost-micros").unwrap().parse().unwrap();
    assert!(cost_a > 1);

    // Node B never served this tenant, yet refuses: the budget is in PostgreSQL and the
    // month's spend in Redis.
    let mut refused = None;
    for _ in 0..100 {
        let response =
            post(&http_b, b.url("/v1/chat/completions"), &chat("primary", "On node B")).await;
        if response.status() == 402 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("node B refuses once node A spent the budget");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "budget_exceeded");
    // B's report reads the shared ledger.
    let report =
        poll_json(&http_b, &b.url("/api/v1/costs"), |r| r["turns"].as_u64() >= Some(1)).await;
    assert_eq!(report["total_cost_micros"], cost_a);
    drop((a, b));
    drop(database);
}

#[tokio::test]
async fn tenants_and_requests_choose_the_routing_policy() {
    let app = priced_app("", "");
    let routed = |model: &'static str, prompt: &'static str| {
        let (http, url) = (app.http.clone(), app.url("/v1/chat/completions"));
        async move {
            let response = post(&http, url, &chat(model, prompt)).await;
            assert_eq!(response.status(), 200, "{model}");
            (
                header(&response, "x-switchyard-model").unwrap(),
                header(&response, "x-switchyard-route"),
            )
        }
    };
    // Per request: the cheapest model of a tier, no scoring; an unknown tier is an unknown model.
    let (model, route) = routed("cheapest:economy", "Prove the four colour theorem").await;
    assert_eq!(model, "cheap");
    assert!(route.unwrap().starts_with("cheapest; tier=economy"));
    let unknown =
        post(&app.http, app.url("/v1/chat/completions"), &chat("cheapest:gold", "x")).await;
    assert_eq!(unknown.status(), 404);

    let routing_url = app.url("/api/v1/tenants/default/routing");
    let (_, current) = app.get_json("/api/v1/tenants/default/routing").await;
    assert_eq!(current, json!({"policy": "explicit", "min_tier": "economy"}));
    // The tenant routes everything by complexity: a named premium model no longer pins it.
    let set = app.http.put(&routing_url).json(&json!({"policy": "auto"})).send().await.unwrap();
    assert_eq!(set.status(), 200);
    let (model, route) = routed("primary", "What time zone is Paris in?").await;
    assert_eq!(model, "cheap");
    assert!(route.unwrap().starts_with("complexity; tier=economy"));
    // A quality floor: simple turns go no lower than premium.
    let set = app
        .http
        .put(&routing_url)
        .json(&json!({"policy": "auto", "min_tier": "premium"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let (model, route) = routed("auto", "What time zone is Rome in?").await;
    assert_eq!(model, "primary");
    assert!(route.unwrap().contains("minimum tier premium"));
    // Bad settings are refused; deleting restores explicit routing.
    for bad in [json!({"policy": "magic"}), json!({"min_tier": "gold"}), json!({"tier": "premium"})]
    {
        let response = app.http.put(&routing_url).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    assert_eq!(app.http.delete(&routing_url).send().await.unwrap().status(), 200);
    let (model, route) = routed("cheap", "What time zone is Oslo in?").await;
    assert_eq!((model.as_str(), route), ("cheap", None));

    // Another tenant's admin cannot read or change it.
    let other = app.create_tenant("elsewhere").await;
    let admin = client_with(&app.user(&other, "admin@elsewhere.test", "admin").await.access_token);
    let response =
        admin.put(&routing_url).json(&json!({"policy": "cheapest"})).send().await.unwrap();
    assert_eq!(response.status(), 404);
}
