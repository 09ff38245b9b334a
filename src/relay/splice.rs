//! Placeholder splicing: `{{<token>:<field>}}` in a relay request body is
//! replaced by the real value, structurally, never textually.
//!
//! The grammar (PAYMENT-PATH.md "Invoking a route"):
//!
//! ```text
//! placeholder = "{{" token ":" field "}}"
//! token       = "tok_" 32 hex digits        ; a record token (src/tokens)
//!             / 12*19 DIGIT                 ; a PAN token (format-preserving)
//! field       = 1*64 ( %x61-7A / "_" / "." ) ; e.g. pan, legal_name.family
//! ```
//!
//! Where a placeholder may stand:
//!
//! - JSON bodies: only as an **entire string value** (`"pan": "{{tok_…:pan}}"`).
//!   It is replaced by the value as a JSON string, escaped by serde_json.
//! - `application/x-www-form-urlencoded` bodies: only as an **entire value**
//!   (`card[number]={{tok_…:pan}}`). It is replaced by the value
//!   form-encoded.
//!
//! Anything else is refused with a [`SpliceError`] naming where (a JSON
//! pointer, a form key or a pair's position), never the text: a placeholder
//! inside a longer string, in an object key, in a form key; and any text
//! holding `{{` that is not exactly one well-formed placeholder (`{{tok`,
//! `{{ tok_…:pan }}`, `{{tok_…:PAN}}`, `{{a}}{{b}}`). `{{` is the one
//! opening sequence, so refusing every stray `{{` leaves nothing that a
//! reader, the vault or a processor could take for a half placeholder. A
//! lone `}}` is harmless (nothing opens before it) and is allowed: JSON
//! encoded as a string value (`"{\"a\":{\"b\":1}}"`) is common in
//! processor metadata.
//!
//! Why structural: the body is parsed once into a tree, placeholders become
//! slots in that tree, and rendering serialises the tree with the values in
//! the slots. A value holding `"`, `\n`, `&`, `=` or `}}` is escaped by the
//! serialiser like any other string: it can never close a string, add a
//! key, add a form pair or open another placeholder. (Tests below and the
//! property tests in `tests/splice_props.rs` show it.)
//!
//! JSON objects keep their key order (the tree is our own, not
//! `serde_json::Value`, whose map sorts keys); duplicate keys are refused
//! (the vault and the processor could read different ones). Numbers are
//! re-serialised by serde_json (`1.50` becomes `1.5`; an integer beyond
//! 64 bits becomes a float): processors take amounts as integers in minor
//! units, so this does not change a charge. Form bodies are re-encoded
//! (`%20` may become `+`): the same pairs, in order, duplicates kept.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use zeroize::Zeroizing;

/// How the body of a relay request is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

/// One placeholder: which token, which field of its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placeholder {
    pub token: String,
    pub field: String,
}

/// Why a body, path, query or header cannot be spliced. `location` is a
/// JSON pointer (`/card/number`), `form:<key>`, `form pair <n> key`, or
/// what the caller passed to [`refuse_in`]; it never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    /// A placeholder (or `{{`) where none may stand.
    #[error("a placeholder is not allowed at {location}: {why}")]
    Misplaced { location: String, why: &'static str },
    /// The body is not JSON / not form-encoded as its content type says.
    #[error("the body is not valid {0}")]
    Malformed(&'static str),
    /// A JSON object repeats a key.
    #[error("duplicate key at {location}")]
    DuplicateKey { location: String },
    /// Render was not given a value for a placeholder.
    #[error("no value for the placeholder at {location}")]
    Missing { location: String },
    /// More placeholders than a request may carry.
    #[error("more than {MAX_PLACEHOLDERS} placeholders")]
    TooMany,
}

impl SpliceError {
    /// Where the problem is (for the problem+json `errors[].field`).
    pub fn location(&self) -> &str {
        match self {
            Self::Misplaced { location, .. }
            | Self::DuplicateKey { location }
            | Self::Missing { location } => location,
            Self::Malformed(_) => "body",
            Self::TooMany => "body",
        }
    }

    /// A message that never holds the offending text.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Misplaced { why, .. } => why,
            Self::Malformed(_) => "the body does not parse as its content type says",
            Self::DuplicateKey { .. } => "a JSON object repeats this key",
            Self::Missing { .. } => "no value for this placeholder",
            Self::TooMany => "too many placeholders in one request",
        }
    }
}

/// Placeholders one request may hold (each costs a token lookup and a
/// record decryption before anything is sent).
pub const MAX_PLACEHOLDERS: usize = 64;
const MAX_FIELD_LEN: usize = 64;
const OPEN: &str = "{{";

/// `text` as a placeholder if it is exactly one well-formed placeholder.
pub fn parse_placeholder(text: &str) -> Option<Placeholder> {
    let inner = text.strip_prefix(OPEN)?.strip_suffix("}}")?;
    let (token, field) = inner.split_once(':')?;
    let token_ok = crate::tokens::looks_like_token(token);
    let field_ok = (1..=MAX_FIELD_LEN).contains(&field.len())
        && field
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.');
    (token_ok && field_ok).then(|| Placeholder {
        token: token.to_owned(),
        field: field.to_owned(),
    })
}

/// What a string in the body is: plain text, a placeholder, or refused.
fn classify(
    text: &str,
    location: impl FnOnce() -> String,
) -> Result<Option<Placeholder>, SpliceError> {
    if !text.contains(OPEN) {
        return Ok(None);
    }
    if let Some(p) = parse_placeholder(text) {
        return Ok(Some(p));
    }
    Err(SpliceError::Misplaced {
        location: location(),
        why: if contains_placeholder(text) {
            "a placeholder must be the entire value, not part of a longer string"
        } else {
            "`{{` that is not a well-formed placeholder {{<token>:<field>}}"
        },
    })
}

/// Whether some substring of `text` is a well-formed placeholder.
fn contains_placeholder(text: &str) -> bool {
    text.match_indices(OPEN).any(|(start, _)| {
        text.get(start..).is_some_and(|rest| {
            rest.match_indices("}}")
                .any(|(end, _)| rest.get(..end + 2).and_then(parse_placeholder).is_some())
        })
    })
}

/// Refuses `text` (a path, a query or a header value) if it holds a
/// placeholder or `{{`, raw or percent-encoded (`%7B%7B`, any case).
/// Placeholders are only ever spliced into bodies.
pub fn refuse_in(location: &str, text: &str) -> Result<(), SpliceError> {
    let lower = text.to_ascii_lowercase();
    if text.contains(OPEN)
        || lower.contains("%7b%7b")
        || lower.contains("%7b{")
        || lower.contains("{%7b")
    {
        return Err(SpliceError::Misplaced {
            location: location.to_owned(),
            why: "placeholders are only allowed in the body",
        });
    }
    Ok(())
}

/// A JSON value with placeholders turned into slots.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    /// Index into `Template::slots`.
    Slot(usize),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// A parsed relay body: its structure, and where the placeholders are.
#[derive(Debug, Clone)]
pub struct Template {
    body: Body,
    /// Unique placeholders, in order of first appearance.
    placeholders: Vec<Placeholder>,
    /// One per slot: the index into `placeholders`, and where it stands.
    slots: Vec<(usize, String)>,
}

#[derive(Debug, Clone)]
enum Body {
    Json(Node),
    /// Pairs in order; a value is either text or a slot.
    Form(Vec<(String, FormValue)>),
}

#[derive(Debug, Clone)]
enum FormValue {
    Text(String),
    Slot(usize),
}

/// Collects slots while a body is walked.
#[derive(Default)]
struct Slots {
    placeholders: Vec<Placeholder>,
    slots: Vec<(usize, String)>,
}

impl Slots {
    fn add(&mut self, p: Placeholder, location: String) -> Result<usize, SpliceError> {
        if self.slots.len() >= MAX_PLACEHOLDERS {
            return Err(SpliceError::TooMany);
        }
        let index = match self.placeholders.iter().position(|q| *q == p) {
            Some(i) => i,
            None => {
                self.placeholders.push(p);
                self.placeholders.len() - 1
            }
        };
        self.slots.push((index, location));
        Ok(self.slots.len() - 1)
    }
}

/// RFC 6901 escaping of one pointer segment.
fn pointer_segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn root_name(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

impl Template {
    /// Parses a body and finds its placeholders, refusing misplaced ones.
    pub fn parse(kind: BodyKind, bytes: &[u8]) -> Result<Self, SpliceError> {
        let mut slots = Slots::default();
        let body = match kind {
            BodyKind::Json => {
                let raw: Raw =
                    serde_json::from_slice(bytes).map_err(|_| SpliceError::Malformed("JSON"))?;
                Body::Json(walk_json(raw, String::new(), &mut slots)?)
            }
            BodyKind::Form => {
                let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
                    .map_err(|_| SpliceError::Malformed("form data"))?;
                let mut out = Vec::with_capacity(pairs.len());
                for (n, (key, value)) in pairs.into_iter().enumerate() {
                    classify(&key, || format!("form pair {} key", n + 1)).and_then(
                        |p| match p {
                            None => Ok(()),
                            Some(_) => Err(SpliceError::Misplaced {
                                location: format!("form pair {} key", n + 1),
                                why: "a placeholder may not be a form key",
                            }),
                        },
                    )?;
                    let location = format!("form:{key}");
                    let value = match classify(&value, || location.clone())? {
                        None => FormValue::Text(value),
                        Some(p) => FormValue::Slot(slots.add(p, location)?),
                    };
                    out.push((key, value));
                }
                Body::Form(out)
            }
        };
        Ok(Self {
            body,
            placeholders: slots.placeholders,
            slots: slots.slots,
        })
    }

    /// The placeholders, unique, in order of first appearance.
    pub fn placeholders(&self) -> &[Placeholder] {
        &self.placeholders
    }

    /// The body with every placeholder replaced by its value. Every
    /// placeholder must have a value.
    pub fn render(
        &self,
        values: &HashMap<Placeholder, Zeroizing<String>>,
    ) -> Result<Zeroizing<Vec<u8>>, SpliceError> {
        let mut by_slot: Vec<&str> = Vec::with_capacity(self.slots.len());
        let mut extra = 0usize;
        for (index, location) in &self.slots {
            let value = self
                .placeholders
                .get(*index)
                .and_then(|p| values.get(p))
                .ok_or_else(|| SpliceError::Missing {
                    location: location.clone(),
                })?;
            extra += value.len() * 6 + 2;
            by_slot.push(value.as_str());
        }
        match &self.body {
            Body::Json(node) => {
                // Sized up front (worst-case escaping of every value, plus
                // the body itself), so the buffer holding values is not
                // reallocated, leaving copies behind, while it is written.
                let mut out = Zeroizing::new(Vec::with_capacity(extra + 1024 + node_size(node)));
                serde_json::to_writer(
                    &mut *out,
                    &Rendering {
                        node,
                        values: &by_slot,
                    },
                )
                .map_err(|_| SpliceError::Malformed("JSON"))?;
                Ok(out)
            }
            Body::Form(pairs) => {
                let base: usize = pairs
                    .iter()
                    .map(|(k, v)| {
                        3 * k.len()
                            + 2
                            + match v {
                                FormValue::Text(t) => 3 * t.len(),
                                FormValue::Slot(_) => 0,
                            }
                    })
                    .sum();
                let mut out = Zeroizing::new(Vec::with_capacity(base + extra * 3));
                for (n, (key, value)) in pairs.iter().enumerate() {
                    if n > 0 {
                        out.push(b'&');
                    }
                    form_encode(&mut out, key);
                    out.push(b'=');
                    let text = match value {
                        FormValue::Text(t) => t.as_str(),
                        FormValue::Slot(i) => {
                            by_slot
                                .get(*i)
                                .copied()
                                .ok_or_else(|| SpliceError::Missing {
                                    location: format!("form:{key}"),
                                })?
                        }
                    };
                    form_encode(&mut out, text);
                }
                Ok(out)
            }
        }
    }
}

/// application/x-www-form-urlencoded serialisation of one name or value
/// (the WHATWG URL standard's byte serializer).
fn form_encode(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => {
                out.push(b'%');
                let [high, low] =
                    [b >> 4, b & 0x0f].map(|n| HEX.get(usize::from(n)).copied().unwrap_or(b'0'));
                out.push(high);
                out.push(low);
            }
        }
    }
}

fn node_size(node: &Node) -> usize {
    match node {
        Node::Null | Node::Bool(_) | Node::Number(_) | Node::Slot(_) => 24,
        Node::String(s) => s.len() * 6 + 2,
        Node::Array(items) => items.iter().map(node_size).sum::<usize>() + items.len() + 2,
        Node::Object(members) => {
            members
                .iter()
                .map(|(k, v)| k.len() * 6 + 3 + node_size(v))
                .sum::<usize>()
                + 2
        }
    }
}

fn walk_json(raw: Raw, pointer: String, slots: &mut Slots) -> Result<Node, SpliceError> {
    Ok(match raw {
        Raw::Null => Node::Null,
        Raw::Bool(b) => Node::Bool(b),
        Raw::Number(n) => Node::Number(n),
        Raw::String(s) => match classify(&s, || root_name(&pointer).to_owned())? {
            None => Node::String(s),
            Some(p) => Node::Slot(slots.add(p, root_name(&pointer).to_owned())?),
        },
        Raw::Array(items) => Node::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| walk_json(item, format!("{pointer}/{i}"), slots))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Object(members) => {
            let mut seen = std::collections::HashSet::with_capacity(members.len());
            let mut out = Vec::with_capacity(members.len());
            for (key, value) in members {
                if key.contains(OPEN) {
                    return Err(SpliceError::Misplaced {
                        location: format!("{} (an object key)", root_name(&pointer)),
                        why: "a placeholder may not be an object key",
                    });
                }
                let child = format!("{pointer}/{}", pointer_segment(&key));
                if !seen.insert(key.clone()) {
                    return Err(SpliceError::DuplicateKey { location: child });
                }
                let node = walk_json(value, child, slots)?;
                out.push((key, node));
            }
            Node::Object(out)
        }
    })
}

/// A JSON value as parsed, keeping object key order and duplicates (so that
/// duplicates can be refused rather than silently dropped).
enum Raw {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Raw>),
    Object(Vec<(String, Raw)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        serde_json::Number::from_f64(v)
            .map(Raw::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Raw>()? {
            members.push((k, v));
        }
        Ok(Raw::Object(members))
    }
}

/// A node with its slot values, for serde_json to serialise.
struct Rendering<'a> {
    node: &'a Node,
    values: &'a [&'a str],
}

impl Serialize for Rendering<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let child = |node| Rendering {
            node,
            values: self.values,
        };
        match self.node {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(text) => s.serialize_str(text),
            Node::Slot(i) => match self.values.get(*i) {
                Some(value) => s.serialize_str(value),
                None => Err(serde::ser::Error::custom("slot without a value")),
            },
            Node::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&child(item))?;
                }
                seq.end()
            }
            Node::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (key, value) in members {
                    map.serialize_entry(key, &child(value))?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const TOK: &str = "tok_0123456789abcdef0123456789abcdef";
    const PAN_TOK: &str = "424242830193114242";

    fn p(token: &str, field: &str) -> Placeholder {
        Placeholder {
            token: token.into(),
            field: field.into(),
        }
    }

    fn values(pairs: &[(Placeholder, &str)]) -> HashMap<Placeholder, Zeroizing<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Zeroizing::new((*v).to_owned())))
            .collect()
    }

    fn json(body: &str) -> Result<Template, SpliceError> {
        Template::parse(BodyKind::Json, body.as_bytes())
    }

    #[test]
    fn the_grammar() {
        assert_eq!(
            parse_placeholder(&format!("{{{{{TOK}:pan}}}}")),
            Some(p(TOK, "pan"))
        );
        assert_eq!(
            parse_placeholder(&format!("{{{{{PAN_TOK}:legal_name.family}}}}")),
            Some(p(PAN_TOK, "legal_name.family"))
        );
        for bad in [
            "{{tok_0123:pan}}".to_owned(),
            format!("{{{{{TOK}:PAN}}}}"),
            format!("{{{{{TOK}:}}}}"),
            format!("{{{{ {TOK}:pan}}}}"),
            format!("{{{{{TOK}:pan }}}}"),
            format!("{{{{{TOK}:pan}}"),
            format!("{{{{{TOK}pan}}}}"),
            format!("{{{{{TOK}:pan:x}}}}"),
            format!("{{{{{TOK}:pan1}}}}"),
            format!("{{{{{TOK}:{}}}}}", "a".repeat(65)),
            "{{12345678901:pan}}".to_owned(),
            "{{12345678901234567890:pan}}".to_owned(),
        ] {
            assert_eq!(parse_placeholder(&bad), None, "{bad}");
        }
    }

    #[test]
    fn json_placeholders_are_found_in_order_and_unique() {
        let body = format!(
            r#"{{"amount":100,"card":{{"number":"{{{{{TOK}:pan}}}}","exp":["{{{{{TOK}:exp_month}}}}","{{{{{PAN_TOK}:exp_year}}}}"],"again":"{{{{{TOK}:pan}}}}"}},"note":"}}}} is fine"}}"#
        );
        let t = json(&body).unwrap();
        assert_eq!(
            t.placeholders(),
            &[p(TOK, "pan"), p(TOK, "exp_month"), p(PAN_TOK, "exp_year")]
        );
        let out = t
            .render(&values(&[
                (p(TOK, "pan"), "4242424242424242"),
                (p(TOK, "exp_month"), "12"),
                (p(PAN_TOK, "exp_year"), "2030"),
            ]))
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"amount":100,"card":{"number":"4242424242424242","exp":["12","2030"],"again":"4242424242424242"},"note":"}} is fine"}"#
        );
    }

    #[test]
    fn key_order_is_kept() {
        let t = json(r#"{"z":1,"a":2,"m":{"y":true,"b":null}}"#).unwrap();
        let out = t.render(&HashMap::new()).unwrap();
        assert_eq!(&out[..], br#"{"z":1,"a":2,"m":{"y":true,"b":null}}"#);
    }

    #[test]
    fn misplaced_placeholders_are_refused_naming_where_not_what() {
        let cases = [
            (
                format!(r#"{{"card":{{"number":"pan: {{{{{TOK}:pan}}}}"}}}}"#),
                "/card/number",
            ),
            (
                format!(r#"{{"a":{{"{{{{{TOK}:pan}}}}":1}}}}"#),
                "/a (an object key)",
            ),
            (format!(r#"{{"x~/y":["ok","{{{{{TOK}"]}}"#), "/x~0~1y/1"),
            (r#"{"a":"{{"}"#.to_owned(), "/a"),
            (
                format!(r#"{{"a":"{{{{{TOK}:pan}}}}{{{{{TOK}:cvc}}}}"}}"#),
                "/a",
            ),
            (format!(r#"["{{{{ {TOK}:pan }}}}"]"#), "/0"),
            (format!(r#""x{{{{{TOK}:pan}}}}""#), "/"),
        ];
        for (body, location) in cases {
            let e = json(&body).unwrap_err();
            assert_eq!(e.location(), location, "{body}");
            let shown = format!("{e} {}", e.message());
            assert!(!shown.contains(TOK), "{shown}");
            assert!(!shown.contains("pan }}"), "{shown}");
        }
    }

    #[test]
    fn form_placeholders_and_refusals() {
        let body = format!("amount=100&card%5Bnumber%5D={{{{{TOK}:pan}}}}&x=a&x=b&note=%7D%7D");
        let t = Template::parse(BodyKind::Form, body.as_bytes()).unwrap();
        assert_eq!(t.placeholders(), &[p(TOK, "pan")]);
        let out = t
            .render(&values(&[(p(TOK, "pan"), "4242 4242&x=1")]))
            .unwrap();
        assert_eq!(
            &out[..],
            b"amount=100&card%5Bnumber%5D=4242+4242%26x%3D1&x=a&x=b&note=%7D%7D"
        );
        let in_key = format!("{{{{{TOK}:pan}}}}=1");
        let e = Template::parse(BodyKind::Form, in_key.as_bytes()).unwrap_err();
        assert_eq!(e.location(), "form pair 1 key");
        let longer = format!("a=1&number=x{{{{{TOK}:pan}}}}");
        let e = Template::parse(BodyKind::Form, longer.as_bytes()).unwrap_err();
        assert_eq!(e.location(), "form:number");
        assert!(!e.to_string().contains(TOK));
        // Percent-encoded braces decode to a placeholder and count as one.
        let encoded = format!("n=%7B%7B{TOK}%3Apan%7D%7D");
        let t = Template::parse(BodyKind::Form, encoded.as_bytes()).unwrap();
        assert_eq!(t.placeholders(), &[p(TOK, "pan")]);
    }

    #[test]
    fn values_cannot_inject_structure() {
        let hostile = "\"},\"amount\":0,\"x\":{\"a\":\"\n&amount=0&x=}}{{tok_0123456789abcdef0123456789abcdef:pan}}\\";
        let body = format!(r#"{{"n":"{{{{{TOK}:pan}}}}","amount":100}}"#);
        let t = json(&body).unwrap();
        let out = t.render(&values(&[(p(TOK, "pan"), hostile)])).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back["n"], hostile);
        assert_eq!(back["amount"], 100);
        assert_eq!(back.as_object().unwrap().len(), 2);

        let t = Template::parse(
            BodyKind::Form,
            format!("n={{{{{TOK}:pan}}}}&amount=100").as_bytes(),
        )
        .unwrap();
        let out = t.render(&values(&[(p(TOK, "pan"), hostile)])).unwrap();
        let back: Vec<(String, String)> = serde_urlencoded::from_bytes(&out).unwrap();
        assert_eq!(
            back,
            vec![
                ("n".to_owned(), hostile.to_owned()),
                ("amount".to_owned(), "100".to_owned())
            ]
        );
    }

    #[test]
    fn a_missing_value_is_an_error_naming_the_place() {
        let t = json(&format!(r#"{{"a":["{{{{{TOK}:cvc}}}}"]}}"#)).unwrap();
        let e = t.render(&HashMap::new()).unwrap_err();
        assert_eq!(
            e,
            SpliceError::Missing {
                location: "/a/0".into()
            }
        );
    }

    #[test]
    fn duplicate_keys_and_bad_bodies_are_refused() {
        assert_eq!(
            json(r#"{"a":1,"b":{"c":1,"c":2}}"#).unwrap_err(),
            SpliceError::DuplicateKey {
                location: "/b/c".into()
            }
        );
        assert!(matches!(json("{"), Err(SpliceError::Malformed(_))));
        assert!(matches!(json("[1,]"), Err(SpliceError::Malformed(_))));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(json(&deep), Err(SpliceError::Malformed(_))));
    }

    #[test]
    fn too_many_placeholders_are_refused() {
        let items: Vec<String> = (0..=MAX_PLACEHOLDERS)
            .map(|_| format!("\"{{{{{TOK}:pan}}}}\""))
            .collect();
        let body = format!("[{}]", items.join(","));
        assert_eq!(json(&body).unwrap_err(), SpliceError::TooMany);
    }

    #[test]
    fn refuse_in_paths_queries_and_headers() {
        assert!(refuse_in("path", "/charges/ch_1").is_ok());
        assert!(refuse_in("query", "a=}}").is_ok());
        for bad in [
            format!("/x/{{{{{TOK}:pan}}}}"),
            "a=%7B%7Btok".into(),
            "a=%7b{".into(),
            "{{".into(),
        ] {
            let e = refuse_in("header:x-card", &bad).unwrap_err();
            assert_eq!(e.location(), "header:x-card");
            assert!(!e.to_string().contains("tok"));
        }
    }
}
