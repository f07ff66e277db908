//! Application sessions for the database check's tests: plain clients, and sessions following
//! the `<app>@<version>` `application_name` convention.
#![allow(dead_code)]

/// A client of `url` (the connection task runs on the current runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// An application session named `application_name` (e.g. `shop-api@1.0.0`), and its pid.
pub async fn session(url: &str, application_name: &str) -> (tokio_postgres::Client, i32) {
    let c = connect(url).await;
    c.batch_execute(&format!("SET application_name = '{application_name}'"))
        .await
        .expect("set application_name");
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    (c, pid)
}

/// Whether `users` still has the column `legacy` (what the tests' contract drops).
pub async fn has_legacy(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'legacy' AND NOT attisdropped",
        &[],
    )
    .await
    .expect("columns")
    .get::<_, i64>(0)
        == 1
}
