//! Envelope encryption against raw AES-256-GCM, and unseal cost with the
//! default Argon2id parameters. `cargo bench --bench crypto`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strongroom::clock::SystemClock;
use strongroom::crypto::{
    Argon2Params, KdfPolicy, Key256, aead_open, aead_seal, derive_key_from_passphrase, random_array,
};
use strongroom::keyring::{Keyring, KeyringSettings, Purpose, RecordContext, SealMethod};
use strongroom::store::{SledStore, Store};

fn envelope_vs_raw(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("data")).unwrap());
    let keyring = Keyring::init(
        &dir.path().join("keys"),
        store,
        Arc::new(SystemClock),
        KeyringSettings::default(),
        SealMethod::Shares {
            count: 3,
            threshold: 2,
        },
    )
    .unwrap()
    .keyring;
    let record = vec![0x5au8; 1024];
    let context = RecordContext {
        id: "card_bench",
        record_type: "card",
        version: 1,
    };
    let key = Key256::random().unwrap();

    let mut group = c.benchmark_group("seal+open 1 KiB");
    group.throughput(Throughput::Bytes(1024));
    group.bench_function("raw AES-256-GCM", |b| {
        b.iter(|| {
            let nonce = random_array::<12>().unwrap();
            let sealed = aead_seal(&key, &nonce, b"aad", black_box(&record)).unwrap();
            black_box(aead_open(&key, &nonce, b"aad", &sealed).unwrap());
        })
    });
    group.bench_function("envelope (fresh DEK, KEK wrap, AAD)", |b| {
        b.iter(|| {
            let sealed = keyring
                .seal_record(Purpose::Card, &context, black_box(&record))
                .unwrap();
            black_box(
                keyring
                    .open_record(Purpose::Card, &context, &sealed)
                    .unwrap(),
            );
        })
    });
    group.finish();
}

fn unseal_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("unseal");
    group.sample_size(10);
    let salt = [7u8; 16];
    group.bench_function("Argon2id m=64MiB t=3 p=4 (default)", |b| {
        b.iter(|| {
            black_box(
                derive_key_from_passphrase(
                    &KdfPolicy::standard(),
                    &Argon2Params::RFC9106_SECOND,
                    b"a long and private passphrase",
                    &salt,
                )
                .unwrap(),
            )
        })
    });
    group.finish();
}

fn tokens_and_indexes(c: &mut Criterion) {
    use strongroom::crypto::HmacKey;
    use strongroom::tokens;
    let key = HmacKey::new(&Key256::random().unwrap());
    let mut group = c.benchmark_group("tokens and blind indexes");
    group.bench_function("random token", |b| {
        b.iter(|| black_box(tokens::random_token().unwrap()))
    });
    group.bench_function("deterministic token", |b| {
        b.iter(|| {
            black_box(tokens::deterministic_token(
                &key,
                "prn_owner",
                "generic",
                black_box(b"a value"),
            ))
        })
    });
    group.bench_function("format-preserving PAN token candidate", |b| {
        b.iter(|| {
            black_box(tokens::format_preserving_candidate(black_box("4242424242424242")).unwrap())
        })
    });
    group.bench_function("card fingerprint", |b| {
        b.iter(|| {
            black_box(tokens::fingerprint(
                &key,
                "prn_owner",
                black_box("4242424242424242"),
            ))
        })
    });
    group.bench_function("blind index key (email)", |b| {
        b.iter(|| {
            black_box(strongroom::vault::Vault::index_prefix(
                &key,
                "email",
                black_box("ada@example.org"),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, envelope_vs_raw, unseal_cost, tokens_and_indexes);
criterion_main!(benches);
