//! The PostgreSQL the tests run against, one fresh schema per test.
//!
//! The database is `STRONGROOM_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test` if it answers. Without one a
//! test prints one line and skips, unless `STRONGROOM_REQUIRE_POSTGRES=1`
//! (set by `.ci/run`), when it fails instead.

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the test database.
pub const URL_ENV: &str = "STRONGROOM_TEST_POSTGRES_URL";
/// Set to 1 to fail, not skip, when no database answers.
pub const REQUIRE_ENV: &str = "STRONGROOM_REQUIRE_POSTGRES";
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema created for one test, dropped (with everything in it) when
/// this is dropped.
pub struct TestSchema {
    base: String,
    name: String,
    url: String,
}

impl TestSchema {
    /// A URL whose connections work in this schema (`search_path`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` on the base database (not limited to the schema).
    pub fn execute(&self, sql: &str) {
        run(&self.base, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Err(e) = run(
            &self.base,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        ) {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        result
    })
}

fn unique_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("sr_test_{:016x}", hasher.finish())
}

/// A fresh schema in the test database, or `None` (after one line saying
/// how to get one) when there is none and none is required.
pub fn schema() -> Option<TestSchema> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    let base = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let name = unique_name();
    match run(&base, &format!("CREATE SCHEMA {name}")) {
        Ok(()) => {}
        Err(e) if required => {
            panic!(
                "{REQUIRE_ENV}=1 but the test PostgreSQL ({URL_ENV} or {DEFAULT_URL}) does not answer: {e}"
            )
        }
        Err(e) => {
            eprintln!(
                "skipped: no PostgreSQL for the tests ({e}); set {URL_ENV} (see README), \
                 or {REQUIRE_ENV}=1 to fail instead"
            );
            return None;
        }
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{name}");
    Some(TestSchema { base, name, url })
}
