//! `max_in_flight = "auto"` against a real HTTP service that has only a few
//! workers: requests beyond them wait in its queue, as in a legacy service.
//! The service itself checks that two changes of one record never overlap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use serde_json::json;

use crate::harness::*;
use crate::soap::{ack, parse_envelope, soap_connector};

#[derive(Default)]
struct Seen {
    /// Per key, the values of `n` in the order they arrived.
    values: BTreeMap<String, Vec<u64>>,
    /// Requests being answered now, per key and in all.
    per_key: HashMap<String, usize>,
    now: usize,
    most: usize,
    /// A key that had two requests at once, or an envelope that did not parse.
    errors: Vec<String>,
}

struct Service {
    seen: Mutex<Seen>,
    workers: tokio::sync::Semaphore,
    service_time: Duration,
}

async fn serve(
    State(s): State<Arc<Service>>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], String) {
    let got = parse_envelope(&body);
    let key = match &got {
        Ok(r) => r.key.clone(),
        Err(e) => {
            s.seen.lock().unwrap().errors.push(e.clone());
            String::new()
        }
    };
    {
        let mut seen = s.seen.lock().unwrap();
        seen.now += 1;
        seen.most = seen.most.max(seen.now);
        let on_key = seen.per_key.entry(key.clone()).or_default();
        *on_key += 1;
        if *on_key > 1 {
            seen.errors
                .push(format!("two requests for key {key} at once"));
        }
    }
    {
        // Only `workers` requests are worked on at a time; the rest wait.
        let _worker = s.workers.acquire().await.unwrap();
        tokio::time::sleep(s.service_time).await;
    }
    let mut seen = s.seen.lock().unwrap();
    seen.now -= 1;
    *seen.per_key.get_mut(&key).unwrap() -= 1;
    if let Ok(r) = got {
        let n = r.fields.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
        seen.values.entry(key).or_default().push(n);
    }
    ([("content-type", "text/xml; charset=utf-8")], ack())
}

/// Starts the service on its own runtime; returns its URL.
fn start_service(service: Arc<Service>) -> (String, tokio::runtime::Runtime) {
    serve_soap_app(axum::Router::new().fallback(serve).with_state(service))
}

/// Feeds 4 rounds of changes to 60 records to a connector with `max_in_flight =
/// "auto"` and `limit`, in front of a service with 3 workers taking 20 ms each;
/// waits for every record's last change. Returns the most requests the service
/// saw at once, and the target's status.
fn run_auto(limit: usize) -> (usize, serde_json::Value, String) {
    let service = Arc::new(Service {
        seen: Mutex::default(),
        workers: tokio::sync::Semaphore::new(3),
        service_time: Duration::from_millis(20),
    });
    let (url, _rt) = start_service(service.clone());
    let d = TestDaemon::new()
        .connector(
            "cobol",
            &soap_connector(
                &url,
                &format!("max_in_flight = \"auto\"\nmax_in_flight_limit = {limit}"),
                "max_attempts = 3",
            ),
        )
        .start();
    let keys: Vec<String> = (0..60).map(|i| format!("p{i:02}")).collect();
    let mut last = BTreeMap::new();
    let mut c = d.client();
    for round in 1..=4u64 {
        for k in &keys {
            let answer = c.call(&envelope(k, json!({"permit_number": k, "n": round})));
            assert_eq!(answer["ok"], true, "{answer}");
            last.insert(k.clone(), round);
        }
    }
    d.wait_for(
        Duration::from_secs(60),
        "every record's last change",
        |_| {
            let seen = service.seen.lock().unwrap();
            last.iter()
                .all(|(k, n)| seen.values.get(k).and_then(|v| v.last()) == Some(n))
        },
    );
    let status = d.target_status("cobol");
    let (_, metrics) = d.http_get("/metrics");
    let seen = service.seen.lock().unwrap();
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    for (k, values) in &seen.values {
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "key {k}: {values:?}"
        );
    }
    (seen.most, status, metrics)
}

#[test]
fn auto_in_flight_rises_above_one_stays_within_its_limit_and_never_overlaps_a_record() {
    let (most, status, metrics) = run_auto(6);
    assert!(
        (2..=6).contains(&most),
        "auto should send several at once but never more than the limit of 6: {most}"
    );
    let concurrency = status["concurrency"]
        .as_u64()
        .expect("status shows concurrency");
    assert!((1..=6).contains(&concurrency), "{status}");
    assert!(
        metrics.contains("hms_sync_concurrency{target=\"cobol\"}"),
        "{metrics}"
    );
}

#[test]
fn auto_in_flight_stays_near_what_a_three_worker_service_takes_below_a_high_limit() {
    // Beyond 3 at once, requests wait in the service's queue and a batch takes
    // twice as long: auto backs off instead of climbing to 32.
    let (most, _, _) = run_auto(32);
    assert!((2..=8).contains(&most), "most at once: {most}");
}

/// `hms-sync check`'s output, which must refuse the configuration.
fn failed_check(d: &TestDaemon) -> String {
    d.write_config();
    let out = d.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn check_explains_a_bad_max_in_flight_and_a_limit_without_auto() {
    let d = TestDaemon::new()
        .connector(
            "words",
            &soap_connector("http://127.0.0.1:9/S", "max_in_flight = \"fast\"", ""),
        )
        .connector(
            "limit",
            &soap_connector("http://127.0.0.1:9/S", "max_in_flight_limit = 4", ""),
        );
    let text = failed_check(&d);
    assert!(
        text.contains("line 10") && text.contains("max_in_flight") && text.contains("\"auto\""),
        "{text}"
    );
    assert!(
        text.contains("max_in_flight_limit") && text.contains("applies only with"),
        "{text}"
    );
}

#[test]
fn a_misspelt_auto_with_a_limit_is_one_problem_not_two() {
    let d = TestDaemon::new().connector(
        "capital",
        &soap_connector(
            "http://127.0.0.1:9/S",
            "max_in_flight = \"Auto\"\nmax_in_flight_limit = 4",
            "",
        ),
    );
    let text = failed_check(&d);
    assert!(
        text.contains("max_in_flight: must be a number from 1 to 64 or \"auto\", not \"Auto\""),
        "{text}"
    );
    // The limit is not also said to lack the "auto" the admin meant to write.
    assert!(!text.contains("applies only with"), "{text}");
}
