//! JSON pointers (RFC 6901) naming where a source's key, event time and event id live
//! in each record, parsed once at validation so decoding never re-parses them.
//!
//! Invariant: a [`JsonPointer`] is never empty (the whole document is not a usable key
//! or time), starts with `/`, and its tokens are unescaped (`~1` → `/`, `~0` → `~`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A parsed, non-empty JSON pointer such as `/customer_id` or `/order/id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

/// Why a JSON pointer was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("invalid JSON pointer {}: it must start with \"/\"", super::diag::quoted(.0))]
    MissingSlash(String),
    #[error(
        "invalid JSON pointer {}: \"~\" must be followed by 0 or 1",
        super::diag::quoted(.0)
    )]
    BadEscape(String),
}

impl PointerError {
    /// How to write it instead.
    pub fn hint(&self) -> String {
        match self {
            PointerError::MissingSlash(text) if text.is_empty() => {
                "point at a field, e.g. \"/customer_id\"".to_owned()
            }
            PointerError::MissingSlash(text) => format!("\"/{text}\""),
            PointerError::BadEscape(_) => "write \"~0\" for \"~\" and \"~1\" for \"/\"".to_owned(),
        }
    }
}

impl JsonPointer {
    /// Parses a pointer; see the module doc for what is accepted.
    pub fn parse(text: &str) -> Result<Self, PointerError> {
        let Some(body) = text.strip_prefix('/') else {
            return Err(PointerError::MissingSlash(text.to_owned()));
        };
        let tokens = body
            .split('/')
            .map(|raw| unescape(raw).ok_or_else(|| PointerError::BadEscape(text.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JsonPointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The unescaped reference tokens, outermost first (`/a~1b/0` → `["a/b", "0"]`).
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
}

fn unescape(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for JsonPointer {
    type Error = PointerError;
    fn try_from(text: String) -> Result<Self, PointerError> {
        JsonPointer::parse(&text)
    }
}

impl From<JsonPointer> for String {
    fn from(pointer: JsonPointer) -> String {
        pointer.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_unescapes_tokens() {
        let p = JsonPointer::parse("/order/a~1b~0c/0").unwrap();
        assert_eq!(p.tokens(), ["order", "a/b~c", "0"]);
        assert_eq!(p.as_str(), "/order/a~1b~0c/0");
        assert_eq!(JsonPointer::parse("/").unwrap().tokens(), [""]);
    }

    #[test]
    fn rejections_say_why() {
        let missing = JsonPointer::parse("customer_id").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "invalid JSON pointer \"customer_id\": it must start with \"/\""
        );
        assert_eq!(missing.hint(), "\"/customer_id\"");
        let empty = JsonPointer::parse("").unwrap_err();
        assert_eq!(
            empty.to_string(),
            "invalid JSON pointer \"\": it must start with \"/\""
        );
        assert_eq!(empty.hint(), "point at a field, e.g. \"/customer_id\"");
        let escape = JsonPointer::parse("/a~2").unwrap_err();
        assert_eq!(
            escape.to_string(),
            "invalid JSON pointer \"/a~2\": \"~\" must be followed by 0 or 1"
        );
        assert!(JsonPointer::parse("/a~").is_err());
    }

    proptest! {
        /// Reference model: escaping each token and joining with "/" gives a pointer
        /// whose tokens are the originals.
        #[test]
        fn escaped_tokens_round_trip(tokens in proptest::collection::vec("[a-z~/0-9]{0,5}", 1..4)) {
            let text: String = tokens
                .iter()
                .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
                .collect();
            let pointer = JsonPointer::parse(&text).unwrap();
            prop_assert_eq!(pointer.tokens(), tokens.as_slice());
        }
    }
}
