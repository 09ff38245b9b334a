//! Property tests for the relay's placeholder splicing and masking:
//! rendering never changes a body's structure, whatever the values hold;
//! the parsers never panic on arbitrary bytes; a masked answer never holds
//! a relayed value.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde_json::Value;
use strongroom::relay::mask::mask_body;
use strongroom::relay::splice::{BodyKind, Placeholder, Template, parse_placeholder};
use zeroize::Zeroizing;

const TOKENS: [&str; 3] = [
    "tok_0123456789abcdef0123456789abcdef",
    "tok_ffffffffffffffffffffffffffffffff",
    "424242830193114242",
];
const FIELDS: [&str; 4] = ["pan", "exp_month", "holder_name", "legal_name.family"];

/// A leaf of a template: plain text (never holding `{{`) or a placeholder.
#[derive(Debug, Clone)]
enum Leaf {
    Text(String),
    Number(i64),
    Slot(usize, usize),
}

#[derive(Debug, Clone)]
enum Tree {
    Leaf(Leaf),
    Array(Vec<Tree>),
    Object(BTreeMap<String, Tree>),
}

/// Text that may hold anything hostile except the opening `{{`.
fn text() -> impl Strategy<Value = String> {
    "[a-z \"\\\\\n&=}{%+:/\u{e9}\u{1F600}]{0,12}".prop_filter("no {{", |s| !s.contains("{{"))
}

/// Values: anything at all, including `"`, `\n`, `&`, `=`, `}}`, `{{…}}`.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~\n\t\u{e9}\u{1F600}]{0,24}",
        Just("\"},\"amount\":0,\"x\":\"".to_owned()),
        Just("x&amount=0&y=".to_owned()),
        Just("}}{{tok_0123456789abcdef0123456789abcdef:pan}}".to_owned()),
    ]
}

fn leaf() -> impl Strategy<Value = Leaf> {
    prop_oneof![
        text().prop_map(Leaf::Text),
        any::<i64>().prop_map(Leaf::Number),
        (0..TOKENS.len(), 0..FIELDS.len()).prop_map(|(t, f)| Leaf::Slot(t, f)),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    leaf()
        .prop_map(Tree::Leaf)
        .prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Tree::Array),
                proptest::collection::btree_map(text(), inner, 0..6).prop_map(Tree::Object),
            ]
        })
}

fn placeholder(t: usize, f: usize) -> Placeholder {
    Placeholder {
        token: TOKENS[t].to_owned(),
        field: FIELDS[f].to_owned(),
    }
}

fn placeholder_text(t: usize, f: usize) -> String {
    format!("{{{{{}:{}}}}}", TOKENS[t], FIELDS[f])
}

/// The template as JSON (placeholders as strings) and the JSON expected
/// after rendering with `values`.
fn to_json(tree: &Tree, values: &HashMap<Placeholder, Zeroizing<String>>) -> (Value, Value) {
    match tree {
        Tree::Leaf(Leaf::Text(s)) => (Value::from(s.as_str()), Value::from(s.as_str())),
        Tree::Leaf(Leaf::Number(n)) => (Value::from(*n), Value::from(*n)),
        Tree::Leaf(Leaf::Slot(t, f)) => (
            Value::from(placeholder_text(*t, *f)),
            Value::from(values[&placeholder(*t, *f)].as_str()),
        ),
        Tree::Array(items) => {
            let (a, b): (Vec<_>, Vec<_>) = items.iter().map(|i| to_json(i, values)).unzip();
            (Value::Array(a), Value::Array(b))
        }
        Tree::Object(members) => {
            let mut a = serde_json::Map::new();
            let mut b = serde_json::Map::new();
            for (k, v) in members {
                let (x, y) = to_json(v, values);
                a.insert(k.clone(), x);
                b.insert(k.clone(), y);
            }
            (Value::Object(a), Value::Object(b))
        }
    }
}

fn all_values(chosen: &[String]) -> HashMap<Placeholder, Zeroizing<String>> {
    let mut out = HashMap::new();
    let mut i = 0;
    for t in 0..TOKENS.len() {
        for f in 0..FIELDS.len() {
            out.insert(
                placeholder(t, f),
                Zeroizing::new(chosen[i % chosen.len()].clone()),
            );
            i += 1;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Whatever the values hold, the rendered JSON is the template's tree
    /// with each placeholder replaced by exactly its value as a string.
    #[test]
    fn json_render_keeps_the_structure(
        tree in tree(),
        chosen in proptest::collection::vec(value(), 1..6),
    ) {
        let values = all_values(&chosen);
        let (template_json, expected) = to_json(&tree, &values);
        let body = serde_json::to_vec(&template_json).unwrap();
        let template = Template::parse(BodyKind::Json, &body).unwrap();
        let out = template.render(&values).unwrap();
        let back: Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(back, expected);
    }

    /// The same for form bodies: the same pairs in the same order, each
    /// placeholder replaced by exactly its value.
    #[test]
    fn form_render_keeps_the_pairs(
        pairs in proptest::collection::vec(("[a-z\\[\\]]{1,8}", leaf()), 0..8),
        chosen in proptest::collection::vec(value(), 1..6),
    ) {
        let values = all_values(&chosen);
        let mut template_pairs = Vec::new();
        let mut expected = Vec::new();
        for (key, leaf) in &pairs {
            let (t, e) = match leaf {
                Leaf::Text(s) => (s.clone(), s.clone()),
                Leaf::Number(n) => (n.to_string(), n.to_string()),
                Leaf::Slot(t, f) => (
                    placeholder_text(*t, *f),
                    values[&placeholder(*t, *f)].to_string(),
                ),
            };
            template_pairs.push((key.clone(), t));
            expected.push((key.clone(), e));
        }
        let body = serde_urlencoded::to_string(&template_pairs).unwrap();
        let template = Template::parse(BodyKind::Form, body.as_bytes()).unwrap();
        let out = template.render(&values).unwrap();
        let back: Vec<(String, String)> = serde_urlencoded::from_bytes(&out).unwrap();
        prop_assert_eq!(back, expected);
    }

    /// Arbitrary bytes: an answer or an error, never a panic; whatever
    /// parses renders (with every value given) into a body of its kind.
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        for kind in [BodyKind::Json, BodyKind::Form] {
            if let Ok(t) = Template::parse(kind, &bytes) {
                let values: HashMap<_, _> = t
                    .placeholders()
                    .iter()
                    .map(|p| (p.clone(), Zeroizing::new("v".to_owned())))
                    .collect();
                let out = t.render(&values).unwrap();
                match kind {
                    BodyKind::Json => {
                        serde_json::from_slice::<Value>(&out).unwrap();
                    }
                    BodyKind::Form => {
                        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&out).unwrap();
                    }
                }
            }
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse_placeholder(text);
        }
    }

    /// A masked answer never holds a relayed value of 4 bytes or more, and
    /// masking arbitrary bytes never panics.
    #[test]
    fn masked_answers_never_hold_a_relayed_value(
        noise in proptest::collection::vec(any::<u8>(), 0..120),
        secrets in proptest::collection::vec("[a-z0-9]{4,12}", 1..4),
        spots in proptest::collection::vec(0usize..120, 0..6),
    ) {
        let mut body = noise.clone();
        for (i, spot) in spots.iter().enumerate() {
            let at = (*spot).min(body.len());
            let secret = secrets[i % secrets.len()].as_bytes();
            body.splice(at..at, secret.iter().copied());
        }
        let relayed: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let out = mask_body(&body, &relayed);
        for secret in &secrets {
            prop_assert!(
                !out.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} survived"
            );
        }
    }
}
