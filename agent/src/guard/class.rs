//! What a detector found: the class names used in configuration, metrics and placeholders, and
//! the `secrets` / `pii` groups that expand to several classes. Not on the hot path (classes are
//! parsed once when detectors are built; a match carries its class by value).

use std::sync::Arc;

use super::GuardError;

/// One kind of sensitive value. Built-in classes are `Copy`-cheap; an operator-defined class
/// carries its name (shared, so cloning a match does not allocate).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Email,
    Phone,
    CreditCard,
    Iban,
    NationalId,
    Ip,
    AwsKey,
    GcpKey,
    AzureKey,
    GithubToken,
    SlackToken,
    OpenaiKey,
    AnthropicKey,
    StripeKey,
    PrivateKey,
    Jwt,
    /// A high-entropy token right after a word like `password` or `api_key`.
    Secret,
    /// `custom:<name>`: an operator's regex or word list.
    Custom(Arc<str>),
    /// A guard model (a Llama-Guard-style classifier) judged the prompt unsafe.
    GuardModel,
}

/// Personal data (`pii` in configuration).
pub const PII: [Class; 6] = [
    Class::Email,
    Class::Phone,
    Class::CreditCard,
    Class::Iban,
    Class::NationalId,
    Class::Ip,
];

/// Credentials (`secrets` in configuration).
pub const SECRETS: [Class; 11] = [
    Class::AwsKey,
    Class::GcpKey,
    Class::AzureKey,
    Class::GithubToken,
    Class::SlackToken,
    Class::OpenaiKey,
    Class::AnthropicKey,
    Class::StripeKey,
    Class::PrivateKey,
    Class::Jwt,
    Class::Secret,
];

impl Class {
    /// Every built-in class, personal data first.
    pub fn builtin() -> impl Iterator<Item = Class> {
        PII.into_iter().chain(SECRETS)
    }

    /// Parses one configuration word: a class name, `custom:<name>`, or a group (`pii`,
    /// `secrets`, `all`), which expands to its classes.
    pub fn parse(s: &str) -> Result<Vec<Class>, GuardError> {
        match s {
            "pii" => return Ok(PII.to_vec()),
            "secrets" => return Ok(SECRETS.to_vec()),
            "all" => return Ok(Class::builtin().collect()),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("custom:") {
            check_name(name)?;
            return Ok(vec![Class::Custom(Arc::from(name))]);
        }
        Class::builtin()
            .find(|c| c.name() == s)
            .map(|c| vec![c])
            .ok_or_else(|| GuardError::UnknownClass(s.to_string()))
    }

    /// The configuration and metric label (`custom:<name>` for operator classes).
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        let s = match self {
            Class::Email => "email",
            Class::Phone => "phone",
            Class::CreditCard => "credit_card",
            Class::Iban => "iban",
            Class::NationalId => "national_id",
            Class::Ip => "ip",
            Class::AwsKey => "aws_key",
            Class::GcpKey => "gcp_key",
            Class::AzureKey => "azure_key",
            Class::GithubToken => "github_token",
            Class::SlackToken => "slack_token",
            Class::OpenaiKey => "openai_key",
            Class::AnthropicKey => "anthropic_key",
            Class::StripeKey => "stripe_key",
            Class::PrivateKey => "private_key",
            Class::Jwt => "jwt",
            Class::Secret => "secret",
            Class::Custom(n) => return format!("custom:{n}").into(),
            Class::GuardModel => "guard_model",
        };
        s.into()
    }

    /// The tag inside placeholders: `EMAIL`, `CUSTOM_EMPLOYEE_ID`. Only `A-Z`, `0-9` and `_`, so
    /// a placeholder needs no escaping inside a JSON string.
    pub fn tag(&self) -> String {
        match self {
            Class::Custom(n) => {
                let mut t = String::from("CUSTOM_");
                t.extend(n.chars().map(|c| match c {
                    'a'..='z' => c.to_ascii_uppercase(),
                    'A'..='Z' | '0'..='9' => c,
                    _ => '_',
                }));
                t
            }
            c => c.name().to_ascii_uppercase(),
        }
    }

    /// How many raw bytes of a streamed response must be held back so that a value of this class
    /// is recognised before any of it is released: its longest prefix that the detector does
    /// not yet report, plus the few bytes it looks at past the value. Classes the detector
    /// reports while still growing (a PEM key, a run of base64) are then held as open matches.
    /// A JWT's header and payload are only recognised together; longer ones than this bound
    /// (1 KiB) can be released in part (documented in `docs/guardrails.md`).
    pub fn stream_hold(&self) -> usize {
        match self {
            Class::NationalId => 24,
            Class::AwsKey | Class::Phone | Class::CreditCard => 40,
            Class::Iban | Class::Ip => 56,
            Class::GcpKey | Class::PrivateKey => 72,
            Class::AzureKey | Class::GithubToken | Class::SlackToken | Class::StripeKey => 136,
            Class::AnthropicKey | Class::Secret => 168,
            Class::OpenaiKey => 200,
            Class::Email => 264,
            Class::Jwt => 1024,
            // Operator classes: from the pattern itself (`Detectors::new`).
            Class::Custom(_) | Class::GuardModel => 0,
        }
    }

    /// Bit of a built-in class in a [`ClassSet`]; `None` for operator classes.
    pub(crate) fn bit(&self) -> Option<u32> {
        let i = match self {
            Class::Custom(_) | Class::GuardModel => return None,
            c => Class::builtin().position(|b| &b == c).unwrap_or(0),
        };
        Some(1 << i)
    }

    /// Which class wins when two matches cover the same bytes equally (lower wins): the most
    /// specific validator first, so `password: eyJ...` is reported as a JWT, not a bare secret.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            Class::PrivateKey | Class::GcpKey => 0,
            Class::AwsKey
            | Class::AzureKey
            | Class::GithubToken
            | Class::SlackToken
            | Class::OpenaiKey
            | Class::AnthropicKey
            | Class::StripeKey
            | Class::Jwt => 1,
            Class::CreditCard | Class::Iban | Class::NationalId => 2,
            Class::Custom(_) | Class::GuardModel => 3,
            Class::Secret => 4,
            Class::Email => 5,
            Class::Phone | Class::Ip => 6,
        }
    }
}

/// Operator names end up in placeholders and metric labels: keep them short and plain.
pub(crate) fn check_name(name: &str) -> Result<(), GuardError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(GuardError::BadName(name.to_string()))
    }
}

/// A set of built-in classes, one bit each (operator classes are enabled by being configured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassSet(u32);

impl ClassSet {
    pub fn all() -> ClassSet {
        ClassSet::from_iter(Class::builtin())
    }

    pub fn contains(&self, c: &Class) -> bool {
        c.bit().is_some_and(|b| self.0 & b != 0)
    }

    pub fn insert(&mut self, c: &Class) {
        if let Some(b) = c.bit() {
            self.0 |= b;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Class> for ClassSet {
    fn from_iter<I: IntoIterator<Item = Class>>(iter: I) -> ClassSet {
        let mut s = ClassSet::default();
        for c in iter {
            s.insert(&c);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_groups_expand() {
        for c in Class::builtin() {
            assert_eq!(Class::parse(&c.name()).unwrap(), vec![c.clone()]);
        }
        assert_eq!(Class::parse("secrets").unwrap().len(), 11);
        assert_eq!(Class::parse("pii").unwrap().len(), 6);
        assert_eq!(
            Class::parse("custom:emp-id").unwrap()[0].tag(),
            "CUSTOM_EMP_ID"
        );
        assert!(Class::parse("emails").is_err());
        assert!(Class::parse("custom:a b").is_err());
        let set = ClassSet::from_iter(Class::parse("secrets").unwrap());
        assert!(set.contains(&Class::Jwt) && !set.contains(&Class::Email));
    }
}
