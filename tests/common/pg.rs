//! PostgreSQL for the tests: a new database per test on the server the test command starts
//! (`scripts/test.sh` runs `scripts/pg.sh start`, which exports `MODELMIRROR_TEST_PG_URL` and
//! `MODELMIRROR_TEST_PG_PASSWORD`), dropped when the test ends. A test that needs it and finds no server
//! fails and says why; it never skips.

use std::sync::atomic::{AtomicU32, Ordering};

/// The server's URL (the `postgres` database) and password.
pub fn server() -> (String, String) {
    let url = std::env::var("MODELMIRROR_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "MODELMIRROR_TEST_PG_URL is not set: run the tests with scripts/test.sh, which starts a PostgreSQL server for them"
        )
    });
    let password = std::env::var("MODELMIRROR_TEST_PG_PASSWORD")
        .expect("MODELMIRROR_TEST_PG_PASSWORD is not set (scripts/test.sh sets it with the URL)");
    (url, password)
}

/// A client to `url` with `password`.
pub fn client(url: &str, password: &str) -> postgres::Client {
    let mut config: postgres::Config = url.parse().expect("a PostgreSQL URL");
    config.password(password);
    config
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot reach the tests' PostgreSQL server at {url}: {e}"))
}

/// A database of its own, dropped at the end.
pub struct PgDb {
    /// `postgresql://modelmirror@127.0.0.1:PORT/NAME`: what `database` is set to.
    pub url: String,
    pub password: String,
    admin: String,
    name: String,
}

impl PgDb {
    pub fn new() -> PgDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let (admin, password) = server();
        let name = format!(
            "mm_it_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        client(&admin, &password)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        let mut url = url::Url::parse(&admin).expect("URL");
        url.set_path(&format!("/{name}"));
        PgDb {
            url: url.to_string(),
            password,
            admin,
            name,
        }
    }

    /// A client to this database, to look inside.
    pub fn client(&self) -> postgres::Client {
        client(&self.url, &self.password)
    }

    /// One number.
    pub fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(sql, &[])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Ok(mut c) = std::panic::catch_unwind(|| client(&self.admin, &self.password)) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
