//! Topic and job names. Both become directory names (the embedded log keeps a directory
//! per topic, the state lives in `data/state/<name>`) and topic names, so they follow
//! Kafka's rule, which is also safe as a directory name: 1 to 249 characters from
//! `[A-Za-z0-9._-]`, and not `.` or `..`. Fluvio is stricter (its topics are cluster
//! resources): lowercase letters, digits and `-`, not first or last, at most 63
//! characters; topologies on a Fluvio broker are checked against that too, so a name
//! Fluvio would refuse is reported by `braid validate`, not by the cluster at run time.

/// Longest topic name Kafka and Fluvio accept.
pub const MAX_NAME_LEN: usize = 249;

/// Why a topic or job name was rejected; displayed as the reason after the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} characters long, at most 249 are allowed")]
    TooLong(usize),
    #[error("\".\" and \"..\" are reserved")]
    Reserved,
    #[error("it contains the path separator '{0}'")]
    PathSeparator(char),
    #[error("it contains the control character U+{:04X}", u32::from(*.0))]
    Control(char),
    #[error("it contains {0:?}, which is not allowed")]
    Disallowed(char),
    #[error("it contains {0:?}, which Fluvio does not allow in topic names")]
    NotFluvio(char),
    #[error("Fluvio topic names cannot start or end with '-'")]
    FluvioEdge,
    #[error("it is {0} characters long, Fluvio allows at most 63")]
    FluvioTooLong(usize),
}

/// Longest topic name Fluvio accepts (a cluster resource name).
pub const MAX_FLUVIO_NAME_LEN: usize = 63;

/// Fluvio's rule, for hints.
pub const FLUVIO_NAME_RULE: &str = "on Fluvio, use lowercase letters, digits and '-' (not first or last), at most 63 characters, e.g. \"page-viewed\"";

/// Checks a topic name for a Fluvio broker: the general rule, then Fluvio's own.
pub fn validate_fluvio_topic_name(name: &str) -> Result<(), NameError> {
    validate_topic_name(name)?;
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::NotFluvio(c));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::FluvioEdge);
    }
    if name.len() > MAX_FLUVIO_NAME_LEN {
        return Err(NameError::FluvioTooLong(name.len()));
    }
    Ok(())
}

/// The rule, for hints.
pub const NAME_RULE: &str = "use letters, digits, '.', '_' and '-', at most 249 characters";

/// Checks a topic (or job) name against the rules in the module doc.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    for c in name.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => {}
            '/' | '\\' => return Err(NameError::PathSeparator(c)),
            c if c.is_control() => return Err(NameError::Control(c)),
            c => return Err(NameError::Disallowed(c)),
        }
    }
    // Every accepted character is one byte, so the byte length is the character count.
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        assert_eq!(validate_topic_name("customer.journey"), Ok(()));
        assert_eq!(validate_topic_name("A-b_9.x"), Ok(()));
        assert_eq!(validate_topic_name("..."), Ok(()));
        assert_eq!(validate_topic_name(&"x".repeat(249)), Ok(()));
    }

    #[test]
    fn rejections_say_why() {
        let cases = [
            ("", "it is empty"),
            (".", "\".\" and \"..\" are reserved"),
            ("..", "\".\" and \"..\" are reserved"),
            ("a/b", "it contains the path separator '/'"),
            ("a\\b", "it contains the path separator '\\'"),
            ("a\u{7}b", "it contains the control character U+0007"),
            ("a b", "it contains ' ', which is not allowed"),
            ("café", "it contains 'é', which is not allowed"),
        ];
        for (name, reason) in cases {
            assert_eq!(
                validate_topic_name(name).unwrap_err().to_string(),
                reason,
                "for {name:?}"
            );
        }
        assert_eq!(
            validate_topic_name(&"x".repeat(250))
                .unwrap_err()
                .to_string(),
            "it is 250 characters long, at most 249 are allowed"
        );
    }

    #[test]
    fn fluvio_names_are_lowercase_digits_and_inner_dashes() {
        assert_eq!(validate_fluvio_topic_name("page-viewed"), Ok(()));
        assert_eq!(validate_fluvio_topic_name(&"x".repeat(63)), Ok(()));
        let cases = [
            (
                "page.viewed",
                "it contains '.', which Fluvio does not allow in topic names",
            ),
            (
                "Orders",
                "it contains 'O', which Fluvio does not allow in topic names",
            ),
            (
                "a_b",
                "it contains '_', which Fluvio does not allow in topic names",
            ),
            ("-orders", "Fluvio topic names cannot start or end with '-'"),
            ("orders-", "Fluvio topic names cannot start or end with '-'"),
            ("a/b", "it contains the path separator '/'"),
        ];
        for (name, reason) in cases {
            assert_eq!(
                validate_fluvio_topic_name(name).unwrap_err().to_string(),
                reason,
                "for {name:?}"
            );
        }
        assert_eq!(
            validate_fluvio_topic_name(&"x".repeat(64))
                .unwrap_err()
                .to_string(),
            "it is 64 characters long, Fluvio allows at most 63"
        );
    }

    proptest! {
        /// Fluvio's rule as its own reference: `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, ≤ 63.
        #[test]
        fn fluvio_rule_agrees_with_reference(name in "[a-zA-Z0-9._-]{0,8}") {
            let b = name.as_bytes();
            let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
            let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            let reference = !b.is_empty()
                && b.iter().all(inner)
                && edge(&b[0])
                && edge(&b[b.len() - 1]);
            prop_assert_eq!(validate_fluvio_topic_name(&name).is_ok(), reference);
        }

        /// Reference model: the rule as a regular expression plus the reserved names.
        #[test]
        fn agrees_with_reference(name in "[a-z./\\\\ \u{1}é-]{0,6}") {
            let reference = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
                && name != "."
                && name != "..";
            prop_assert_eq!(validate_topic_name(&name).is_ok(), reference);
        }
    }
}
