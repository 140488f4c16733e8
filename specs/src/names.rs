//! Kubernetes name rules, checked before a name may touch a path, a cgroup or an
//! interface (DESIGN rule 6). Errors name the offending character and its
//! index.

use std::fmt;

/// Why a name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} characters long: at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("has an invalid character {ch:?} at index {index}: {rule}")]
    Char {
        ch: char,
        index: usize,
        rule: &'static str,
    },
    #[error("is malformed: {0}")]
    Shape(&'static str),
}

const LABEL_RULE: &str = "a DNS-1123 label has lower case letters, digits and '-', and starts and ends with a letter or digit (e.g. \"web-1\")";
const SUBDOMAIN_RULE: &str = "a DNS-1123 subdomain has lower case letters, digits, '-' and '.', each part starting and ending with a letter or digit (e.g. \"web.example\")";

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn check_label_chars(s: &str, offset: usize, rule: &'static str) -> Result<(), NameError> {
    for (i, ch) in s.char_indices() {
        let ok = is_alnum_lower(ch) || ch == '-';
        let edge = (i == 0 || i + ch.len_utf8() == s.len()) && ch == '-';
        if !ok || edge {
            return Err(NameError::Char {
                ch,
                index: offset + i,
                rule,
            });
        }
    }
    Ok(())
}

/// A DNS-1123 label: container, volume and port names, at most 63.
pub fn dns1123_label(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 63 {
        return Err(NameError::TooLong {
            len: s.len(),
            max: 63,
        });
    }
    check_label_chars(s, 0, LABEL_RULE)
}

/// A DNS-1123 subdomain: pod names, at most 253.
pub fn dns1123_subdomain(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 253 {
        return Err(NameError::TooLong {
            len: s.len(),
            max: 253,
        });
    }
    let mut offset = 0;
    for part in s.split('.') {
        if part.is_empty() {
            return Err(NameError::Char {
                ch: '.',
                index: offset.max(1) - 1,
                rule: SUBDOMAIN_RULE,
            });
        }
        check_label_chars(part, offset, SUBDOMAIN_RULE)?;
        offset += part.len() + 1;
    }
    Ok(())
}

/// An environment variable name, by the relaxed rule of current clusters:
/// printable ASCII except '=', not empty.
pub fn env_var_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    for (index, ch) in s.char_indices() {
        if !(' '..='~').contains(&ch) || ch == '=' {
            return Err(NameError::Char {
                ch,
                index,
                rule: "an environment variable name is printable ASCII without '='",
            });
        }
    }
    Ok(())
}

/// An IANA service name (a container port's `name`): at most 15 lower case
/// letters, digits and '-', with at least one letter, no "--", not starting or
/// ending with '-'.
pub fn port_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 15 {
        return Err(NameError::TooLong {
            len: s.len(),
            max: 15,
        });
    }
    check_label_chars(
        s,
        0,
        "a port name has lower case letters, digits and '-' (e.g. \"http\")",
    )?;
    if s.contains("--") {
        return Err(NameError::Shape("a port name must not contain \"--\""));
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(NameError::Shape(
            "a port name must contain at least one letter",
        ));
    }
    Ok(())
}

/// The name part of a label or annotation key, or a label value: at most 63
/// letters, digits, '-', '_' and '.', starting and ending with a letter or digit.
fn qualified_part(s: &str, what: &'static str) -> Result<(), NameError> {
    if s.len() > 63 {
        return Err(NameError::TooLong {
            len: s.len(),
            max: 63,
        });
    }
    for (index, ch) in s.char_indices() {
        let ok = ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.');
        let edge = (index == 0 || index + 1 == s.len()) && !ch.is_ascii_alphanumeric();
        if !ok || edge {
            return Err(NameError::Char {
                ch,
                index,
                rule: what,
            });
        }
    }
    Ok(())
}

/// A label or annotation key: an optional DNS-1123 subdomain prefix and '/',
/// then a name of at most 63 characters.
pub fn qualified_key(s: &str) -> Result<(), NameError> {
    let rule = "a key is [prefix/]name, the name of letters, digits, '-', '_' and '.' starting and ending with a letter or digit";
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p)?;
    }
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    qualified_part(name, rule)
}

/// A label value: empty, or at most 63 characters of the key's name rule.
pub fn label_value(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Ok(());
    }
    qualified_part(s, "a label value has letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
}

/// A pod name, validated once and trusted after.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PodName(String);

impl PodName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        dns1123_subdomain(s)?;
        Ok(PodName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A container name (DNS-1123 label), validated once and trusted after.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ContainerName(String);

impl ContainerName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        dns1123_label(s)?;
        Ok(ContainerName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_follow_dns1123() {
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label("a").is_ok());
        assert_eq!(
            dns1123_label("Web"),
            Err(NameError::Char {
                ch: 'W',
                index: 0,
                rule: LABEL_RULE
            })
        );
        assert!(matches!(
            dns1123_label("web-"),
            Err(NameError::Char {
                ch: '-',
                index: 3,
                ..
            })
        ));
        assert!(matches!(
            dns1123_label("a_b"),
            Err(NameError::Char {
                ch: '_',
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            dns1123_label("a.b"),
            Err(NameError::Char {
                ch: '.',
                index: 1,
                ..
            })
        ));
        assert_eq!(
            dns1123_label(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, max: 63 })
        );
        assert_eq!(dns1123_label(""), Err(NameError::Empty));
    }

    #[test]
    fn subdomains_allow_dots_between_labels() {
        assert!(dns1123_subdomain("web.example-1").is_ok());
        assert!(matches!(
            dns1123_subdomain("web..x"),
            Err(NameError::Char {
                ch: '.',
                index: 3,
                ..
            })
        ));
        assert!(matches!(
            dns1123_subdomain(".web"),
            Err(NameError::Char {
                ch: '.',
                index: 0,
                ..
            })
        ));
        assert!(matches!(
            dns1123_subdomain("web/x"),
            Err(NameError::Char {
                ch: '/',
                index: 3,
                ..
            })
        ));
        assert!(matches!(
            dns1123_subdomain("a.-b"),
            Err(NameError::Char {
                ch: '-',
                index: 2,
                ..
            })
        ));
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(dns1123_subdomain(&["a".repeat(63), "b".repeat(63)].join(".")).is_ok());
    }

    #[test]
    fn env_names_are_printable_ascii_without_equals() {
        assert!(env_var_name("MY_VAR").is_ok());
        assert!(env_var_name("my.var-1").is_ok());
        assert!(matches!(
            env_var_name("A=B"),
            Err(NameError::Char {
                ch: '=',
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            env_var_name("A\u{e9}"),
            Err(NameError::Char { index: 1, .. })
        ));
        assert!(env_var_name("").is_err());
    }

    #[test]
    fn port_names_are_iana_service_names() {
        assert!(port_name("http").is_ok());
        assert!(port_name("h2c-8080").is_ok());
        assert!(port_name("8080").is_err());
        assert!(port_name("a--b").is_err());
        assert!(port_name("averyveryverylongname").is_err());
    }

    #[test]
    fn keys_have_an_optional_subdomain_prefix() {
        assert!(qualified_key("app").is_ok());
        assert!(qualified_key("cpuset.podagent.io/web").is_ok());
        assert!(qualified_key("example.com/My_Key.1").is_ok());
        assert!(qualified_key("Example.com/x").is_err());
        assert!(qualified_key("a/").is_err());
        assert!(qualified_key("a/-x").is_err());
    }

    proptest! {
        #[test]
        fn every_valid_label_is_a_valid_subdomain(s in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?") {
            prop_assert!(dns1123_label(&s).is_ok());
            prop_assert!(dns1123_subdomain(&s).is_ok());
        }

        #[test]
        fn a_name_with_a_path_character_is_never_accepted(
            head in "[a-z]{0,10}", bad in "[/\\\\. A-Z_\u{0}]", tail in "[a-z]{0,10}"
        ) {
            let s = format!("{head}{bad}{tail}");
            prop_assert!(dns1123_label(&s).is_err());
            if bad != "." {
                prop_assert!(dns1123_subdomain(&s).is_err());
            }
        }

        #[test]
        fn validation_never_panics(s in "\\PC{0,80}") {
            let _ = dns1123_label(&s);
            let _ = dns1123_subdomain(&s);
            let _ = env_var_name(&s);
            let _ = port_name(&s);
            let _ = qualified_key(&s);
            let _ = label_value(&s);
        }
    }
}
