//! The price table: what a million tokens of each model cost, in integer micro-dollars, and
//! the arithmetic that turns exact usage into a cost.
//!
//! Prices are versioned: the table starts as version 1 (the built-in list for the default
//! catalogue, overlaid by `[costs.prices]`), and every admin edit makes a new version. Each
//! ledger row records the version that priced it, so a report can always be explained.
//!
//! Arithmetic: `cost = ceil-half(tokens × price_per_mtok / 1_000_000)` per token class, in
//! `u128` so nothing overflows, summed per leg. Rounding is half-up on the micro-dollar (the
//! smallest unit the ledger keeps); each leg is rounded on its own because each leg is a
//! separate provider bill.

use std::collections::BTreeMap;

use actors::ports::llm::Usage;
use serde::{Deserialize, Serialize};

/// Micro-dollars per million tokens. `$2.50 / Mtok` is `2_500_000`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_micros_per_mtok: u64,
    pub output_micros_per_mtok: u64,
    /// Input tokens the provider served from its prompt cache (OpenAI `cached_tokens`,
    /// Anthropic cache reads). `None`: billed as ordinary input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_micros_per_mtok: Option<u64>,
}

/// A price as written in TOML or JSON: dollars per million tokens (`2.5`), as price lists
/// publish them. Converted once, at load, to integer micro-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceInDollars {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

impl PriceInDollars {
    pub fn to_price(self) -> Result<Price, String> {
        let micros = |dollars: f64, what: &str| {
            if !(0.0..=1_000_000.0).contains(&dollars) {
                return Err(format!("{what} must be between 0 and 1000000 dollars per Mtok"));
            }
            Ok((dollars * 1_000_000.0).round() as u64)
        };
        Ok(Price {
            input_micros_per_mtok: micros(self.input_per_mtok, "input_per_mtok")?,
            output_micros_per_mtok: micros(self.output_per_mtok, "output_per_mtok")?,
            cached_input_micros_per_mtok: self
                .cached_input_per_mtok
                .map(|d| micros(d, "cached_input_per_mtok"))
                .transpose()?,
        })
    }
}

impl Price {
    /// What `usage` costs at this price, in micro-dollars, rounded half-up.
    pub fn cost_micros(&self, usage: Usage) -> u64 {
        self.cost_with_cached(usage, 0)
    }

    /// As [`Price::cost_micros`], with `cached_input` of the input tokens billed at the
    /// cached-input price (where the provider has one).
    pub fn cost_with_cached(&self, usage: Usage, cached_input: u64) -> u64 {
        let cached = cached_input.min(usage.input_tokens);
        let cached_price = self.cached_input_micros_per_mtok.unwrap_or(self.input_micros_per_mtok);
        // Each product fits in u128 (u64 × u64); their sum may not, hence saturating.
        let scaled = (u128::from(usage.input_tokens - cached)
            * u128::from(self.input_micros_per_mtok))
        .saturating_add(u128::from(cached) * u128::from(cached_price))
        .saturating_add(u128::from(usage.output_tokens) * u128::from(self.output_micros_per_mtok));
        let micros = scaled.saturating_add(500_000) / 1_000_000;
        u64::try_from(micros).unwrap_or(u64::MAX)
    }

    /// A single figure to rank models by: input and output at a typical chat mix (3:1).
    pub fn blended(&self) -> u64 {
        (3 * self.input_micros_per_mtok + self.output_micros_per_mtok) / 4
    }
}

/// Public list prices (USD per million tokens) of the default catalogue's models, November
/// 2026. `mock` is free: it runs nowhere.
pub const LIST_PRICES: &[(&str, f64, f64, Option<f64>)] = &[
    ("gpt-4o", 2.50, 10.00, Some(1.25)),
    ("gpt-4.1", 2.00, 8.00, Some(0.50)),
    ("gpt-4.1-mini", 0.40, 1.60, Some(0.10)),
    ("gpt-4o-mini", 0.15, 0.60, Some(0.075)),
    ("claude-opus-4-1", 15.00, 75.00, Some(1.50)),
    ("claude-sonnet-4-5", 3.00, 15.00, Some(0.30)),
    ("claude-haiku-4-5", 1.00, 5.00, Some(0.10)),
    ("mock", 0.0, 0.0, None),
];

/// One version of the whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceTable {
    pub version: u64,
    /// When this version was made (ms since the epoch).
    pub created_at_ms: u64,
    /// Configured model name → price.
    pub models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// Version 1: list prices for the models named in `models`, overlaid by `configured`.
    pub fn initial(models: &[String], configured: &BTreeMap<String, Price>) -> PriceTable {
        let mut table = BTreeMap::new();
        for name in models {
            // List prices are literals checked by a test; one that failed would be skipped.
            let listed = LIST_PRICES.iter().find(|(n, ..)| n == name).and_then(|(_, i, o, c)| {
                PriceInDollars {
                    input_per_mtok: *i,
                    output_per_mtok: *o,
                    cached_input_per_mtok: *c,
                }
                .to_price()
                .ok()
            });
            if let Some(price) = configured.get(name).copied().or(listed) {
                table.insert(name.clone(), price);
            }
        }
        PriceTable { version: 1, created_at_ms: crate::accounts::now_ms(), models: table }
    }

    pub fn get(&self, model: &str) -> Option<&Price> {
        self.models.get(model)
    }

    /// A new version with `model` priced at `price`.
    pub fn with_price(&self, model: &str, price: Price) -> PriceTable {
        let mut models = self.models.clone();
        models.insert(model.to_owned(), price);
        PriceTable { version: self.version + 1, created_at_ms: crate::accounts::now_ms(), models }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage { input_tokens: input, output_tokens: output }
    }

    fn gpt4o() -> Price {
        PriceInDollars {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: Some(1.25),
        }
        .to_price()
        .unwrap()
    }

    #[test]
    fn dollars_convert_to_integer_micros() {
        let p = gpt4o();
        assert_eq!(p.input_micros_per_mtok, 2_500_000);
        assert_eq!(p.output_micros_per_mtok, 10_000_000);
        assert_eq!(p.cached_input_micros_per_mtok, Some(1_250_000));
        // Binary floats that are not exact still land on the intended micro.
        let odd = PriceInDollars {
            input_per_mtok: 0.075,
            output_per_mtok: 0.3,
            cached_input_per_mtok: None,
        };
        assert_eq!(odd.to_price().unwrap().input_micros_per_mtok, 75_000);
        assert!(
            PriceInDollars {
                input_per_mtok: -1.0,
                output_per_mtok: 1.0,
                cached_input_per_mtok: None
            }
            .to_price()
            .is_err()
        );
        assert!(
            PriceInDollars {
                input_per_mtok: f64::NAN,
                output_per_mtok: 1.0,
                cached_input_per_mtok: None
            }
            .to_price()
            .is_err()
        );
    }

    #[test]
    fn cost_is_exact_for_whole_micros() {
        // 1000 in × $2.50/M = 2500 µ$; 500 out × $10/M = 5000 µ$.
        assert_eq!(gpt4o().cost_micros(usage(1000, 500)), 7500);
        assert_eq!(gpt4o().cost_micros(usage(0, 0)), 0);
        assert_eq!(gpt4o().cost_micros(usage(1_000_000, 1_000_000)), 12_500_000);
    }

    #[test]
    fn cost_rounds_half_up_on_the_micro() {
        let p = Price {
            input_micros_per_mtok: 150_000,
            output_micros_per_mtok: 600_000,
            ..Price::default()
        };
        // 1 input token at $0.15/M = 0.15 µ$ → 0; 3 tokens = 0.45 → 0; 4 = 0.6 → 1.
        assert_eq!(p.cost_micros(usage(1, 0)), 0);
        assert_eq!(p.cost_micros(usage(3, 0)), 0);
        assert_eq!(p.cost_micros(usage(4, 0)), 1);
        // Exactly half rounds up: 5 tokens at $0.10/M = 0.5 µ$.
        let tenth = Price { input_micros_per_mtok: 100_000, ..Price::default() };
        assert_eq!(tenth.cost_micros(usage(5, 0)), 1);
        // Classes are summed before rounding: 3 in (0.45) + 1 out (0.6) = 1.05 → 1.
        assert_eq!(p.cost_micros(usage(3, 1)), 1);
    }

    #[test]
    fn list_prices_are_valid() {
        for (name, i, o, c) in LIST_PRICES {
            let price = PriceInDollars {
                input_per_mtok: *i,
                output_per_mtok: *o,
                cached_input_per_mtok: *c,
            };
            assert!(price.to_price().is_ok(), "{name}");
        }
    }

    #[test]
    fn huge_usage_does_not_overflow() {
        let p = Price {
            input_micros_per_mtok: u64::MAX,
            output_micros_per_mtok: u64::MAX,
            ..Price::default()
        };
        assert_eq!(p.cost_micros(usage(u64::MAX, u64::MAX)), u64::MAX);
    }

    #[test]
    fn cached_input_is_billed_at_its_own_price() {
        // 1000 in of which 600 cached: 400 × 2.5 + 600 × 1.25 = 1000 + 750; 0 out.
        assert_eq!(gpt4o().cost_with_cached(usage(1000, 0), 600), 1750);
        // More cached than input is clamped.
        assert_eq!(gpt4o().cost_with_cached(usage(1000, 0), 5000), 1250);
        // No cached price: ordinary input.
        let plain = Price { input_micros_per_mtok: 2_000_000, ..Price::default() };
        assert_eq!(plain.cost_with_cached(usage(1000, 0), 600), 2000);
    }

    #[test]
    fn versions_count_up_and_config_overrides_list_prices() {
        let mut configured = BTreeMap::new();
        configured.insert(
            "gpt-4o".to_owned(),
            Price {
                input_micros_per_mtok: 1,
                output_micros_per_mtok: 2,
                cached_input_micros_per_mtok: None,
            },
        );
        let names = vec!["gpt-4o".to_owned(), "gpt-4o-mini".to_owned(), "private".to_owned()];
        let table = PriceTable::initial(&names, &configured);
        assert_eq!(table.version, 1);
        assert_eq!(table.get("gpt-4o").unwrap().input_micros_per_mtok, 1);
        assert_eq!(table.get("gpt-4o-mini").unwrap().input_micros_per_mtok, 150_000);
        assert!(
            table.get("private").is_none(),
            "unknown models have no price until an admin sets one"
        );
        let next = table.with_price("private", Price::default());
        assert_eq!(next.version, 2);
        assert!(next.get("private").is_some());
    }
}
