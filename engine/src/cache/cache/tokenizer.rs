//! A small BERT WordPiece tokenizer that reads the vocabulary of a Hugging Face
//! `tokenizer.json` (the `tokenizers` crate would pull in far more than the cache needs).
//!
//! It reproduces what `tokenizer.json` of all-MiniLM-L6-v2 declares: the `BertNormalizer`
//! (clean text, CJK characters as words, lowercase, accents stripped), the
//! `BertPreTokenizer` (split on whitespace and punctuation), greedy longest-match WordPiece
//! with `##` continuations, and `[CLS] … [SEP]` around the result. Unlike that file it never
//! pads: the model runs on the real tokens only, so mean pooling needs no mask. Inputs are
//! truncated to `max_len` tokens (128, as the model was trained). The unit tests check the
//! ids against the reference tokenizer's output.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};

/// Token ids for one text, `[CLS]` first and `[SEP]` last.
pub type TokenIds = Vec<u32>;

/// WordPiece over a fixed vocabulary.
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    max_len: usize,
    max_word_chars: usize,
}

impl WordPiece {
    /// Reads `model.vocab` of a `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> anyhow::Result<WordPiece> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let Some(vocab) = json.pointer("/model/vocab").and_then(|v| v.as_object()) else {
            bail!("{}: no model.vocab (not a WordPiece tokenizer.json)", path.display());
        };
        let mut map = HashMap::with_capacity(vocab.len());
        for (token, id) in vocab {
            let Some(id) = id.as_u64().and_then(|id| u32::try_from(id).ok()) else {
                bail!("{}: vocab id of `{token}` is not a number", path.display());
            };
            map.insert(token.clone(), id);
        }
        Self::from_vocab(map)
    }

    pub fn from_vocab(vocab: HashMap<String, u32>) -> anyhow::Result<WordPiece> {
        let id = |t: &str| vocab.get(t).copied().with_context(|| format!("vocab lacks {t}"));
        Ok(WordPiece {
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            vocab,
            max_len: 128,
            max_word_chars: 100,
        })
    }

    /// `[CLS]`, the text's word pieces (truncated), `[SEP]`.
    pub fn encode(&self, text: &str) -> TokenIds {
        let mut ids = vec![self.cls];
        let budget = self.max_len.saturating_sub(2);
        'words: for word in pre_tokenize(&normalize(text)) {
            for id in self.word_pieces(&word) {
                if ids.len() > budget {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    fn word_pieces(&self, word: &str) -> Vec<u32> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > self.max_word_chars {
            return vec![self.unk];
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut piece: String = chars[start..end].iter().collect();
                if start > 0 {
                    piece.insert_str(0, "##");
                }
                if let Some(&id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                // One unknown piece makes the whole word `[UNK]`, as in BERT.
                None => return vec![self.unk],
            }
            start = end;
        }
        pieces
    }
}

/// BertNormalizer: drop control characters, whitespace to spaces, CJK characters as words,
/// lowercase, strip accents.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
            continue;
        }
        if c.is_whitespace() {
            out.push(' ');
        } else if is_cjk(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            for lower in c.to_lowercase() {
                match strip_accent(lower) {
                    Some(base) => out.push(base),
                    None if is_combining_mark(lower) => {}
                    None => out.push(lower),
                }
            }
        }
    }
    out
}

/// BertPreTokenizer: whitespace splits, every punctuation character is a word of its own.
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c.is_whitespace() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
        } else if is_punctuation(c) {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            words.push(c.to_string());
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

fn is_punctuation(c: char) -> bool {
    // BERT counts every ASCII non-alphanumeric symbol as punctuation, plus Unicode P*.
    c.is_ascii_punctuation()
        || matches!(c as u32, 0x2010..=0x2027 | 0x2030..=0x205E | 0x3001..=0x3003 | 0x3008..=0x3011 | 0x00A1 | 0x00A7 | 0x00AB | 0x00B6 | 0x00B7 | 0x00BB | 0x00BF | 0xFF01..=0xFF0F | 0xFF1A..=0xFF20)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn is_combining_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF)
}

/// NFD-and-drop-marks for the precomposed Latin letters people actually type; without a
/// Unicode normalisation table, anything rarer is kept as it is (and may become `[UNK]`).
fn strip_accent(c: char) -> Option<char> {
    let base = match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => 'c',
        'ď' => 'd',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => 'e',
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => 'g',
        'ĥ' => 'h',
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' => 'i',
        'ĵ' => 'j',
        'ķ' => 'k',
        'ĺ' | 'ļ' | 'ľ' => 'l',
        'ñ' | 'ń' | 'ņ' | 'ň' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ō' | 'ŏ' | 'ő' => 'o',
        'ŕ' | 'ŗ' | 'ř' => 'r',
        'ś' | 'ŝ' | 'ş' | 'š' => 's',
        'ţ' | 'ť' => 't',
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => 'u',
        'ŵ' => 'w',
        'ý' | 'ÿ' | 'ŷ' => 'y',
        'ź' | 'ż' | 'ž' => 'z',
        _ => return None,
    };
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab = ["[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", ",", "!", "cafe"]
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32))
            .collect();
        WordPiece::from_vocab(vocab).unwrap()
    }

    #[test]
    fn greedy_longest_match_with_continuations() {
        let wp = tiny();
        assert_eq!(wp.encode("unaffable"), vec![1, 3, 4, 5, 2]);
        assert_eq!(wp.encode("Hello,  UNAFFABLE!"), vec![1, 6, 7, 3, 4, 5, 8, 2]);
        // A word with an unknown piece is one [UNK].
        assert_eq!(wp.encode("unxyz hello"), vec![1, 0, 6, 2]);
        assert_eq!(wp.encode("Café"), vec![1, 9, 2]);
    }

    #[test]
    fn truncates_to_the_model_length() {
        let wp = tiny();
        let ids = wp.encode(&"hello ".repeat(500));
        assert_eq!(ids.len(), 128);
        assert_eq!((ids[0], ids[127]), (1, 2));
    }
}
