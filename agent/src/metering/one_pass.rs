//! One serde pass over a complete non-streaming response body, reading what
//! [`super::usage::plain_response_facts`] needs: the first `usage` (every count in it), `model`
//! and `system_fingerprint`. The field-by-field readers (a `get` for each top-level field, then a
//! `pointer` per count) scanned the body once and the usage object four more times: ~13,700
//! instructions for the simulator's 515-byte chat completion, the largest single part of a
//! worker's request (callgrind).
//!
//! It reads as they read: the first occurrence of a key counts (a later duplicate is skipped),
//! a count is what `u64` deserialises from (a non-negative integer), a value of another type is
//! absent, and `usage` counts only as an object. Keys are compared unescaped. It is stricter in
//! one way: the whole body must be valid JSON. Any error sends the caller to the
//! field-by-field readers, so a broken body reads exactly as before. A proptest holds the two
//! equal.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The top-level fields of a plain response that metering reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts<'a> {
    /// The first `usage`: `Some(None)` when it is not an object.
    pub usage: Option<Option<Counts>>,
    /// The first `model`, when it is a string (`Some(None)` when not).
    pub model: Option<Option<Cow<'a, str>>>,
    /// The first `system_fingerprint`, likewise.
    pub fingerprint: Option<Option<Cow<'a, str>>>,
}

/// The counts of a usage object: each key's first occurrence (`Some(None)`: present, not a
/// count), OpenAI's and Anthropic's names alike.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub prompt_tokens: Option<Option<u64>>,
    pub input_tokens: Option<Option<u64>>,
    pub completion_tokens: Option<Option<u64>>,
    pub output_tokens: Option<Option<u64>>,
    pub cache_read_input_tokens: Option<Option<u64>>,
    pub cache_creation_input_tokens: Option<Option<u64>>,
    /// `prompt_tokens_details.cached_tokens`: the outer `Option` for the first details key,
    /// the next for its `cached_tokens` key, the last for a count.
    pub prompt_tokens_details: Option<Option<Option<Option<u64>>>>,
    pub input_tokens_details: Option<Option<Option<Option<u64>>>>,
    pub completion_tokens_details: Option<Option<Option<Option<u64>>>>,
    pub output_tokens_details: Option<Option<Option<Option<u64>>>>,
}

impl Counts {
    /// A count as the `pointer` reading gives it: absent unless the key is there with a count.
    pub fn get(c: Option<Option<u64>>) -> Option<u64> {
        c.flatten()
    }

    /// A count inside a details object.
    pub fn detail(d: Option<Option<Option<Option<u64>>>>) -> Option<u64> {
        d.flatten().flatten().flatten()
    }
}

/// Reads `body`; `None` when it is not valid JSON or not an object (the caller then reads it
/// field by field). The caller has checked its depth.
pub(crate) fn read(body: &[u8]) -> Option<Facts<'_>> {
    sonic_rs::from_slice::<Top<'_>>(body).ok().map(|t| t.0)
}

struct Top<'a>(Facts<'a>);

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut facts = Facts::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match &*key.0 {
                "usage" => first(&mut map, &mut facts.usage, |u: UsageObject| u.0)?,
                "model" => first(&mut map, &mut facts.model, |t: Text<'de>| t.0)?,
                "system_fingerprint" => {
                    first(&mut map, &mut facts.fingerprint, |t: Text<'de>| t.0)?
                }
                _ => skip(&mut map)?,
            }
        }
        Ok(Top(facts))
    }
}

/// Reads the value of the key just read into `slot` when the key is seen for the first time
/// (`into` takes what the value reads as), else skips it: the first occurrence counts.
fn first<'de, A, T, V>(
    map: &mut A,
    slot: &mut Option<V>,
    into: impl FnOnce(T) -> V,
) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    match slot {
        Some(_) => skip(map),
        None => {
            *slot = Some(into(map.next_value::<T>()?));
            Ok(())
        }
    }
}

/// Skips the value of the key just read.
fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(|_| ())
}

/// An object key, borrowed from the body unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Drains a sequence or an object that is read as "not what was asked for".
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the scalar `visit_*` methods of a visitor whose value is `None` for any type
/// but the ones it reads, and draining visits for arrays and objects it does not read.
macro_rules! absent_for_other_types {
    (scalars) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq)?;
            Ok(Default::default())
        }
    };
    (numbers) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (strings) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (maps) => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            drain_map(map)?;
            Ok(Default::default())
        }
    };
}

/// A string value, or `None` for a value of another type.
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Cow<'de, str>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(s)))
            }
            absent_for_other_types!(scalars);
            absent_for_other_types!(numbers);
            absent_for_other_types!(maps);
        }
        d.deserialize_any(V).map(Text)
    }
}

/// A count: what `u64` deserialises from (a non-negative integer), else `None`.
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Some(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(u64::try_from(n).ok())
            }
            absent_for_other_types!(scalars);
            absent_for_other_types!(strings);
            absent_for_other_types!(maps);
        }
        d.deserialize_any(V).map(Count)
    }
}

/// A details object's count under `field` (`cached_tokens` or `reasoning_tokens`): `None` when
/// the value is not an object; `Some(None)` when the object lacks the key.
struct Detail<const REASONING: bool>(Option<Option<Option<u64>>>);

impl<'de, const REASONING: bool> Deserialize<'de> for Detail<REASONING> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const R: bool>;
        impl<'de, const R: bool> Visitor<'de> for V<R> {
            type Value = Option<Option<Option<u64>>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let field = if R {
                    "reasoning_tokens"
                } else {
                    "cached_tokens"
                };
                let mut found = None;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if key.0 == field {
                        first(&mut map, &mut found, |c: Count| c.0)?;
                    } else {
                        skip(&mut map)?;
                    }
                }
                Ok(Some(found))
            }
            absent_for_other_types!(scalars);
            absent_for_other_types!(numbers);
            absent_for_other_types!(strings);
        }
        d.deserialize_any(V::<REASONING>).map(Detail)
    }
}

/// The `usage` value: its counts when it is an object, else `None`.
struct UsageObject(Option<Counts>);

impl<'de> Deserialize<'de> for UsageObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Counts>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut c = Counts::default();
                let count = |n: Count| n.0;
                let cached = |d: Detail<false>| d.0;
                let reasoning = |d: Detail<true>| d.0;
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let m = &mut map;
                    match &*key.0 {
                        "prompt_tokens" => first(m, &mut c.prompt_tokens, count)?,
                        "input_tokens" => first(m, &mut c.input_tokens, count)?,
                        "completion_tokens" => first(m, &mut c.completion_tokens, count)?,
                        "output_tokens" => first(m, &mut c.output_tokens, count)?,
                        "cache_read_input_tokens" => {
                            first(m, &mut c.cache_read_input_tokens, count)?
                        }
                        "cache_creation_input_tokens" => {
                            first(m, &mut c.cache_creation_input_tokens, count)?
                        }
                        "prompt_tokens_details" => first(m, &mut c.prompt_tokens_details, cached)?,
                        "input_tokens_details" => first(m, &mut c.input_tokens_details, cached)?,
                        "completion_tokens_details" => {
                            first(m, &mut c.completion_tokens_details, reasoning)?
                        }
                        "output_tokens_details" => {
                            first(m, &mut c.output_tokens_details, reasoning)?
                        }
                        _ => skip(m)?,
                    }
                }
                Ok(Some(c))
            }
            absent_for_other_types!(scalars);
            absent_for_other_types!(numbers);
            absent_for_other_types!(strings);
        }
        d.deserialize_any(V).map(UsageObject)
    }
}
